"""Executors: trials in, results out as they finish. ``local`` runs them one after another in
this process; ``ray`` runs them as Ray Tune trials on a local or remote Ray cluster.

An executor knows nothing of the protocol: the driver (:class:`blocktune.search.SeedRun`)
plans the trials, hands them over, and records every result the moment it comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from blocktune.plan import FinalTrial, Trial
from blocktune.train import TrainResult
from blocktune.workbench import FinalOutcome

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    def search(self, trials: Sequence[Trial], checkpoints: Mapping[tuple, dict],
               keep_going: Callable[[], bool], on_start: Callable[[Trial, int, int], None],
               on_epoch: Callable | None = None, train_split: str = "search",
               val_split: str = "val") -> Iterator[tuple[Trial, TrainResult]]:
        """Train search trials (``checkpoints``: saved rung states by trial key); yield each
        result as it finishes; start no trial once ``keep_going()`` is False."""
        ...

    def finals(self, trials: Sequence[FinalTrial], on_start: Callable[[FinalTrial], None],
               on_epoch: Callable | None = None) -> Iterator[tuple[FinalTrial, FinalOutcome]]:
        """Fine-tune the finals; yield each outcome (with its weights) as it finishes."""
        ...

    def close(self) -> None: ...
