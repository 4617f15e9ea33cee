"""The paper's Table I on its own models, measured honestly: several seeds, a test split no
choice saw, intervals and paired verdicts.

    python benchmarks/paper_table.py --models tf_efficientnet_lite0,mobilenetv2_100,\\
mobilenetv1_100,tf_efficientnet_lite1,tf_efficientnet_lite2 --seeds 0,1,2 \\
        --heads linear,keep-pretrained --image-size 96 --epochs 4 --final-epochs 3 \\
        --out runs/paper

For each head × model it runs blocktune's protocol (:func:`blocktune.runner.search.run`: the block
strategy and both baselines, every seed) in a resumable run folder, with the selection rule
``--select``; then the same folder is copied and resumed with the paper's ``max-val`` (the
search is reused: only a BW final whose pick differs is trained; ``--no-max-val`` skips
the copy). Finished run folders are read back with :func:`blocktune.results.report.assess`, so every
number here is what ``blocktune report`` says. Writes ``paper_table.md`` and
``paper_table.csv`` after every model: the run can be interrupted and resumed at any point,
and ``--report-only`` prints what is there.

``--reuse MODEL=FOLDER`` starts a model's first-rule folder as a copy of a run that already
holds its block search and finals with the same settings (the protocol's caltech101 product
runs, ``benchmarks/answer.py``), so nothing is trained twice.

Per model: test accuracy (mean over seeds with its Student-t 95% interval) of Baseline I,
Baseline II, BW (the rule) and BW (max-val); BW against each baseline as the mean of the
seeds' paired differences with its interval and a verdict; the quarter of the model where the
chosen group lies, per seed. Then the paper's claims, answered from the table.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import time
from pathlib import Path

from blocktune.core.config import RunConfig
from blocktune.core.io import atomic_write_csv, atomic_write_text, read_csv
from blocktune.core.methods import BASELINE_I, BASELINE_II
from blocktune.core.stats import compare_over_seeds, mean_interval
from blocktune.results.assess import assess
from blocktune.results.runfolder import RunFolder
from blocktune.runner.search import run

# the table's three methods: its label → blocktune's method name
METHODS = {"Baseline I": BASELINE_I, "Baseline II": BASELINE_II, "BW": "block"}

PAPER = {"VGG16": [0.714, 0.874, 0.876],
         "MobileNet v1": [0.828, 0.876, 0.877],
         "MobileNet v2": [0.811, 0.869, 0.867],
         "MobileNet v3 small": [0.309, 0.762, 0.790],
         "ResNet50 v2": [0.778, 0.828, 0.848]}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def quarter_of(layer_indices: str, num_layers: int) -> int | None:
    """1–4: where the middle of a group lies along the model's layers."""
    if not layer_indices or layer_indices == "all":
        return None
    indices = [int(i) for i in layer_indices.split(",")]
    centre = (min(indices) + max(indices)) / 2
    return min(4, int(centre / num_layers * 4) + 1)


def quarter_of_seed(candidates: list[dict], finals: list[dict]) -> int | None:
    """The quarter of the seed's BW final (the candidates cover the model: the last one ends
    at its last layer)."""
    layers = max((int(r["last"]) + 1 for r in candidates if r["last"]), default=1)
    bw = [r for r in finals if r["method"] == "block" and r["status"] == "ok"]
    return quarter_of(bw[0]["layer_indices"], layers) if bw else None


def finished(folder: Path, seeds: list[int], rule: str) -> bool:
    """Every seed has both baselines and a BW final chosen by ``rule`` (a fresh copy for
    another rule still holds the first rule's BW finals until it has been resumed)."""
    def done(r: dict) -> bool:
        return r["status"] == "ok" and (r["method"] != "block" or r["select"] == rule)

    return all(
        RunFolder(folder).seed(s).finals.exists()
        and {r["method"] for r in read_csv(RunFolder(folder).seed(s).finals) if done(r)}
        >= set(METHODS.values()) for s in seeds)


