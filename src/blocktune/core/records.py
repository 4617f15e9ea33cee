"""The record: typed rows, the one ranking function, and the CSVs they live in.

``candidates.csv`` (and ``refits.csv``) hold one :class:`CandidateRow` per finished training,
``finals.csv`` one :class:`FinalRow` per method. The CSV columns are the dataclasses' fields, in
order, so nothing about a column is written twice; the CSVs are the only source of truth for
resume, whichever executor produced the rows. Files written by older versions (fewer
columns) read back with the missing fields at their defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from blocktune.core.io import atomic_write_csv, parsing, predictions_text, read_csv


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def _optional_int(text: str) -> int | None:
    return int(text) if text not in ("", None) else None


def _predictions(text: str | None) -> list[int] | None:
    return [int(p) for p in text.split()] if text else None


# per-epoch learning curves, one space-separated cell each (older files lack some: empty)
CURVES = ("val_curve", "loss_curve", "val_loss_curve")


def _curves_text(row) -> dict[str, str]:
    return {name: " ".join(f"{v:.6f}" for v in getattr(row, name)) for name in CURVES}


def _curves(row: dict[str, str]) -> dict[str, list[float]]:
    return {name: [float(v) for v in (row.get(name) or "").split()] for name in CURVES}


@dataclass
class CandidateRow:
    """One training of the search: a candidate (or a baseline) after a rung or at the end."""

    strategy: str  # the method: block, ranked-3, baseline-I …
    rung: int  # epochs it was trained for
    index: int  # its place in the strategy's search order
    layers: str  # the group, readable
    layer_indices: str  # the group: "3,4,5"; "" the head alone; "all" every layer
    first: int | None
    last: int | None
    trained_params: int
    val_acc: float
    val_loss: float
    epochs: int
    best_epoch: int
    seconds: float
    status: str  # ok | rung (a pruned search's intermediate row) | failed
    error: str = ""
    val_curve: list[float] = field(default_factory=list)
    same_as: str = ""  # "block #3": the row was copied from that trained twin
    val_pred: list[int] | None = None  # per val image at the kept epoch, splits.json order
    loss_curve: list[float] = field(default_factory=list)  # train loss per epoch
    val_loss_curve: list[float] = field(default_factory=list)
    # what the candidate is ranked by: accuracy on val, or on val and train (--score-on),
    # on ``score_images`` images; nan in files written before it was recorded (val_acc then)
    score: float = math.nan
    score_images: int = 0
    score_seconds: float = 0.0  # the extra forward passes of a pooled score

    @property
    def ranking_score(self) -> float:
        return self.val_acc if math.isnan(self.score) else self.score

    @property
    def score_se(self) -> float:
        """The ranking score's binomial standard error on the images it was measured on
        (nan when their number was not recorded)."""
        if not self.score_images:
            return math.nan
        p = self.ranking_score
        return math.sqrt(p * (1 - p) / self.score_images)

    @property
    def key(self) -> tuple[str, str, str]:
        """(method, layer indices, rung): what a resume matches rows by."""
        return (self.strategy, self.layer_indices, str(self.rung))

    def to_csv(self) -> dict[str, str]:
        return {
            **{f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)},
            "first": "" if self.first is None else str(self.first),
            "last": "" if self.last is None else str(self.last),
            "val_acc": f"{self.val_acc:.6f}", "val_loss": f"{self.val_loss:.6f}",
            "seconds": f"{self.seconds:.2f}",
            "score": "" if math.isnan(self.score) else f"{self.score:.6f}",
            "score_seconds": f"{self.score_seconds:.2f}",
            **_curves_text(self), "val_pred": predictions_text(self.val_pred or [])}

    def recorded(self) -> CandidateRow:
        """The row exactly as ``candidates.csv`` holds it (accuracies to 6 decimals), so a
        fresh row and the same row read back on resume rank and compare alike."""
        return CandidateRow.from_csv(self.to_csv())

    @classmethod
    def from_csv(cls, row: dict[str, str]) -> CandidateRow:
        return cls(
            strategy=row["strategy"], rung=int(row["rung"]), index=int(row["index"]),
            layers=row["layers"], layer_indices=row["layer_indices"],
            first=_optional_int(row["first"]), last=_optional_int(row["last"]),
            trained_params=int(row["trained_params"]), val_acc=_float(row["val_acc"]),
            val_loss=_float(row["val_loss"]), epochs=int(row["epochs"]),
            best_epoch=int(row["best_epoch"]), seconds=_float(row["seconds"]),
            status=row["status"], error=row.get("error") or "",
            same_as=row.get("same_as") or "", val_pred=_predictions(row.get("val_pred")),
            score=_float(row.get("score", "")), score_images=int(row.get("score_images") or 0),
            score_seconds=_float(row.get("score_seconds") or "0"), **_curves(row))


LEARNING = "learning"  # FinalRow.trained_on: every learning image


@dataclass
class FinalRow:
    """One method's final fine-tune: trained on search+train (or, ``trained_on`` LEARNING, on
    every learning image), scored once on test."""

    method: str
    group: str  # readable: "head only", "all layers", layer names
    layer_indices: str  # "" for both baselines (the group column tells them apart)
    trained_params: int
    search_val_acc: float  # nan for a baseline not searched
    val_acc: float
    test_acc: float
    epochs: int
    seconds: float
    status: str
    error: str = ""  # why a final failed (non-finite loss, out of memory, a Ray trial…)
    same_as: str = ""  # the method whose fine-tune of the same group it copies
    select: str = ""  # the selection rule that chose the group (none for the baselines)
    val_pred: list[int] | None = None
    test_pred: list[int] | None = None
    val_curve: list[float] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)
    val_loss_curve: list[float] = field(default_factory=list)
    # --test-data: per folder, {"acc": accuracy, "pred": per-image predictions}
    domains: dict[str, dict] = field(default_factory=dict)
    # "" (search + train, val held out for the schedule and the kept weights) or LEARNING
    # (every learning image, nothing held out: no val accuracy; the final of a cvK choice)
    trained_on: str = ""

    def to_csv(self) -> dict[str, str]:
        return {
            **{f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)},
            "search_val_acc": "" if math.isnan(self.search_val_acc)
            else f"{self.search_val_acc:.6f}",
            "val_acc": f"{self.val_acc:.6f}", "test_acc": f"{self.test_acc:.6f}",
            "seconds": f"{self.seconds:.2f}",
            "val_pred": predictions_text(self.val_pred or []),
            "test_pred": predictions_text(self.test_pred or []), **_curves_text(self),
            "domains": json.dumps(_rounded_domains(self.domains), sort_keys=True)
            if self.domains else ""}

    def recorded(self) -> FinalRow:
        """The row exactly as ``finals.csv`` holds it (see :meth:`CandidateRow.recorded`)."""
        return FinalRow.from_csv(self.to_csv())

    @classmethod
    def from_csv(cls, row: dict[str, str]) -> FinalRow:
        return cls(
            method=row["method"], group=row["group"], layer_indices=row["layer_indices"],
            trained_params=int(row["trained_params"]),
            search_val_acc=_float(row.get("search_val_acc", "")), val_acc=_float(row["val_acc"]),
            test_acc=_float(row["test_acc"]), epochs=int(row["epochs"]),
            seconds=_float(row["seconds"]), status=row["status"], error=row.get("error") or "",
            same_as=row.get("same_as") or "", select=row.get("select") or "",
            val_pred=_predictions(row.get("val_pred")),
            test_pred=_predictions(row.get("test_pred")), **_curves(row),
            domains=_domains(row.get("domains")), trained_on=row.get("trained_on") or "")


def _rounded_domains(domains: dict[str, dict]) -> dict[str, dict]:
    return {name: {"acc": round(float(d["acc"]), 6), "pred": [int(p) for p in d["pred"]]}
            for name, d in domains.items()}


def _domains(text: str | None) -> dict[str, dict]:
    if not text:
        return {}
    value = json.loads(text)
    if not (isinstance(value, dict) and all(isinstance(d, dict) and "acc" in d and "pred" in d
                                            for d in value.values())):
        raise ValueError("domains: not a mapping of folder name to accuracy and predictions")
    return value


@dataclass
class CvRow:
    """One fold of cross-validated choice (``--choose-by cvK``): a method's recipe trained on
    the other folds of the learning images and scored on this one."""

    method: str
    fold: int
    layer_indices: str
    trained_params: int
    fold_acc: float
    fold_images: int
    epochs: int
    seconds: float
    status: str
    same_as: str = ""  # the method whose fold training of the same group and recipe it copies
    fold_pred: list[int] | None = None
    error: str = ""  # why the fold failed (non-finite loss, a Ray trial lost for good…)

    @property
    def correct(self) -> int:
        return round(self.fold_acc * self.fold_images)

    def to_csv(self) -> dict[str, str]:
        return {**{f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)},
                "fold_acc": f"{self.fold_acc:.6f}", "seconds": f"{self.seconds:.2f}",
                "fold_pred": predictions_text(self.fold_pred or [])}

    def recorded(self) -> CvRow:
        """The row exactly as ``cv.csv`` holds it."""
        return CvRow.from_csv(self.to_csv())

    @classmethod
    def from_csv(cls, row: dict[str, str]) -> CvRow:
        return cls(method=row["method"], fold=int(row["fold"]),
                   layer_indices=row["layer_indices"], trained_params=int(row["trained_params"]),
                   fold_acc=_float(row["fold_acc"]), fold_images=int(row["fold_images"]),
                   epochs=int(row["epochs"]), seconds=_float(row["seconds"]),
                   status=row["status"], same_as=row.get("same_as") or "",
                   fold_pred=_predictions(row.get("fold_pred")), error=row.get("error") or "")


CV_FIELDS = [f.name for f in dataclasses.fields(CvRow)]


ACCURACIES = ("val_acc", "test_acc", "search_val_acc", "score", "fold_acc")
COUNTS = ("trained_params", "epochs", "best_epoch", "fold_images", "score_images", "rung",
          "index", "fold")
STATUSES = ("ok", "rung", "failed")


def check_values(row: CandidateRow | FinalRow | CvRow) -> None:
    """A row's values within what blocktune writes, or ValueError naming the first that is not:
    accuracies in [0, 1] (or empty), counts and seconds not negative, a known status, class ids
    not negative, a finished row with its val accuracy (one trained on every learning image:
    its test accuracy), a known ``trained_on``."""
    for name in ACCURACIES:
        value = getattr(row, name, math.nan)
        if not math.isnan(value) and not 0 <= value <= 1:
            raise ValueError(f"{name} = {value} is no accuracy (0 to 1)")
    for name in COUNTS:
        value = getattr(row, name, 0)
        if value is not None and value < 0:
            raise ValueError(f"{name} = {value} is negative")
    if not row.seconds >= 0:  # NaN too
        raise ValueError(f"seconds = {row.seconds} is not a duration")
    if getattr(row, "trained_on", "") not in ("", LEARNING):
        raise ValueError(f"trained_on {row.trained_on!r} is not {LEARNING!r} or empty")
    if row.status not in STATUSES:
        raise ValueError(f"status {row.status!r} is not one of {', '.join(STATUSES)}")
    if isinstance(row, CvRow):
        accuracy = row.fold_acc
    elif isinstance(row, FinalRow) and row.trained_on == LEARNING:  # nothing held out
        accuracy = row.test_acc
    else:
        accuracy = row.val_acc
    if row.status == "ok" and math.isnan(accuracy):
        raise ValueError(f"a finished {row.method if hasattr(row, 'method') else row.strategy} "
                         "row has no accuracy")
    for name in ("val_pred", "test_pred", "fold_pred"):
        if any(p < 0 for p in getattr(row, name, None) or ()):
            raise ValueError(f"{name} holds a negative class id")


def _checked(rows: list) -> list:
    for row in rows:
        check_values(row)
    return rows


def read_cv(path: str | Path) -> list[CvRow]:
    rows = read_csv(path, _required(CvRow))
    with parsing(path):
        return _checked([CvRow.from_csv(r) for r in rows])


def write_cv(path: str | Path, rows: list[CvRow]) -> None:
    atomic_write_csv(path, [r.to_csv() for r in rows], CV_FIELDS)


CANDIDATE_FIELDS = [f.name for f in dataclasses.fields(CandidateRow)]
FINAL_FIELDS = [f.name for f in dataclasses.fields(FinalRow)]


def rank_key(row: CandidateRow | FinalRow) -> tuple:
    """The one ranking of blocktune: highest score (a candidate's: val accuracy, or its pooled
    score with --score-on val+train; a final's: val accuracy); ties to fewer trained
    parameters, then to the candidate searched first (nearer the output). Sort ascending:
    best first."""
    score = row.ranking_score if isinstance(row, CandidateRow) else row.val_acc
    return (-score, row.trained_params, getattr(row, "index", 0))


def _required(row_type) -> list[str]:
    """The columns every version of a file has had: the fields without defaults."""
    return [f.name for f in dataclasses.fields(row_type)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def read_candidates(path: str | Path) -> list[CandidateRow]:
    rows = read_csv(path, _required(CandidateRow))
    with parsing(path):
        return _checked([CandidateRow.from_csv(r) for r in rows])


def write_candidates(path: str | Path, rows: list[CandidateRow]) -> None:
    """Atomically: a crash leaves the previous file whole, so it loses at most this row."""
    atomic_write_csv(path, [r.to_csv() for r in rows], CANDIDATE_FIELDS)


def read_finals(path: str | Path) -> list[FinalRow]:
    rows = read_csv(path, _required(FinalRow))
    with parsing(path):
        return _checked([FinalRow.from_csv(r) for r in rows])


def write_finals(path: str | Path, rows: list[FinalRow]) -> None:
    atomic_write_csv(path, [r.to_csv() for r in rows], FINAL_FIELDS)
