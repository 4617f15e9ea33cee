"""The assessment of a run: its recommendation, every method's accuracies with intervals, and
the paired verdicts against the baselines (Holm-adjusted together), on test and on every
``--test-data`` folder — computed from the run folder's files alone. Rendering them is
:mod:`blocktune.results.report`'s job."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blocktune.core.io import damaged
from blocktune.core.methods import (
    BASELINE_I,
    BASELINE_II,
    BASELINES,
    FIXED_CHOICES,
    PAIRED,
    cv_folds_of,
    label,
)
from blocktune.core.records import FinalRow
from blocktune.core.stats import (
    Comparison,
    Interval,
    accuracy_interval,
    adjust,
    compare,
    compare_over_seeds,
    mean_interval,
    with_minus,
)
from blocktune.data import split_labels
from blocktune.protocol.recommend import recommend
from blocktune.protocol.select import notices
from blocktune.results.publish import TRAINED_ON_LEARNING
from blocktune.results.runfolder import RunFolder, SeedFolder


# -- what a run found, and how sure it is ---------------------------------------------------
@dataclass
class MethodResult:
    """One method's final on one seed, with 95% intervals."""

    method: str
    group: str
    trained_params: int
    val: Interval
    test: Interval
    test_correct: np.ndarray | None  # per test image, for paired comparisons
    # --test-data: per folder, the accuracy with its interval and the per-image outcomes
    domains: dict[str, Interval] = field(default_factory=dict)
    domain_correct: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Assessment:
    """The answer a report and the CLI lead with, computed from the run folder's files."""

    seeds: list[int]
    per_seed: dict[int, dict[str, MethodResult]]
    recommended: str | None  # the method saved as model.safetensors (best final val, 1st seed)
    versus_baselines: list[Comparison]  # every method against each baseline
    versus_recommended: list[Comparison]  # the recommendation against every other method
    test_over_seeds: dict[str, Interval]  # mean test accuracy with its t interval
    notices: list[str] = field(default_factory=list)
    recommendation: dict | None = None  # choices.json's record of the choice (1st seed)
    # --test-data: per folder, every method against each baseline (Holm within the folder)
    domain_verdicts: dict[str, list[Comparison]] = field(default_factory=dict)
    # --choose-by cvK: per seed, the chosen method and both baselines trained again on every
    # learning image (the model handed over is the chosen one's), and the chosen one against
    # each baseline there (Holm over those two)
    learning: dict[int, dict[str, MethodResult]] = field(default_factory=dict)
    versus_learning: list[Comparison] = field(default_factory=list)
    # a choice cut short before it was recorded (cvK, --choose-on): what is still to do
    pending: str | None = None

    def lines(self) -> list[str]:
        """The verdict in plain words, most important first."""
        out = []
        if self.recommended is not None:
            first = self.per_seed[self.seeds[0]]
            best = first[self.recommended]
            others = sorted((r for m, r in first.items() if m != self.recommended),
                            key=lambda r: -r.val.value)
            gap = with_minus(f"{(best.val.value - best.test.value) * 100:+.1f}")
            chosen = self.recommendation or {}
            if chosen.get("rule", "val").startswith("cv"):
                images = int(chosen["images"])
                folds = int(chosen["rule"][2:])
                how = (f"the best pooled out-of-fold accuracy of {chosen['candidates']} methods, "
                       f"each trained on {folds - 1} of {folds} folds of the {images} learning "
                       f"images and scored on the held-out one ({chosen['rule']}): "
                       f"{accuracy_interval(round(chosen['score'] * images), images).fraction()}"
                       f"; the cross-validation took {chosen['seconds']:.0f} s of training")
            else:
                how = _how_chosen(chosen, best, others)
            seed = f" (seed {self.seeds[0]})" if len(self.seeds) > 1 else ""
            again = self.learning.get(self.seeds[0], {})
            if self.recommended in again:
                trained = "; ".join(f"{label(m)} {again[m].test.fraction()}" for m in BASELINES
                                    if m in again and m != self.recommended)
                out.append(f"**Recommended: {label(self.recommended)}** ({best.group}): {how}"
                           f". Trained again on every learning image (nothing held out), the "
                           f"model handed over scores {again[self.recommended].test.fraction()} "
                           f"on test{seed}" + (f"; the baselines trained the same way: {trained}"
                                               if trained else "") + ".")
                out += [f"Trained on every learning image, {c.sentence()}"
                        for c in self.versus_learning]
                out.append("The comparisons below are between the finals trained on search + "
                           "train, val held out:")
            else:
                out.append(f"**Recommended: {label(self.recommended)}** ({best.group}): {how}"
                           + f". Its test accuracy: {best.test.fraction()}{seed}"
                           + f"; its val − test {gap} points: val also steered the finals' "
                           "early stopping and schedule, so a final's val accuracy is "
                           "optimistic, and test is the figure to expect.")
        said = set()
        for comparison in [*self.versus_recommended, *self.versus_baselines]:
            pair = frozenset((comparison.a, comparison.b))
            if pair not in said:  # BW vs Baseline I, or Baseline I vs BW: one of them
                said.add(pair)
                out.append(comparison.sentence())
        return ([self.pending] if self.pending else []) + out + self.notices


