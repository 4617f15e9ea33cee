"""The decision code of ``benchmarks/PROTOCOL-sizes.md``: pure functions of the exported tables.

Per run (model, dataset, seed, size): the five fixed recipes' finals (test read here only
because this is a benchmark), the val and test labels, the search rows' seconds. From them:
each fixed recipe's and each procedure's regret, each procedure's cost, the 15 paired
comparisons of a size under one Holm correction, the per-dataset check against Baseline II,
and the default per size. Picks are made by :func:`blocktune.protocol.recommend.recommend`, the
product's own code, ties included.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from blocktune.core.io import read_json
from blocktune.core.methods import BASELINE_I, BASELINE_II, label
from blocktune.core.records import CandidateRow, FinalRow, read_candidates, read_finals
from blocktune.core.stats import (
    Comparison,
    Interval,
    adjust,
    compare_over_seeds,
    mean_interval,
    with_minus,
)
from blocktune.protocol.recommend import PAIRED, recommend

FIXED = (BASELINE_I, BASELINE_II, "lp-ft", "block", "lp-bw")  # "block": the last-quarter BW
THREE = (BASELINE_I, BASELINE_II, "lp-bw")  # what the procedures choose among
PROCEDURES = ("val", "paired", "race")
PREFERENCE = ("paired", "race", "val")  # criterion 2's last tie-break
RACE_EPOCH = 2  # Baseline II is stopped after this epoch when behind LP-BW's final val
TIE_POINTS = 0.25
SIZES = {"1000": 36, "full": 6}  # planned runs per size
ALPHA = 0.05


@dataclass
class Run:
    model: str
    dataset: str
    seed: int
    full: bool
    classes: int
    sizes: dict[str, int]
    val_labels: list[int]
    test_labels: list[int]
    finals: dict[str, FinalRow]
    search: list[CandidateRow] = field(default_factory=list)

    @property
    def size(self) -> str:
        return "full" if self.full else "1000"

    @property
    def per_class(self) -> float:
        """Images learnt from (search + val + train) per class."""
        return sum(self.sizes.get(k, 0) for k in ("search", "val", "train")) / self.classes

    @property
    def complete(self) -> bool:
        return all(m in self.finals and self.finals[m].status == "ok" for m in FIXED)

    def test(self, method: str) -> float:
        return self.finals[method].test_acc

    def regret(self, method: str) -> float:
        """Best in hindsight among the five fixed recipes − ``method``'s test accuracy (points)."""
        return 100 * (max(self.test(m) for m in FIXED) - self.test(method))

    def race_stopped(self) -> bool:
        """Baseline II's val accuracy after RACE_EPOCH epochs is below LP-BW's final val."""
        curve = self.finals[BASELINE_II].val_curve
        return len(curve) >= RACE_EPOCH and curve[RACE_EPOCH - 1] < self.finals["lp-bw"].val_acc

    def pick(self, procedure: str) -> str:
        rows = list(self.finals.values())
        if procedure == "val":
            chosen = recommend(rows, "val", among=THREE)
        elif procedure == "paired":
            chosen = recommend(rows, PAIRED, among=THREE, val_labels=self.val_labels)
        elif procedure == "race":
            among = [m for m in THREE if not (m == BASELINE_II and self.race_stopped())]
            chosen = recommend(rows, PAIRED, among=among, val_labels=self.val_labels)
        else:
            raise ValueError(procedure)
        return chosen["method"]

    @property
    def search_seconds(self) -> float:
        """The block search's distinct trainings (a copied row has none of its own)."""
        return sum(r.seconds for r in self.search if r.strategy == "block" and not r.same_as)

    def product_cost(self, method: str) -> float:
        """What the product spends handing ``method`` over always (``--choose-by METHOD``): the
        block search's rows, both baselines' finals (the verdicts) and the method's final, ÷
        this run's Baseline II final."""
        finals = {BASELINE_I, BASELINE_II, method}
        return (self.search_seconds + sum(self.finals[m].seconds for m in finals)) \
            / self.finals[BASELINE_II].seconds

    def cost(self, procedure: str) -> float:
        """The block search's rows + the three finals' seconds (``race``: Baseline II's pro
        rata when stopped) ÷ this run's Baseline II final."""
        b2 = self.finals[BASELINE_II]
        b2_spent = b2.seconds
        if procedure == "race" and self.race_stopped():
            b2_spent = b2.seconds * RACE_EPOCH / max(len(b2.val_curve), RACE_EPOCH)
        finals = self.finals[BASELINE_I].seconds + self.finals["lp-bw"].seconds + b2_spent
        return (self.search_seconds + finals) / b2.seconds