def measure(folder: Path, seeds: list[int]) -> dict:
    """What one finished run folder says: tests over seeds, BW vs each baseline, quarters,
    seconds of training, and each seed's BW final (group, seconds)."""
    assessment = assess(folder)
    tests = {m: assessment.test_over_seeds[m] for m in METHODS.values()}
    versus = {c.b: c for c in assessment.versus_baselines if c.a == "BW"}
    per_seed = {m: [assessment.per_seed[s][m].test.value for s in seeds]
                for m in METHODS.values()}
    files = [(read_csv(RunFolder(folder).seed(s).candidates),
              read_csv(RunFolder(folder).seed(s).finals)) for s in seeds]
    # the table's methods only: a reused run's recipes (LP-FT, LP-BW) are not counted
    seconds = sum(float(r["seconds"] or 0) for candidates, finals in files
                  for r in candidates + [f for f in finals if f["method"] in METHODS.values()])
    bw_finals = [next(((r["layer_indices"], float(r["seconds"] or 0)) for r in finals
                       if r["method"] == "block"), ("", 0.0)) for _, finals in files]
    return {"tests": tests, "versus": versus, "per_seed": per_seed,
            "quarters": [quarter_of_seed(*both) for both in files], "seconds": seconds,
            "bw_finals": bw_finals}


def training_seconds(both: dict, rule: str) -> float:
    """The rule's folder, plus the BW finals that the copy for another rule trained anew."""
    ours = both[rule]
    return ours["seconds"] + sum(
        seconds for r in both.values() if r is not ours
        for (group, seconds), (own, _) in zip(r["bw_finals"], ours["bw_finals"], strict=True)
        if group != own)


def _quarters(results: dict) -> list[int | None]:
    """Where the unconstrained choice lies: max-val's picks; none when max-val did not run
    (``--no-max-val``).

    ``last-quarter`` picks from the fourth quarter by construction, so its quarters say nothing
    about whether the fourth quarter wins.
    """
    return results["max-val"]["quarters"] if "max-val" in results else []


def _cell(interval) -> str:
    return interval.fraction()  # one seed: no interval over seeds, the value alone


def tables(results: dict, rule: str, seeds: list[int], args) -> tuple[str, list[dict]]:
    lines = [f"Test accuracy, mean over seeds {', '.join(map(str, seeds))} with its 95% "
             "interval (Student's t); BW chosen on val by the rule named.", "",
             f"| model (head) | Baseline I | Baseline II | BW (`{rule}`) | BW (`max-val`) | "
             f"BW (`{rule}`) vs Baseline I | vs Baseline II | `max-val`'s quarter (per seed) "
             "| training time |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name, both in results.items():
        ours, paper = both[rule], both.get("max-val")
        bw_max = _cell(paper["tests"]["block"]) if paper else "–"
        versus = [ours["versus"].get(b) for b in ("Baseline I", "Baseline II")]
        words = [f"{c.difference.points()}, {c.word}" if c else "–" for c in versus]
        q = "/".join(f"Q{x}" if x else "–" for x in _quarters(both)) or "–"
        seconds = training_seconds(both, rule)
        lines.append(f"| {name} | {_cell(ours['tests'][BASELINE_I])} | "
                     f"{_cell(ours['tests'][BASELINE_II])} | {_cell(ours['tests']['block'])} | "
                     f"{bw_max} | {words[0]} | {words[1]} | {q} | {seconds / 60:.0f} min |")
        rows.append({"model": name, "baseline_I": ours["tests"][BASELINE_I].value,
                     "baseline_II": ours["tests"][BASELINE_II].value,
                     f"bw_{rule}": ours["tests"]["block"].value,
                     "bw_max_val": paper["tests"]["block"].value if paper else "",
                     "bw_vs_I": words[0], "bw_vs_II": words[1], "max_val_quarters": q,
                     "training_seconds": round(seconds)})
    lines += ["", "Training time: seconds recorded for every candidate and for the three "
              "methods' finals of the model, all seeds, both rules (a BW final that both rules "
              "chose counted once; decoding and caching not counted).",
              "", claims(results, rule), ""]
    if args.data == "tf_flowers":
        lines += ["The paper's Table I (tf_flowers, 224 px, 50 epochs; scored on data also "
                  "used for choosing):", "", "| model | Baseline I | Baseline II | BW |",
                  "|---|---|---|---|"]
        lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in vs) + " |"
                  for m, vs in PAPER.items()]
    else:  # the conference paper's Caltech-101 numbers are not in the text we have
        lines += [f"The paper gives no table for {args.data} that can be read here: its "
                  "conference version (Caltech-101 and Oxford Flowers, 15 models) states only "
                  "that BW consistently beats both baselines and that a block of the fourth "
                  "quarter generally does best; the claims above test exactly that."]
    lines += ["", f"Settings: {args.image_size} px, {args.epochs} search epochs, "
              f"{args.final_epochs} final epochs, block strategy, "
              + ("the dataset's official split, " if args.split == "official" else "")
              + (f"at most {args.max_images_per_class} images per class of {args.data}."
                 if args.max_images_per_class else f"all {args.data} images.")]
    return "\n".join(lines) + "\n", rows


