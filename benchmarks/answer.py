"""The pre-registered protocol's runs (``benchmarks/PROTOCOL.md``): which scoring pool, strategy
and rule give an answer worth its compute, on fresh seeds of three datasets.

    BLOCKTUNE_DATA_DIR=../shared/data python benchmarks/answer.py \
        [--datasets tf_flowers,blood_cells] [--seeds 10,11,12,13,14] [--out runs/answer] \
        [--report-only]

Per (dataset, seed), seed-major so that every dataset gains seeds at the same pace:

1. the search, with blocktune's own protocol code (:class:`blocktune.search.SeedRun`): every
   ``block`` and ``top`` candidate and both baselines trained on the search split, each scored
   on val and on val+train (``--score-on val+train`` records both: ``val_acc`` and ``score``),
   plus the swapped-fold re-trainings any registered rule asks for;
2. the **oracle**: every searched candidate and both baselines fine-tuned as the finals are
   (search+train, val for the schedule, test once) → ``oracle.csv``. The product's final of a
   pick *is* the oracle's fine-tune of that group (same seed, same data, same code), so the
   product's answer on these datasets is read from it, not trained twice;
3. the **recipes** (``--methods``): LP-FT, LLRD and LP-BW (on today's default pick: ``block``,
   ``last-quarter``, val) fine-tuned as finals → ``recipes.csv``.

Then the tables the protocol names: Spearman(score, oracle test) per pool; per strategy × rule
× pool the pick's regret and top-1 hit, its verdict against both baselines and its cost as a
ratio to today's default (``block``, ``last-quarter``, ``val``, every candidate trained).
Everything is appended to files as it finishes: an interrupted run resumes where it stopped.
Test accuracy is read here only because this is a benchmark: the product never uses it to
choose.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from selection import events, log, oracle  # noqa: E402

from blocktune.config import RunConfig  # noqa: E402
from blocktune.data import split_labels  # noqa: E402
from blocktune.groups import in_last_quarter  # noqa: E402
from blocktune.io import (  # noqa: E402
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    parse_predictions,
    predictions_text,
    read_csv,
)
from blocktune.records import CandidateRow  # noqa: E402
from blocktune.runfolder import SeedFolder  # noqa: E402
from blocktune.search import BASELINES, SeedRun, load_images  # noqa: E402
from blocktune.select import RULES, SearchView  # noqa: E402
from blocktune.stats import mcnemar_exact, mean_interval, spearman  # noqa: E402

STRATEGIES = ("block", "top")
POOLS = ("val", "val+train")
DEFAULT = ("block", "last-quarter", "val")  # today's default, the cost reference
ANSWER_METHODS = ("baseline-I", "baseline-II", "block", "lp-ft", "llrd", "lp-bw")
SETTINGS = dict(model="tf_efficientnet_lite0", image_size=96, epochs=4, final_epochs=3,
                cache_max_gb=10.0)  # no resume key: the pooled cache's 35 cuts stay in memory


def data_spec(name: str) -> str:
    """``tf_flowers`` and ``caltech101`` are named datasets; ``blood_cells`` a folder."""
    if name in ("tf_flowers", "caltech101"):
        return name
    return str(Path(os.environ.get("BLOCKTUNE_DATA_DIR", "../shared/data")) / name)


def config_for(dataset: str, seed: int, **overrides) -> RunConfig:
    return RunConfig(data=data_spec(dataset), strategies=list(STRATEGIES), seeds=[seed],
                     select="max-val", search_all=True, score_on="val+train",
                     **{**SETTINGS, **overrides})


def as_pool(rows: list[CandidateRow], pool: str) -> list[CandidateRow]:
    """The rows as a run with ``--score-on pool`` ranks them (val: the pooled score unset)."""
    if pool == "val+train":
        return rows
    return [dataclasses.replace(r, score=math.nan) for r in rows]


def evaluate(rows: list[CandidateRow], refits: list[CandidateRow], oracle_rows: list[dict],
             val_labels: np.ndarray, test_labels: np.ndarray, num_layers: int) -> dict:
    """Per strategy × pool: Spearman, and per rule the pick, its regret, hit, verdicts, cost."""
    by_group = {r["layer_indices"]: r for r in oracle_rows if r["status"] == "ok"}
    base = {m: next(r for r in oracle_rows if r["method"] == m) for m in BASELINES}

    def correct(row: dict) -> np.ndarray:
        return parse_predictions(row["test_pred"]) == test_labels

    out: dict = {"baseline_test": {m: float(base[m]["test_acc"]) for m in BASELINES}}
    for strategy in STRATEGIES:
        cands = [r for r in rows if r.strategy == strategy and r.status == "ok"
                 and r.layer_indices in by_group]
        if not cands:
            continue
        tests = {r.layer_indices: float(by_group[r.layer_indices]["test_acc"]) for r in cands}
        best = max(cands, key=lambda r: tests[r.layer_indices])
        train_seconds = sum(r.seconds - r.score_seconds for r in cands)
        score_seconds = sum(r.score_seconds for r in cands)
        last_quarter = [r for r in cands if in_last_quarter(
            tuple(int(i) for i in r.layer_indices.split(",")), num_layers)]
        lq_seconds = sum(r.seconds - r.score_seconds for r in last_quarter)
        refit_rows = {r.layer_indices: r for r in refits if r.strategy == strategy}
        for pool in POOLS:
            ranked = as_pool(cands, pool)
            entry = {"spearman": spearman([r.ranking_score for r in ranked],
                                          [tests[r.layer_indices] for r in ranked]),
                     "candidates": len(cands), "best_test": tests[best.layer_indices],
                     "rules": {}}
            view = SearchView(ranked, num_layers=num_layers, val_labels=val_labels,
                              refits=refit_rows)
            for name, rule in RULES.items():
                chosen = rule.pick(view)
                final = by_group[chosen.layer_indices]
                test = float(final["test_acc"])
                # what the product trains: the rule's own candidate set, the pool's scoring
                trained = lq_seconds if rule.picks_from else train_seconds
                scored = score_seconds * (len(last_quarter) / len(cands)
                                          if rule.picks_from else 1) if pool != "val" else 0.0
                refit = sum(refit_rows[i].seconds for i in rule.refits(view) if i in refit_rows)
                vs_best = mcnemar_exact(correct(final), correct(by_group[best.layer_indices]))
                entry["rules"][name] = {
                    "pick": chosen.layer_indices, "layers": chosen.layers, "test": test,
                    "regret": tests[best.layer_indices] - test,
                    "hit": chosen.layer_indices == best.layer_indices,
                    "hit_within_noise": vs_best >= 0.05,
                    "seconds": trained + scored + refit,
                    "beats": {m: test - float(base[m]["test_acc"]) for m in BASELINES}}
            out[f"{strategy}|{pool}"] = entry
    reference = out.get(f"{DEFAULT[0]}|{DEFAULT[2]}", {}).get("rules", {}).get(DEFAULT[1])
    for entry in out.values():
        if isinstance(entry, dict) and "rules" in entry:
            for r in entry["rules"].values():
                r["cost"] = r["seconds"] / reference["seconds"] if reference else math.nan
    return out


RECIPE_FIELDS = ["method", "layer_indices", "val_acc", "test_acc", "epochs", "seconds",
                 "status", "test_pred"]


def recipes(seed_run: SeedRun, rows: list[CandidateRow], path: Path) -> list[dict]:
    """The recipes' finals, each once (resumable)."""
    done = read_csv(path)
    have = {r["method"] for r in done}
    blocks = [r for r in rows if r.strategy == "block" and r.status == "ok"]
    view = SearchView(blocks, num_layers=len(seed_run.walk.layers))
    pick = RULES[DEFAULT[1]].pick(view)
    for method, group in (("lp-ft", None), ("llrd", None),
                          ("lp-bw", tuple(int(i) for i in pick.layer_indices.split(",")))):
        if method in have:
            continue
        outcome = seed_run.bench.fit_final(group, None, method)
        result = outcome.result
        done.append({"method": method, "layer_indices": "" if group is None
                     else pick.layer_indices, "val_acc": f"{result.best_val_acc:.6f}",
                     "test_acc": f"{outcome.test_acc:.6f}", "epochs": result.epochs,
                     "seconds": f"{result.seconds:.2f}", "status": result.status,
                     "test_pred": predictions_text(outcome.test_pred)})
        atomic_write_csv(path, done, RECIPE_FIELDS)
        log(f"  recipe {method}: val {result.best_val_acc:.3f} test {outcome.test_acc:.3f} "
            f"({result.seconds:.0f} s)")
    return done


