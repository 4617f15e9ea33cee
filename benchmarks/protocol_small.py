"""The small-data protocol's decision code (``benchmarks/PROTOCOL-small.md``), benchmark code.

Pure functions of recorded run folders: per (dataset, seed) run, every method's final (its
test accuracy, read here only because this is a benchmark), the cross-validation rows and the
search rows' seconds. From them: each fixed recipe's regret, each configuration's (choice
procedure × method set) pick, regret and cost ratio, the default configuration under the cost
bar, and the claim the README may make. The pick is made by :func:`blocktune.protocol.recommend.recommend`
— the product's own ranking, ties included.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from blocktune.core.methods import (
    BASELINE_I,
    BASELINE_II,
    PROBED,
    final_group,
    indices_text,
    label,
    recipe_of,
)
from blocktune.core.records import CandidateRow, CvRow, FinalRow
from blocktune.core.stats import Comparison, adjust, compare_over_seeds, mean_interval, with_minus
from blocktune.protocol.recommend import cv_scores, recommend

# PROTOCOL-small.md's fixed settings
METHODS = (BASELINE_I, BASELINE_II, "lp-ft", "norms", "quarter", "block", "lp-bw")
FIXED_RECIPES = (BASELINE_I, BASELINE_II, "lp-ft", "norms", "quarter")  # "always BW" = quarter
PROCEDURES = ("val", "cv5")
CV_FOLDS = 5
# criterion 1 chooses among these procedures' configurations (the second amendment: cv5's
# pass cannot finish in time; its premise — no cv5 configuration under the bar — is checked)
DECIDED_BY = ("val",)
COST_BAR = 2.0  # × one Baseline II fine-tune
TIE_POINTS = 0.5  # mean regrets this close tie
# what each method needs searched: the strategies whose candidates its pick comes from
NEEDS_SEARCH = {"quarter": ("quarter",), "block": ("quarter", "block"), "lp-bw": ("quarter",)}


@dataclass
class RunRecord:
    """What one (dataset, seed) run recorded, as the protocol reads it."""

    dataset: str
    seed: int
    finals: list[FinalRow]
    cv: list[CvRow] = field(default_factory=list)
    search: list[CandidateRow] = field(default_factory=list)
    full: bool = False
    per_class: float = math.nan  # images learnt from (search + val + train) per class

    @property
    def has_cv(self) -> bool:
        """Every method's five folds are in (a cross-validation still running is not)."""
        return set(METHODS) <= set(cv_scores(self.cv, CV_FOLDS))

    @property
    def test(self) -> dict[str, float]:
        return {r.method: r.test_acc for r in self.finals if r.status == "ok"}

    def complete(self, methods: Sequence[str] = METHODS) -> bool:
        return all(m in self.test for m in methods)

    def best_test(self, methods: Sequence[str] = METHODS) -> float:
        return max(self.test[m] for m in methods)

    def regret(self, method: str, methods: Sequence[str] = METHODS) -> float:
        """Best in hindsight among ``methods`` − ``method``'s test accuracy, in points."""
        return 100 * (self.best_test(methods) - self.test[method])

    def domain_regret(self, domain: str, method: str, methods: Sequence[str] = METHODS
                      ) -> float:
        accs = {r.method: r.domains[domain]["acc"] for r in self.finals
                if r.status == "ok" and domain in r.domains}
        return 100 * (max(accs[m] for m in methods) - accs[method])

    def pick(self, procedure: str, methods: Sequence[str]) -> str | None:
        """The method the procedure hands over among ``methods``; None for ``cv5`` until every
        fold of every method is in."""
        if procedure != "val" and not self.has_cv:
            return None
        chosen = recommend(self.finals, procedure, self.cv, among=set(methods))
        return None if chosen is None else chosen["method"]

    # -- cost ---------------------------------------------------------------------------
    @staticmethod
    def _distinct_seconds(rows: Sequence, methods: Sequence[str], key) -> float:
        """Seconds of the distinct trainings behind the ``methods``' rows: one per ``key``
        (the same group trained the same way is one training), a copied row (``same_as``)
        counting its source's seconds."""
        def source(row):
            if not row.same_as:
                return row
            return source(next(r for r in rows if r.method == row.same_as
                               and getattr(r, "fold", None) == getattr(row, "fold", None)))

        seen, total = set(), 0.0
        for row in rows:
            if row.method in methods and (k := key(row)) not in seen:
                seen.add(k)
                total += source(row).seconds
        return total

    def _final_seconds(self, method: str) -> float:
        return self._distinct_seconds(self.finals, (method,), lambda r: r.method)

    def search_seconds(self, methods: Sequence[str]) -> float:
        """Seconds of the distinct search trainings the methods' picks need (a copied row
        counts once, under the row it copies); the baselines' search rows are not needed."""
        strategies = {s for m in methods for s in NEEDS_SEARCH.get(m, ())}
        needed = {r.layer_indices for r in self.search if r.strategy in strategies}
        return sum(r.seconds for r in self.search if not r.same_as
                   and r.strategy not in (BASELINE_I, BASELINE_II)
                   and r.layer_indices in needed)

    def finals_seconds(self, methods: Sequence[str]) -> float:
        """Seconds of the methods' final trainings: one training per (group, recipe); LP-FT's
        and LP-BW's first stage is Baseline I's final, counted once when both are run."""
        # by the method's group (Baseline II's row is written with no indices)
        total = self._distinct_seconds(self.finals, methods, lambda r: (
            indices_text(final_group(r)), recipe_of(r.method)))
        if BASELINE_I in methods:
            probe = self._final_seconds(BASELINE_I)
            total -= probe * len({recipe_of(m) for m in methods if m in PROBED})
        return total

    def cv_seconds(self, methods: Sequence[str]) -> float:
        """Seconds of the fold trainings of the methods (a copied fold counts once)."""
        return self._distinct_seconds(self.cv, methods, lambda r: (
            r.fold, r.layer_indices, recipe_of(r.method)))

    def cost_as_run(self, methods: Sequence[str]) -> float:
        """What today's product spends on the ``val`` configuration, ÷ Baseline II's final:
        it also trains Baseline I in the search (its plot line and its "no candidate beat the
        head" notice; Baseline II's search row, read by no choice, is skipped at this size:
        ``--search-baseline-ii auto``) and trains LP-FT's and LP-BW's first stage again rather
        than reuse Baseline I's final."""
        searched = sum(r.seconds for r in self.search if not r.same_as
                       and r.strategy == BASELINE_I)
        finals = sum(self._final_seconds(m) for m in methods)
        return (self.search_seconds(methods) + searched + finals) \
            / self._final_seconds(BASELINE_II)

    def cost_ratio(self, procedure: str, methods: Sequence[str]) -> float:
        """The configuration's seconds ÷ this run's Baseline II final's."""
        seconds = self.search_seconds(methods) + self.finals_seconds(methods)
        if procedure != "val":
            seconds += self.cv_seconds(methods)
        return seconds / self._final_seconds(BASELINE_II)