def read_run(folder: Path) -> Run:
    meta = read_json(folder / "split.json")
    finals = {r.method: r for r in read_finals(folder / "finals.csv")}
    search = read_candidates(folder / "candidates.csv") if (folder / "candidates.csv").exists() \
        else []
    return Run(model=meta["model"], dataset=meta["dataset"], seed=int(meta["seed"]),
               full=bool(meta["full"]), classes=int(meta["classes"]), sizes=meta["sizes"],
               val_labels=list(meta["labels"]["val"]), test_labels=list(meta["labels"]["test"]),
               finals=finals, search=search)


def read_results(root: Path) -> list[Run]:
    """Every exported run under ``root`` (``<model>/<dataset>/<size>_seed<s>/``)."""
    return [read_run(p.parent) for p in sorted(Path(root).glob("*/*/*/split.json"))]


# -- the decision ----------------------------------------------------------------------------
@dataclass
class SizeAnswer:
    size: str
    runs: list[Run]
    recipe_regret: dict[str, list[float]]
    procedure_regret: dict[str, list[float]]
    procedure_cost: dict[str, list[float]]
    comparisons: dict[tuple[str, str], Comparison]  # (procedure, recipe), Holm over all
    worse_than_b2: dict[str, list[str]]  # procedure -> datasets where clearly worse
    per_dataset: dict[str, dict[str, Interval]]  # procedure -> dataset -> pick − B-II
    qualified: list[str]
    default: str  # a procedure, or a fixed recipe (criterion 2's fallback)

    @property
    def planned(self) -> int:
        return SIZES[self.size]

    @property
    def provisional(self) -> bool:
        return len(self.runs) < self.planned


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def decide_size(runs: Sequence[Run], size: str) -> SizeAnswer:
    """Criteria 1 and 2 on one size's complete runs."""
    runs = [r for r in runs if r.size == size and r.complete]
    recipe_regret = {m: [r.regret(m) for r in runs] for m in FIXED}
    picks = {p: [r.pick(p) for r in runs] for p in PROCEDURES}
    procedure_regret = {p: [r.regret(m) for r, m in zip(runs, picks[p], strict=True)]
                        for p in PROCEDURES}
    procedure_cost = {p: [r.cost(p) for r in runs] for p in PROCEDURES}
    pairs = [(p, m) for p in PROCEDURES for m in FIXED]
    raw = [compare_over_seeds(p, _name(m), [(a - b) / 100 for a, b in zip(
        procedure_regret[p], recipe_regret[m], strict=True)], 0) for p, m in pairs]
    comparisons = dict(zip(pairs, adjust(raw), strict=True))
    worse, per_dataset = {}, {}
    for p in PROCEDURES:
        worse[p], per_dataset[p] = [], {}
        for dataset in dict.fromkeys(r.dataset for r in runs):
            diffs = [r.test(m) - r.test(BASELINE_II) for r, m in zip(
                runs, picks[p], strict=True) if r.dataset == dataset]
            interval = mean_interval(diffs)
            per_dataset[p][dataset] = interval
            if not math.isnan(interval.high) and interval.high < 0:
                worse[p].append(dataset)

    qualified = [p for p in PROCEDURES if all(beats(comparisons[(p, m)]) for m in FIXED)
                 and not worse[p]]
    if qualified:
        best = min(_mean(procedure_regret[p]) for p in qualified)
        tied = [p for p in qualified if _mean(procedure_regret[p]) <= best + TIE_POINTS]
        default = min(tied, key=lambda p: (_mean(procedure_cost[p]), PREFERENCE.index(p)))
    else:
        default = min(FIXED, key=lambda m: (_mean(recipe_regret[m]), FIXED.index(m))) \
            if runs else ""
    return SizeAnswer(size, runs, recipe_regret, procedure_regret, procedure_cost, comparisons,
                      worse, per_dataset, qualified, default)


