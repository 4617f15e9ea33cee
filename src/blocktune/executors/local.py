"""The local executor: every trial in this process, one after another, on the run's device."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from blocktune.core.trials import FinalTrial, Trial
from blocktune.training.train import TrainResult
from blocktune.training.workbench import FinalOutcome, Workbench


class LocalExecutor:
    name = "local"

    def __init__(self, bench: Workbench):
        self.bench = bench

    def search(self, trials: Sequence[Trial], checkpoints: Mapping[tuple, dict],
               keep_going: Callable[[], bool], on_start: Callable[[Trial, int, int], None],
               on_epoch: Callable | None = None, train_split: str = "search",
               val_split: str = "val") -> Iterator[tuple[Trial, TrainResult]]:
        if trials:
            self.bench.prepare_cuts([t.group for t in trials], self.bench.search_cover)
        for position, trial in enumerate(trials):
            if not keep_going():
                return
            on_start(trial, position, len(trials))
            yield trial, self.bench.train(trial, checkpoints.get(trial.key), on_epoch,
                                          train_split, val_split)

    def finals(self, trials: Sequence[FinalTrial], on_start: Callable[[FinalTrial], None],
               on_epoch: Callable | None = None) -> Iterator[tuple[FinalTrial, FinalOutcome]]:
        if trials:
            self.bench.prepare_finals(trials)
        for trial in trials:
            on_start(trial)
            yield trial, self.bench.fit_final(trial.group, on_epoch, trial.recipe, trial.fold,
                                              trial.all_learning)

    def close(self) -> None:
        pass
