"""Executors: trials in, results out as they finish. ``local`` runs them one after another in
this process; ``ray`` runs them as Ray Tune trials on a local or remote Ray cluster.

An executor knows nothing of the protocol: the driver (:mod:`blocktune.runner.seedrun`)
plans the trials, hands them over, and records every result the moment it comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from blocktune.core.errors import BlocktuneError

if TYPE_CHECKING:  # a registry is a leaf: the types only, no import of what it lists
    from blocktune.core.config import RunConfig
    from blocktune.core.trials import FinalTrial, Trial
    from blocktune.training.train import TrainResult
    from blocktune.training.workbench import FinalOutcome, Workbench



@dataclass(frozen=True)
class ExecutorSpec:
    """A registered executor: ``check`` refuses bad options (and an unreachable backend) in
    one line before any work; ``create`` builds it for one seed's workbench and run folder."""

    name: str
    help: str
    create: Callable[[RunConfig, Workbench, Path], Executor]
    check: Callable[[RunConfig], None] = lambda config: None


EXECUTORS: dict[str, ExecutorSpec] = {}


def register_executor(name: str, help: str, create: Callable[[RunConfig, Workbench, Path], Executor],
                      check: Callable[[RunConfig], None] | None = None) -> ExecutorSpec:
    """Make ``--executor name`` run trials with what ``create`` builds."""
    spec = ExecutorSpec(name, help, create, check or (lambda config: None))
    EXECUTORS[name] = spec
    return spec


def get_executor(name: str) -> ExecutorSpec:
    if name not in EXECUTORS:
        raise BlocktuneError(f"unknown executor {name!r}: choose from {', '.join(EXECUTORS)}")
    return EXECUTORS[name]


def _local(config: RunConfig, bench: Workbench, folder: Path) -> Executor:
    from blocktune.executors.local import LocalExecutor

    return LocalExecutor(bench)


def _ray(config: RunConfig, bench: Workbench, folder: Path) -> Executor:
    from blocktune.executors.ray import RayExecutor, parse_resources

    return RayExecutor(bench, folder, parse_resources(config.trial_resources),
                       config.ray_address)


def _check_ray(config: RunConfig) -> None:
    from blocktune.executors.ray import connect, parse_resources

    parse_resources(config.trial_resources)
    connect(config.ray_address)


register_executor("local", "one process, one trial after another", _local)
register_executor("ray", "Ray Tune trials on a local or running cluster", _ray, _check_ray)


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
