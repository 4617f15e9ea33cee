"""The pre-registered protocol's runs (``benchmarks/PROTOCOL.md``): which scoring pool, strategy
and rule give an answer worth its compute, on fresh seeds of three datasets.

    BLOCKTUNE_DATA_DIR=../shared/data python benchmarks/answer.py \
        [--datasets tf_flowers,blood_cells] [--seeds 10,11,12,13,14] [--out runs/answer] \
        [--report-only]

Per (dataset, seed), seed-major so that every dataset gains seeds at the same pace:

1. the search, with blocktune's own protocol code (:mod:`blocktune.runner.seedrun`): every
   ``block`` and ``top`` candidate and both baselines trained on the search split, each scored
   on val and on val+train (``--score-on val+train`` records both: ``val_acc`` and ``score``),
   plus the swapped-fold re-trainings any registered rule asks for;
2. the **oracle**: every searched candidate and both baselines fine-tuned as the finals are
   (search+train, val for the schedule, test once) → ``oracle.csv``. The product's final of a
   pick *is* the oracle's fine-tune of that group (same seed, same data, same code), so the
   product's answer on these datasets is read from it, not trained twice;
3. the **recipes** (``--methods``): LP-FT, LLRD and LP-BW (on today's default pick: ``block``,
   ``last-quarter``, val) fine-tuned as finals → ``recipes.csv``.

``--product-datasets caltech101 --decided POOL,STRATEGY,RULE``: once criteria 1–4 are decided
on the oracle pairs, the datasets without an oracle are run as the product is (``blocktune run``
with those defaults and the recipes as methods), for criteria 5 and 6 and the answer.

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

# a sibling script: `python benchmarks/answer.py` puts benchmarks/ on the path
from selection import events, log, oracle

from blocktune.core.config import RunConfig
from blocktune.core.io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    parse_predictions,
    predictions_text,
    read_csv,
)
from blocktune.core.methods import BASELINES, parse_indices
from blocktune.core.records import CandidateRow, rank_key
from blocktune.core.stats import compare_over_seeds, holm, mcnemar_exact, mean_interval, spearman
from blocktune.data import split_labels
from blocktune.protocol.select import RULES, SearchView
from blocktune.results.runfolder import RunFolder, SeedFolder
from blocktune.runner.context import SeedContext, open_seed
from blocktune.runner.search import run
from blocktune.runner.seedrun import refit, search
from blocktune.training.loading import load_images

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


def split_half_reliability(correct: np.ndarray, splits: int = 200, seed: int = 0) -> float:
    """How reliably a set of images ranks the candidates: ``correct`` is candidates × images
    (1 where the candidate got the image right). The Spearman correlation between the
    candidates' accuracies on two random halves of the images, stepped up to the whole set
    (Spearman-Brown), averaged over ``splits`` halvings. The rank correlation of two such
    noisy measurements cannot exceed about the square root of the product of their
    reliabilities: the ceiling for Spearman(score, oracle test) at these sizes."""
    rng = np.random.default_rng(seed)
    n = correct.shape[1]
    values = []
    for _ in range(splits):
        order = rng.permutation(n)
        a, b = correct[:, order[: n // 2]].mean(1), correct[:, order[n // 2:]].mean(1)
        r = spearman(a.tolist(), b.tolist())
        if not math.isnan(r):
            values.append(2 * r / (1 + r) if r > -1 else -1.0)
    return float(np.mean(values)) if values else math.nan


def evaluate(rows: list[CandidateRow], refits: list[CandidateRow], oracle_rows: list[dict],
             val_labels: np.ndarray, test_labels: np.ndarray, num_layers: int) -> dict:
    """Per strategy × pool: Spearman, and per rule the pick, its regret, hit, verdicts, cost."""
    by_group = {r["layer_indices"]: r for r in oracle_rows if r["status"] == "ok"}
    base = {m: next(r for r in oracle_rows if r["method"] == m) for m in BASELINES}

    def correct(row: dict) -> np.ndarray:
        return parse_predictions(row["test_pred"]) == test_labels

    out: dict = {"baseline_test": {m: float(base[m]["test_acc"]) for m in BASELINES},
                 "baseline_val": {m: float(base[m]["val_acc"]) for m in BASELINES}}
    # regret is measured against the oracle's best block (PROTOCOL.md, docs), for every
    # strategy: a `top` pick is not excused by the best of the `top` candidates
    blocks = [r for r in rows if r.strategy == "block" and r.status == "ok"
              and r.layer_indices in by_group]
    oracle_best = max(blocks, key=lambda r: float(by_group[r.layer_indices]["test_acc"]),
                      default=None)
    for strategy in STRATEGIES:
        cands = [r for r in rows if r.strategy == strategy and r.status == "ok"
                 and r.layer_indices in by_group]
        if not cands:
            continue
        tests = {r.layer_indices: float(by_group[r.layer_indices]["test_acc"]) for r in cands}
        best = max(cands, key=lambda r: tests[r.layer_indices])  # the strategy's own best
        reference = by_group[(oracle_best or best).layer_indices]
        # how well the val split and the test split can rank these candidates at all
        oracle_rel = split_half_reliability(np.stack([correct(by_group[r.layer_indices])
                                                      for r in cands]).astype(float))
        val_rel = split_half_reliability(np.stack([
            np.asarray(r.val_pred) == val_labels for r in cands]).astype(float)) \
            if all(r.val_pred for r in cands) else math.nan
        train_seconds = sum(r.seconds - r.score_seconds for r in cands)
        refit_rows = {r.layer_indices: r for r in refits if r.strategy == strategy}
        for pool in POOLS:
            ranked = as_pool(cands, pool)
            entry = {"spearman": spearman([r.ranking_score for r in ranked],
                                          [tests[r.layer_indices] for r in ranked]),
                     "candidates": len(cands), "best_test": tests[best.layer_indices],
                     "oracle_best_test": float(reference["test_acc"]),
                     "oracle_reliability": oracle_rel, "val_reliability": val_rel,
                     "train_seconds": train_seconds, "rules": {}}
            view = SearchView(ranked, num_layers=num_layers, val_labels=val_labels,
                              refits=refit_rows)
            for name, rule in RULES.items():
                chosen = rule.pick(view)
                # what the product trains: the rule's own candidate set (criterion 2 checks
                # that the rule, shown only those, picks what it picks from all of them)
                own = ranked
                if rule.picks_from:
                    start = rule.picks_from(num_layers)
                    own = [r for r in ranked if min(parse_indices(r.layer_indices)) >= start]
                own_pick = rule.pick(SearchView(own, num_layers=num_layers,
                                                val_labels=val_labels, refits=refit_rows)) \
                    if own else None
                trained = sum(r.seconds - r.score_seconds for r in own)
                scored = sum(r.score_seconds for r in own) if pool != "val" else 0.0
                refit = sum(refit_rows[i].seconds for i in rule.refits(view) if i in refit_rows)
                final = by_group[chosen.layer_indices]
                test = float(final["test_acc"])
                vs_best = mcnemar_exact(correct(final), correct(by_group[best.layer_indices]))
                entry["rules"][name] = {
                    "pick": chosen.layer_indices, "layers": chosen.layers, "test": test,
                    "regret": float(reference["test_acc"]) - test,
                    "final_val": float(final["val_acc"]),
                    "hit": chosen.layer_indices == best.layer_indices,
                    "hit_within_noise": vs_best >= 0.05,
                    "trained_candidates": len(own),
                    "same_pick_from_own_set": own_pick is not None
                    and own_pick.layer_indices == chosen.layer_indices,
                    "seconds": trained + scored + refit,
                    "beats": {m: test - float(base[m]["test_acc"]) for m in BASELINES}}
            out[f"{strategy}|{pool}"] = entry
    # the cost reference: today's default before this protocol — block, last-quarter, val,
    # every block candidate trained (last-quarter asks for no refit)
    reference = out.get("block|val", {}).get("train_seconds")
    for entry in out.values():
        if isinstance(entry, dict) and "rules" in entry:
            for r in entry["rules"].values():
                r["cost"] = r["seconds"] / reference if reference else math.nan
    return out


RECIPE_FIELDS = ["method", "layer_indices", "val_acc", "test_acc", "epochs", "seconds",
                 "status", "test_pred"]


def recipes(seed_run: SeedContext, rows: list[CandidateRow], path: Path) -> list[dict]:
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
        result, test_acc, test_pred = outcome.result, outcome.test_acc, outcome.test_pred
        done.append({"method": method, "layer_indices": "" if group is None
                     else pick.layer_indices, "val_acc": f"{result.best_val_acc:.6f}",
                     "test_acc": f"{test_acc:.6f}", "epochs": result.epochs,
                     "seconds": f"{result.seconds:.2f}", "status": result.status,
                     "test_pred": predictions_text(test_pred)})
        atomic_write_csv(path, done, RECIPE_FIELDS)
        log(f"  recipe {method}: val {result.best_val_acc:.3f} test {test_acc:.3f} "
            f"({result.seconds:.0f} s)")
    return done


# Fewer trained parameters rank first among equal val accuracies, as the product ranks its
# finals (blocktune.core.records.rank_key): the head < a group of layers < every layer. Within a
# tier the earlier final in the product's order wins (dicts here are built in that order).
PARAMETER_TIER = {"baseline-I": 0, "pick": 1, "block": 1, "top": 1, "lp-bw": 1,
                  "baseline-II": 2, "lp-ft": 2, "llrd": 2}


@dataclasses.dataclass(frozen=True)
class _Final:
    method: str
    val_acc: float
    trained_params: int


def recommended(finals: dict[str, dict]) -> str:
    """The method the product would hand over: best final val, ties as ``rank_key`` ranks."""
    rows = [_Final(m, float(v["val"] if "val" in v else v["val_acc"]), PARAMETER_TIER[m])
            for m, v in finals.items()]
    return min(rows, key=rank_key).method


def answer(oracle_rows: list[dict], recipe_rows: list[dict], pick_indices: str) -> dict:
    """Per method the final val and test; the recommendation (best final val, ties to fewer
    trained parameters as the product does) and the better baseline's test."""
    finals = {r["method"]: r for r in oracle_rows if r["method"] in BASELINES}
    finals["block"] = next(r for r in oracle_rows if r["layer_indices"] == pick_indices)
    finals.update({r["method"]: r for r in recipe_rows if r["status"] == "ok"})
    return {"test": {m: float(r["test_acc"]) for m, r in finals.items()},
            "val": {m: float(r["val_acc"]) for m, r in finals.items()},
            "recommended": recommended(finals)}


