"""The recommendation: which final blocktune hands over, by a named procedure.

``val`` — the final with the best val accuracy (ties as :func:`blocktune.records.rank_key`:
fewer trained parameters, then the earlier method). ``cvK`` — the method whose recipe, trained
on K−1 folds of the learning images and scored on the held-out fold, has the best pooled
out-of-fold accuracy (the same ties). Pure functions of the recorded rows: the product, the
report and the benchmarks' protocol rank with this one code.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from blocktune.errors import BlocktuneError
from blocktune.records import CvRow, FinalRow, rank_key


def cv_folds_of(choose_by: str) -> int | None:
    """``val`` → None; ``cvK`` → K (at least 2); anything else one line."""
    if choose_by == "val":
        return None
    match = re.fullmatch(r"cv(\d+)", choose_by)
    if match is None or int(match.group(1)) < 2:
        raise BlocktuneError(f"choose_by = {choose_by!r} is not allowed: val, or cvK with K at "
                             "least 2 folds, e.g. cv5")
    return int(match.group(1))


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


def recommend(finals: Sequence[FinalRow], procedure: str = "val",
              cv: Sequence[CvRow] = (), among: Collection[str] | None = None) -> dict | None:
    """The recommended method among ``finals`` (those in ``among`` when given) and how it was
    chosen: ``{"rule", "method", "score", "images", "candidates", "seconds"}``; None when no
    final (or, for ``cvK``, no method with every fold) is there to choose from."""
    ok = [r for r in finals if r.status == "ok" and (among is None or r.method in among)]
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
