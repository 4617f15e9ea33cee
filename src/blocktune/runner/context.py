"""A seed's context: the narrow, frozen set of things every step of one seed reads — the config
(its auto keys decided by the seed's split), the seed, the split and its folds, the seed's run
folder, the callbacks, the workbench and the executor — and the few pure questions the steps
ask of it (what a strategy plans, what a selection rule sees, how a group reads).

:func:`open_seed` builds it; :mod:`blocktune.runner.seedrun`, :mod:`blocktune.runner.finals` and
:mod:`blocktune.runner.crossval` are the steps that act on it. ``finetune`` needs none of it: it
trains one group through :func:`prepare_split` and a :class:`~blocktune.training.workbench.Workbench`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from blocktune.core.callbacks import Callback, CallbackList
from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.methods import BASELINES, cv_folds_of, indices_text
from blocktune.core.records import CandidateRow
from blocktune.data import (
    DecodedImages,
    TestDomain,
    duplicates_across_splits,
    learning_images,
    load_or_make_split,
)
from blocktune.executors import Executor, get_executor
from blocktune.models.groups import Candidate, StrategyOptions, describe
from blocktune.models.layers import ModelWalk
from blocktune.protocol.plan import (
    SearchSettings,
    search_settings,
    strategy_candidates,
    strategy_options,
)
from blocktune.protocol.select import SearchView
from blocktune.results.runfolder import SeedFolder
from blocktune.training.workbench import Workbench, cv_folds

R = TypeVar("R")  # a record row with a status: CandidateRow, FinalRow, CvRow


@dataclass
class _ExecutorSlot:
    """The seed's executor, created when the first trial is handed over (a seed whose work is
    all on disk needs none) and closed with the seed."""

    create: object  # () -> Executor
    made: Executor | None = None

    def get(self) -> Executor:
        if self.made is None:
            self.made = self.create()
        return self.made


@dataclass(frozen=True)
class SeedContext:
    """What one seed's steps read. Frozen: a step changes the run folder, never the context."""

    config: RunConfig  # the auto keys decided for this seed's split (RunConfig.for_data)
    given: RunConfig  # as the user gave it
    seed: int
    split: dict[str, list[int]]
    folds: int | None  # --choose-by cvK: K; else None
    files: SeedFolder
    events: CallbackList
    bench: Workbench
    slot: _ExecutorSlot = field(repr=False, compare=False)

    @property
    def walk(self) -> ModelWalk:
        return self.bench.walk

    @property
    def executor(self) -> Executor:
        return self.slot.get()

    @property
    def val_labels(self) -> list[int]:
        """The val images' classes, in ``splits.json`` order (what the finals' val_pred
        lists)."""
        index = torch.tensor(self.split["val"], dtype=torch.long)
        return self.bench.images.labels[index].tolist()

    def close(self) -> None:
        """Close the executor; drop the activation caches, and their spill files."""
        if self.slot.made is not None:
            self.slot.made.close()
        self.bench.close()

    # -- the questions the steps ask -----------------------------------------------------
    def options(self) -> StrategyOptions:
        return strategy_options(self.config, self.seed, self.bench.model.body)

    def settings(self) -> SearchSettings:
        return search_settings(self.config, self.seed)

    def planned(self, strategy: str, rows: Sequence[CandidateRow]) -> list[tuple[str, Candidate]]:
        """(method name, candidate) pairs of a strategy; ``ranked`` expands to one per k."""
        return strategy_candidates(self.walk, strategy, self.options(), list(rows),
                                   self.settings())

    def view(self, rows: Sequence[CandidateRow], method: str,
             refits: Sequence[CandidateRow] | None = None) -> SearchView:
        """What a selection rule sees of one strategy's search (val only)."""
        refit_rows = {r.layer_indices: r for r in (refits or []) if r.strategy == method}
        # only rows the current plan still holds: a resume with a larger --max-candidates
        # re-ranks ranked-k's layers, and the group ranked from fewer layers is no candidate
        strategy = "ranked" if method.startswith("ranked-") else method
        planned = {indices_text(c.layers) for m, c in self.planned(strategy, rows)
                   if m == method}
        return SearchView([r for r in rows if r.strategy == method and r.status == "ok"
                           and r.layer_indices in planned],
                          num_layers=len(self.walk.layers),
                          val_labels=torch.tensor(self.val_labels).numpy(), refits=refit_rows)

    def group_text(self, group: tuple[int, ...] | None) -> str:
        if group is None:
            return "all layers"
        return describe(self.walk, group) if group else "head only"

    def rule_of(self, method: str) -> str:
        """The selection rule recorded beside a final: none for the baselines."""
        return "" if method in BASELINES else self.config.select

    def retry_failed(self, rows: list[R], what: str) -> list[R]:
        """A resume retries every trial that failed before (a crash, a Ray trial lost for good,
        a non-finite loss): its row is dropped here, so the plan trains it again, and the
        retry is said. A trial that fails again is recorded again; a deterministic failure
        costs one more training per resume, never a result."""
        failed = [r for r in rows if r.status == "failed"]
        if failed:
            self.events.on_phase(f"seed {self.seed}: retrying {len(failed)} {what} that "
                                 "failed before")
        return [r for r in rows if r.status != "failed"]


