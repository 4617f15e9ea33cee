"""The final fine-tunes: which methods a seed fine-tunes (the baselines, each strategy's pick,
the recipes of ``--methods``), and their training on search + train, each recorded in
``finals.csv`` the moment it finishes; under a cross-validated choice, the chosen method and
both baselines trained again on every learning image (``learning_finals.csv``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import closing

from blocktune.core import faults
from blocktune.core.io import atomic_copy, atomic_save_safetensors
from blocktune.core.methods import (
    BASELINE_I,
    BASELINE_II,
    NORMS_GROUP,
    WHOLE_MODEL,
    final_group,
    indices_text,
    label,
    parse_indices,
    trained_recipes,
)
from blocktune.core.records import LEARNING, CandidateRow, FinalRow
from blocktune.core.trials import FinalTrial
from blocktune.protocol.plan import finals_plan
from blocktune.protocol.select import record_choice, searched_strategies
from blocktune.runner.context import SeedContext


def final_methods(ctx: SeedContext, rows: list[CandidateRow],
                  refits: list[CandidateRow] | None = None
                  ) -> list[tuple[str, tuple[int, ...] | None, float]]:
    """(method, group, search val acc): baselines, each strategy's chosen group, then the
    recipes of ``--methods`` (LP-BW on the first strategy's pick)."""
    out: list[tuple[str, tuple[int, ...] | None, float]] = []
    if ctx.config.baselines:
        for method, group in ((BASELINE_I, ()), (BASELINE_II, None)):
            searched = next((r for r in rows if r.strategy == method and r.status == "ok"),
                            None)
            out.append((method, group, searched.val_acc if searched else math.nan))
    choices, picks = {}, []
    for method in searched_strategies(rows):
        chosen, choices[method] = record_choice(ctx.config.select,
                                                ctx.view(rows, method, refits))
        if chosen is not None:
            picks.append((method, parse_indices(chosen.layer_indices), chosen.val_acc))
    ctx.files.write_choices(choices)
    if ctx.config.pick_finals:
        out += picks
    recipes = trained_recipes(ctx.config.methods, bool(picks))
    for recipe in (r for r in ctx.config.methods if r not in recipes):  # said, not silent
        ctx.events.on_notice(f"seed {ctx.seed}: {label(recipe)} is not trained: "
                                  "it trains a strategy's pick, and no strategy has one")
    for recipe in recipes:
        # lp-bw: the head first, then the first strategy's pick
        out.append((recipe, None, math.nan) if recipe in WHOLE_MODEL
                   else (recipe, picks[0][1], picks[0][2]))
    return out


def run_finals(ctx: SeedContext, rows: list[CandidateRow],
               refits: list[CandidateRow] | None = None) -> list[FinalRow]:
    """Each method's final fine-tune, recorded in ``finals.csv`` as it finishes (resumable;
    the same group trained the same way is copied)."""
    methods = final_methods(ctx, rows, refits)
    # A resume with a larger budget (--max-candidates, --time-budget) or another --select
    # can change a strategy's choice: its earlier final no longer belongs to the table.
    chosen = {method: group for method, group, _ in methods}
    recorded = ctx.files.read_finals()
    finished = [r for r in ctx.retry_failed(recorded, "final(s)")
                if r.method not in chosen or final_group(r) == chosen[r.method]]
    if len(finished) != len(recorded):
        ctx.files.write_finals(finished)
    # a final the current rule also chose is kept, and recorded as this rule's choice
    relabelled = [dataclasses.replace(r, select=ctx.rule_of(r.method))
                  if r.method in chosen else r for r in finished]
    if relabelled != finished:
        finished = relabelled
        ctx.files.write_finals(finished)
    plan = finals_plan(methods, finished)
    if finished:
        ctx.events.on_recorded(finished)

    weights = ctx.files.weights
    record = _recorder(ctx, finished, ctx.files.write_finals)
    train_finals(ctx, [t for t in plan if t.copy_of is None], record)
    for trial in (t for t in plan if t.copy_of is not None):
        # another method chose the same group: the same fine-tune, copied
        source = next((r for r in finished if r.method == trial.copy_of
                       and r.status == "ok"), None)
        if source is None or not weights(trial.copy_of).exists():
            train_finals(ctx, [FinalTrial(trial.method, trial.group,
                                               trial.search_val_acc)], record)
            continue
        atomic_copy(weights(trial.copy_of), weights(trial.method))
        record(dataclasses.replace(source, method=trial.method, seconds=0.0,
                                   same_as=trial.copy_of,
                                   search_val_acc=trial.search_val_acc,
                                   select=ctx.rule_of(trial.method)))
    return finished


def _recorder(ctx: SeedContext, finished: list[FinalRow],
              write: Callable[[list[FinalRow]], None]) -> Callable[[FinalRow], None]:
    """Record a finished final: appended to ``finished``, the whole list written (``write``:
    the record file it belongs in) before the next one starts, and heard by the callbacks."""
    def record(row: FinalRow) -> None:
        finished.append(row)
        write(finished)
        faults.point("final")
        ctx.events.on_final_end(row)

    return record


def train_finals(ctx: SeedContext, trials: list[FinalTrial],
                 record: Callable[[FinalRow], None]) -> None:
    """Train ``trials`` on the seed's executor; each one's weights are saved and its row
    handed to ``record`` the moment it finishes."""
    if trials and ctx.config.cache:  # one pass over the images for all of them
        ctx.events.on_phase(f"caching activations for {len(trials)} fine-tune(s)")
    with closing(ctx.executor.finals(
            trials, lambda t: ctx.events.on_phase(
                f"final fine-tune: {label(t.method)}"
                + (" on every learning image" if t.all_learning else "")),
            ctx.events.on_epoch)) as done:
        for trial, outcome in done:
            trained_on = LEARNING if trial.all_learning else ""
            if outcome.state is not None:
                atomic_save_safetensors(ctx.files.weights(trial.method, trained_on),
                                        outcome.state, {"model": ctx.config.model})
            result = outcome.result
            record(FinalRow(
                method=trial.method, group=NORMS_GROUP if trial.method == "norms"
                else ctx.group_text(trial.group),
                # Baseline II's row has always been written with no indices
                layer_indices="" if trial.group is None else indices_text(trial.group),
                trained_params=result.trainable_params,
                search_val_acc=trial.search_val_acc, val_acc=result.best_val_acc,
                test_acc=outcome.test_acc, epochs=result.epochs, seconds=result.seconds,
                status=result.status, error=result.error,
                select=ctx.rule_of(trial.method),
                val_pred=list(result.val_pred), test_pred=list(outcome.test_pred),
                val_curve=list(result.val_curve), loss_curve=list(result.loss_curve),
                val_loss_curve=list(result.val_loss_curve),
                domains=outcome.domains, trained_on=trained_on).recorded())


def run_learning_finals(ctx: SeedContext, finals: list[FinalRow], chosen: dict
                        ) -> list[FinalRow]:
    """A cross-validated choice (``--choose-by cvK``) hands over a model trained on every
    learning image: the chosen method, and both baselines for the verdicts, trained again on
    search, val and train together (nothing held out) and tested once, recorded in
    ``learning_finals.csv`` as each finishes (resumable). ``val``: nothing to do."""
    if ctx.folds is None:
        return []
    source = {r.method: r for r in finals if r.status == "ok"}
    wanted = [m for m in dict.fromkeys((chosen["method"], BASELINE_I, BASELINE_II))
              if m in source]
    # a row of a group the method no longer has (its choice changed on a resume) is dropped
    finished = [r for r in ctx.retry_failed(ctx.files.read_learning_finals(),
                                            "final(s) on every learning image")
                if r.method in source and r.layer_indices == source[r.method].layer_indices
                and ctx.files.weights(r.method, LEARNING).exists()]
    record = _recorder(ctx, finished, ctx.files.write_learning_finals)
    done = {r.method for r in finished}
    train_finals(ctx, [
        FinalTrial(m, final_group(source[m]), source[m].search_val_acc, all_learning=True)
        for m in wanted if m not in done], record)
    return finished
