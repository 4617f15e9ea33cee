"""Every selection rule against the oracle: can the search's choice be trusted?

    python benchmarks/selection.py --seeds 0,1,2 --image-size 128 --epochs 4 \
        --final-epochs 3 --out runs/selection [--variants epochs=2,epochs=8,search=0.2]

Per split seed, with blocktune's own protocol code (:mod:`blocktune.runner.seedrun`):

1. the plain search: every ``block`` candidate and both baselines on the search split, scored
   on val, plus the re-trainings on the swapped fold that any registered rule asks for;
2. the **oracle**: every candidate and both baselines fine-tuned the way the finals are
   (search+train, val for the schedule and early stopping, test once) → ``oracle.csv``;
3. search variants (more or fewer epochs per candidate, a larger search split taken from
   train so that val, test and the finals' training data stay the same): the search only,
   scored against the same oracle.

Then, per seed and as a mean: Spearman's rank correlation between the search's val accuracy
and the oracle's test accuracy across candidates; for each rule its pick, the pick's oracle
test accuracy, its regret (best oracle test accuracy − the pick's), whether it beats Baseline
I and II on test (paired, on the same images), and its cost over the plain search; and the
recommendation's regret (the best final val among Baseline I, II and the pick, against the
best test of the three). Every step appends to CSV files as it finishes: an interrupted run
resumes where it stopped. Test accuracy is read here only because this is a benchmark: the
product never uses it to choose.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from blocktune.core.callbacks import LambdaCallback
from blocktune.core.config import RunConfig
from blocktune.core.io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    parse_predictions,
    predictions_text,
    read_csv,
)
from blocktune.core.methods import BASELINE_I, BASELINE_II, BASELINES, parse_indices
from blocktune.core.records import CandidateRow
from blocktune.core.stats import compare, mean_interval, spearman
from blocktune.data import split_labels
from blocktune.protocol.select import RULES, SearchView
from blocktune.results.runfolder import SeedFolder
from blocktune.runner.context import SeedContext, open_seed
from blocktune.runner.seedrun import refit, search
from blocktune.training.loading import load_images

ORACLE_FIELDS = ["method", "index", "layers", "layer_indices", "trained_params", "val_acc",
                 "test_acc", "epochs", "seconds", "status", "test_pred"]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def events() -> LambdaCallback:
    def end(row, best):
        log(f"  {row.strategy} #{row.index} {row.layers}: val {row.val_acc:.3f} "
            f"({row.seconds:.2f} s)")
    return LambdaCallback(on_candidate_end=end, on_phase=lambda text: log(f"  {text}"))


def oracle(seed_run: SeedContext, rows: list[CandidateRow], path: Path) -> list[dict]:
    """Fine-tune every searched group as the finals are; test each once. Resumable."""
    done = read_csv(path)
    have = {r["layer_indices"] for r in done}
    searched = [r for r in rows if r.status == "ok"]
    for position, row in enumerate(searched):
        if row.layer_indices in have:
            continue
        outcome = seed_run.bench.fit_final(parse_indices(row.layer_indices), None, None)
        result, test_acc, test_pred = outcome.result, outcome.test_acc, outcome.test_pred
        done.append({"method": row.strategy, "index": row.index, "layers": row.layers,
                     "layer_indices": row.layer_indices,
                     "trained_params": result.trainable_params,
                     "val_acc": f"{result.best_val_acc:.6f}", "test_acc": f"{test_acc:.6f}",
                     "epochs": result.epochs, "seconds": f"{result.seconds:.2f}",
                     "status": result.status, "test_pred": predictions_text(test_pred)})
        have.add(row.layer_indices)
        atomic_write_csv(path, done, ORACLE_FIELDS)
        log(f"  oracle {position + 1}/{len(searched)} {row.strategy} #{row.index}: "
            f"val {result.best_val_acc:.3f} test {test_acc:.3f} ({result.seconds:.0f} s)")
    return done


def larger_search_split(main: Path, variant: Path, search_fraction: float, seed: int) -> None:
    """A split whose search part takes images from train (per class, seeded) until it holds
    ``search_fraction`` of the data; val and test, and so the finals, stay as they are."""
    saved = json.loads(SeedFolder(main).splits.read_text())
    files = saved["files"]
    total = sum(len(v) for v in files.values())
    extra_share = (search_fraction * total - len(files["search"])) / max(1, len(files["train"]))
    rng = np.random.default_rng(1000 + seed)
    moved: list[str] = []
    for name in saved["classes"]:
        mine = [f for f in files["train"] if f.split("/")[0] == name]
        take = round(extra_share * len(mine))
        moved += [mine[i] for i in sorted(rng.permutation(len(mine))[:take])]
    moved_set = set(moved)
    new = {**files, "search": sorted(files["search"] + moved),
           "train": [f for f in files["train"] if f not in moved_set]}
    variant.mkdir(parents=True, exist_ok=True)
    if not SeedFolder(variant).splits.exists():
        atomic_write_json(SeedFolder(variant).splits, {
            **saved, "fractions": {**saved["fractions"], "search": search_fraction},
            "counts": {k: len(v) for k, v in new.items()}, "files": new})


def search_with_refits(seed_run: SeedContext) -> tuple[list[CandidateRow], list[CandidateRow]]:
    rows, complete = search(seed_run)
    assert complete, "the benchmark runs without a time budget"
    return rows, refit(seed_run, rows, rules=list(RULES))


def evaluate(rows: list[CandidateRow], refits: list[CandidateRow], oracle_rows: list[dict],
             val_labels: np.ndarray, test_labels: np.ndarray, num_layers: int) -> dict:
    """Everything the tables need for one seed and one search setting."""
    by_group = {r["layer_indices"]: r for r in oracle_rows if r["status"] == "ok"}
    cands = [r for r in rows if r.strategy == "block" and r.status == "ok"]
    paired = [(r.val_acc, float(by_group[r.layer_indices]["test_acc"]))
              for r in cands if r.layer_indices in by_group]
    oracle_tests = [t for _, t in paired]
    best_test = max(oracle_tests)
    search_seconds = sum(r.seconds for r in cands)
    refit_rows = {r.layer_indices: r for r in refits if r.strategy == "block"}
    view = SearchView(cands, num_layers=num_layers, val_labels=val_labels, refits=refit_rows)
    base = {m: next(r for r in oracle_rows if r["method"] == m) for m in BASELINES}

    def correct(row):
        return parse_predictions(row["test_pred"]) == test_labels

    out = {"spearman": spearman([v for v, _ in paired], [t for _, t in paired]),
           "final_val_spearman": spearman(
               [float(by_group[r.layer_indices]["val_acc"]) for r in cands],
               oracle_tests),
           "best_test": best_test, "candidates": len(cands), "search_seconds": search_seconds,
           "baseline_test": {m: float(base[m]["test_acc"]) for m in BASELINES}, "rules": {}}
    for name, rule in RULES.items():
        chosen = rule.pick(view)
        final = by_group[chosen.layer_indices]
        test = float(final["test_acc"])
        extra = sum(refit_rows[i].seconds for i in rule.refits(view) if i in refit_rows)
        versus = {m: compare("pick", m, correct(final), correct(base[m])) for m in BASELINES}
        # the recommendation: best final val among the baselines and the pick
        contenders = [final, base[BASELINE_I], base[BASELINE_II]]
        recommended = max(contenders, key=lambda r: (float(r["val_acc"]),
                                                     -int(r["trained_params"])))
        best_of_three = max(float(r["test_acc"]) for r in contenders)
        out["rules"][name] = {
            "pick": chosen.layers, "index": chosen.index,
            "search_val": chosen.val_acc, "test": test, "regret": best_test - test,
            "beats": {m: versus[m].difference.value > 0 for m in BASELINES},
            "verdict": {m: versus[m].word for m in BASELINES},
            "cost": (search_seconds + extra) / search_seconds if search_seconds else math.nan,
            "recommended": recommended["method"],
            "recommendation_regret": best_of_three - float(recommended["test_acc"])}
    return out


def setting_configs(base: RunConfig, variants: list[str]) -> list[tuple[str, RunConfig, float]]:
    """(name, config, search fraction) of the main setting and every variant."""
    out = [(f"epochs={base.epochs}, search=0.1", base, 0.0)]
    for variant in variants:
        key, value = variant.split("=")
        if key == "epochs":
            config = RunConfig(**{**base.to_dict(), "epochs": int(value)})
            out.append((f"epochs={value}, search=0.1", config, 0.0))
        elif key == "search":
            out.append((f"epochs={base.epochs}, search={value}", base, float(value)))
        else:
            raise SystemExit(f"unknown variant {variant!r}: use epochs=N or search=F")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--data", default="tf_flowers")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--final-epochs", type=int, default=3)
    parser.add_argument("--variants", default="epochs=2,epochs=8,search=0.2",
                        help="search settings scored against the same oracle ('' for none)")
    parser.add_argument("--max-images-per-class", type=int, help="a smaller, quicker sample")
    parser.add_argument("--report-only", action="store_true",
                        help="print the tables from what is finished; train nothing")
    parser.add_argument("--out", default="runs/selection")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    base = RunConfig(model=args.model, data=args.data, strategies=["block"],
                     image_size=args.image_size, epochs=args.epochs,
                     final_epochs=args.final_epochs, seeds=seeds,
                     max_images_per_class=args.max_images_per_class)
    settings = setting_configs(base, [v for v in args.variants.split(",") if v])
    started = time.perf_counter()
    images, data_cfg = load_images(base)

    def seed_run(seed: int, name: str, config: RunConfig, search_fraction: float) -> SeedContext:
        main_folder = out / f"seed_{seed}"
        folder = main_folder if name == settings[0][0] else \
            main_folder / name.replace(", ", "_").replace("=", "")
        if search_fraction:
            larger_search_split(main_folder, folder, search_fraction, seed)
        config = RunConfig(**{**config.to_dict(), "seeds": [seed]})
        return open_seed(config, seed, folder, images, data_cfg, events())

    results: dict[tuple[int, str], dict] = {}
    # main setting and oracle for every seed first, then the variants: the core table first
    for phase in ("main", "variants"):
        for seed in seeds:
            main_folder = out / f"seed_{seed}"
            for name, config, fraction in (settings[:1] if phase == "main" else settings[1:]):
                if args.report_only and not (main_folder / "oracle.csv").exists():
                    continue
                log(f"seed {seed}, {name}")
                run_ = seed_run(seed, name, config, fraction)
                if args.report_only:
                    rows = SeedFolder(run_.folder).read_candidates()
                    refits = SeedFolder(run_.folder).read_refits()
                    if not rows:
                        continue
                else:
                    rows, refits = search_with_refits(run_)
                if phase == "main" and not args.report_only:
                    oracle(run_, rows, main_folder / "oracle.csv")
                run_.close()
                oracle_rows = read_csv(main_folder / "oracle.csv")
                labels = split_labels(SeedFolder(main_folder).splits)
                if len(oracle_rows) < len([r for r in rows if r.status == "ok"]):
                    continue  # the oracle of this seed is unfinished
                results[(seed, name)] = evaluate(rows, refits, oracle_rows, labels["val"],
                                                 labels["test"], len(run_.walk.layers))
                del run_
    text = tables(results, seeds, [s[0] for s in settings], time.perf_counter() - started, args)
    atomic_write_text(out / "selection.md", text)
    atomic_write_json(out / "selection.json", {f"{s}|{n}": r for (s, n), r in results.items()})
    print(text)


def fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def tables(results: dict, seeds: list[int], settings: list[str], seconds: float, args) -> str:
    lines = [f"# Selection rules against the oracle ({args.model}, {args.data}, "
             f"{args.image_size} px, {args.final_epochs} final epochs)", "",
             f"Wall time of this invocation: {seconds / 60:.1f} min.", ""]
    main = settings[0]
    done = [s for s in seeds if (s, main) in results]
    if not done:
        return "\n".join(lines + ["No seed has its oracle finished yet."]) + "\n"
    lines += [f"## Per seed ({main})", "",
              "| seed | candidates | Spearman (search val ~ oracle test) | Spearman (final val ~ "
              "test) | best oracle test | Baseline I test | Baseline II test |",
              "|---|---|---|---|---|---|---|"]
    for s in done:
        r = results[(s, main)]
        lines.append(f"| {s} | {r['candidates']} | {fmt(r['spearman'], 2)} | "
                     f"{fmt(r['final_val_spearman'], 2)} | {fmt(r['best_test'])} | "
                     f"{fmt(r['baseline_test'][BASELINE_I])} | "
                     f"{fmt(r['baseline_test'][BASELINE_II])} |")
    lines += ["", "| seed | rule | pick | search val | test | regret | vs Baseline I | "
              "vs Baseline II | cost | recommended | rec. regret |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in done:
        for name, r in results[(s, main)]["rules"].items():
            lines.append(f"| {s} | {name} | #{r['index']} {r['pick']} | {fmt(r['search_val'])} | "
                         f"{fmt(r['test'])} | {fmt(r['regret'])} | {r['verdict'][BASELINE_I]} | "
                         f"{r['verdict'][BASELINE_II]} | {r['cost']:.2f}× | "
                         f"{r['recommended']} | {fmt(r['recommendation_regret'])} |")
    lines += ["", f"## Mean over {len(done)} seed(s) ({main})", "",
              "| rule | mean regret [95% CI] | mean test | beats Baseline I (test) | beats "
              "Baseline II (test) | cost | mean recommendation regret |",
              "|---|---|---|---|---|---|---|"]
    for name in RULES:
        per = [results[(s, main)]["rules"][name] for s in done]
        regret = mean_interval([p["regret"] for p in per])
        ci = "" if math.isnan(regret.low) else f" [{regret.low:.3f}, {regret.high:.3f}]"
        lines.append(
            f"| {name} | {regret.value:.3f}{ci} | {statistics.mean(p['test'] for p in per):.3f} "
            f"| {sum(p['beats'][BASELINE_I] for p in per)}/{len(per)} | "
            f"{sum(p['beats'][BASELINE_II] for p in per)}/{len(per)} | "
            f"{statistics.mean(p['cost'] for p in per):.2f}× | "
            f"{statistics.mean(p['recommendation_regret'] for p in per):.3f} |")
    lines += ["", "## Search settings against the same oracle", "",
              "| setting | seeds | mean Spearman | max-val mean regret | best rule (mean regret) "
              "| search seconds per seed |", "|---|---|---|---|---|---|"]
    for name in settings:
        have = [s for s in seeds if (s, name) in results]
        if not have:
            continue
        per = [results[(s, name)] for s in have]
        regrets = {rule: statistics.mean(p["rules"][rule]["regret"] for p in per)
                   for rule in RULES}
        best_rule = min(regrets, key=regrets.get)
        lines.append(f"| {name} | {len(have)} | "
                     f"{fmt(statistics.mean(p['spearman'] for p in per), 2)} | "
                     f"{regrets['max-val']:.3f} | {best_rule} ({regrets[best_rule]:.3f}) | "
                     f"{statistics.mean(p['search_seconds'] for p in per):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(2)
    sys.exit(main())