@dataclass(frozen=True)
class Configuration:
    procedure: str
    methods: tuple[str, ...]

    def name(self) -> str:
        return f"{self.procedure}: {', '.join(label(m) for m in self.methods)}"


def configurations(methods: Sequence[str] = METHODS, procedures: Sequence[str] = PROCEDURES
                   ) -> list[Configuration]:
    """Every procedure × method set holding both baselines, smaller sets first."""
    others = [m for m in methods if m not in (BASELINE_I, BASELINE_II)]
    out = []
    for procedure in procedures:
        for size in range(len(others) + 1):
            for extra in itertools.combinations(others, size):
                chosen = set(extra) | {BASELINE_I, BASELINE_II}
                out.append(Configuration(procedure, tuple(m for m in methods if m in chosen)))
    return out


@dataclass
class Scored:
    config: Configuration
    regrets: list[float]  # per run, points
    costs: list[float]  # per run, × Baseline II

    @property
    def mean_regret(self) -> float:
        return sum(self.regrets) / len(self.regrets)

    @property
    def mean_cost(self) -> float:
        return sum(self.costs) / len(self.costs)


def score(runs: Sequence[RunRecord], config: Configuration) -> Scored:
    """A configuration's regret and cost on every run (nan where its procedure has no pick:
    cross-validation not run; such a configuration is not eligible)."""
    regrets, costs = [], []
    for run in runs:
        picked = run.pick(config.procedure, config.methods)
        regrets.append(run.regret(picked) if picked is not None else math.nan)
        costs.append(run.cost_ratio(config.procedure, config.methods) if picked is not None
                     else math.nan)
    return Scored(config, regrets, costs)