def check_duplicates(config: RunConfig, seed: int, images: DecodedImages,
                     split: dict[str, list[int]], events: CallbackList) -> None:
    """Exact duplicates across the seed's splits, said once (refused with ``--strict``)."""
    found = duplicates_across_splits(images, split)
    if not found:
        return
    a, split_a, b, split_b = found[0]
    pairs = Counter("–".join(sorted((x, y))) for _, x, _, y in found)
    message = (f"{len(found)} exact-duplicate image(s) lie in two splits of seed {seed} "
               f"({', '.join(f'{k} {v}' for k, v in sorted(pairs.items()))}; e.g. {a} in "
               f"{split_a} = {b} in {split_b}): a photo scored on val or test that was also "
               "trained on makes that score optimistic")
    if config.strict:
        raise BlocktuneError(f"{message}: remove the copies, or drop --strict")
    events.on_notice(message + "; --strict refuses them")  # once, where it is shown


def prepare_split(config: RunConfig, seed: int, files: SeedFolder, images: DecodedImages,
                  events: CallbackList) -> dict[str, list[int]]:
    """The seed's split, made once and saved (or read back), its duplicates checked."""
    split = load_or_make_split(files.splits, images, config.fractions, seed, config.learn_images,
                               config.split)
    check_duplicates(config, seed, images, split, events)
    return split


def open_seed(config: RunConfig, seed: int, folder: Path, images: DecodedImages, data_cfg,
              callbacks: Callback | list[Callback] | None = None,
              executor: Executor | None = None, domains: Sequence[TestDomain] = ()
              ) -> SeedContext:
    """One seed's context on its run folder: the split (made or read back), the records
    checked, the auto keys decided, the workbench built; the executor comes when first asked."""
    events = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
    events.on_seed_start(seed, folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = SeedFolder(folder)
    split = load_or_make_split(files.splits, images, config.fractions, seed, config.learn_images,
                               config.split)
    files.check_records()  # a damaged record: one line, before any work
    decided = config.for_data(learning_images(split), len(images.classes))
    check_duplicates(decided, seed, images, split, events)
    folds = cv_folds_of(decided.choose_by)
    trained_on = split if folds is None else {
        **split, **cv_folds(split, images.labels.tolist(), folds, seed)}
    bench = Workbench(decided, seed, images, trained_on, data_cfg, spill_dir=files.cache,
                      domains=domains)
    slot = _ExecutorSlot(lambda: get_executor(decided.executor).create(decided, bench, folder),
                         executor)
    return SeedContext(decided, config, seed, split, folds, files, events, bench, slot)


def check_executor(config: RunConfig) -> None:
    """The executor's options and backend (Ray missing, an unreachable cluster): one line,
    before any work."""
    get_executor(config.executor).check(config)