ALPHA = 0.05
MAX_COST = 1.5  # criteria 1 and 3-4: at most 1.5x the reference's cost
TIE_POINTS = 0.5  # criterion 3-4: mean regrets within this many points tie


def paired(name: str, differences: list[float]) -> dict:
    """Mean of paired differences with its t-interval and t-test p (Holm added later)."""
    comparison = compare_over_seeds(name, "reference", differences, 0, bound=None)
    return {"name": name, "mean": comparison.difference.value, "low": comparison.difference.low,
            "high": comparison.difference.high, "p": comparison.p_value, "n": len(differences)}


def with_holm(tests: list[dict]) -> list[dict]:
    for test, adjusted in zip(tests, holm([t["p"] for t in tests]), strict=True):
        test["p_holm"] = adjusted
    return tests


def method_results(result: dict, strategy: str, rule: str, pool: str) -> dict | None:
    """Per method its final (val, test) on one pair under the given defaults: both baselines,
    the rule's pick (from the oracle: the same fine-tune the product makes) and the recipes;
    None until the pair's recipes are done."""
    if "product" in result:  # a product run (no oracle) made with these decisions
        return result["product"] if result["decided"] == [pool, strategy, rule] else None
    key = f"{strategy}|{pool}"
    if key not in result or "recipes" not in result:
        return None
    pick = result[key]["rules"][rule]
    out = {m: {"val": result["baseline_val"][m], "test": result["baseline_test"][m]}
           for m in BASELINES}
    out["pick"] = {"val": pick["final_val"], "test": pick["test"]}
    out.update(result["recipes"])
    return out