def choose_default(scored: Sequence[Scored], cost_bar: float = COST_BAR,
                   tie_points: float = TIE_POINTS, procedures: Sequence[str] = DECIDED_BY
                   ) -> Scored | None:
    """Criterion 1: among configurations of ``procedures`` with mean cost ≤ the bar, the
    lowest mean regret; regrets within ``tie_points`` tie, and ties go to the lower mean cost,
    then to ``val``, then to the smaller set."""
    eligible = [s for s in scored if s.mean_cost <= cost_bar and s.config.procedure in procedures
                and not any(math.isnan(r) for r in s.regrets)]
    if not eligible:
        return None
    best = min(s.mean_regret for s in eligible)
    tied = [s for s in eligible if s.mean_regret <= best + tie_points + 1e-9]
    return min(tied, key=lambda s: (s.mean_cost, s.config.procedure != "val",
                                    len(s.config.methods)))


def cv_measured(runs: Sequence[RunRecord]) -> list[Scored]:
    """Every ``cv5`` configuration scored on the runs with every fold in (none: [])."""
    measured = [r for r in runs if r.has_cv]
    return [score(measured, c) for c in configurations(procedures=("cv5",))] if measured else []


def cv_under_the_bar(runs: Sequence[RunRecord], cost_bar: float = COST_BAR) -> list[Scored]:
    """The second amendment's premise, checked: ``cv5`` configurations whose mean cost over
    the runs with every fold in is at most the bar (none expected; any reopens criterion 1)."""
    return _under_the_bar(cv_measured(runs), cost_bar)


def _under_the_bar(scored: Sequence[Scored], cost_bar: float = COST_BAR) -> list[Scored]:
    return [s for s in scored if s.mean_cost <= cost_bar]


@dataclass
class Claim:
    """Criteria 2 and 3: the default configuration against each fixed recipe."""

    config: Scored
    # regret(config) − regret(recipe) as an accuracy difference, Holm over the fixed recipes
    versus: list[Comparison]
    per_dataset: dict[str, Comparison]  # test(config pick) − test(Baseline II)
    pays: bool
    beats_every_recipe: bool
    worse_than: list[str]  # fixed recipes with a lower regret, clearly
    advice: str  # the fixed recipe with the lowest mean regret

    def sentence(self) -> str:
        name = self.config.config.name()
        regret = f"{self.config.mean_regret:.2f}"
        if self.pays:
            strength = ("better than any fixed recipe" if self.beats_every_recipe
                        else "better than always fine-tuning every layer")
            return (f"The choice pays: the recommendation ({name}) has a mean regret of "
                    f"{regret} points, {strength}.")
        if self.worse_than:
            return (f"The choice does not pay: always {label(self.worse_than[0])} has a lower "
                    f"regret than the recommendation ({name}, {regret} points).")
        return (f"The choice is not shown to pay: the recommendation ({name}) has a mean regret "
                f"of {regret} points, not clearly below always fine-tuning every layer; the "
                f"fixed recipe with the lowest regret is {label(self.advice)}.")


def claim(runs: Sequence[RunRecord], chosen: Scored) -> Claim:
    """Criteria 2-3 of the protocol, for the configuration criterion 1 chose."""
    versus = []
    for recipe in FIXED_RECIPES:
        differences = [(c - run.regret(recipe)) / 100 for c, run in zip(chosen.regrets, runs,
                                                                       strict=True)]
        versus.append(compare_over_seeds(chosen.config.name(), label(recipe), differences,
                                         images=len(runs)))
    versus = adjust(versus)
    by_recipe = dict(zip(FIXED_RECIPES, versus, strict=True))

    def clearly_below(c: Comparison) -> bool:
        return c.difference.high < 0 and c.p_decisive < 0.05

    def clearly_above(c: Comparison) -> bool:
        return c.difference.low > 0 and c.p_decisive < 0.05

    per_dataset = {}
    for dataset in dict.fromkeys(r.dataset for r in runs):
        mine = [(run, regret) for run, regret in zip(runs, chosen.regrets, strict=True)
                if run.dataset == dataset]
        # the pick's test − Baseline II's test = Baseline II's regret − the pick's regret
        differences = [(run.regret(BASELINE_II) - regret) / 100 for run, regret in mine]
        per_dataset[dataset] = compare_over_seeds(chosen.config.name(), label(BASELINE_II),
                                                  differences, images=len(mine))
    not_worse_anywhere = all(c.difference.high >= 0 or math.isnan(c.difference.high)
                             for c in per_dataset.values())
    pays = clearly_below(by_recipe[BASELINE_II]) and not_worse_anywhere
    beats_all = pays and all(clearly_below(c) for c in versus)
    worse_than = sorted((r for r in FIXED_RECIPES if clearly_above(by_recipe[r])),
                        key=lambda r: sum(run.regret(r) for run in runs))  # the best first
    advice = min(FIXED_RECIPES, key=lambda r: (sum(run.regret(r) for run in runs),
                                               FIXED_RECIPES.index(r)))
    return Claim(chosen, versus, per_dataset, pays, beats_all, worse_than, advice)


