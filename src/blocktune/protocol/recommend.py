"""The recommendation: which final blocktune hands over, by a named procedure.

``val`` — the final with the best val accuracy (ties as :func:`blocktune.core.records.rank_key`:
fewer trained parameters, then the earlier method). ``cvK`` — the method whose recipe, trained
on K−1 folds of the learning images and scored on the held-out fold, has the best pooled
out-of-fold accuracy (the same ties). ``paired`` — a prior method (LP-BW) is handed over
unless a challenger beats it on the same val images by a one-sided exact sign test on the images
where exactly one of the two is right (``benchmarks/PROTOCOL-sizes.md``); a tie stays with the
prior. A method's name (``lp-bw``) — that method always, the val rule only when its final
failed. Pure functions of the recorded rows: the product, the report and the benchmarks'
protocols rank with this one code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence

import numpy as np

from blocktune.core.methods import FIXED_CHOICES, PAIRED, PAIRED_PRIOR, cv_folds_of
from blocktune.core.records import CvRow, FinalRow, rank_key
from blocktune.core.stats import sign_test

SWITCH_P = 0.10  # a challenger's one-sided sign-test p must be at most this


def cv_scores(cv: Sequence[CvRow], folds: int) -> dict[str, tuple[int, int, float]]:
    """Per method with all ``folds`` folds done: (correct, images, seconds) pooled over them."""
    out: dict[str, tuple[int, int, float]] = {}
    for method in dict.fromkeys(r.method for r in cv):
        mine = {r.fold: r for r in cv if r.method == method and r.status == "ok"}
        if set(mine) == set(range(folds)):
            out[method] = (sum(r.correct for r in mine.values()),
                           sum(r.fold_images for r in mine.values()),
                           sum(r.seconds for r in mine.values()))
    return out


def paired_choice(finals: Sequence[FinalRow], val_labels: Sequence[int], prior: str = PAIRED_PRIOR,
                  switch_p: float = SWITCH_P) -> tuple[FinalRow, dict[str, float]] | None:
    """The ``paired`` rule: ``prior``'s final unless a challenger is right on more val images
    where exactly one of the two is right (``n+ > n−``) with a one-sided sign-test p at most
    ``switch_p``; of those qualifying, the higher val accuracy, then the smaller p, then
    :func:`rank_key`. Returns the chosen row and every challenger's p; None without finals.
    Without the prior's final (or its val predictions) the ``val`` rule decides."""
    ok = [r for r in finals if r.status == "ok"]
    if not ok:
        return None
    truth = np.asarray(val_labels)
    base = next((r for r in ok if r.method == prior), None)

    def correct(row: FinalRow) -> np.ndarray | None:
        if row.val_pred is None or len(row.val_pred) != len(truth) or len(truth) == 0:
            return None
        return np.asarray(row.val_pred) == truth

    if base is None or (base_right := correct(base)) is None:
        return min(ok, key=rank_key), {}
    p_values, qualified = {}, []
    for row in ok:
        if row.method == prior or (right := correct(row)) is None:
            continue
        wins, losses = int(np.sum(right & ~base_right)), int(np.sum(~right & base_right))
        p_values[row.method] = sign_test(wins, losses)
        if wins > losses and p_values[row.method] <= switch_p:
            qualified.append(row)
    if not qualified:
        return base, p_values
    return min(qualified, key=lambda r: (-r.val_acc, p_values[r.method], *rank_key(r))), p_values


def recommend(finals: Sequence[FinalRow], procedure: str = "val",
              cv: Sequence[CvRow] = (), among: Collection[str] | None = None,
              val_labels: Sequence[int] | None = None) -> dict | None:
    """The recommended method among ``finals`` (those in ``among`` when given) and how it was
    chosen: ``{"rule", "method", "score", "images", "candidates", "seconds"}`` (``paired``:
    also ``prior`` and the challengers' ``p`` values); None when no final (or, for ``cvK``, no
    method with every fold) is there to choose from. ``paired`` needs ``val_labels``."""
    ok = [r for r in finals if r.status == "ok" and (among is None or r.method in among)]
    if procedure in FIXED_CHOICES:  # always this method; the val rule only if it failed
        fixed = next((r for r in ok if r.method == procedure), None)
        if fixed is None:
            chosen = recommend(ok, "val")
            return None if chosen is None else {**chosen, "rule": "val", "instead_of": procedure}
        return {"rule": procedure, "method": fixed.method, "score": fixed.val_acc,
                "images": len(fixed.val_pred or []), "candidates": len(ok), "seconds": 0.0}
    if procedure == PAIRED:
        if val_labels is None:
            raise ValueError("the paired rule reads the val labels")
        chosen = paired_choice(ok, val_labels)
        if chosen is None:
            return None
        best, p_values = chosen
        return {"rule": procedure, "method": best.method, "score": best.val_acc,
                "images": len(best.val_pred or []), "candidates": len(ok), "seconds": 0.0,
                "prior": PAIRED_PRIOR, "p": p_values}
    folds = cv_folds_of(procedure)
    if folds is None:
        if not ok:
            return None
        best = min(ok, key=rank_key)
        return {"rule": procedure, "method": best.method, "score": best.val_acc,
                "images": len(best.val_pred or []), "candidates": len(ok), "seconds": 0.0}
    scores = cv_scores(cv, folds)
    scored = [r for r in ok if r.method in scores and scores[r.method][1] > 0]
    if not scored:
        return None
    best = min(scored, key=lambda r: (-scores[r.method][0] / scores[r.method][1],
                                      r.trained_params))
    correct, images, _ = scores[best.method]
    return {"rule": procedure, "method": best.method, "score": correct / images,
            "images": images, "candidates": len(scored),
            "seconds": sum(r.seconds for r in cv if r.method in {s.method for s in scored})}


def recommend_on(finals: Sequence[FinalRow], domain: str, labels: Sequence[int],
                 procedure: str = "val") -> dict | None:
    """``--choose-on``: the recommendation by ``procedure`` (val, paired or a fixed method) with
    the deployment domain's choosing part in the place of val: each final's accuracy and
    per-image predictions there. Nothing else of the run is read (not its val, not the
    domain's test part)."""
    truth = np.asarray(labels)

    def scored(row: FinalRow) -> FinalRow:
        pred = np.asarray(row.domains[domain]["pred"])
        accuracy = float(np.mean(pred == truth)) if len(pred) == len(truth) else math.nan
        return dataclasses.replace(row, val_acc=accuracy, val_pred=pred.tolist())

    rows = [scored(r) for r in finals if r.status == "ok" and domain in r.domains]
    chosen = recommend(rows, procedure, val_labels=labels)
    return None if chosen is None else {**chosen, "on": domain}