@dataclass
class FullSizeAnswer:
    default: str
    beaten_by: list[str]
    comparisons: list[Comparison]
    switch_per_class: float | None


def decide_full(small: SizeAnswer, full: SizeAnswer) -> FullSizeAnswer:
    """Criterion 3: the 1,000-image default carries to full size unless a fixed recipe beats
    it there (paired interval below 0, Holm over the five recipes)."""
    runs, carried = full.runs, small.default
    if not runs or not carried:
        return FullSizeAnswer(carried, [], [], None)

    def regrets(method: str) -> list[float]:
        if method in PROCEDURES:
            return [r.regret(r.pick(method)) for r in runs]
        return [r.regret(method) for r in runs]

    mine = regrets(carried)
    others = [m for m in FIXED if m != carried]
    comparisons = adjust([compare_over_seeds(_name(m), _name(carried), [
        (a - b) / 100 for a, b in zip(regrets(m), mine, strict=True)], 0) for m in others])
    beaten_by = [m for m, c in zip(others, comparisons, strict=True) if beats(c)]
    if not beaten_by:
        return FullSizeAnswer(carried, [], comparisons, None)
    winner = min(beaten_by, key=lambda m: (_mean(regrets(m)), FIXED.index(m)))
    median_small = statistics.median(r.per_class for r in small.runs)
    median_full = statistics.median(r.per_class for r in runs)
    return FullSizeAnswer(winner, beaten_by, comparisons, math.sqrt(median_small * median_full))


# -- the printout ----------------------------------------------------------------------------
def _name(method: str) -> str:
    return method if method in PROCEDURES else f"always {label(method)}"


def _interval(values: Sequence[float], digits: int = 2) -> str:
    i = mean_interval(values)
    if math.isnan(i.low):
        return f"{i.value:.{digits}f}" if not math.isnan(i.value) else "–"
    return f"{i.value:.{digits}f} [{i.low:.{digits}f}, {i.high:.{digits}f}]"


def size_table(answer: SizeAnswer, runs: Sequence[Run] | None = None) -> list[str]:
    runs = answer.runs if runs is None else runs
    index = [answer.runs.index(r) for r in runs]
    lines = ["| always … / procedure | mean regret (points) [95% t] | mean cost × Baseline II "
             "final, as the product runs it (both baselines trained) |", "|---|---|---|"]
    for m in FIXED:
        lines.append(f"| {_name(m)} | {_interval([answer.recipe_regret[m][i] for i in index])}"
                     f" | {_interval([runs[j].product_cost(m) for j in range(len(runs))])} |")
    for p in PROCEDURES:
        lines.append(f"| **{p}** | {_interval([answer.procedure_regret[p][i] for i in index])} |"
                     f" {_interval([answer.procedure_cost[p][i] for i in index])} |")
    return lines


def beats(c: Comparison) -> bool:
    """The interval entirely below 0 and the Holm-adjusted p below ALPHA."""
    return not math.isnan(c.difference.high) and c.difference.high < 0 \
        and not math.isnan(c.p_decisive) and c.p_decisive < ALPHA


def regret_line(c: Comparison, lower: bool) -> str:
    """``val − always LP-FT: −1.0 points [−2.2, +0.2] of regret over 36 runs, p 0.086, Holm
    0.43: not shown lower``."""
    return with_minus(f"{c.a} − {c.b}: {c.difference.points()} of regret over {c.seeds} "
                      f"runs, p {c.p_value:.3g}, Holm {c.p_decisive:.3g}: "
                      + ("**lower**" if lower else "not shown lower"))


