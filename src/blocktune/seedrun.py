"""One seed of the protocol (docs/method.md): split, search the candidates, choose on val,
fine-tune the choices and both baselines (:mod:`blocktune.finals`), cross-validate when asked
(:mod:`blocktune.crossval`), recommend. :func:`blocktune.search.run` drives it seed by seed.

Everything a seed finishes is on disk the moment it finishes, written atomically into the run
folder (:mod:`blocktune.runfolder` owns its layout). Running the same command on the same
folder skips what is finished and gives the same tables.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import torch

from blocktune import faults
from blocktune.callbacks import Callback, CallbackList
from blocktune.config import RunConfig, auto_notice
from blocktune.crossval import cross_validate
from blocktune.data import (
    DecodedImages,
    TestDomain,
    duplicates_across_splits,
    learning_images,
    load_or_make_split,
)
from blocktune.errors import BlocktuneError
from blocktune.executors import Executor, get_executor
from blocktune.finals import run_finals, run_learning_finals
from blocktune.groups import UNRESTRICTED, Candidate, StrategyOptions, candidates, describe
from blocktune.io import atomic_save_safetensors
from blocktune.models import BlockModel
from blocktune.plan import (
    BASELINES,
    SearchSettings,
    Trial,
    indices_text,
    label,
    parse_indices,
    progress,
    search_wave,
    strategy_candidates,
)
from blocktune.recommend import cv_folds_of, recommend
from blocktune.records import LEARNING, CandidateRow, FinalRow
from blocktune.runfolder import SeedFolder
from blocktune.select import SearchView, get_rule, notices, pick, searched_strategies
from blocktune.train import TrainResult
from blocktune.workbench import Workbench, cv_folds

log = logging.getLogger(__name__)


class SeedRun:
    """One seed of the protocol on one run folder: plan the trials, hand them to an executor,
    record every result the moment it comes back."""

    def __init__(self, config: RunConfig, seed: int, folder: Path, images: DecodedImages,
                 data_cfg, callbacks: Callback | list[Callback] | None = None,
                 executor: Executor | None = None, domains: Sequence[TestDomain] = ()):
        self.config, self.seed, self.folder, self.images = config, seed, folder, images
        self.files = SeedFolder(folder)
        self.data_cfg = data_cfg
        self.events = callbacks if isinstance(callbacks, CallbackList) \
            else CallbackList(callbacks)
        self.events.on_seed_start(seed, folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.split = load_or_make_split(self.files.splits, images, config.fractions, seed,
                                        config.learn_images, config.split)
        self.files.check_records()  # a damaged record: one line, before any work
        # the auto keys (--methods, --pick-finals) decided by how many images are learnt from
        self.config = config.for_data(learning_images(self.split))
        self.given, config = config, self.config
        self._check_duplicates()
        self.folds = cv_folds_of(config.choose_by)
        trained_on = self.split if self.folds is None else {
            **self.split, **cv_folds(self.split, images.labels.tolist(), self.folds, seed)}
        self.bench = Workbench(config, seed, images, trained_on, data_cfg,
                               spill_dir=self.files.cache, domains=domains)
        self.model, self.walk, self.fold = self.bench.model, self.bench.walk, self.bench.fold
        self.weights_source, self.device = self.bench.weights_source, self.bench.device
        self._executor = executor

    def _check_duplicates(self) -> None:
        found = duplicates_across_splits(self.images, self.split)
        if not found:
            return
        a, split_a, b, split_b = found[0]
        pairs = Counter("–".join(sorted((x, y))) for _, x, _, y in found)
        message = (f"{len(found)} exact-duplicate image(s) lie in two splits of seed "
                   f"{self.seed} ({', '.join(f'{k} {v}' for k, v in sorted(pairs.items()))}; "
                   f"e.g. {a} in {split_a} = {b} in {split_b}): a photo scored on val or test "
                   "that was also trained on makes that score optimistic")
        if self.config.strict:
            raise BlocktuneError(f"{message}: remove the copies, or drop --strict")
        self.events.on_notice(message + "; --strict refuses them")  # once, where it is shown

    def feed(self, cover: tuple[str, ...]):
        return self.bench.feed(cover)

    @property
    def executor(self) -> Executor:
        """Created when the first trial is handed over (``finetune`` needs none), closed
        with the seed."""
        if self._executor is None:
            self._executor = make_executor(self.config, self.bench, self.folder)
        return self._executor

    def close(self) -> None:
        """Close the executor; drop the activation caches, and their spill files."""
        if self._executor is not None:
            self._executor.close()
        self.bench.close()

    def reset(self) -> BlockModel:
        return self.bench.reset()

    # -- the plan's inputs ---------------------------------------------------------------
    def options(self) -> StrategyOptions:
        return self.config.strategy_options(self.seed, self.model.body)

    def settings(self) -> SearchSettings:
        return self.config.search_settings(self.seed)

    def planned(self, strategy: str, rows: list[CandidateRow]) -> list[tuple[str, Candidate]]:
        """(method name, candidate) pairs of a strategy; ``ranked`` expands to one per k."""
        return strategy_candidates(self.walk, strategy, self.options(), rows, self.settings())

    def plan_notes(self) -> list[str]:
        """Per strategy the rule's region restricts: how many candidates are planned, and why."""
        options = self.options()
        if options.picks_from is None:
            return []
        start = options.picks_from(len(self.walk.layers))
        notes = []
        for strategy in self.config.strategies:
            if strategy in UNRESTRICTED:
                continue
            planned = len(candidates(self.walk, strategy, options))
            every = len(candidates(self.walk, strategy,
                                   dataclasses.replace(options, picks_from=None)))
            if planned < every:
                notes.append(f"{label(strategy)}: {planned} of {every} candidates planned: the "
                             f"`{self.config.select}` rule picks from layers {start}–"
                             f"{len(self.walk.layers) - 1} only (--search-all trains all)")
        return notes

    def progress(self, rows: list[CandidateRow]) -> list[tuple[str, int, int]]:
        """(method, finished, planned) of this seed's search."""
        return progress(self.settings(), rows, self.planned)

    # -- search ------------------------------------------------------------------------
    def search(self) -> tuple[list[CandidateRow], bool]:
        """Train every candidate not yet in ``candidates.csv``; returns (rows, complete).

        The plan (:func:`blocktune.plan.search_wave`) gives the next wave of trials; the
        executor runs them; each row is appended as it comes back. With ``prune``, a
        strategy's candidates climb rungs of :func:`blocktune.plan.rungs` epochs and only the
        best third goes on, from where it stopped: its training state is saved at the rung
        (``rungs/``), so a survivor's row is exactly the row an unpruned search gives it. Every
        rung's result is a row (``status`` ``rung``), so a resume picks up mid-rung; a lost
        rung state is recomputed from the pretrained weights, with the same result.

        A candidate whose group another strategy has already trained for as many epochs (the
        ``quarter`` candidates in a ``block`` search, a timm stage that is also a block) is
        not trained again: training depends only on the group, the seed and the data, so its
        row is that one's, with ``same_as`` naming it and no seconds of its own.
        """
        rows = self.files.read_candidates()
        if rows:
            self.events.on_recorded(rows)
        for note in self.plan_notes():
            self.events.on_phase(note)
        if rows:  # a resumed run says what it skips
            self.events.on_phase(f"resuming seed {self.seed}: " + ", ".join(
                f"{done} of {total} {label(method) if method != 'baselines' else method} "
                f"{'candidates ' if method != 'baselines' else ''}done"
                for method, done, total in self.progress(rows)))
        started = time.perf_counter()
        budget = self.config.time_budget
        best = max((r.val_acc for r in rows if r.strategy not in BASELINES and r.status == "ok"),
                   default=0.0)

        def keep_going() -> bool:  # asked before each trial starts, by every executor
            if faults.spent():
                return False
            return budget is None or time.perf_counter() - started <= budget

        def record(row: CandidateRow) -> None:
            nonlocal best
            rows.append(row)
            self.files.write_candidates(rows)
            faults.point("candidate")
            if row.status == "ok" and row.strategy not in BASELINES:
                best = max(best, row.val_acc)
            self.events.on_candidate_end(row, best)

        while wave := search_wave(self.settings(), rows, self.planned):
            by_key = {r.key: r for r in rows}
            copies = [t for t in wave if t.copy_of is not None]
            for position, trial in enumerate(copies):  # the progress shows every row
                self.events.on_candidate_start(trial.method, position, len(wave))
                twin = by_key[trial.copy_of]
                record(dataclasses.replace(twin, strategy=trial.method, index=trial.index,
                                           seconds=0.0,
                                           same_as=f"{twin.strategy} #{twin.index}"))
            trainable = [t for t in wave if t.copy_of is None]
            if trainable and self.config.cache:
                self.events.on_phase(f"caching activations at {len(trainable)} cuts")
            checkpoints = {t.key: state for t in trainable if t.resume_rung and (
                state := self.files.take_rung_state(t.method, t.group, self.device)) is not None}
            started_in_wave = functools.partial(self._start, len(copies), len(wave))
            finished = 0
            # closed the moment the driver stops listening (an error, Ctrl-C): Ray then ends
            # its run at once instead of finishing the wave
            with closing(self.executor.search(trainable, checkpoints, keep_going,
                                              started_in_wave, self.events.on_epoch)) as done:
                for trial, result in done:
                    if result.checkpoint is not None and not trial.final:
                        self.files.save_rung_state(trial.method, trial.group,
                                                   result.checkpoint)
                    status = result.status if trial.final or result.status != "ok" else "rung"
                    record(self._row(trial.method, trial.index, trial.group, result,
                                     trial.epochs, status))
                    finished += 1
            if finished < len(trainable):
                log.warning("time budget of %.0f s spent: %d trials left for a resume",
                            budget or 0, len(trainable) - finished)
                return rows, False
        shutil.rmtree(self.files.rungs, ignore_errors=True)  # the pruned ones' states
        return rows, True

    def _start(self, offset: int, total: int, trial: Trial, position: int, count: int) -> None:
        """A trial of a wave starts: its place counts the wave's copies before it."""
        self.events.on_candidate_start(trial.method, offset + position, total)

    def _row(self, method: str, index: int, group: tuple[int, ...] | None, result: TrainResult,
             rung: int, status: str) -> CandidateRow:
        return CandidateRow(
            strategy=method, rung=rung, index=index, layers=self.group_text(group),
            layer_indices=indices_text(group), first=group[0] if group else None,
            last=group[-1] if group else None, trained_params=result.trainable_params,
            val_acc=result.best_val_acc, val_loss=result.best_val_loss, epochs=result.epochs,
            best_epoch=result.best_epoch, seconds=result.seconds, status=status,
            error=result.error, val_curve=list(result.val_curve),
            loss_curve=list(result.loss_curve), val_loss_curve=list(result.val_loss_curve),
            val_pred=list(result.val_pred), **self._score(result)).recorded()

    def _score(self, result: TrainResult) -> dict:
        """A row's score: its val accuracy, pooled with the train split's when it was scored
        there too (counts of correct images, so the pooled accuracy is exact)."""
        val_images = len(self.split["val"])
        if not result.pool_images:
            return {"score": result.best_val_acc, "score_images": val_images}
        correct = round(result.best_val_acc * val_images) + result.pool_correct
        images = val_images + result.pool_images
        return {"score": correct / images, "score_images": images,
                "score_seconds": result.pool_seconds}

    def group_text(self, group: tuple[int, ...] | None) -> str:
        if group is None:
            return "all layers"
        return describe(self.walk, group) if group else "head only"

    # -- selection ---------------------------------------------------------------------
    def view(self, rows: list[CandidateRow], method: str,
             refits: list[CandidateRow] | None = None) -> SearchView:
        """What a selection rule sees of one strategy's search (val only)."""
        val_labels = self.images.labels[torch.tensor(self.split["val"], dtype=torch.long)]
        refit_rows = {r.layer_indices: r for r in (refits or []) if r.strategy == method}
        # only rows the current plan still holds: a resume with a larger --max-candidates
        # re-ranks ranked-k's layers, and the group ranked from fewer layers is no candidate
        strategy = "ranked" if method.startswith("ranked-") else method
        planned = {indices_text(c.layers) for m, c in self.planned(strategy, rows)
                   if m == method}
        return SearchView([r for r in rows if r.strategy == method and r.status == "ok"
                           and r.layer_indices in planned],
                          num_layers=len(self.walk.layers), val_labels=val_labels.numpy(),
                          refits=refit_rows)

    def refit(self, rows: list[CandidateRow], rules: list[str] | None = None
              ) -> list[CandidateRow]:
        """Train the groups the selection rules ask for on the swapped fold (trained on val,
        scored on search), once each; rows go to ``refits.csv``. Returns every refit row."""
        refits = self.files.read_refits()
        have = {(r.strategy, r.layer_indices) for r in refits}
        epochs = self.settings().epochs
        todo: list[Trial] = []
        for method in searched_strategies(rows):
            view = self.view(rows, method, refits)
            for indices in dict.fromkeys(i for name in (rules or [self.config.select])
                                         for i in get_rule(name).refits(view)):
                if (method, indices) not in have:
                    row = next(r for r in view.rows if r.layer_indices == indices)
                    todo.append(Trial(method, row.index, parse_indices(indices), epochs))
                    have.add((method, indices))

        def start(trial: Trial, position: int, total: int) -> None:
            self.events.on_phase(f"{label(trial.method)}: {self.group_text(trial.group)} on "
                                 "the swapped fold")

        with closing(self.executor.search(todo, {}, lambda: True, start, self.events.on_epoch,
                                          train_split="val", val_split="search")) as done:
            for trial, result in done:
                refits.append(self._row(trial.method, trial.index, trial.group, result,
                                        result.epochs, result.status))
                self.files.write_refits(refits)
        return refits

    def chosen(self, rows: list[CandidateRow], method: str,
               refits: list[CandidateRow] | None = None, rule: str | None = None
               ) -> CandidateRow | None:
        """The row the selection rule picks for ``method``."""
        return pick(rule or self.config.select, self.view(rows, method, refits))

    # -- final fine-tunes ---------------------------------------------------------------
    def fit_final(self, group: tuple[int, ...] | None, weights_path: Path | None, on_epoch,
                  recipe: str | None = None) -> tuple[TrainResult, float, list[int]]:
        """Train ``group`` from the pretrained weights on search+train (val for the schedule,
        early stopping and the kept weights), by ``recipe`` (``lp-ft``, ``norms``… or plain),
        then score it once on test and save it.

        Returns:
            (result, test accuracy, per-image test predictions in ``splits.json`` order).
        """
        outcome = self.bench.fit_final(group, on_epoch, recipe)
        if outcome.state is not None and weights_path is not None:
            atomic_save_safetensors(weights_path, outcome.state, {"model": self.config.model})
        return outcome.result, outcome.test_acc, outcome.test_pred

    def rule_of(self, method: str) -> str:
        return "" if method in BASELINES else self.config.select

    # -- the recommendation ------------------------------------------------------------
    def recommend(self, finals: list[FinalRow]) -> dict | None:
        """The recommendation by ``--choose-by``, recorded in ``choices.json``."""
        cv = cross_validate(self, finals)
        chosen = recommend(finals, self.config.choose_by, cv)
        if chosen is not None:
            self.files.write_recommendation(chosen)
        return chosen