def _correct(row: FinalRow, labels: np.ndarray | None) -> np.ndarray | None:
    if row.test_pred is None or labels is None or len(row.test_pred) != len(labels):
        return None
    return np.asarray(row.test_pred) == labels


def _method_results(seed_files: SeedFolder, domains: dict[str, dict] | None = None,
                    rows: list[FinalRow] | None = None) -> dict[str, MethodResult]:
    """Per method, its final's results (``rows``: these instead of ``finals.csv``'s)."""
    finals = [r for r in (seed_files.read_finals() if rows is None else rows)
              if r.status == "ok"]
    labels = split_labels(seed_files.splits) if seed_files.splits.exists() else {}
    n_val, n_test = len(labels.get("val", [])), len(labels.get("test", []))
    domain_labels = {name: np.asarray(d["labels"]) for name, d in (domains or {}).items()}
    out = {}
    for row in finals:
        val_acc, test_acc = row.val_acc, row.test_acc
        result = MethodResult(
            row.method, row.group, row.trained_params,
            accuracy_interval(round(val_acc * n_val), n_val) if n_val and not math.isnan(
                val_acc) else Interval(val_acc, math.nan, math.nan),
            accuracy_interval(round(test_acc * n_test), n_test) if n_test else
            Interval(test_acc, math.nan, math.nan),
            _correct(row, labels.get("test")))
        for name, scored in row.domains.items():
            truth = domain_labels.get(name)
            pred = np.asarray(scored["pred"])
            if truth is not None and len(truth) == len(pred):
                result.domain_correct[name] = pred == truth
                result.domains[name] = accuracy_interval(int(result.domain_correct[name].sum()),
                                                         len(truth))
            else:
                result.domains[name] = Interval(float(scored["acc"]), math.nan, math.nan)
        out[row.method] = result
    return out


def _paired(a: str, b: str, per_seed: dict[int, dict[str, MethodResult]], seeds: list[int],
            domain: str | None = None) -> Comparison | None:
    """A − B on the same test images (or the same images of a ``--test-data`` folder): paired
    per image on one seed, over seeds as the mean of per-seed differences."""
    def accuracy(r: MethodResult) -> Interval | None:
        return r.test if domain is None else r.domains.get(domain)

    def correct(r: MethodResult) -> np.ndarray | None:
        return r.test_correct if domain is None else r.domain_correct.get(domain)

    both = [s for s in seeds if a in per_seed[s] and b in per_seed[s]
            and accuracy(per_seed[s][a]) is not None and accuracy(per_seed[s][b]) is not None]
    if not both:
        return None
    if len(both) == 1:
        ra, rb = per_seed[both[0]][a], per_seed[both[0]][b]
        if correct(ra) is None or correct(rb) is None:  # a run before predictions
            diff = accuracy(ra).value - accuracy(rb).value
            return Comparison(label(a), label(b), Interval(diff, math.nan, math.nan), math.nan,
                              0)
        return compare(label(a), label(b), correct(ra), correct(rb), seed=both[0])
    diffs = [accuracy(per_seed[s][a]).value - accuracy(per_seed[s][b]).value for s in both]
    images = sum(len(correct(per_seed[s][a])) for s in both
                 if correct(per_seed[s][a]) is not None)
    return compare_over_seeds(label(a), label(b), diffs, images)


