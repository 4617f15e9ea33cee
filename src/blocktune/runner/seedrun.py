"""The steps of one seed of the protocol (docs/method.md), each acting on the seed's
:class:`~blocktune.runner.context.SeedContext`: search the candidates, refit what a rule asks,
fine-tune the choices and both baselines (:mod:`blocktune.runner.finals`), cross-validate when
asked (:mod:`blocktune.runner.crossval`), recommend. :func:`blocktune.runner.search.run` drives
them seed by seed.

Everything a seed finishes is on disk the moment it finishes, written atomically into the run
folder (:mod:`blocktune.results.runfolder` owns its layout). Running the same command on the same
folder skips what is finished and gives the same tables.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import time
from contextlib import closing
from pathlib import Path

from blocktune.core import faults
from blocktune.core.config import auto_notice
from blocktune.core.methods import BASELINES, FIXED_CHOICES, indices_text, label, parse_indices
from blocktune.core.records import LEARNING, CandidateRow, FinalRow
from blocktune.core.trials import Trial
from blocktune.data import (
    learning_images,
)
from blocktune.data.target import part_names
from blocktune.models.groups import UNRESTRICTED, candidates
from blocktune.protocol.plan import (
    progress,
    search_wave,
)
from blocktune.protocol.recommend import recommend, recommend_on
from blocktune.protocol.select import get_rule, notices, searched_strategies
from blocktune.runner.context import SeedContext
from blocktune.runner.crossval import cross_validate
from blocktune.runner.finals import run_finals, run_learning_finals
from blocktune.training.train import TrainResult

log = logging.getLogger(__name__)


def plan_notes(ctx: SeedContext) -> list[str]:
    """Per strategy the rule's region restricts: how many candidates are planned, and why."""
    options = ctx.options()
    if options.picks_from is None:
        return []
    start = options.picks_from(len(ctx.walk.layers))
    notes = []
    for strategy in ctx.config.strategies:
        if strategy in UNRESTRICTED:
            continue
        planned = len(candidates(ctx.walk, strategy, options))
        every = len(candidates(ctx.walk, strategy,
                               dataclasses.replace(options, picks_from=None)))
        if planned < every:
            notes.append(f"{label(strategy)}: {planned} of {every} candidates planned: the "
                         f"`{ctx.config.select}` rule picks from layers {start}–"
                         f"{len(ctx.walk.layers) - 1} only (--search-all trains all)")
    return notes


def progress_of(ctx: SeedContext, rows: list[CandidateRow]) -> list[tuple[str, int, int]]:
    """(method, finished, planned) of this seed's search."""
    return progress(ctx.settings(), rows, ctx.planned)


