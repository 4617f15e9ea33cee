"""The progress display of ``blocktune run`` and ``finetune``: a callback drawing a rich
progress bar over the candidates, with the best val accuracy so far."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from blocktune.core.callbacks import Callback
from blocktune.core.methods import BASELINES, label


class ProgressDisplay(Callback):
    """One bar per strategy's search; with ``verbose`` (or when stderr is not a terminal, as
    in a log file) one line per recorded row, and per epoch with ``verbose``."""

    def __init__(self, verbose: bool = False):
        self.console = Console(stderr=True, log_path=False)  # no "display.py:40" on each line
        self.verbose = verbose
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                            console=self.console)
        self.task = None

    def on_candidate_start(self, strategy, position, total):
        if self.task is None or position == 0:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"{label(strategy)} search", total=total)

    def on_candidate_end(self, row, best):
        # a baseline is no candidate: the best candidate so far says nothing about it
        baseline = row.strategy in BASELINES
        so_far = "" if baseline else f" · best val {best:.3f}"
        if self.task is not None:
            self.bar.update(self.task, advance=1,
                            description=f"{label(row.strategy)} search{so_far}")
        if self.verbose or not self.console.is_terminal:  # logs get one line per candidate
            took = f"same as {row.same_as}" if row.same_as else f"{row.seconds:.2f}s"
            self.console.log(f"{label(row.strategy)} #{row.index} {row.layers}: "
                             f"val {row.val_acc:.3f} ({row.status}, {took})"
                             + ("" if baseline else f" · best {best:.3f}"))

    def on_epoch(self, epoch, loss, acc, seconds):
        if self.verbose:
            self.console.log(f"epoch {epoch}: train loss {loss:.4f}  val acc {acc:.4f}  "
                             f"({seconds:.1f}s)")

    def on_phase(self, text):
        self.console.log(text)

    def on_notice(self, text):
        self.console.log(f"[bold]note:[/bold] {text}")