def advice(runs: Sequence[RunRecord], chosen: Scored, verdict: Claim,
           full: Sequence[RunRecord] = ()) -> str:
    """Criterion 4's sentence: N is the most images per class among the datasets where the
    chosen configuration's pick is clearly above Baseline II (its paired interval over the
    seeds above 0); the full-size runs (one seed each) are described, not tested."""
    per_class = {r.dataset: r.per_class for r in runs}
    gains = {d: c for d, c in verdict.per_dataset.items() if c.difference.low > 0}
    if not gains:
        return ("The choice beat fine-tuning every layer clearly on no dataset at 1,000 images: "
                "fine-tune every layer.")
    n = max(per_class[d] for d in gains)
    points = [c.difference.value * 100 for c in gains.values()]
    rest = [d for d in verdict.per_dataset if d not in gains]
    text = (f"With about {n:.0f} labelled images per class or fewer, let blocktune choose "
            f"({chosen.config.name()}): at 1,000 images it beat fine-tuning every layer by "
            f"{min(points):.1f}–{max(points):.1f} points on "
            + ", ".join(f"{d} ({per_class[d]:.0f} per class)" for d in gains)
            + (" and was not shown to differ on " + ", ".join(
                f"{d} ({per_class[d]:.0f} per class)" for d in rest) if rest else "")
            + f" ({len(runs) // max(1, len(per_class))} seeds each).")
    if full:
        described = []
        for r in full:
            picked = r.pick("val", chosen.config.methods)
            gap = 100 * (r.test[picked] - r.test[BASELINE_II])
            described.append(f"{r.dataset} ({r.per_class:.0f} per class: {label(picked)}, "
                             f"{with_minus(f'{gap:+.1f}')} points against Baseline II)")
        text += (" With all the images (one seed each, descriptive): " + "; ".join(described)
                 + ".")
    return text


# -- reading run folders, and the tables --------------------------------------------------------
def read_run(folder: Path, dataset: str, seed: int, full: bool = False) -> RunRecord | None:
    """A finished run folder's record, or None while its finals are not all in."""
    from blocktune.results.runfolder import RunFolder

    files = RunFolder(folder)
    if not files.is_run():
        return None
    seed_files = files.seed(seed)
    if not seed_files.finals.exists():
        return None
    from blocktune.data.splits import learning_images, read_splits

    split = read_splits(seed_files.splits)
    learning = learning_images(split["files"])
    record = RunRecord(dataset, seed, seed_files.read_finals(),
                       seed_files.read_cv() if seed_files.cv.exists() else [],
                       seed_files.read_candidates(), full, learning / len(split["classes"]))
    if not record.complete(METHODS):
        return None
    return record  # its cross-validation may still be running: has_cv tells


@dataclass
class Suite:
    runs: list[RunRecord]  # the finished 1,000-image runs
    full: list[RunRecord]  # the finished full-size runs
    planned: int  # 1,000-image runs planned

    @property
    def provisional(self) -> bool:
        """Until every planned 1,000-image run has its finals (cv5 decides nothing: the second
        amendment)."""
        return len(self.runs) < self.planned


def read_suite(out: Path, planned: Sequence[tuple[str, int, bool, Path]]) -> Suite:
    """Every planned run folder that has finished: (dataset, seed, full size, folder)."""
    runs, full = [], []
    for dataset, seed, is_full, folder in planned:
        record = read_run(folder, dataset, seed, is_full)
        if record is not None:
            (full if is_full else runs).append(record)
    return Suite(runs, full, sum(not f for _, _, f, _ in planned))


