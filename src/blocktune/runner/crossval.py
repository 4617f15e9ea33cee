"""The cross-validated choice (``--choose-by cvK``): each final's method trained on K−1 folds of
the learning images and scored on the held-out fold, once per (group, recipe, fold), recorded in
``cv.csv`` as each finishes, resumable. :mod:`blocktune.protocol.recommend` ranks the pooled scores."""

from __future__ import annotations

import dataclasses
import math
from contextlib import closing

import numpy as np
import torch

from blocktune.core import faults
from blocktune.core.io import damaged
from blocktune.core.methods import final_group, indices_text, label, recipe_of
from blocktune.core.records import CvRow, FinalRow
from blocktune.core.trials import FinalTrial
from blocktune.results.runfolder import check_stated_accuracy
from blocktune.runner.context import SeedContext
from blocktune.training.workbench import cv_fold_name


def check_folds(ctx: SeedContext, rows: list[CvRow]) -> None:
    """Each finished row against its own fold of this split: one prediction per image of the
    fold, and the fold accuracy its predictions give; otherwise ``cv.csv`` is damage (a resume
    must not re-choose, and hand over another model, from a row that contradicts itself)."""
    for row in rows:
        if row.status != "ok":
            continue
        index = torch.tensor(ctx.bench.split[cv_fold_name(row.fold)], dtype=torch.long)
        truth = ctx.bench.images.labels[index].numpy()
        pred = np.asarray(row.fold_pred or [])
        where = f"{label(row.method)}'s fold {row.fold}"
        if row.fold_images != len(truth) or len(pred) != len(truth):
            raise damaged(ctx.files.cv, f"{where} has {len(pred)} predictions of "
                          f"{row.fold_images} images; the fold holds {len(truth)}")
        check_stated_accuracy(ctx.files.cv, f"{where}: fold_acc", row.fold_acc, pred, truth)


def cross_validate(ctx: SeedContext, finals: list[FinalRow]) -> list[CvRow]:
    """Every final's method (its group and recipe) trained on K−1 folds of the learning images
    and scored on the held-out one, once per fold; rows go to ``cv.csv`` as they finish. A
    method that trains the same group the same way as another copies its rows. Returns every
    row of the current finals' groups."""
    if ctx.folds is None:
        return []
    groups = {r.method: indices_text(final_group(r)) for r in finals if r.status == "ok"}
    # a row of a group the method no longer has (its choice changed on a resume) is dropped
    rows = [r for r in ctx.retry_failed(ctx.files.read_cv(), "fold training(s)")
            if groups.get(r.method) == r.layer_indices]
    fold_images = {k: len(ctx.bench.split[cv_fold_name(k)]) for k in range(ctx.folds)}
    check_folds(ctx, rows)

    def key(method: str, fold: int) -> tuple[str, str | None, int]:
        return groups[method], recipe_of(method), fold  # one training per key

    # the row that trained each key, whichever method it was recorded for
    trained = {key(r.method, r.fold): r for r in rows if r.status == "ok" and not r.same_as}

    def record(row: CvRow) -> None:
        rows.append(row.recorded())
        if row.status == "ok" and not row.same_as:
            trained[key(row.method, row.fold)] = rows[-1]
        ctx.files.write_cv(rows)
        faults.point("cv")

    done = {(r.method, r.fold) for r in rows}
    todo = [(m, k) for m in groups for k in range(ctx.folds) if (m, k) not in done]
    fresh: dict[tuple, tuple[str, int]] = {}  # each untrained key, by its first method
    for method, fold in todo:
        if key(method, fold) not in trained:
            fresh.setdefault(key(method, fold), (method, fold))
    trials = [FinalTrial(m, final_group(next(r for r in finals if r.method == m)), math.nan,
                         fold=k) for m, k in fresh.values()]
    if trials:
        ctx.events.on_phase(f"cross-validated choice: {len(trials)} fold trainings "
                                 f"({ctx.folds} folds)")
    with closing(ctx.executor.finals(
            trials, lambda t: ctx.events.on_phase(f"{label(t.method)}: fold {t.fold}"),
            ctx.events.on_epoch)) as results:
        for trial, outcome in results:
            result = outcome.result
            record(CvRow(method=trial.method, fold=trial.fold, layer_indices=groups[
                trial.method], trained_params=result.trainable_params,
                fold_acc=result.best_val_acc, fold_images=fold_images[trial.fold],
                epochs=result.epochs, seconds=result.seconds, status=result.status,
                fold_pred=list(result.val_pred), error=result.error))
    done = {(r.method, r.fold) for r in rows}
    for method, fold in todo:
        source = trained.get(key(method, fold))
        if (method, fold) not in done and source is not None:
            record(dataclasses.replace(source, method=method, seconds=0.0,
                                       same_as=source.method))
    for method in dict.fromkeys(r.method for r in rows if r.status == "failed"):  # said
        fold = next(r for r in rows if r.method == method and r.status == "failed")
        why = fold.error or "no error recorded"
        ctx.events.on_notice(
            f"seed {ctx.seed}: {label(method)}'s fold {fold.fold} failed ({why}): "
            f"{label(method)} is left out of the cross-validated choice; run the same command "
            "to retry it")
    return rows