def answer(oracle_rows: list[dict], recipe_rows: list[dict], pick_indices: str) -> dict:
    """Per method the final val and test; the recommendation (best final val, ties to fewer
    trained parameters as the product does) and the better baseline's test."""
    finals = {r["method"]: r for r in oracle_rows if r["method"] in BASELINES}
    finals["block"] = next(r for r in oracle_rows if r["layer_indices"] == pick_indices)
    finals.update({r["method"]: r for r in recipe_rows if r["status"] == "ok"})
    recommended = max(finals, key=lambda m: float(finals[m]["val_acc"]))
    return {"test": {m: float(r["test_acc"]) for m, r in finals.items()},
            "val": {m: float(r["val_acc"]) for m, r in finals.items()},
            "recommended": recommended}


def fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def interval_text(values: list[float], digits: int = 2, scale: float = 1.0) -> str:
    m = mean_interval([v * scale for v in values])
    ci = "" if math.isnan(m.low) else f" [{m.low:.{digits}f}, {m.high:.{digits}f}]"
    return f"{m.value:.{digits}f}{ci}"


def tables(results: dict, datasets: list[str], seeds: list[int], commit: str,
           overrides: dict) -> str:
    lines = ["# The protocol's runs (benchmarks/PROTOCOL.md)", "",
             *([f"**Not the protocol's settings** ({overrides}): a smoke run.", ""]
               if overrides else []),
             f"Code at commit `{commit}`; lite0, {SETTINGS['image_size']} px, "
             f"{SETTINGS['epochs']} + {SETTINGS['final_epochs']} epochs; seeds "
             f"{', '.join(map(str, seeds))}. Regret and differences in points of test accuracy; "
             "intervals are Student-t 95% over the (dataset, seed) pairs.", ""]
    pairs = [(d, s) for d in datasets for s in seeds if (d, s) in results]
    lines += [f"Finished (dataset, seed) pairs: {len(pairs)} of {len(datasets) * len(seeds)}: "
              + ", ".join(f"{d} {s}" for d, s in pairs), ""]
    if not pairs:
        return "\n".join(lines) + "\n"
    lines += ["## 1. Scoring pool: Spearman(score, oracle test)", "",
              "| strategy | pool | mean Spearman [95% CI] | per pair |", "|---|---|---|---|"]
    for strategy in STRATEGIES:
        for pool in POOLS:
            values = [results[p][f"{strategy}|{pool}"]["spearman"] for p in pairs
                      if f"{strategy}|{pool}" in results[p]]
            if values:
                lines.append(f"| {strategy} | {pool} | {interval_text(values)} | "
                             + ", ".join(f"{v:.2f}" for v in values) + " |")
    for strategy in STRATEGIES:
        diffs = [results[p][f"{strategy}|val+train"]["spearman"]
                 - results[p][f"{strategy}|val"]["spearman"] for p in pairs
                 if f"{strategy}|val" in results[p]]
        if diffs:
            lines.append(f"\n{strategy}: val+train − val, paired: {interval_text(diffs)}")
    lines += ["", "## 2–4. Strategy × rule × pool", "",
              "| strategy | rule | pool | mean regret [95% CI] | top-1 hit | hit within noise "
              "| vs better baseline (mean) | cost vs today's default |",
              "|---|---|---|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        for name in RULES:
            for pool in POOLS:
                key = f"{strategy}|{pool}"
                per = [results[p][key]["rules"][name] for p in pairs if key in results[p]]
                if not per:
                    continue
                better = [max(results[p]["baseline_test"].values()) for p in pairs
                          if key in results[p]]
                lines.append(
                    f"| {strategy} | {name} | {pool} | "
                    f"{interval_text([r['regret'] for r in per], 1, 100)} | "
                    f"{sum(r['hit'] for r in per)}/{len(per)} | "
                    f"{sum(r['hit_within_noise'] for r in per)}/{len(per)} | "
                    f"{interval_text([r['test'] - b for r, b in zip(per, better, strict=True)], 1, 100)} | "
                    f"{statistics.mean(r['cost'] for r in per):.2f}× |")
    with_answer = [p for p in pairs if "answer" in results[p]]
    if with_answer:
        lines += ["", "## 5–6. Methods and the recommendation (today's default pick)", "",
                  "| dataset | seeds | " + " | ".join(ANSWER_METHODS) + " | recommendation "
                  "| recommendation − better baseline |", "|---|---|" + "---|" * (
                      len(ANSWER_METHODS) + 2)]
        for dataset in datasets:
            mine = [results[p]["answer"] for p in with_answer if p[0] == dataset]
            if not mine:
                continue
            cells = [interval_text([a["test"][m] for a in mine if m in a["test"]], 3)
                     for m in ANSWER_METHODS]
            rec = [a["test"][a["recommended"]] for a in mine]
            gap = [a["test"][a["recommended"]] - max(a["test"][m] for m in BASELINES)
                   for a in mine]
            lines.append(f"| {dataset} | {len(mine)} | " + " | ".join(cells) + f" | "
                         f"{interval_text(rec, 3)} | {interval_text(gap, 1, 100)} points |")
        lines += ["", "Recommended per pair: " + ", ".join(
            f"{d} {s}: {results[(d, s)]['answer']['recommended']}" for d, s in with_answer)]
    lines += ["", "## Per pair", "", "| dataset | seed | Baseline I test | Baseline II test | "
              "best block (oracle) | best top (oracle) |", "|---|---|---|---|---|---|"]
    for d, s in pairs:
        r = results[(d, s)]
        lines.append(f"| {d} | {s} | {fmt(r['baseline_test']['baseline-I'])} | "
                     f"{fmt(r['baseline_test']['baseline-II'])} | "
                     f"{fmt(r.get('block|val', {}).get('best_test', math.nan))} | "
                     f"{fmt(r.get('top|val', {}).get('best_test', math.nan))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="tf_flowers,blood_cells")
    parser.add_argument("--seeds", default="10,11,12,13,14")
    parser.add_argument("--out", default="runs/answer")
    parser.add_argument("--report-only", action="store_true",
                        help="print the tables from what is finished; train nothing")
    parser.add_argument("--max-images-per-class", type=int,
                        help="a quick smoke run (not the protocol's: its tables say so)")
    args = parser.parse_args()
    overrides = {"max_images_per_class": args.max_images_per_class} \
        if args.max_images_per_class else {}
    datasets = args.datasets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    loaded: dict[str, tuple] = {}
    results: dict[tuple[str, int], dict] = {}
    for seed in seeds:
        for dataset in datasets:
            folder = out / dataset / f"seed_{seed}"
            config = config_for(dataset, seed, **overrides)
            if args.report_only and not (folder / "oracle.csv").exists():
                continue
            if dataset not in loaded:
                loaded.clear()  # one dataset's images in memory at a time
                loaded[dataset] = load_images(config)
            images, data_cfg = loaded[dataset]
            log(f"{dataset}, seed {seed}")
            seed_run = SeedRun(config, seed, folder, images, data_cfg, events())
            if args.report_only:
                rows = SeedFolder(folder).read_candidates()
                refits = SeedFolder(folder).read_refits()
            else:
                started = time.perf_counter()
                rows, complete = seed_run.search()
                assert complete, "the benchmark runs without a time budget"
                # the groups each rule asks re-trained, as ranked by either pool
                seed_run.refit(as_pool(rows, "val"), rules=list(RULES))
                refits = seed_run.refit(rows, rules=list(RULES))
                oracle(seed_run, rows, folder / "oracle.csv")
                recipes(seed_run, rows, folder / "recipes.csv")
                log(f"{dataset}, seed {seed}: {time.perf_counter() - started:.0f} s")
            seed_run.close()
            oracle_rows = read_csv(folder / "oracle.csv")
            if len(oracle_rows) < len([r for r in rows if r.status == "ok"]):
                continue
            labels = split_labels(SeedFolder(folder).splits)
            results[(dataset, seed)] = evaluate(rows, refits, oracle_rows, labels["val"],
                                                labels["test"], len(seed_run.walk.layers))
            recipe_rows = read_csv(folder / "recipes.csv")
            if len(recipe_rows) == 3:
                pick = results[(dataset, seed)]["block|val"]["rules"][DEFAULT[1]]["pick"]
                results[(dataset, seed)]["answer"] = answer(oracle_rows, recipe_rows, pick)
            text = tables(results, datasets, seeds, commit, overrides)
            atomic_write_text(out / "answer.md", text)
            atomic_write_json(out / "answer.json",
                              {f"{d}|{s}": r for (d, s), r in results.items()})
            del seed_run
    print(tables(results, datasets, seeds, commit, overrides))


if __name__ == "__main__":
    torch.set_num_threads(2)
    sys.exit(main())