def report(suite: Suite) -> str:
    """The protocol's tables and decisions, as markdown."""
    runs = suite.runs
    with_cv = [r for r in runs if r.has_cv]
    lines = [f"# Small-data suite: {len(runs)} of {suite.planned} runs at 1,000 images "
             f"({len(with_cv)} with cv5), {len(suite.full)} at full size"]
    if suite.provisional:
        lines.append("\n**Provisional**: not every planned run is in; nothing is decided.")
    if not runs:  # the full-size runs (descriptive) are printed whatever else is in
        return "\n".join(lines + _full_size_table(suite.full))
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    scored = [score(runs, c) for c in configurations()]
    chosen = choose_default(scored)
    measured = cv_measured(runs)
    reopened = bool(_under_the_bar(measured))  # cv_under_the_bar, on the scores at hand
    if reopened:
        chosen = None  # criterion 1 reopened (said below)
    lines += ["", "## Test accuracy per dataset (mean over seeds, 95% t interval)", "",
              "| dataset | seeds | " + " | ".join(label(m) for m in METHODS)
              + " | val pick | cv5 pick | chosen configuration's pick |",
              "|---" * (len(METHODS) + 5) + "|"]
    for dataset in datasets:
        mine = [r for r in runs if r.dataset == dataset]
        cells = [_mean_text([r.test[m] for r in mine]) for m in METHODS]
        picks = [_mean_text([r.test[r.pick(p, METHODS)] for r in mine
                             if p == "val" or r.has_cv]) for p in PROCEDURES]
        picks.append(_mean_text([r.test[r.pick(chosen.config.procedure, chosen.config.methods)]
                                 for r in mine]) if chosen is not None else "—")
        lines.append(f"| {dataset} | {len(mine)} | " + " | ".join(cells + picks) + " |")
    lines += ["", "## Regret (points below the best of the seven in hindsight), mean over all "
              "runs", "", "| recipe or procedure | mean regret [95% t] | per dataset |",
              "|---|---|---|"]
    for method in FIXED_RECIPES + ("block", "lp-bw"):
        lines.append(_regret_line(f"always {label(method)}", runs, datasets,
                                  [r.regret(method) for r in runs]))
    for procedure in PROCEDURES:
        have = [r for r in runs if procedure == "val" or r.has_cv]
        if have:
            lines.append(_regret_line(f"recommendation ({procedure}, all seven; {len(have)} "
                                      "runs)", have, datasets,
                                      [r.regret(r.pick(procedure, METHODS)) for r in have]))
    lines += ["", f"## Configurations under the cost bar (≤ {COST_BAR}× Baseline II), best "
              "first", "", "| configuration | mean regret | mean cost × B-II |", "|---|---|---|"]
    ranked = [s for s in scored if not math.isnan(s.mean_regret)]
    for s in sorted(ranked, key=lambda s: (s.mean_regret, s.mean_cost))[:12]:
        mark = " (**chosen**)" if s is chosen else ""
        over = "" if s.mean_cost <= COST_BAR else " (over the bar)"
        lines.append(f"| {s.config.name()}{mark} | {s.mean_regret:.2f} | "
                     f"{s.mean_cost:.2f}{over} |")
    every = [s for s in scored if s.config.methods == METHODS and not math.isnan(s.mean_cost)]
    lines += ["", "Cost of running all seven: " + "; ".join(
        f"{s.config.procedure} {s.mean_cost:.2f}×" for s in every)]
    lines += ["", _cv_premise_line(measured)]
    if reopened:
        lines.append("\n**Criterion 1 is reopened**: a cv5 configuration is under the cost bar.")
    elif chosen is None:
        lines.append("\nNo configuration is under the cost bar.")
    else:
        verdict = claim(runs, chosen)
        cost = mean_interval(chosen.costs)
        lines += ["", "## The claim (criteria 2-3)", "", verdict.sentence(), "",
                  f"- the recommendation's regret {_points_text(chosen.regrets)} points over "
                  f"{len(runs)} runs; its cost {cost.value:.2f}× [{cost.low:.2f}, "
                  f"{cost.high:.2f}] Baseline II; as the product runs it today ("
                  "Baseline I also trained in the search, LP-BW's first stage trained again) "
                  + _times_text([r.cost_as_run(chosen.config.methods) for r in runs])]
        lines += [f"- regret − always {c.b}'s: {with_minus(c.difference.points())}, "
                  f"{_regret_word(c)} (t-test p {c.p_value:.3g}, Holm {c.p_decisive:.3g})"
                  for c in verdict.versus]
        lines += [f"- {d}: the pick's test − Baseline II's {with_minus(c.difference.points())} "
                  f"over {c.seeds} seeds" for d, c in verdict.per_dataset.items()]
        lines += ["", "## The advice (criterion 4)", "",
                  advice(runs, chosen, verdict, suite.full)]
        if suite.provisional:
            lines.append("\n(provisional: the claim is not made until every run is in)")
    domains = sorted({d for r in runs for f in r.finals for d in f.domains})
    if domains:
        lines += ["", "## Test domains (input corruptions; decide nothing): mean accuracy", "",
                  "| domain | " + " | ".join(label(m) for m in METHODS) + " | val pick regret |"
                  " cv5 pick regret |", "|---" * (len(METHODS) + 3) + "|"]
        for domain in domains:
            have = [r for r in runs if all(domain in f.domains for f in r.finals
                                           if f.status == "ok")]
            cells = [_mean_text([next(f.domains[domain]["acc"] for f in r.finals
                                      if f.method == m) for r in have]) for m in METHODS]
            regrets = [_points_text([r.domain_regret(domain, r.pick(p, METHODS)) for r in have
                                     if p == "val" or r.has_cv]) for p in PROCEDURES]
            lines.append(f"| {domain} | " + " | ".join(cells + regrets) + " |")
    return "\n".join(lines + _full_size_table(suite.full))


