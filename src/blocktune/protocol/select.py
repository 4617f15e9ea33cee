"""Selection rules: which candidate of a strategy to fine-tune, from the search's rows alone.

A rule is a pure function of what the search measured on val (never test): the candidates'
rows of one strategy, the baselines' rows, and, for the rules that ask for them, re-trainings
of a few candidates on the swapped fold (trained on val, scored on search). Each rule is
registered under its name; ``--select NAME`` picks one, and ``benchmarks/selection.py``
measures every registered rule against the oracle.

Rows are :class:`blocktune.core.records.CandidateRow`; a rule returns one of them, or None when the
strategy has no finished candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from blocktune.core.errors import BlocktuneError
from blocktune.core.methods import BASELINE_I, BASELINES, label
from blocktune.core.records import CandidateRow, rank_key
from blocktune.core.registry import RULES
from blocktune.core.stats import standard_error
from blocktune.models.groups import in_last_quarter, last_quarter_start


@dataclass(frozen=True)
class SearchView:
    """What a rule may look at.

    Args:
        rows: the strategy's finished candidates (``status`` ok), in search order.
        num_layers: layers of the model (for position-based rules).
        val_labels: the val split's labels in ``splits.json`` order, to score ``val_pred``.
        refits: ``layer_indices`` → the row of that group re-trained on the swapped fold.
    """

    rows: Sequence[CandidateRow]
    num_layers: int = 0
    val_labels: np.ndarray | None = None
    refits: dict[str, CandidateRow] = field(default_factory=dict)

    def val_correct(self, row: CandidateRow) -> np.ndarray | None:
        """Per val image, whether the candidate's best epoch got it right (None if unsaved)."""
        if self.val_labels is None or row.val_pred is None \
                or len(row.val_pred) != len(self.val_labels):
            return None
        return np.asarray(row.val_pred) == self.val_labels


@dataclass(frozen=True)
class Rule:
    name: str
    help: str
    pick: Callable[[SearchView], CandidateRow | None]
    # groups (``layer_indices``) the rule needs re-trained on the swapped fold before it picks
    refits: Callable[[SearchView], list[str]] = lambda view: []
    # for a rule that picks from part of the model only: layers → the first layer of that part
    picks_from: Callable[[int], int] | None = None
    # the rule reads the val loss, which --score-on val+train does not pool: it refuses it
    reads_loss: bool = False




def register_rule(name: str, help: str, refits: Callable[[SearchView], list[str]] | None = None,
                  picks_from: Callable[[int], int] | None = None, reads_loss: bool = False):
    def wrap(pick: Callable[[SearchView], CandidateRow | None]):
        RULES[name] = Rule(name, help, pick, refits or (lambda view: []), picks_from,
                           reads_loss)
        return pick
    return wrap


def get_rule(name: str) -> Rule:
    if name not in RULES:
        raise BlocktuneError(f"unknown selection rule {name!r}: choose from {', '.join(RULES)}")
    return RULES[name]


def group_of(row: CandidateRow) -> tuple[int, ...]:
    return tuple(int(i) for i in row.layer_indices.split(",") if i)


@register_rule("max-val", "the paper's: highest val accuracy (ties: fewer trained parameters)")
def max_val(view: SearchView) -> CandidateRow | None:
    return min(view.rows, key=rank_key, default=None)


@register_rule("val-loss", "lowest val cross-entropy at the kept epoch (ties: higher val accuracy)",
               reads_loss=True)
def val_loss(view: SearchView) -> CandidateRow | None:
    return min(view.rows, key=lambda r: (r.val_loss, *rank_key(r)), default=None)


@register_rule("last-quarter", "the conference paper's: the best (max-val) candidate lying in the "
               "last quarter of the layers; max-val when none does",
               picks_from=last_quarter_start)
def last_quarter(view: SearchView) -> CandidateRow | None:
    late = [r for r in view.rows if in_last_quarter(group_of(r), view.num_layers)]
    return max_val(SearchView(late or list(view.rows)))


def within_one_se(view: SearchView) -> list[CandidateRow]:
    """Candidates whose val accuracy is within one standard error of the best's.

    Paired where per-image val predictions are saved: the standard error of the mean
    per-image difference against the best candidate on the same val images (two candidates
    that miss the same images differ less than their separate errors suggest); otherwise the
    binomial standard error of the best's accuracy. (Val only: ``one-se`` reads the val loss,
    so a pooled score is refused with it.)"""
    best = max_val(view)
    if best is None:
        return []
    best_correct = view.val_correct(best)
    out = []
    for row in view.rows:
        correct = view.val_correct(row)
        if best_correct is not None and correct is not None:
            diff = best_correct.astype(np.float64) - correct.astype(np.float64)
            gap = float(diff.mean())
            se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
        else:
            gap = best.val_acc - row.val_acc
            se = standard_error(best.val_acc, len(view.val_labels)) \
                if view.val_labels is not None else 0.0
        if gap <= se + 1e-12:
            out.append(row)
    return out


