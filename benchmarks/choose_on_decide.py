"""The decision code of ``benchmarks/PROTOCOL-choose-on.md``: pure functions of the exported
tables.

Per run (dataset, seed): the five finals with their per-image predictions on every target
domain, the domains' labels, the in-domain val labels and the timing. Each target domain is
split as ``--choose-on`` splits a folder (:func:`blocktune.data.target.split_target`); the
choice on target images is :func:`blocktune.protocol.recommend.recommend_on`, the product's own
code, ties included; regret is read on the domain's test part only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blocktune.core.io import read_json
from blocktune.core.methods import BASELINE_I, BASELINE_II, PAIRED, label
from blocktune.core.records import FinalRow, read_finals
from blocktune.core.stats import Comparison, adjust, compare_over_seeds, mean_interval, with_minus
from blocktune.data.target import split_target
from blocktune.protocol.recommend import recommend, recommend_on

FIXED = (BASELINE_I, BASELINE_II, "block", "lp-ft", "lp-bw")  # "block": the last-quarter BW
DEFAULT = "lp-ft"  # the product's default (--choose-by auto)
CORRUPTIONS = ("noise", "blur", "jpeg")
REAL = ("flowers102_photos", "tf_flowers_photos")
FAMILIES = {"corruptions": CORRUPTIONS, "real shifts": REAL}
PROCEDURES = ("on-all", "on-50")  # tested
COMPARATORS = ("val", "default")
DESCRIPTIVE = ("on-all paired",)
SMALL, DRAWS = 50, 20
PLANNED = 20
ALPHA = 0.05


def stratified_draw(labels: Sequence[int], pool: Sequence[int], count: int,
                    rng: np.random.Generator) -> list[int]:
    """``count`` of the ``pool`` indices, per class in proportion (largest remainder, ties in a
    seeded order), at least one per class where ``count`` allows as many as there are classes;
    the whole pool when it holds no more than ``count``."""
    pool = list(pool)
    if len(pool) <= count:
        return sorted(pool)
    by_class: dict[int, list[int]] = {}
    for i in pool:
        by_class.setdefault(int(labels[i]), []).append(i)
    classes = sorted(by_class)
    quota = {k: count * len(by_class[k]) / len(pool) for k in classes}
    floor = 1 if len(classes) <= count else 0
    take = {k: min(len(by_class[k]), max(floor, math.floor(quota[k]))) for k in classes}
    order = {k: r for k, r in zip(classes, rng.permutation(len(classes)), strict=True)}
    while sum(take.values()) < count:  # the largest remainders gain one
        k = max((k for k in classes if take[k] < len(by_class[k])),
                key=lambda k: (quota[k] - take[k], order[k]))
        take[k] += 1
    while sum(take.values()) > count:  # the floor of one overshot: the largest surplus gives
        k = max((k for k in classes if take[k] > floor),
                key=lambda k: (take[k] - quota[k], order[k]))
        take[k] -= 1
    return sorted(i for k in classes for i in rng.choice(by_class[k], take[k], replace=False))


@dataclass
class Run:
    dataset: str
    seed: int
    val_labels: list[int]
    finals: dict[str, FinalRow]
    domains: dict[str, list[int]]  # name -> labels, in the order of the predictions
    timing: dict

    @property
    def complete(self) -> bool:
        return all(m in self.finals and self.finals[m].status == "ok" for m in FIXED) and all(
            d in self.finals[m].domains for m in FIXED for d in self.domains)

    def parts(self, domain: str) -> tuple[list[int], list[int]]:
        """The choosing and test parts, as ``--choose-on`` splits the folder."""
        return split_target(self.domains[domain], self.seed)

    def part_acc(self, method: str, domain: str) -> float:
        _, test = self.parts(domain)
        pred = np.asarray(self.finals[method].domains[domain]["pred"])[test]
        return float(np.mean(pred == np.asarray(self.domains[domain])[test]))

    def regret(self, method: str, domain: str) -> float:
        """Best on the test part among the five finals − ``method``'s, in points."""
        return 100 * (max(self.part_acc(m, domain) for m in FIXED)
                      - self.part_acc(method, domain))

    def choose_on(self, domain: str, index: Sequence[int], rule: str = "val") -> str:
        """What ``--choose-on`` hands over when its choosing part is ``index`` of the domain."""
        labels = [self.domains[domain][i] for i in index]
        rows = [dataclasses.replace(r, domains={domain: {"pred": [
            r.domains[domain]["pred"][i] for i in index]}}) for r in self.finals.values()]
        return recommend_on(rows, domain, labels, rule)["method"]

    def picks(self, procedure: str, domain: str) -> list[str]:
        """The procedure's pick (``on-50``: one per draw)."""
        rows = list(self.finals.values())
        if procedure == "val":
            return [recommend(rows, "val")["method"]]
        if procedure == "default":
            return [recommend(rows, DEFAULT)["method"]]
        if procedure in FIXED:
            return [procedure]
        choosing, _ = self.parts(domain)
        if procedure == "on-all":
            return [self.choose_on(domain, choosing)]
        if procedure == "on-all paired":
            return [self.choose_on(domain, choosing, PAIRED)]
        if procedure == "on-50":
            rng = np.random.default_rng([self.seed, 50])
            return [self.choose_on(domain, stratified_draw(self.domains[domain], choosing,
                                                           SMALL, rng)) for _ in range(DRAWS)]
        raise ValueError(procedure)

    def procedure_regret(self, procedure: str, domain: str) -> float:
        """The regret of the procedure's pick (``on-50``: the mean over its draws)."""
        return float(np.mean([self.regret(m, domain) for m in self.picks(procedure, domain)]))

    def unit(self, procedure: str, family: str) -> float | None:
        """The run's unit of a family: its mean regret over the family's domains it holds;
        None when it holds none."""
        mine = [d for d in FAMILIES[family] if d in self.domains]
        if not mine:
            return None
        return float(np.mean([self.procedure_regret(procedure, d) for d in mine]))

    def choosing_images(self, domain: str) -> int:
        return len(self.parts(domain)[0])