def _full_size_table(full: Sequence[RunRecord]) -> list[str]:
    """The full-size runs (one seed each; descriptive): every method's test accuracy, the
    images learnt from per class, and the val procedure's pick among the seven."""
    if not full:
        return []
    lines = ["", "## Full size (one seed each; val procedure)", "",
             "| dataset | images per class | " + " | ".join(label(m) for m in METHODS)
             + " | val pick |", "|---" * (len(METHODS) + 3) + "|"]
    for r in full:
        lines.append(f"| {r.dataset} | {r.per_class:.0f} | " + " | ".join(
            f"{r.test[m]:.3f}" for m in METHODS) + f" | {label(r.pick('val', METHODS))} |")
    return lines


def _cv_premise_line(measured: Sequence[Scored]) -> str:
    """The second amendment's premise as measured (:func:`cv_measured`): the cheapest cv5
    configuration's cost."""
    if not measured:
        return ("Criterion 1 is decided among val configurations (second amendment); no run "
                "has every cv5 fold in yet.")
    cheapest = min(measured, key=lambda s: s.mean_cost)
    holds = "holds" if cheapest.mean_cost > COST_BAR else "fails"
    return (f"Criterion 1 is decided among val configurations (second amendment); on the "
            f"{len(cheapest.costs)} runs with every cv5 fold in, the cheapest cv5 configuration "
            f"({cheapest.config.name()}) costs {cheapest.mean_cost:.2f}× Baseline II: the "
            f"premise {holds}.")


def _times_text(values: Sequence[float]) -> str:
    interval = mean_interval(values)
    return f"{interval.value:.2f}× [{interval.low:.2f}, {interval.high:.2f}]"


def _mean_text(values: Sequence[float]) -> str:
    return mean_interval(values).fraction() if values else "—"


def _points_text(values: Sequence[float]) -> str:
    """Values already in points: mean [t interval]."""
    if not values:
        return "—"
    interval = mean_interval(values)
    if math.isnan(interval.low):
        return with_minus(f"{interval.value:+.2f}")
    return with_minus(f"{interval.value:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}]")


def _regret_word(c: Comparison) -> str:
    """A regret difference's word: lower regret is better."""
    return {"better": "higher regret", "worse": "lower regret"}.get(c.word, c.word)


def _regret_line(name: str, runs: Sequence[RunRecord], datasets: list[str],
                 regrets: list[float]) -> str:
    def mean_on(dataset: str) -> str:
        mine = [g for r, g in zip(runs, regrets, strict=True) if r.dataset == dataset]
        return f"{sum(mine) / len(mine):.1f}" if mine else "—"

    per = ", ".join(f"{d} {mean_on(d)}" for d in datasets)
    return f"| {name} | {_points_text(regrets)} | {per} |"