# -- search ------------------------------------------------------------------------
def search(ctx: SeedContext) -> tuple[list[CandidateRow], bool]:
    """Train every candidate not yet in ``candidates.csv``; returns (rows, complete).

    The plan (:func:`blocktune.protocol.plan.search_wave`) gives the next wave of trials; the
    executor runs them; each row is appended as it comes back. With ``prune``, a
    strategy's candidates climb rungs of :func:`blocktune.core.trials.rungs` epochs and only the
    best third goes on, from where it stopped: its training state is saved at the rung
    (``rungs/``), so a survivor's row is exactly the row an unpruned search gives it. Every
    rung's result is a row (``status`` ``rung``), so a resume picks up mid-rung; a lost
    rung state is recomputed from the pretrained weights, with the same result.

    A candidate whose group another strategy has already trained for as many epochs (the
    ``quarter`` candidates in a ``block`` search, a timm stage that is also a block) is
    not trained again: training depends only on the group, the seed and the data, so its
    row is that one's, with ``same_as`` naming it and no seconds of its own.
    """
    recorded = ctx.files.read_candidates()
    rows = ctx.retry_failed(recorded, "search trial(s)")
    if len(rows) != len(recorded):  # failed rows dropped: the plan trains them again
        ctx.files.write_candidates(rows)
    if rows:
        ctx.events.on_recorded(rows)
    for note in plan_notes(ctx):
        ctx.events.on_phase(note)
    if rows:  # a resumed run says what it skips
        ctx.events.on_phase(f"resuming seed {ctx.seed}: " + ", ".join(
            f"{done} of {total} {label(method) if method != 'baselines' else method} "
            f"{'candidates ' if method != 'baselines' else ''}done"
            for method, done, total in progress_of(ctx, rows)))
    started = time.perf_counter()
    budget = ctx.config.time_budget
    best = max((r.val_acc for r in rows if r.strategy not in BASELINES and r.status == "ok"),
               default=0.0)

    def keep_going() -> bool:  # asked before each trial starts, by every executor
        if faults.spent():
            return False
        return budget is None or time.perf_counter() - started <= budget

    def record(row: CandidateRow) -> None:
        nonlocal best
        rows.append(row)
        ctx.files.write_candidates(rows)
        faults.point("candidate")
        if row.status == "ok" and row.strategy not in BASELINES:
            best = max(best, row.val_acc)
        ctx.events.on_candidate_end(row, best)

    while wave := search_wave(ctx.settings(), rows, ctx.planned):
        by_key = {r.key: r for r in rows}
        copies = [t for t in wave if t.copy_of is not None]
        for position, trial in enumerate(copies):  # the progress shows every row
            ctx.events.on_candidate_start(trial.method, position, len(wave))
            twin = by_key[trial.copy_of]
            record(dataclasses.replace(twin, strategy=trial.method, index=trial.index,
                                       seconds=0.0,
                                       same_as=f"{twin.strategy} #{twin.index}"))
        trainable = [t for t in wave if t.copy_of is None]
        if trainable and ctx.config.cache:
            ctx.events.on_phase(f"caching activations at {len(trainable)} cuts")
        checkpoints = {t.key: state for t in trainable if t.resume_rung and (
            state := ctx.files.take_rung_state(t.method, t.group, ctx.bench.device)) is not None}
        started_in_wave = functools.partial(_start, ctx, len(copies), len(wave))
        finished = 0
        # closed the moment the driver stops listening (an error, Ctrl-C): Ray then ends
        # its run at once instead of finishing the wave
        with closing(ctx.executor.search(trainable, checkpoints, keep_going,
                                          started_in_wave, ctx.events.on_epoch)) as done:
            for trial, result in done:
                if result.checkpoint is not None and not trial.final:
                    ctx.files.save_rung_state(trial.method, trial.group,
                                               result.checkpoint)
                status = result.status if trial.final or result.status != "ok" else "rung"
                record(_row(ctx, trial.method, trial.index, trial.group, result,
                                 trial.epochs, status))
                finished += 1
        if finished < len(trainable):
            log.warning("time budget of %.0f s spent: %d trials left for a resume",
                        budget or 0, len(trainable) - finished)
            return rows, False
    shutil.rmtree(ctx.files.rungs, ignore_errors=True)  # the pruned ones' states
    return rows, True


def _start(ctx: SeedContext, offset: int, total: int, trial: Trial, position: int,
           count: int) -> None:
    """A trial of a wave starts: its place counts the wave's copies before it."""
    ctx.events.on_candidate_start(trial.method, offset + position, total)


def _row(ctx: SeedContext, method: str, index: int, group: tuple[int, ...] | None,
         result: TrainResult,
         rung: int, status: str) -> CandidateRow:
    return CandidateRow(
        strategy=method, rung=rung, index=index, layers=ctx.group_text(group),
        layer_indices=indices_text(group), first=group[0] if group else None,
        last=group[-1] if group else None, trained_params=result.trainable_params,
        val_acc=result.best_val_acc, val_loss=result.best_val_loss, epochs=result.epochs,
        best_epoch=result.best_epoch, seconds=result.seconds, status=status,
        error=result.error, val_curve=list(result.val_curve),
        loss_curve=list(result.loss_curve), val_loss_curve=list(result.val_loss_curve),
        val_pred=list(result.val_pred), **_score(ctx, result)).recorded()


def _score(ctx: SeedContext, result: TrainResult) -> dict:
    """A row's score: its val accuracy, pooled with the train split's when it was scored
    there too (counts of correct images, so the pooled accuracy is exact)."""
    val_images = len(ctx.split["val"])
    if not result.pool_images:
        return {"score": result.best_val_acc, "score_images": val_images}
    correct = round(result.best_val_acc * val_images) + result.pool_correct
    images = val_images + result.pool_images
    return {"score": correct / images, "score_images": images,
            "score_seconds": result.pool_seconds}