def report(runs: Sequence[Run]) -> str:
    out = ["# PROTOCOL-sizes.md: the decision", ""]
    small = decide_size(runs, "1000")
    full = decide_size(runs, "full")
    for answer in (small, full):
        title = "1,000 learning images" if answer.size == "1000" else "full size"
        state = " — **provisional**: nothing is decided until every planned run is in" \
            if answer.provisional else ""
        out += [f"## {title}: {len(answer.runs)} of {answer.planned} runs{state}", ""]
        if not answer.runs:
            continue
        out += size_table(answer) + [""]
        for model in dict.fromkeys(r.model for r in answer.runs):
            mine = [r for r in answer.runs if r.model == model]
            out += [f"{model} alone ({len(mine)} runs, descriptive):", ""]
            out += size_table(answer, mine) + [""]
        out += ["Criterion 1, every procedure against every fixed recipe: the procedure's regret "
                "minus the recipe's, paired over the runs (points, 95% t interval), t-test p "
                f"Holm-adjusted over all {len(answer.comparisons)}:", ""]
        out += [f"- {regret_line(c, beats(c))}" for c in answer.comparisons.values()] + [""]
        out += ["Per dataset, the pick's test accuracy − Baseline II's (points, over its runs):",
                ""]
        for p in PROCEDURES:
            cells = ", ".join(f"{d} {with_minus(i.points())}"
                              for d, i in answer.per_dataset[p].items())
            out.append(f"- {p}: {cells}")
        out.append("")
        out += ["Per dataset, each fixed recipe's test accuracy (mean over its runs [95% t]):",
                ""]
        datasets = list(dict.fromkeys(r.dataset for r in answer.runs))
        out += [f"| dataset (runs) | {' | '.join(label(m) for m in FIXED)} |",
                "|---|" + "---|" * len(FIXED)]
        for d in datasets:
            mine = [r for r in answer.runs if r.dataset == d]
            out.append(f"| {d} ({len(mine)}) | " + " | ".join(
                _interval([r.test(m) for r in mine], 3) for m in FIXED) + " |")
        out.append("")
        best = {d: {} for d in dict.fromkeys(r.dataset for r in answer.runs)}
        for r in answer.runs:
            winner = max(FIXED, key=lambda m, r=r: r.test(m))
            best[r.dataset][winner] = best[r.dataset].get(winner, 0) + 1
        out.append("Best fixed recipe in hindsight, runs per dataset: " + "; ".join(
            f"{d} " + ", ".join(f"{label(m)} {n}" for m, n in w.items()) for d, w in best.items()))
        out.append("")
        if answer.qualified:
            out.append(f"Procedures that beat every fixed recipe and are clearly worse than "
                       f"Baseline II on no dataset: {', '.join(answer.qualified)}.")
        else:
            out.append("No procedure beats every fixed recipe (criterion 1) while clearly "
                       "worse than Baseline II on no dataset.")
        if answer.size == "1000":
            out += [f"**Default at this size{' (provisional)' if answer.provisional else ''} "
                    f"(criterion 2): {_name(answer.default)}**", ""]
        else:
            out += ["(At full size criterion 3 decides the default, below; criterion 2's rule "
                    f"applied here alone would give {_name(answer.default)}, descriptive.)", ""]
    if small.runs and full.runs:
        carried = decide_full(small, full)
        out += ["## Criterion 3: one procedure at every size", ""]
        out += [f"- {regret_line(c, beats(c))}" for c in carried.comparisons]
        if carried.beaten_by:
            out.append(f"At full size {_name(carried.default)} beats the 1,000-image default; "
                       f"switch at {carried.switch_per_class:.0f} images per class.")
        else:
            out.append(f"No fixed recipe beats {_name(small.default)} at full size: one "
                       "procedure at every size.")
        if small.provisional or full.provisional:
            out.append("(provisional)")
    return "\n".join(out)
