"""The decision code of ``benchmarks/PROTOCOL-default.md``: pure functions of the exported
tables.

Per run: ``PROTOCOL-sizes.md``'s five finals (read through :mod:`sizes_decide`), each with its
per-image predictions on three corrupted copies of test images. Two procedures — ``val3``
(the best val among Baseline I, Baseline II and LP-BW, picked by the product's
:func:`blocktune.protocol.recommend.recommend`) and ``lp-ft`` (always LP-FT) — and their
regret in the domain (test) and under shift (the corruptions' mean); non-inferiority of
``val3`` by a 1-point margin in both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from choose_on_decide import interval_text, report_head
from sizes_decide import FIXED, THREE
from sizes_decide import Run as SizesRun
from sizes_decide import read_run as read_sizes_run

from blocktune.core.io import read_json
from blocktune.core.methods import label
from blocktune.core.stats import Interval, mean_interval, with_minus
from blocktune.protocol.recommend import recommend

PROCEDURES = ("val3", "lp-ft")
CANDIDATE, INCUMBENT = PROCEDURES
MARGIN = 1.0  # points of regret
FAMILIES = ("in the domain", "under shift")
PLANNED = 24


@dataclass
class Run:
    base: SizesRun
    domains: dict[str, list[int]]  # corrupted copy -> labels, in the order of the predictions

    @property
    def complete(self) -> bool:
        return self.base.complete and all(
            d in self.base.finals[m].domains for m in FIXED for d in self.domains)

    def pick(self, procedure: str) -> str:
        rows = list(self.base.finals.values())
        if procedure == "val3":
            return recommend(rows, "val", among=THREE)["method"]
        if procedure in FIXED:  # always that recipe (a complete run has every final)
            return procedure
        raise ValueError(procedure)

    def domain_acc(self, method: str, domain: str) -> float:
        pred = np.asarray(self.base.finals[method].domains[domain]["pred"])
        return float(np.mean(pred == np.asarray(self.domains[domain])))

    def regret(self, method: str, family: str) -> float:
        """``method``'s regret (points) on test, or its mean over the corrupted copies."""
        if family == "in the domain":
            return self.base.regret(method)
        return float(np.mean([100 * (max(self.domain_acc(m, d) for m in FIXED)
                                     - self.domain_acc(method, d)) for d in self.domains]))

    def cost(self, procedure: str) -> float:
        """The product's recorded training for the procedure ÷ the run's Baseline II final: the
        search and both baselines' finals, with LP-BW's (``val3``) or LP-FT's."""
        return self.base.product_cost("lp-bw" if procedure == "val3" else "lp-ft")


def read_run(folder: Path) -> Run:
    meta = read_json(folder / "split.json")
    return Run(read_sizes_run(folder), {k: list(v) for k, v in meta["domains"].items()})


def read_results(root: Path) -> list[Run]:
    """Every exported run under ``root`` (``<model>/<dataset>/n1000_seed<s>/``)."""
    return [read_run(p.parent) for p in sorted(Path(root).glob("*/*/*/split.json"))]


@dataclass
class Answer:
    runs: list[Run]
    differences: dict[str, Interval]  # family -> val3 − lp-ft regret, mean [95% t]
    planned: int = PLANNED

    @property
    def provisional(self) -> bool:
        return len(self.runs) < self.planned

    def non_inferior(self, family: str) -> bool:
        high = self.differences[family].high
        return not math.isnan(high) and high < MARGIN

    @property
    def default(self) -> str | None:
        """``val3`` when non-inferior in both families, else ``lp-ft``; None while
        provisional."""
        if self.provisional:
            return None
        return CANDIDATE if all(self.non_inferior(f) for f in FAMILIES) else INCUMBENT


def decide(runs: Sequence[Run], planned: int = PLANNED) -> Answer:
    runs = [r for r in runs if r.complete]
    differences = {f: mean_interval([r.regret(r.pick(CANDIDATE), f)
                                     - r.regret(r.pick(INCUMBENT), f) for r in runs])
                   for f in FAMILIES}
    return Answer(runs, differences, planned)


def report(runs: Sequence[Run], planned: int = PLANNED) -> str:
    answer = decide(runs, planned)
    out = report_head("PROTOCOL-default.md", len(answer.runs), planned)
    if not answer.runs:
        return "\n".join(out)
    models = list(dict.fromkeys(r.base.model for r in answer.runs))
    out += ["Mean regret (points, [95% t] over runs); in the domain = test, under shift = the "
            "mean over the noise, blur and JPEG copies:", "",
            "| always … / procedure | in the domain | under shift | "
            + " | ".join(f"{m}: domain, shift" for m in models) + " | cost × one full "
            "fine-tune |", "|---|---|---|" + "---|" * len(models) + "---|"]
    for name in dict.fromkeys((*PROCEDURES, *FIXED)):  # lp-ft is a procedure and a recipe
        shown = name if name in PROCEDURES else f"always {label(name)}"

        def regret(r: Run, family: str, name: str = name) -> float:
            return r.regret(r.pick(name), family)

        per_model = " | ".join(
            f"{interval_text([regret(r, FAMILIES[0]) for r in answer.runs if r.base.model == m])}, "
            f"{interval_text([regret(r, FAMILIES[1]) for r in answer.runs if r.base.model == m])}"
            for m in models)
        cost = interval_text([r.cost(name) for r in answer.runs]) if name in PROCEDURES else ""
        out.append(f"| {shown} | {interval_text([regret(r, FAMILIES[0]) for r in answer.runs])} | "
                   f"{interval_text([regret(r, FAMILIES[1]) for r in answer.runs])} | {per_model} "
                   f"| {cost} |")
    out += ["", f"Non-inferiority of {CANDIDATE} against always LP-FT (regret difference, "
            f"points, 95% t over {len(answer.runs)} runs; the upper end must be below "
            f"+{MARGIN:.1f}):", ""]
    for family in FAMILIES:
        d = answer.differences[family]
        verdict = "**non-inferior**" if answer.non_inferior(family) else "not shown non-inferior"
        text = f"{d.value:+.2f}" if math.isnan(d.low) else \
            f"{d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"
        out.append(f"- {family}: {with_minus(text)} points: {verdict}")
    out.append("")
    if answer.default is not None:
        out.append(f"**Default: {answer.default}**")
    return "\n".join(out)