@register_rule("one-se", "noise-aware: of the candidates within one paired standard error of "
               "the best val accuracy, the one with the lowest val loss", reads_loss=True)
def one_se(view: SearchView) -> CandidateRow | None:
    return val_loss(SearchView(within_one_se(view)))


SMOOTH_KERNEL = (0.25, 0.5, 0.25)  # left neighbour, the candidate, right neighbour


@register_rule("smooth", "noise-aware: val accuracy smoothed over each candidate and its "
               "neighbours in model order (weights 1/4, 1/2, 1/4: neighbouring groups train "
               "alike), highest wins")
def smooth(view: SearchView) -> CandidateRow | None:
    ordered = sorted(view.rows, key=lambda r: (min(group_of(r)), max(group_of(r))))
    if not ordered:
        return None
    accs = [r.ranking_score for r in ordered]
    scores = []
    for i in range(len(ordered)):
        # at the ends the missing neighbour's weight is dropped and the rest renormalised
        pairs = [(w, accs[i + offset]) for offset, w in zip((-1, 0, 1), SMOOTH_KERNEL,
                                                            strict=True)
                 if 0 <= i + offset < len(accs)]
        scores.append(sum(w * a for w, a in pairs) / sum(w for w, _ in pairs))
    best = min(range(len(ordered)), key=lambda i: (-scores[i], *rank_key(ordered[i])))
    return ordered[best]


TWO_FOLD_TOP = 5


def _two_fold_candidates(view: SearchView) -> list[str]:
    return [r.layer_indices for r in sorted(view.rows, key=rank_key)[:TWO_FOLD_TOP]]


@register_rule("two-fold", f"noise-aware: the top {TWO_FOLD_TOP} by val accuracy are trained again "
               "with search and val swapped; the best mean accuracy over both folds wins "
               f"(+{TWO_FOLD_TOP} trainings)", refits=_two_fold_candidates)
def two_fold(view: SearchView) -> CandidateRow | None:
    scored = []
    for indices in _two_fold_candidates(view):
        row = next(r for r in view.rows if r.layer_indices == indices)
        refit = view.refits.get(indices)
        if refit is None or refit.status != "ok":
            continue
        scored.append((-(row.ranking_score + refit.ranking_score) / 2, *rank_key(row), row))
    if not scored:
        return max_val(view)
    return min(scored, key=lambda item: item[:-1])[-1]


def pick(rule: str, view: SearchView) -> CandidateRow | None:
    return get_rule(rule).pick(view)


def record_choice(rule_name: str, view: SearchView) -> tuple[CandidateRow | None, dict]:
    """The rule's pick, and what to record of it (``choices.json``): the rule, how many
    candidates it chose among, the part of the model it picks from, whether it had to fall
    back, and the chosen group with its search score. The report and the model card read this
    rather than re-derive the choice."""
    rule = get_rule(rule_name)
    chosen = rule.pick(view)
    start = rule.picks_from(view.num_layers) if rule.picks_from else None
    fallback = None
    if chosen is not None and start is not None and min(group_of(chosen), default=0) < start:
        fallback = (f"no finished candidate lies in layers {start}–{view.num_layers - 1}, where "
                    f"the `{rule.name}` rule picks from: it fell back to max-val over all")
    return chosen, {
        "rule": rule.name, "candidates": len(view.rows), "num_layers": view.num_layers,
        "region": None if start is None else [start, view.num_layers - 1],
        "fallback": fallback,
        "layer_indices": None if chosen is None else chosen.layer_indices,
        "layers": None if chosen is None else chosen.layers,
        "search_val_acc": None if chosen is None else chosen.val_acc}


def searched_strategies(rows: list[CandidateRow]) -> list[str]:
    """The searched strategies (methods) of ``rows`` in search order, baselines left out."""
    return [m for m in dict.fromkeys(r.strategy for r in rows) if m not in BASELINES]


def choose(rows: list[CandidateRow], method: str) -> CandidateRow | None:
    """The paper's rule (max-val): highest val accuracy; ties to fewer trained parameters,
    then to the earlier searched."""
    return pick("max-val", SearchView([r for r in rows if r.strategy == method
                                        and r.status == "ok"]))


def notices(seed: int, rows: list[CandidateRow]) -> list[str]:
    """One line per strategy none of whose candidates beat Baseline I's search score on val."""
    baseline = next((r for r in rows if r.strategy == BASELINE_I and r.status == "ok"),
                    None)
    if baseline is None:
        return []
    out = []
    for method in searched_strategies(rows):
        ok = [r.val_acc for r in rows if r.strategy == method and r.status == "ok"]
        if ok and max(ok) <= baseline.val_acc:
            out.append(f"seed {seed}: no {label(method)} candidate beat Baseline I on val in "
                       f"the search (best {max(ok):.3f}, Baseline I "
                       f"{baseline.val_acc:.3f}): the head alone does as well here")
    return out