def make_executor(config: RunConfig, bench: Workbench, folder: Path) -> Executor:
    """The executor ``config.executor`` names, for one seed's workbench."""
    return get_executor(config.executor).create(config, bench, folder)



def check_executor(config: RunConfig) -> None:
    """The executor's options and backend (Ray missing, an unreachable cluster): one line,
    before any work."""
    get_executor(config.executor).check(config)



def run_seed(seed_run: SeedRun) -> tuple[FinalRow, Path] | None:
    """Search, refits, finals and the recommendation of one seed: the final to hand over and
    its weights file (under ``cvK``, the chosen method trained on every learning image), or
    None when the search is left for a resume or nothing could be recommended."""
    if seed_run.seed == seed_run.config.seeds[0] and seed_run.config != seed_run.given:
        # what the auto keys became, said once per run (finetune decides none of them)
        seed_run.events.on_notice(auto_notice(seed_run.given, seed_run.config,
                                              learning_images(seed_run.split)))
    rows, complete = seed_run.search()
    if not complete:
        log.warning("seed %d: search not finished, final fine-tunes wait for a resume",
                    seed_run.seed)
        return None
    for notice in notices(seed_run.seed, rows):
        seed_run.events.on_notice(notice)
    refits = seed_run.refit(rows)
    finals = run_finals(seed_run, rows, refits)
    chosen = seed_run.recommend(finals)
    if chosen is None:
        return None
    best = next(r for r in finals if r.method == chosen["method"])
    if seed_run.folds is None:
        return best, seed_run.files.weights(best.method)
    learning = run_learning_finals(seed_run, finals, chosen)
    mine = next((r for r in learning if r.method == best.method and r.status == "ok"), None)
    if mine is None:  # said, not silent
        seed_run.events.on_notice(
            f"seed {seed_run.seed}: {label(best.method)}'s training on every learning image "
            "failed: the model handed over is its final trained on search + train")
        return best, seed_run.files.weights(best.method)
    return mine, seed_run.files.weights(best.method, LEARNING)