def decide(results: dict, pairs: list, datasets: list[str], runs_planned: int
           ) -> tuple[list[str], dict]:
    """The protocol's criteria 1-6 applied as written (PROTOCOL.md), each fixing what the next
    uses: the markdown (every line says what it rests on) and the decisions (pool, strategy,
    rule, kept recipes, reuse regret, and per dataset the answer with its claim)."""
    decision: dict = {}
    lines = ["## Decisions by the pre-registered criteria", "",
             f"On {len(pairs)} oracle pair(s); the protocol asks for 10. Until then each line "
             "is provisional and says so.", ""]
    provisional = " (provisional)" if len(pairs) < 10 else ""
    if not pairs:
        return lines, decision
    # 1. pool, on today's default strategy and rule (block, last-quarter)
    diffs = [results[p]["block|val+train"]["spearman"] - results[p]["block|val"]["spearman"]
             for p in pairs]
    diffs = [d for d in diffs if not math.isnan(d)]
    spear = paired("val+train − val", diffs) if diffs else None
    cost = statistics.mean(results[p]["block|val+train"]["rules"]["last-quarter"]["seconds"]
                           / results[p]["block|val"]["rules"]["last-quarter"]["seconds"]
                           for p in pairs)
    pool = "val+train" if spear and spear["mean"] > 0 and spear["low"] > 0 \
        and cost <= MAX_COST else "val"
    decision["pool"] = pool
    lines.append(
        f"1. **Pool: `{pool}`**{provisional}. Spearman (block) val+train − val: "
        + (f"{spear['mean']:+.2f} [{spear['low']:+.2f}, {spear['high']:+.2f}] over "
           f"{spear['n']} pairs" if spear else "no pair") + f"; cost of val+train vs val "
        f"(block, last-quarter, its own candidates): {cost:.2f}× (≤ {MAX_COST}× needed).")
    # 2. candidate set
    restricted = [(p, name) for p in pairs for s in STRATEGIES for pl in POOLS
                  for name, rule in RULES.items() if rule.picks_from
                  and f"{s}|{pl}" in results[p]
                  and not results[p][f"{s}|{pl}"]["rules"][name]["same_pick_from_own_set"]]
    own = [results[p][f"block|{pool}"]["rules"]["last-quarter"] for p in pairs]
    # "and the cost is lower": training the rule's own candidates costs less than all of them
    dearer = [p for p, r in zip(pairs, own, strict=True) if not r["cost"] < 1]
    decision["candidate_set"] = not restricted and not dearer
    lines.append(
        "2. **Candidate set: each rule trains only what it can pick** — " + (
            "the pick equals the pick from every candidate on every pair, strategy, pool and "
            "rule" if not restricted else f"DIFFERENT PICKS on {restricted[:3]}: a bug to fix "
            "before anything else") + ("" if not dearer else f"; NOT CHEAPER on {dearer[:3]}: "
                                       "the restriction is not kept there")
        + f"; last-quarter trains "
        f"{statistics.mean(r['trained_candidates'] for r in own):.1f} of "
        f"{statistics.mean(results[p][f'block|{pool}']['candidates'] for p in pairs):.0f} block "
        f"candidates, cost {statistics.mean(r['cost'] for r in own):.2f}× of training all.")
    # 3-4. strategy x rule at the chosen pool
    combos = {(s, name): [results[p][f"{s}|{pool}"]["rules"][name] for p in pairs]
              for s in STRATEGIES for name in RULES if all(f"{s}|{pool}" in results[p]
                                                           for p in pairs)}
    summary = {c: (statistics.mean(r["regret"] for r in per) * 100,
                   statistics.mean(r["cost"] for r in per)) for c, per in combos.items()}
    eligible = [c for c, (_, c_cost) in summary.items() if c_cost <= MAX_COST]
    default = ("block", "last-quarter")
    tests = with_holm([
        {**paired(f"{c[0]} {c[1]}", [(a["regret"] - b["regret"]) * 100 for a, b in
                                     zip(combos[c], combos[default], strict=True)]), "combo": c}
        for c in eligible if c != default])
    better = [t["combo"] for t in tests if t["high"] < 0 and t["p_holm"] < ALPHA]

    def order(c):  # lowest regret; within TIE_POINTS the cheaper, then top
        return (summary[c][0], summary[c][1], c[0] != "top")

    chosen = default
    if better:
        best_regret = min(summary[c][0] for c in better)
        tied = [c for c in better if summary[c][0] - best_regret <= TIE_POINTS]
        chosen = min(tied, key=lambda c: (summary[c][1], c[0] != "top"))
    lowest = min(eligible, key=order) if eligible else None
    decision["strategy"], decision["rule"] = chosen
    lines.append(
        f"3–4. **Strategy `{chosen[0]}`, rule `{chosen[1]}`**{provisional}. Lowest mean regret "
        f"among those costing ≤ {MAX_COST}×: "
        + (f"{lowest[0]} {lowest[1]} ({summary[lowest][0]:.2f} points, "
           f"{summary[lowest][1]:.2f}×)" if lowest else "none") + f"; today's default "
        f"{summary[default][0]:.2f} points. Better than the default by the paired test (Holm "
        f"over {len(tests)}): " + (", ".join(f"{c[0]} {c[1]}" for c in better) or "none")
        + ".")
    lines += ["", "| strategy | rule | mean regret (points) | cost | − default's regret "
              "[95% CI] | Holm p |", "|---|---|---|---|---|---|"]
    for t in sorted(tests, key=lambda t: summary[t["combo"]][0]):
        c = t["combo"]
        lines.append(f"| {c[0]} | {c[1]} | {summary[c][0]:.2f} | {summary[c][1]:.2f}× | "
                     f"{t['mean']:+.2f} [{t['low']:+.2f}, {t['high']:+.2f}] | "
                     f"{t['p_holm']:.3g} |")
    lines.append("")
    # 5. methods, with 1-4 fixed
    per_pair = {p: m for p in results if (m := method_results(results[p], *chosen, pool))}
    runs = len(per_pair)
    picked = {p: recommended(m) for p, m in per_pair.items()}
    family = []
    for dataset in datasets:
        mine = {p: m for p, m in per_pair.items() if p[0] == dataset}
        if len(mine) < 2:
            continue
        better_base = max(BASELINES, key=lambda b: statistics.mean(
            m[b]["test"] for m in mine.values()))
        for recipe in ("lp-ft", "llrd", "lp-bw"):
            family.append({**paired(f"{recipe} − {better_base} ({dataset})", [
                (m[recipe]["test"] - m[better_base]["test"]) * 100 for m in mine.values()
                if recipe in m]), "recipe": recipe, "dataset": dataset})
    with_holm(family)
    kept = []
    for recipe in ("lp-ft", "llrd", "lp-bw"):
        times = sum(r == recipe for r in picked.values())
        wins = [t for t in family if t["recipe"] == recipe and t["mean"] > 0
                and t["p_holm"] < ALPHA]
        verdict = "kept in the default" if times >= 3 or wins else "an option only"
        if times >= 3 or wins:
            kept.append(recipe)
        lines.append(f"5. **{recipe}: {verdict}**{'' if runs >= runs_planned else ' (provisional)'}"
                     f" — recommended on {times} of {runs} runs (≥ 3 of {runs_planned} needed)"
                     + "".join(f"; {t['dataset']}: {t['mean']:+.2f} points [{t['low']:+.2f}, "
                               f"{t['high']:+.2f}] vs the better baseline, Holm p "
                               f"{t['p_holm']:.3g}" for t in family if t["recipe"] == recipe)
                     + ".")
    decision["kept"] = kept
    # 6. reuse bias of the recommendation
    if per_pair:
        methods = ["baseline-I", "baseline-II", "pick", *kept]
        regrets, bias = [], {}
        for m in per_pair.values():
            keep = {k: v for k, v in m.items() if k in methods}
            rec = recommended(keep)
            regrets.append((max(v["test"] for v in keep.values()) - keep[rec]["test"]) * 100)
            for k, v in keep.items():
                bias.setdefault(k, []).append((v["val"] - v["test"]) * 100)
        regret = statistics.mean(regrets)
        decision["reuse_regret"] = regret
        lines.append(
            f"6. **Reuse bias**{'' if runs >= runs_planned else ' (provisional)'}: the "
            "recommendation's mean regret (best test among the methods "
            f"− the recommended one's) is {regret:.2f} points over {len(regrets)} runs: "
            + ("over 1 point, the report must say so in its verdict" if regret > 1 else
               "at most 1 point, the report states it") + "; final val − test per method: "
            + ", ".join(f"{k} {statistics.mean(v):+.2f}" for k, v in bias.items()) + " points.")
        # the answer per dataset, Holm over the datasets
        answers = []
        for dataset in datasets:
            mine = [m for p, m in per_pair.items() if p[0] == dataset]
            if len(mine) < 2:
                continue
            better_base = max(BASELINES, key=lambda b: statistics.mean(m[b]["test"] for m in mine))
            gaps, recs = [], []
            for m in mine:
                keep = {k: v for k, v in m.items() if k in methods}
                rec = recommended(keep)
                recs.append(keep[rec]["test"])
                gaps.append((keep[rec]["test"] - m[better_base]["test"]) * 100)
            tests = {k: interval_text([m[k]["test"] for m in mine if k in m], 3)
                     for k in ("baseline-I", "baseline-II", "pick", "lp-ft", "llrd", "lp-bw")}
            answers.append({**paired(dataset, gaps), "dataset": dataset, "base": better_base,
                            "tests": tests, "recommendation": interval_text(recs, 3)})
        with_holm(answers)
        recipes_text = ", ".join(kept) or "none"
        lines += ["", f"The answer: test accuracy, mean over seeds [95% t-interval]; the pick is "
                  f"`{chosen[0]}` by `{chosen[1]}` scored on `{pool}`; the recommendation is "
                  f"the best final val among both baselines, the pick and the recipes kept by "
                  f"5 ({recipes_text}); claim words as the protocol fixes them.", "",
                  "| dataset | seeds | Baseline I | Baseline II | pick | LP-FT | LLRD | LP-BW "
                  "| recommendation | − better baseline (points) | Holm p | claim |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        decision["answers"] = {}
        for a in answers:
            claim = ("better" if a["low"] > 0 and a["p_holm"] < ALPHA else
                     "at least as good" if a["low"] >= -0.5 else
                     "worse" if a["high"] < 0 else "not shown")
            decision["answers"][a["dataset"]] = {**a, "claim": claim}
            lines.append(f"| {a['dataset']} | {a['n']} | " + " | ".join(a["tests"].values())
                         + f" | {a['recommendation']} | {a['mean']:+.2f} [{a['low']:+.2f}, "
                         f"{a['high']:+.2f}] vs {a['base']} | {a['p_holm']:.3g} | {claim} |")
    spaced = []  # each decision its own paragraph
    for line in lines:
        spaced += [line, ""] if line[:1].isdigit() else [line]
    return spaced + [""], decision


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
    oracle_pairs = [p for p in pairs if "block|val" in results[p]]
    lines += decide(results, oracle_pairs, datasets, runs_planned=3 * len(seeds))[0]
    pairs = oracle_pairs  # the tables below need the oracle
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
    lines += ["", "How rankable the candidates are at these sizes (split-half reliability of "
              "the candidates' ranking, Spearman-Brown to the whole split; a Spearman between "
              "two noisy rankings cannot exceed about √(product)):", "",
              "| strategy | val split | test split (the oracle) | ceiling for val | per pair "
              "(val / test) |", "|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        got = [results[p][f"{strategy}|val"] for p in pairs if f"{strategy}|val" in results[p]]
        if not got:
            continue
        val_rel = [g["val_reliability"] for g in got]
        test_rel = [g["oracle_reliability"] for g in got]
        ceiling = [math.sqrt(max(v, 0) * max(t, 0)) for v, t in zip(val_rel, test_rel,
                                                                     strict=True)]
        lines.append(f"| {strategy} | {interval_text(val_rel)} | {interval_text(test_rel)} | "
                     f"{interval_text(ceiling)} | " + ", ".join(
                         f"{v:.2f} / {t:.2f}" for v, t in zip(val_rel, test_rel, strict=True))
                     + " |")
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


def retimed(rows: list[CandidateRow], refits: list[CandidateRow], again: SeedFolder
            ) -> tuple[list[CandidateRow], list[CandidateRow]]:
    """The rows with the seconds of the same search run again (``--search-only``) on an idle
    machine; the rows must otherwise be identical (training is deterministic on one device)."""
    if not again.candidates.exists():
        return rows, refits
    out = []
    for mine, theirs in ((rows, again.read_candidates()), (refits, again.read_refits())):
        by_key = {r.key: r for r in theirs}
        fixed = []
        for r in mine:
            twin = by_key[r.key]
            same_score = twin.score == r.score or (math.isnan(twin.score) and math.isnan(r.score))
            assert (twin.val_acc, twin.val_pred) == (r.val_acc, r.val_pred) and same_score, \
                f"{r.key} differs when run again"
            fixed.append(dataclasses.replace(r, seconds=twin.seconds,
                                             score_seconds=twin.score_seconds))
        out.append(fixed)
    log(f"  seconds from {again.root}")
    return out[0], out[1]


def product_folder(out: Path, dataset: str, decided: list[str]) -> Path:
    """One run folder per dataset and decided defaults, gaining a seed per call: the shape
    ``blocktune report`` and ``benchmarks/paper_table.py`` read (and can reuse)."""
    return out / dataset / f"product_{'_'.join(decided)}"


def product(dataset: str, seeds: list[int], decided: list[str], out: Path, overrides: dict,
            train: bool = True) -> dict[int, dict]:
    """A dataset without an oracle (caltech101), run as the product is, with the defaults
    criteria 1-4 fixed: ``blocktune run`` with that pool, strategy and rule and the recipes as
    methods, for ``seeds`` (a finished seed resumes with nothing to train). Per seed, per
    method its final (val, test)."""
    pool, strategy, rule = decided
    config = RunConfig(data=data_spec(dataset), strategies=[strategy], seeds=seeds,
                       select=rule, score_on=pool, methods=["lp-ft", "llrd", "lp-bw"],
                       **{**SETTINGS, **overrides})
    folder = product_folder(out, dataset, decided)
    if train:
        log(f"{dataset}, seeds {seeds}: the product with {pool}, {strategy}, {rule}")
        run(config, folder, events())
    out_rows = {}
    for seed in seeds:
        finals = RunFolder(folder).seed(seed).read_finals() \
            if RunFolder(folder).seed(seed).finals.exists() else []
        if finals:
            out_rows[seed] = {"decided": decided, "product": {
                "pick" if r.method == strategy else r.method: {"val": r.val_acc,
                                                                "test": r.test_acc}
                for r in finals if r.status == "ok"}}
    return out_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="tf_flowers,blood_cells")
    parser.add_argument("--seeds", default="10,11,12,13,14")
    parser.add_argument("--out", default="runs/answer")
    parser.add_argument("--report-only", action="store_true",
                        help="print the tables from what is finished; train nothing")
    parser.add_argument("--max-images-per-class", type=int,
                        help="a quick smoke run (not the protocol's: its tables say so)")
    parser.add_argument("--product-datasets", default="",
                        help="datasets run as the product, without an oracle (caltech101), "
                        "once criteria 1-4 are decided: give them with --decided")
    parser.add_argument("--decided", help="pool,strategy,rule as criteria 1-4 decided them")
    parser.add_argument("--search-only", action="store_true",
                        help="search and refits only (to time a search again on an idle machine)")
    parser.add_argument("--seconds-from", type=Path,
                        help="an --out of --search-only runs: their candidates' and refits' "
                        "seconds replace the recorded ones where the search shared the cores "
                        "with other work (the rows themselves must be identical)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (two processes of one thread each use 2 cores "
                        "better than one of two)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    product_datasets = [d for d in args.product_datasets.split(",") if d]
    decided = args.decided.split(",") if args.decided else None
    if product_datasets and (decided is None or len(decided) != 3):
        parser.error("--product-datasets needs --decided pool,strategy,rule (criteria 1-4)")
    overrides = {"max_images_per_class": args.max_images_per_class} \
        if args.max_images_per_class else {}
    datasets = [d for d in args.datasets.split(",") if d]
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
            seed_run = open_seed(config, seed, folder, images, data_cfg, events())
            if args.report_only:
                rows = SeedFolder(folder).read_candidates()
                refits = SeedFolder(folder).read_refits()
            else:
                started = time.perf_counter()
                rows, complete = search(seed_run)
                assert complete, "the benchmark runs without a time budget"
                # the groups each rule asks re-trained, as ranked by either pool
                refit(seed_run, as_pool(rows, "val"), rules=list(RULES))
                refits = refit(seed_run, rows, rules=list(RULES))
                if args.search_only:
                    seed_run.close()
                    continue
                oracle(seed_run, rows, folder / "oracle.csv")
                recipes(seed_run, rows, folder / "recipes.csv")
                log(f"{dataset}, seed {seed}: {time.perf_counter() - started:.0f} s")
            seed_run.close()
            oracle_rows = read_csv(folder / "oracle.csv")
            if len(oracle_rows) < len([r for r in rows if r.status == "ok"]):
                continue
            if args.seconds_from is not None:
                rows, refits = retimed(rows, refits,
                                       SeedFolder(args.seconds_from / dataset / f"seed_{seed}"))
            labels = split_labels(SeedFolder(folder).splits)
            results[(dataset, seed)] = evaluate(rows, refits, oracle_rows, labels["val"],
                                                labels["test"], len(seed_run.walk.layers))
            recipe_rows = read_csv(folder / "recipes.csv")
            if len(recipe_rows) == 3:
                results[(dataset, seed)]["recipes"] = {
                    r["method"]: {"val": float(r["val_acc"]), "test": float(r["test_acc"])}
                    for r in recipe_rows if r["status"] == "ok"}
                pick = results[(dataset, seed)]["block|val"]["rules"][DEFAULT[1]]["pick"]
                results[(dataset, seed)]["answer"] = answer(oracle_rows, recipe_rows, pick)
            text = tables(results, datasets, seeds, commit, overrides)
            atomic_write_text(out / "answer.md", text)
            atomic_write_json(out / "answer.json",
                              {f"{d}|{s}": r for (d, s), r in results.items()})
            del seed_run
        for dataset in product_datasets:  # seed by seed, in one run folder per dataset
            done = seeds[:seeds.index(seed) + 1]
            for s, result in product(dataset, done, decided, out, overrides,
                                     train=not args.report_only).items():
                results[(dataset, s)] = result
            atomic_write_text(out / "answer.md", tables(results, datasets + product_datasets,
                                                        seeds, commit, overrides))
    print(tables(results, datasets + product_datasets, seeds, commit, overrides))


if __name__ == "__main__":
    sys.exit(main())