def _holm_block(*lists: list[Comparison]) -> list[list[Comparison]]:
    """The verdict block's comparisons (each pair once, as :meth:`Assessment.lines` prints
    them) with their p-values Holm-adjusted together; every list gets the adjusted copies."""
    unique: dict[frozenset, Comparison] = {}
    for comparison in (c for group in lists for c in group):
        unique.setdefault(frozenset((comparison.a, comparison.b)), comparison)
    adjusted = dict(zip(unique, adjust(list(unique.values())), strict=True))
    return [[dataclasses.replace(c, p_adjusted=(same := adjusted[frozenset((c.a, c.b))]
                                                ).p_adjusted, family=same.family)
             for c in group] for group in lists]


def _how_chosen(chosen: dict, best: MethodResult, others: list[MethodResult]) -> str:
    """How a val-read choice (val, paired, a fixed method) picked ``best``, in words."""
    against = "; ".join(f"{label(r.method)} {r.val.fraction()}" for r in others)
    rule = chosen.get("rule", "val")
    if chosen.get("on"):
        on = chosen["on"]
        scores = "; ".join(f"{label(r.method)} {r.domains[on].fraction()}" for r in others
                           if on in r.domains)
        mine = best.domains[on].fraction() if on in best.domains else "–"
        return (f"chosen on `{on}` ({chosen['images']} labelled images of the deployment "
                f"domain, `--choose-on`) by `{rule}`, not on val: {mine}"
                + (f", against {scores}" if scores else ""))
    if rule == PAIRED:
        p_values = chosen.get("p") or {}
        tests = "; ".join(f"{label(m)} p = {p:.3g}" for m, p in p_values.items())
        prior = label(chosen.get("prior", "lp-bw"))
        if best.method == chosen.get("prior"):
            return (f"the prior, {prior}, kept: no other final was right on clearly more of the "
                    f"same {chosen['images']} val images (one-sided sign test on the images "
                    f"where exactly one is right, p ≤ 0.10 to switch: {tests}); val "
                    f"{best.val.fraction()}" + (f", against {against}" if others else ""))
        return (f"right on clearly more of the same {chosen['images']} val images than the "
                f"prior, {prior} (one-sided sign test, p ≤ 0.10 to switch: {tests}); val "
                f"{best.val.fraction()}" + (f", against {against}" if others else ""))
    if rule in FIXED_CHOICES:
        by = ("by the default (`--choose-by auto`: the pre-registered protocol's answer, "
              "docs/results.md)" if chosen.get("auto") else f"by `--choose-by {rule}`")
        return (f"handed over {by}, whatever the val accuracies (val "
                f"{best.val.fraction()}" + (f"; {against}" if others else "") + ")")
    instead = f" (`--choose-by {chosen['instead_of']}`'s final failed)" \
        if chosen.get("instead_of") else ""
    return f"the best final val accuracy{instead}, {best.val.fraction()}" + (
        f", against {against}" if others else "")


def _check_handed_over(files: RunFolder, seed: int, recommended: str | None,
                       learning: dict[int, dict]) -> None:
    """The model a run published trained on every learning image has its row in the first
    seed's ``learning_finals.csv``: without it the report would present the search + train
    final as what was handed over."""
    if recommended is None or not files.has_model():
        return
    card = files.model_card()
    if card.get("method") != recommended or card.get("trained_on") != TRAINED_ON_LEARNING \
            or recommended in learning.get(seed, {}):
        return
    raise damaged(files.seed(seed).learning_finals,
                  f"{files.model_json.name} hands over {label(recommended)} trained on every "
                  f"learning image, but this file has no ok row for it (missing or cut short): "
                  "restore it, or run the same command to train it again")