def read_run(folder: Path) -> Run:
    meta = read_json(folder / "split.json")
    finals = {r.method: r for r in read_finals(folder / "finals.csv")}
    return Run(dataset=meta["dataset"], seed=int(meta["seed"]),
               val_labels=list(meta["labels"]["val"]), finals=finals,
               domains={k: list(v) for k, v in meta["domains"].items()},
               timing=read_json(folder / "timing.json"))


def read_results(root: Path) -> list[Run]:
    """Every exported run under ``root`` (``<dataset>/n1000_seed<s>/``)."""
    return [read_run(p.parent) for p in sorted(Path(root).glob("*/*/split.json"))]


# -- the decision ----------------------------------------------------------------------------
@dataclass
class Answer:
    runs: list[Run]
    units: dict[str, dict[str, list[float]]]  # family -> procedure -> one value per run
    comparisons: dict[tuple[str, str, str], Comparison]  # (procedure, comparator, family)
    planned: int = PLANNED

    @property
    def provisional(self) -> bool:
        return len(self.runs) < self.planned

    def chose_better(self, procedure: str, comparator: str, family: str) -> bool:
        return chose_better(self.comparisons[(procedure, comparator, family)])

    def recommended(self, procedure: str, family: str) -> bool:
        """Decisions 1 and 2: better than both comparators (never while provisional)."""
        return not self.provisional and all(self.chose_better(procedure, c, family)
                                            for c in COMPARATORS)


def chose_better(c: Comparison) -> bool:
    """Mean difference below 0 and the Holm-adjusted p below ALPHA."""
    return not math.isnan(c.difference.value) and c.difference.value < 0 \
        and not math.isnan(c.p_decisive) and c.p_decisive < ALPHA


def decide(runs: Sequence[Run], planned: int = PLANNED) -> Answer:
    runs = [r for r in runs if r.complete]
    every = (*PROCEDURES, *COMPARATORS, *DESCRIPTIVE, *FIXED)
    units: dict[str, dict[str, list[float]]] = {}
    for family in FAMILIES:
        members = [r for r in runs if r.unit("val", family) is not None]
        units[family] = {p: [r.unit(p, family) for r in members] for p in every}
    keys = [(p, c, f) for f in FAMILIES for p in PROCEDURES for c in COMPARATORS]
    raw = [compare_over_seeds(p, c, [(a - b) / 100 for a, b in zip(
        units[f][p], units[f][c], strict=True)], 0) for p, c, f in keys]
    return Answer(list(runs), units, dict(zip(keys, adjust(raw), strict=True)), planned)