def _head(name: str) -> str:
    return name.rsplit(" (", 1)[1].rstrip(")")


def claims(results: dict, rule: str) -> str:
    """The paper's claims, answered from the measured table in plain words.

    The first three from the ``linear`` head's rows (the first head run when it is absent);
    the fourth pairs each model and seed with and without the pretrained classifier, for each
    method: one seed is one split, so both test accuracies are on the same test images.
    """
    if not results:
        return "No model has finished yet."
    heads = sorted({_head(name) for name in results}, key=lambda h: h != "linear")
    main_head = heads[0]
    rows = {name: r for name, r in results.items() if _head(name) == main_head}
    measured = {name: r[rule] for name, r in rows.items()}
    n = len(measured)
    beats = [name for name, r in measured.items()
             if all(r["versus"].get(b) and r["versus"][b].word == "better"
                    for b in ("Baseline I", "Baseline II"))]
    loses = [name for name, r in measured.items()
             if any(r["versus"].get(b) and r["versus"][b].word == "worse"
                    for b in ("Baseline I", "Baseline II"))]
    variance = {label: statistics.pvariance([r["tests"][m].value for r in measured.values()])
                if n > 1 else float("nan") for label, m in METHODS.items()}
    steadiest, runner_up = sorted(variance, key=variance.get)[:2]
    # the steadiest's variance is zero when its means tie across models
    ratio = variance[runner_up] / variance[steadiest] if variance[steadiest] else math.inf
    means = {label: statistics.fmean(r["tests"][m].value for r in measured.values())
             for label, m in METHODS.items()}
    several_seeds = len(next(iter(measured.values()))["per_seed"]["block"]) > 1
    spread = {label: statistics.fmean(statistics.stdev(r["per_seed"][m])
                                      for r in measured.values())
              if several_seeds else float("nan") for label, m in METHODS.items()}
    gains = [a - b for r in rows.values() if "max-val" in r and rule != "max-val"
             for a, b in zip(r[rule]["per_seed"]["block"], r["max-val"]["per_seed"]["block"],
                             strict=True)]
    chosen = [q for r in rows.values() for q in _quarters(r) if q]
    fourth = sum(q == 4 for q in chosen)
    out = [f"Head `{main_head}`:", "",
           f"- **Does BW beat both baselines?** On {len(beats)} of {n} model(s) BW is better "
           "than both (paired over seeds, the whole interval above zero)"
           + (f": {', '.join(beats)}" if beats else "")
           + (f"; it is worse than a baseline on {', '.join(loses)}" if loses else "") + ".",
           "- **Is BW the most reliable?** Variance of the mean test accuracy across models: "
           + ", ".join(f"{k} {v:.6f}" for k, v in variance.items())
           + ((f"; the lowest is {steadiest}, the next ({runner_up}) {ratio:.2f}× it"
               if math.isfinite(ratio) else f"; the lowest is {steadiest}, zero: its means "
               "tie across models") if n > 1 else " (needs two models)")
           + ". Mean over models: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items())
           + ". Over seeds (the mean of each model's standard deviation over its seeds, in "
           "points): " + ", ".join(f"{k} {100 * v:.1f}" for k, v in spread.items()) + ".",
           f"- **Does the fourth quarter win?** {fourth} of {len(chosen)} groups that `max-val` "
           "chose from all candidates lie in the last quarter of the model"
           + (f"; BW's test accuracy with `{rule}` minus with `max-val`, paired over every "
              f"model and seed: {mean_interval(gains).points()}" if gains else "") + "."]
    pairs = [(r, results[keep]) for name, r in results.items() if _head(name) == "linear"
             and (keep := name.replace(" (linear)", " (keep-pretrained)")) in results]
    if pairs:
        images = next(iter(pairs[0][0][rule]["versus"].values())).images
        answers = [compare_over_seeds(
            "keep-pretrained", "linear",
            [k - lin for r, keep in pairs for lin, k in zip(
                r[rule]["per_seed"][method], keep[rule]["per_seed"][method], strict=True)],
            images) for method in METHODS.values()]
        seeds = len(pairs[0][0][rule]["per_seed"]["block"])
        out.append("- **Does keeping the pretrained classifier help?** Test accuracy with it "
                   f"minus without, paired over {len(pairs)} model(s) × {seeds} seed(s) (one "
                   "seed is one split: the same test images): "
                   + "; ".join(f"{label} {c.difference.points()} ({c.word})"
                               for label, c in zip(METHODS, answers, strict=True)) + ".")
    else:
        out.append("- **Does keeping the pretrained classifier help?** Not measured yet "
                   "(--heads linear,keep-pretrained answers it).")
    return "\n".join(out)