def assess(folder: str | Path) -> Assessment:
    """Recommendation, paired verdicts and intervals of a run, from its files alone."""
    files = RunFolder(folder)
    config = files.saved_config()
    seeds = [int(s) for s in config["seeds"]]
    domains = files.read_test_domains()
    per_seed = {s: _method_results(files.seed(s), domains) for s in seeds}
    methods = list(dict.fromkeys(m for s in seeds for m in per_seed[s]))
    first = [r for r in files.seed(seeds[0]).read_finals() if r.status == "ok"]
    # the model run() published: the recorded choice (by its procedure); a folder written
    # before choices were recorded: the one ranking, on the final val accuracies
    recommendation = files.seed(seeds[0]).read_recommendation() if first else None
    if recommendation is not None and recommendation.get("method") not in {
            r.method for r in first}:
        recommendation = None  # its final is gone: not a choice among what is here
    # a choice that trains more after the finals (cvK) or reads another folder (--choose-on),
    # cut short before it was recorded, is pending: no final is presented as its answer
    choose_by = config.get("choose_by")
    chooses_later = config.get("choose_on") or (
        choose_by not in (None, "auto") and cv_folds_of(str(choose_by)) is not None)
    pending = recommendation is None and bool(first) and bool(chooses_later)
    fallback = recommend(first, "val") if recommendation is None and not pending else None
    recommended = (recommendation or fallback or {}).get("method")
    versus_baselines = [c for m in methods if m not in BASELINES for b in BASELINES
                        if (c := _paired(m, b, per_seed, seeds)) is not None]
    if BASELINE_I in methods and BASELINE_II in methods:
        versus_baselines.append(_paired(BASELINE_II, BASELINE_I, per_seed, seeds))
    versus_recommended = [c for m in methods if recommended and m != recommended
                          if (c := _paired(recommended, m, per_seed, seeds)) is not None]
    versus_recommended, versus_baselines = _holm_block(versus_recommended, versus_baselines)
    test_over_seeds = {}
    for m in methods:
        values = [per_seed[s][m].test for s in seeds if m in per_seed[s]]
        test_over_seeds[m] = values[0] if len(values) == 1 else \
            mean_interval([v.value for v in values])
    found = [n for s in seeds for n in notices(s, files.seed(s).read_candidates())]
    waiting = None
    if pending:
        how = (f"the cross-validated choice ({choose_by})" if not config.get("choose_on")
               else "the choice on the --choose-on folder")
        waiting = (f"**Recommended: pending** — {how} is not finished, so no model is handed "
                   "over yet; run the same command to resume it")
    domain_verdicts = {name: adjust([c for m in methods if m not in BASELINES for b in BASELINES
                                     if (c := _paired(m, b, per_seed, seeds, name)) is not None])
                       for name in domains}
    # a cvK choice's finals on every learning image (a folder resumed with --choose-by val
    # keeps them on disk, but hands over its val choice: they are not this run's answer)
    by_cv = (recommendation or {}).get("rule", "val").startswith("cv")
    learning = {s: mine for s in seeds if by_cv and (mine := _method_results(
        files.seed(s), domains, files.seed(s).read_learning_finals()))}
    _check_handed_over(files, seeds[0], recommended, learning)
    versus_learning = adjust([c for b in BASELINES if recommended and b != recommended
                              if (c := _paired(recommended, b, learning, list(learning)))
                              is not None]) if learning else []
    return Assessment(seeds, per_seed, recommended, versus_baselines, versus_recommended,
                      test_over_seeds, found, recommendation, domain_verdicts, learning,
                      versus_learning, waiting)


def training_cost(folder: str | Path, seed: int) -> dict | None:
    """What one seed's run spent training, from its records: the seconds of every distinct
    search training, final, fold and training on every learning image, beside its own Baseline
    II final's (one full fine-tune of this split, exactly what ``finetune --train all`` trains);
    None without a finished Baseline II final."""
    files = RunFolder(folder).seed(seed)
    finals = files.read_finals()
    baseline = next((r for r in finals if r.method == BASELINE_II and r.status == "ok"), None)
    if baseline is None or baseline.seconds <= 0:
        return None
    parts = {"search": sum(r.seconds for r in files.read_candidates() if not r.same_as),
             "finals": sum(r.seconds for r in finals if not r.same_as),
             "cross-validation": sum(r.seconds for r in files.read_cv() if not r.same_as),
             "on every learning image": sum(r.seconds for r in files.read_learning_finals())}
    total = sum(parts.values())
    return {"seconds": total, "baseline_ii": baseline.seconds,
            "ratio": total / baseline.seconds, "parts": {k: v for k, v in parts.items() if v}}
