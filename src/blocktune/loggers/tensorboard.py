"""``--log tensorboard``: one TensorBoard run per candidate and per final, written from the
recorded rows (so a resume writes exactly what is missing, never a run twice).

Each run holds, per epoch, the val accuracy, the val loss and the train loss, and the group as
hyper-parameters (TensorBoard's HParams plugin: method, first and last layer, layers, trained
parameters) with the kept val accuracy as its metric, so hundreds of candidates can be sorted
and compared in one table. ``tensorboard --logdir RUN/tensorboard``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from blocktune.core.callbacks import Callback
from blocktune.core.errors import BlocktuneError
from blocktune.core.records import CandidateRow, FinalRow


def _writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except ImportError as error:
        raise BlocktuneError("--log tensorboard needs TensorBoard: pip install "
                             "'blocktune[tensorboard]'") from error
    return SummaryWriter, hparams


class TensorBoardLog:
    """Event files under ``root/seed_N/{search,final}/<run>``."""

    def __init__(self, root: Path, seed: int):
        _writer()  # fail at the start of a run, not after its first candidate
        self.root = Path(root) / f"seed_{seed}"

    @staticmethod
    def _name(row: CandidateRow | FinalRow) -> str:
        if isinstance(row, FinalRow):
            return re.sub(r"[^\w.\-]", "_", row.method)
        first = "head" if row.first is None else f"{row.first:03d}"
        return re.sub(r"[^\w.\-]", "_", f"{row.strategy}-{row.index:03d}-{first}-r{row.rung}")

    def path(self, row: CandidateRow | FinalRow) -> Path:
        kind = "final" if isinstance(row, FinalRow) else "search"
        return self.root / kind / self._name(row)

    def record(self, row: CandidateRow | FinalRow) -> None:
        """Write one row's run (a kill mid-write leaves only a ``.writing`` folder, replaced
        next time)."""
        summary_writer, hparams = _writer()
        path = self.path(row)
        staging = path.with_name(path.name + ".writing")  # renamed whole when complete
        shutil.rmtree(staging, ignore_errors=True)
        writer = summary_writer(str(staging))
        curves = zip(row.val_curve, row.val_loss_curve or [None] * len(row.val_curve),
                     row.loss_curve or [None] * len(row.val_curve), strict=True)
        for epoch, (acc, val_loss, train_loss) in enumerate(curves, 1):
            writer.add_scalar("val/accuracy", acc, epoch)
            if val_loss is not None:
                writer.add_scalar("val/loss", val_loss, epoch)
            if train_loss is not None:
                writer.add_scalar("train/loss", train_loss, epoch)
        if isinstance(row, FinalRow):
            params = {"method": row.method, "layers": row.group,
                      "trained_params": row.trained_params}
            metrics = {"hparam/val_accuracy": row.val_acc, "hparam/test_accuracy": row.test_acc}
        else:
            params = {"method": row.strategy, "index": row.index,
                      "first": -1 if row.first is None else row.first,
                      "last": -1 if row.last is None else row.last,
                      "layers": row.layers, "trained_params": row.trained_params,
                      "epochs": row.rung}
            metrics = {"hparam/val_accuracy": row.val_acc, "hparam/val_loss": row.val_loss}
        experiment, start, end = hparams(params, metrics)
        for part in (experiment, start, end):
            writer.file_writer.add_summary(part)
        for name, value in metrics.items():
            writer.add_scalar(name, value)
        writer.close()
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)

    def sync(self, rows) -> None:
        """Write the runs of rows recorded before (a resume, or logging turned on later)."""
        for row in rows:
            if not self.path(row).exists():
                self.record(row)


class TensorBoardCallback(Callback):
    """``--log tensorboard`` as a callback: one run per recorded row under ``root``; a resume
    writes the runs its earlier rows lack."""

    def __init__(self, root: str | Path):
        _writer()  # fail at the start of a run, not after its first candidate
        self.root = Path(root)
        self.log: TensorBoardLog | None = None

    def on_seed_start(self, seed: int, folder: Path) -> None:
        self.log = TensorBoardLog(self.root, seed)

    def on_recorded(self, rows) -> None:
        self.log.sync(rows)

    def on_candidate_end(self, row: CandidateRow, best: float) -> None:
        self.log.record(row)

    def on_final_end(self, row: FinalRow) -> None:
        self.log.record(row)


def loggers(names: list[str], folder: Path) -> list[Callback]:
    """The callbacks ``--log`` names, writing under the run folder ``folder`` (the caller adds
    them to its own, as Lightning's Trainer takes its loggers from the caller)."""
    return [TensorBoardCallback(Path(folder) / "tensorboard")] if "tensorboard" in names else []