def reused(source: Path, folder: Path, config: RunConfig) -> RunConfig:
    """Start ``folder`` as a copy of ``source``, a run of the same model, data and settings
    (its extra keys, e.g. the recipes as methods or the scoring pool, are kept so that the copy
    resumes without training what it holds); the config to resume it with. A source whose
    settings differ is not used: the table then trains its own."""
    saved = RunFolder(source).saved_config() if RunFolder(source).is_run() else None
    same = ("model", "data", "head", "image_size", "epochs", "final_epochs", "pretrained",
            "max_images_per_class", "split")
    mine = config.to_dict()
    if saved is None or saved.get("strategies") != ["block"] or any(
            saved.get(k) != mine.get(k) for k in same):
        log(f"  not reusing {source}: not a block run with these settings")
        return config
    if not folder.exists():
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns(
            "tensorboard", "export", "*.lock", "run.pid"))
        log(f"  reusing {source}")
    return RunConfig.from_dict({**saved, "seeds": config.seeds, "select": config.select})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tf_efficientnet_lite0,tf_efficientnet_lite1,"
                        "tf_efficientnet_lite2,mobilenetv1_100,mobilenetv2_100")
    parser.add_argument("--data", default="tf_flowers")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--split", default="random", choices=("random", "official"),
                        help="official: the dataset's own train/val/test (flowers102)")
    parser.add_argument("--threads", type=int, help="torch threads (default torch's)")
    parser.add_argument("--heads", default="linear")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--final-epochs", type=int, default=3)
    parser.add_argument("--select", default=RunConfig().select,
                        help="the rule measured best by benchmarks/selection.py")
    parser.add_argument("--max-images-per-class", type=int)
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                        help="random weights (a quick check of the script itself)")
    parser.add_argument("--no-max-val", dest="max_val", action="store_false",
                        help="train the rule's folders only, not the max-val copies (the "
                        "keep-pretrained comparison needs only the rule's picks); a max-val "
                        "folder already finished is still read into the table")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", default="runs/paper")
    parser.add_argument("--reuse", action="append", default=[], metavar="MODEL=FOLDER",
                        help="a run folder that already holds this model's block search and "
                        "finals with these settings (the protocol's caltech101 product runs): "
                        "copied as the first rule's folder instead of training it again")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    reuse = dict(item.split("=", 1) for item in args.reuse)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    rules = [args.select] + (["max-val"] if args.select != "max-val" else [])
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for head in args.heads.split(","):
        for model in args.models.split(","):
            name = f"{model} ({head})"
            for rule in rules:
                folder = out / f"{model}-{head}" / rule
                if not args.report_only and (rule == rules[0] or args.max_val):
                    if rule != rules[0] and not folder.exists():
                        # the search is the same: copy it and let only the choice change
                        first = out / f"{model}-{head}" / rules[0]
                        shutil.copytree(first, folder, ignore=shutil.ignore_patterns(
                            "tensorboard", "export", "*.lock", "run.pid"))
                    config = RunConfig(model=model, data=args.data, seeds=seeds, head=head,
                                       strategies=["block"], image_size=args.image_size,
                                       epochs=args.epochs, final_epochs=args.final_epochs,
                                       select=rule, pretrained=args.pretrained,
                                       max_images_per_class=args.max_images_per_class,
                                       split=args.split,
                                       methods=[])  # the paper's three methods, no recipes
                    if model in reuse and head == "linear":
                        config = reused(Path(reuse[model]), folder, config)
                    log(f"{name}, rule {rule}: {folder}")
                    run(config, folder)
                if RunFolder(folder).is_run() and finished(folder, seeds, rule):
                    results.setdefault(name, {})[rule] = measure(folder, seeds)
            markdown, rows = tables({n: r for n, r in results.items() if rules[0] in r},
                                    rules[0], seeds, args)
            atomic_write_text(out / "paper_table.md", markdown)
            if rows:
                atomic_write_csv(out / "paper_table.csv", rows, list(rows[0]))
    log(f"done in {time.perf_counter() - started:.0f} s this session")
    print(markdown)


if __name__ == "__main__":
    main()