# -- the printout ----------------------------------------------------------------------------
def _name(procedure: str) -> str:
    return f"always {label(procedure)}" if procedure in FIXED else procedure


def interval_text(values: Sequence[float], digits: int = 2) -> str:
    """``1.78 [1.32, 2.23]`` (mean [95% t]), the mean alone from one value, – from none."""
    i = mean_interval(values)
    if math.isnan(i.value):
        return "–"
    if math.isnan(i.low):
        return f"{i.value:.{digits}f}"
    return with_minus(f"{i.value:.{digits}f} [{i.low:.{digits}f}, {i.high:.{digits}f}]")


def cost_line(runs: Sequence[Run]) -> str:
    """Seconds per 100 target images per final, and a 400-image folder scored by five finals
    against the run's recorded training seconds."""
    per_100 = [100 * r.timing["scoring_seconds"] / r.timing["images"] for r in runs]
    share = [100 * 5 * 400 * r.timing["scoring_seconds"] / r.timing["images"]
             / r.timing["training_seconds"] for r in runs]
    return (f"Cost: no final is trained for the choice. Reading and scoring 100 target images "
            f"took {interval_text(per_100)} s per final (one thread, the handed-over model, as "
            f"`blocktune predict` reads them); a 400-image folder scored by the five finals is "
            f"{interval_text(share)} % of the run's recorded training seconds.")


def report_head(protocol: str, runs: int, planned: int) -> list[str]:
    """A decision printout's title and how many of the planned runs it reads."""
    state = " — **provisional**: nothing is decided until every planned run is in" \
        if runs < planned else ""
    return [f"# {protocol}: the decision", "", f"{runs} of {planned} runs{state}.", ""]


def report(runs: Sequence[Run], planned: int = PLANNED) -> str:
    answer = decide(runs, planned)
    out = report_head("PROTOCOL-choose-on.md", len(answer.runs), planned)
    if not answer.runs:
        return "\n".join(out)
    shown = (*PROCEDURES, "on-all paired", "val", "default", *FIXED)
    out += ["Mean regret on the target domains' test parts (points, [95% t] over runs; a run's "
            "unit is its mean over the family's domains):", "",
            "| procedure | " + " | ".join(f"{f} ({len(answer.units[f]['val'])} runs)"
                                         for f in FAMILIES) + " |",
            "|---|" + "---|" * len(FAMILIES)]
    for p in shown:
        out.append(f"| {_name(p)} | " + " | ".join(interval_text(answer.units[f][p])
                                                   for f in FAMILIES) + " |")
    out.append("")
    domains = list(dict.fromkeys(d for r in answer.runs for d in r.domains))
    out += ["Per domain (descriptive), mean regret over its runs and images chosen on:", "",
            "| domain (runs, choosing images) | on-all | on-50 | val | default |",
            "|---|---|---|---|---|"]
    for d in domains:
        mine = [r for r in answer.runs if d in r.domains]
        sizes = sorted({r.choosing_images(d) for r in mine})
        span = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
        out.append(f"| {d} ({len(mine)}, {span}) | " + " | ".join(
            interval_text([r.procedure_regret(p, d) for r in mine], 1)
            for p in ("on-all", "on-50", "val", "default")) + " |")
    out += ["", f"The {len(answer.comparisons)} tested comparisons, procedure − comparator "
            "(points of regret, paired over the family's runs, 95% t), t-test p Holm-adjusted "
            "over all of them:", ""]
    for (p, c, f), comp in answer.comparisons.items():
        verdict = "**chose better**" if chose_better(comp) else "not shown better"
        out.append(f"- {f}: {p} − {c}: {with_minus(comp.difference.points())} over "
                   f"{comp.seeds} runs, p {comp.p_value:.3g}, Holm {comp.p_decisive:.3g}: "
                   f"{verdict}")
    out.append("")
    for f in FAMILIES:
        for p, n in (("on-all", "about 200"), ("on-50", "50")):
            if answer.provisional:
                continue
            yes = answer.recommended(p, f)
            out.append(f"- {f}, choosing on {n} target images: " + (
                "chose better than both in-domain val and the default — recommended"
                if yes else "not shown better than both in-domain val and the default"))
    out += ["", cost_line(answer.runs)]
    return "\n".join(out)
