"""Callbacks: what a run tells the code that watches it, as Lightning's ``Callback``.

Subclass :class:`Callback`, override the hooks you need and pass instances to
``api.run(config, out, callbacks=[...])``; every hook is called on the driver, in the order the
run works. The progress display of ``blocktune run`` and ``--log tensorboard`` are two of them
(``cli._Progress``, :class:`blocktune.loggers.tensorboard.TensorBoardCallback`).

    >>> class Rows(Callback):
    ...     def on_candidate_end(self, row, best):
    ...         print(row.strategy, row.index, row.val_acc)
    >>> api.run(config, "runs/x", callbacks=[Rows()])

A callback that raises stops the run the way Ctrl-C does: what was recorded stays recorded and
the same command resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from blocktune.core.records import CandidateRow, FinalRow

log = logging.getLogger(__name__)

HOOKS = ("on_seed_start", "on_recorded", "on_phase", "on_notice", "on_candidate_start",
         "on_epoch", "on_candidate_end", "on_final_end")


class Callback:
    """Every hook does nothing; override the ones you need."""

    def on_seed_start(self, seed: int, folder: Path) -> None:
        """A seed starts, in its folder ``folder`` (``RUN/seed_N``)."""

    def on_recorded(self, rows: list[CandidateRow] | list[FinalRow]) -> None:
        """Rows an earlier session of this run recorded (a resume), before the search or the
        finals go on: a callback that writes one output per row writes what it lacks."""

    def on_phase(self, text: str) -> None:
        """What the run does next, one line (caching activations, a resumed seed's progress)."""

    def on_notice(self, text: str) -> None:
        """A finding the user must see, one line (e.g. no candidate beat Baseline I on val).
        When no callback overrides this hook, notices go to the ``logging`` warning level."""

    def on_candidate_start(self, strategy: str, position: int, total: int) -> None:
        """A search trial starts: its place in its wave of ``total`` trials."""

    def on_epoch(self, epoch: int, loss: float, acc: float, seconds: float) -> None:
        """An epoch of the trial or final being trained ended (train loss, val accuracy)."""

    def on_candidate_end(self, row: CandidateRow, best: float) -> None:
        """A search row is recorded (a candidate, a baseline, or a pruned rung); ``best`` is
        the best val accuracy of any candidate so far."""

    def on_final_end(self, row: FinalRow) -> None:
        """A final fine-tune is recorded, tested once."""


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_phase=print)``."""

    def __init__(self, **hooks: Callable):
        unknown = set(hooks) - set(HOOKS)
        if unknown:
            raise TypeError(f"no such hook: {', '.join(sorted(unknown))} (hooks: "
                            f"{', '.join(HOOKS)})")
        for name, function in hooks.items():
            setattr(self, name, function)


def overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` does something on ``hook``."""
    return hook in vars(callback) or getattr(type(callback), hook) is not getattr(Callback, hook)


class CallbackList(Callback):
    """The callbacks of one run, called in the order given; what the driver holds."""

    def __init__(self, callbacks: Callback | Iterable[Callback] | None = None):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback):
            callbacks = [callbacks]
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"{callback!r} is not a blocktune Callback: subclass "
                                "blocktune.core.callbacks.Callback or use LambdaCallback")

    def extended(self, *more: Callback) -> CallbackList:
        return CallbackList([*self.callbacks, *more])

    def on_seed_start(self, seed, folder):
        for callback in self.callbacks:
            callback.on_seed_start(seed, folder)

    def on_recorded(self, rows):
        for callback in self.callbacks:
            callback.on_recorded(rows)

    def on_phase(self, text):
        for callback in self.callbacks:
            callback.on_phase(text)

    def on_notice(self, text):
        listening = [c for c in self.callbacks if overrides(c, "on_notice")]
        if not listening:  # a user of the API who set no hook still sees it
            log.warning("%s", text)
        for callback in listening:
            callback.on_notice(text)

    def on_candidate_start(self, strategy, position, total):
        for callback in self.callbacks:
            callback.on_candidate_start(strategy, position, total)

    def on_epoch(self, epoch, loss, acc, seconds):
        for callback in self.callbacks:
            callback.on_epoch(epoch, loss, acc, seconds)

    def on_candidate_end(self, row, best):
        for callback in self.callbacks:
            callback.on_candidate_end(row, best)

    def on_final_end(self, row):
        for callback in self.callbacks:
            callback.on_final_end(row)