# -- selection ---------------------------------------------------------------------
def refit(ctx: SeedContext, rows: list[CandidateRow], rules: list[str] | None = None
          ) -> list[CandidateRow]:
    """Train the groups the selection rules ask for on the swapped fold (trained on val,
    scored on search), once each; rows go to ``refits.csv``. Returns every refit row."""
    refits = ctx.files.read_refits()
    have = {(r.strategy, r.layer_indices) for r in refits}
    epochs = ctx.settings().epochs
    todo: list[Trial] = []
    for method in searched_strategies(rows):
        view = ctx.view(rows, method, refits)
        for indices in dict.fromkeys(i for name in (rules or [ctx.config.select])
                                     for i in get_rule(name).refits(view)):
            if (method, indices) not in have:
                row = next(r for r in view.rows if r.layer_indices == indices)
                todo.append(Trial(method, row.index, parse_indices(indices), epochs))
                have.add((method, indices))

    def start(trial: Trial, position: int, total: int) -> None:
        ctx.events.on_phase(f"{label(trial.method)}: {ctx.group_text(trial.group)} on "
                             "the swapped fold")

    with closing(ctx.executor.search(todo, {}, lambda: True, start, ctx.events.on_epoch,
                                      train_split="val", val_split="search")) as done:
        for trial, result in done:
            refits.append(_row(ctx, trial.method, trial.index, trial.group, result,
                                    result.epochs, result.status))
            ctx.files.write_refits(refits)
    return refits


# -- the recommendation ------------------------------------------------------------
def recommend_final(ctx: SeedContext, finals: list[FinalRow]) -> dict | None:
    """The recommendation by ``--choose-by``, recorded in ``choices.json``."""
    cv = cross_validate(ctx, finals)
    if ctx.config.choose_on:  # the deployment domain's choosing part, not val
        choosing, _ = part_names(ctx.config.choose_on)
        labels = next(d for d in ctx.bench.domains if d.name == choosing).labels.tolist()
        chosen = recommend_on(finals, choosing, labels, ctx.config.choose_by)
    else:
        chosen = recommend(finals, ctx.config.choose_by, cv, val_labels=ctx.val_labels)
    if chosen is not None and ctx.given.choose_by is None and chosen["rule"] in FIXED_CHOICES:
        chosen = {**chosen, "auto": True}  # the protocol's method, not the user's flag
    if chosen is not None:
        ctx.files.write_recommendation(chosen)
    return chosen


def run_seed(ctx: SeedContext) -> tuple[FinalRow, Path] | None:
    """Search, refits, finals and the recommendation of one seed: the final to hand over and
    its weights file (under ``cvK``, the chosen method trained on every learning image), or
    None when the search is left for a resume or nothing could be recommended."""
    if ctx.seed == ctx.config.seeds[0] and ctx.config != ctx.given:
        # what the auto keys became, said once per run (finetune decides none of them)
        ctx.events.on_notice(auto_notice(ctx.given, ctx.config, learning_images(ctx.split),
                                         len(ctx.bench.images.classes)))
    rows, complete = search(ctx)
    if not complete:
        log.warning("seed %d: search not finished, final fine-tunes wait for a resume",
                    ctx.seed)
        return None
    for notice in notices(ctx.seed, rows):
        ctx.events.on_notice(notice)
    refits = refit(ctx, rows)
    finals = run_finals(ctx, rows, refits)
    chosen = recommend_final(ctx, finals)
    if chosen is None:
        return None
    best = next(r for r in finals if r.method == chosen["method"])
    if ctx.folds is None:
        return best, ctx.files.weights(best.method)
    learning = run_learning_finals(ctx, finals, chosen)
    mine = next((r for r in learning if r.method == best.method and r.status == "ok"), None)
    if mine is None:  # said, not silent
        ctx.events.on_notice(
            f"seed {ctx.seed}: {label(best.method)}'s training on every learning image "
            "failed: the model handed over is its final trained on search + train")
        return best, ctx.files.weights(best.method)
    return mine, ctx.files.weights(best.method, LEARNING)
