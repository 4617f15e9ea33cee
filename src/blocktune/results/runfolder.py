"""The run folder: its layout, and every read and write of the files in it.

A ``run`` folder (``--out``)::

    .blocktune            which command made the folder ({"command": "run"})
    config.yaml           what was asked; environment.json: where and with which versions
    run.lock, run.pid     one writer at a time (an OS lock, released when its process dies)
    seed_<s>/             one split seed:
        splits.json           the split (files per split)
        candidates.csv        one row per search training (records.CandidateRow)
        refits.csv            the swapped-fold re-trainings some rules ask for
        choices.json          per strategy: what the selection rule picked, and from what
        finals.csv            one row per method's final fine-tune (records.FinalRow)
        <method>.safetensors  each final's weights
        cv.csv                --choose-by cvK: one row per (method, fold) (records.CvRow)
        learning_finals.csv   cvK: the chosen method and both baselines trained again on
                              every learning image (FinalRow, trained_on "learning")
        <method>.learning.safetensors  their weights (the chosen one's is published)
        rungs/, cache/        a pruned search's paused states; the activation cache's spill
    summary.csv           test accuracy per method over the seeds
    model.safetensors, model.json, README.md   the published model, what rebuilds it, its card
    report.md, report.html, plots/             the report
    tensorboard/, export/                      --log tensorboard; blocktune export

A ``finetune`` folder holds config.yaml, environment.json, splits.json, metrics.csv,
result.json, the model, model.json and README.md.

Nothing outside this module names these files: the driver, the report, export and the CLI
ask a :class:`RunFolder` or a :class:`SeedFolder`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from blocktune.core.config import RunConfig, differing_keys
from blocktune.core.errors import BlocktuneError
from blocktune.core.io import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    damaged,
    read_json,
    read_yaml_mapping,
)
from blocktune.core.methods import indices_text, label
from blocktune.core.records import (
    LEARNING,
    CandidateRow,
    CvRow,
    FinalRow,
    read_candidates,
    read_cv,
    read_finals,
    write_candidates,
    write_cv,
    write_finals,
)

# a recorded accuracy (6 decimals) and the one its own predictions give
ACCURACY_TOLERANCE = 1e-5


def check_stated_accuracy(path: Path, what: str, stated: float, pred, truth,
                          against: str = "") -> None:
    """A record's stated accuracy is the one its own predictions score against ``truth``;
    otherwise ``path`` is damage (a resume must not choose from a row that contradicts
    itself). A NaN accuracy (a failed row's) states nothing."""
    scored = float(np.mean(np.asarray(pred) == np.asarray(truth)))
    if not math.isnan(stated) and abs(stated - scored) > ACCURACY_TOLERANCE:
        raise damaged(path, f"{what} {stated:.4f} is not what its own predictions score"
                      + (f" {against}" if against else "") + f" ({scored:.4f})")
MARKER = ".blocktune"  # {"command": "run"}: which command's folder this is
# What each command writes at the top of its --out folder. A folder holding anything else
# belongs to someone else: a run never writes over it.
RUN_FILES = frozenset({
    "config.yaml", "environment.json", "run.lock", "run.pid", "summary.csv", "model.safetensors",
    "model.json", "README.md", "report.md", "report.html", "plots", "tensorboard", "export",
    "metrics.csv", "splits.json", "cache", "test_domains.json", "choose_on.json", MARKER})
FINETUNE_FILES = frozenset({
    "config.yaml", "environment.json", "run.lock", "run.pid", "splits.json", "metrics.csv",
    "result.json", "model.safetensors", "model.json", "README.md", "cache", "rungs",
    "tensorboard", MARKER})
SEED_PREFIX = "seed_"

# model.json: what predict and export need, with the type each must have
CARD_KEYS = {"model": str, "classes": list, "head": str, "image_size": int, "mean": list,
             "std": list, "interpolation": str, "method": str}


RECOMMENDATION = "recommendation"  # choices.json's key for the choice among the finals


class SeedFolder:
    """``seed_<s>/``: one split seed's search, choices and finals."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        # splits.json's shape and the (mtime, size) it was read at: see _split_shape
        self._shape: tuple[int, dict[str, int]] = (0, {})
        self._shape_stamp: tuple[int, int] | None = None

    candidates = property(lambda self: self.root / "candidates.csv")
    refits = property(lambda self: self.root / "refits.csv")
    finals = property(lambda self: self.root / "finals.csv")
    cv = property(lambda self: self.root / "cv.csv")
    learning_finals = property(lambda self: self.root / "learning_finals.csv")
    splits = property(lambda self: self.root / "splits.json")
    choices = property(lambda self: self.root / "choices.json")
    rungs = property(lambda self: self.root / "rungs")
    cache = property(lambda self: self.root / "cache")

    def weights(self, method: str, trained_on: str = "") -> Path:
        """A final's fine-tuned weights (``trained_on`` LEARNING: its training on every
        learning image)."""
        return self.root / f"{method}{'.' + trained_on if trained_on else ''}.safetensors"

    def rung_state(self, method: str, group: tuple[int, ...] | None) -> Path:
        """Where a pruned candidate's training state waits for its next rung."""
        digest = hashlib.sha1(indices_text(group).encode()).hexdigest()[:12]
        first = group[0] if group else "head"
        return self.rungs / f"{method}-{first}-{digest}.pt"

    def save_rung_state(self, method: str, group: tuple[int, ...] | None, state: dict) -> None:
        path = self.rung_state(method, group)
        path.parent.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def take_rung_state(self, method: str, group: tuple[int, ...] | None,
                        device: torch.device) -> dict | None:
        """The state a candidate paused with at its last rung, removed from disk (the next
        rung's row replaces it); None when lost or damaged (it is trained again)."""
        path = self.rung_state(method, group)
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as error:  # noqa: BLE001 - damaged: recomputed, like a lost one
            log.warning("%s is damaged (%s): the candidate is trained again from the start",
                        path, type(error).__name__)
            state = None
        path.unlink()
        return state

    def _agree_with_split(self, rows: list, path: Path, lengths: dict[str, str]) -> list:
        """Rows whose predictions fit this seed's ``splits.json``: one per image of the split
        they score (``lengths``: prediction field → split name) and class ids below the class
        count; otherwise the file is damage."""
        if not rows or not self.splits.exists():
            return rows
        classes, sizes, labels = self._split_shape()
        for row in rows:
            for name, split in lengths.items():
                pred = getattr(row, name, None)
                if not pred:
                    continue
                if split is not None and len(pred) != sizes.get(split, 0):
                    # two files disagree: which one was cut short is not known, so neither is
                    # named as the one to delete (recomputing on a cut split would be silent)
                    raise BlocktuneError(
                        f"{path} and {self.splits} disagree: a row's {name} has {len(pred)} "
                        f"predictions for the {sizes.get(split, 0)} {split} images "
                        f"{self.splits.name} lists; one of the two was cut short or replaced: "
                        "restore it from a copy, or start a new --out folder; nothing was "
                        "written")
                if max(pred) >= classes:
                    raise damaged(path, f"a row's {name} names class {max(pred)}; "
                                  f"{self.splits.name} has {classes} classes")
                accuracy = name.replace("_pred", "_acc")
                if split is not None and split in labels and hasattr(row, accuracy):
                    check_stated_accuracy(path, f"a row's {accuracy}", getattr(row, accuracy),
                                          pred, labels[split],
                                          f"against {self.splits.name}'s {split} labels")
        return rows

    def _split_shape(self) -> tuple[int, dict[str, int], dict[str, np.ndarray]]:
        """(classes, images per split, labels per split) of ``splits.json``, parsed once for as
        long as the file is unchanged (every record read checks against it)."""
        from blocktune.data.splits import read_splits

        info = self.splits.stat()
        stamp = (info.st_mtime_ns, info.st_size)
        if self._shape_stamp != stamp:
            saved = read_splits(self.splits)
            self._shape = (len(saved["classes"]), {k: len(v) for k, v in saved["files"].items()},
                           {k: np.asarray(v) for k, v in (saved.get("labels") or {}).items()})
            self._shape_stamp = stamp
        return self._shape

    def check_records(self) -> None:
        """Read every record this seed holds, so a damaged one is one line before any work."""
        self.read_candidates()
        self.read_refits()
        self.read_finals()
        self.read_cv()
        self.read_learning_finals()

    def read_candidates(self) -> list[CandidateRow]:
        return self._agree_with_split(read_candidates(self.candidates), self.candidates,
                                      {"val_pred": "val"})

    def write_candidates(self, rows: list[CandidateRow]) -> None:
        write_candidates(self.candidates, rows)

    def read_refits(self) -> list[CandidateRow]:
        return read_candidates(self.refits)

    def write_refits(self, rows: list[CandidateRow]) -> None:
        write_candidates(self.refits, rows)

    def read_finals(self) -> list[FinalRow]:
        return self._agree_with_split(read_finals(self.finals), self.finals,
                                      {"val_pred": "val", "test_pred": "test"})

    def write_finals(self, rows: list[FinalRow]) -> None:
        write_finals(self.finals, rows)

    def read_cv(self) -> list[CvRow]:
        return self._agree_with_split(read_cv(self.cv), self.cv, {"fold_pred": None})

    def write_cv(self, rows: list[CvRow]) -> None:
        write_cv(self.cv, rows)

    def read_learning_finals(self) -> list[FinalRow]:
        rows = self._agree_with_split(read_finals(self.learning_finals), self.learning_finals,
                                      {"test_pred": "test"})
        if any(r.trained_on != LEARNING for r in rows):
            raise damaged(self.learning_finals, "a row not trained on every learning image")
        return rows

    def write_learning_finals(self, rows: list[FinalRow]) -> None:
        write_finals(self.learning_finals, rows)

    def read_choices(self) -> dict[str, dict]:
        """Per strategy, what the run's rule picked and from what; {} in folders written
        before choices were recorded."""
        if not self.choices.exists():
            return {}
        choices = read_json(self.choices)
        if not all(isinstance(v, dict) and isinstance(v.get("rule"), str)
                   for v in choices.values()):
            raise damaged(self.choices, "entries that are not a rule's recorded choice")
        return choices

    def write_choices(self, choices: dict[str, dict]) -> None:
        """Write the strategies' choices; the recorded recommendation, when there is one, is
        kept (it is written by :meth:`write_recommendation`)."""
        kept = {k: v for k, v in self.read_choices().items() if k == RECOMMENDATION}
        atomic_write_json(self.choices, {**choices, **kept})

    def write_recommendation(self, recommendation: dict) -> None:
        """The choice among the finals, with its procedure (``val``, ``cv5``…), under the
        key ``recommendation`` of ``choices.json``."""
        atomic_write_json(self.choices, {**self.read_choices(), RECOMMENDATION: recommendation})

    def read_recommendation(self) -> dict | None:
        return self.read_choices().get(RECOMMENDATION)


# what a config written before a key existed meant by its absence
log = logging.getLogger(__name__)

PAST_DEFAULTS = {"methods": [], "pick_finals": True, "choose_by": "val"}


class RunFolder:
    """The ``--out`` folder of a ``run`` or a ``finetune``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    environment = property(lambda self: self.root / "environment.json")
    summary = property(lambda self: self.root / "summary.csv")
    weights = property(lambda self: self.root / "model.safetensors")
    model_json = property(lambda self: self.root / "model.json")
    card = property(lambda self: self.root / "README.md")
    report_md = property(lambda self: self.root / "report.md")
    report_html = property(lambda self: self.root / "report.html")
    plots = property(lambda self: self.root / "plots")
    tensorboard = property(lambda self: self.root / "tensorboard")
    export = property(lambda self: self.root / "export")
    test_domains = property(lambda self: self.root / "test_domains.json")

    def write_test_domains(self, domains) -> None:
        """``--test-data``: per folder its name, files and labels (training class ids), in the
        order the finals' domain predictions are saved."""
        atomic_write_json(self.test_domains, {d.name: {
            "files": list(d.files), "labels": [int(y) for y in d.labels],
            **({"sha256": list(d.digests)} if d.digests else {})} for d in domains})

    def changed_test_domains(self, domains) -> list[str]:
        """The folders (``--test-data``, the ``--choose-on`` parts) whose files, labels or bytes
        differ from what this run recorded and scored: a resume must not score old predictions
        against new labels. A folder recorded without hashes (an older run) is compared by
        files and labels."""
        saved = self.read_test_domains()
        changed = []
        for d in domains:
            old = saved.get(d.name)
            if old is None:
                continue
            same = old["files"] == list(d.files) and old["labels"] == [int(y) for y in d.labels]
            if same and "sha256" in old and d.digests:
                same = old["sha256"] == list(d.digests)
            if not same:
                changed.append(d.name)
        return changed

    choose_on = property(lambda self: self.root / "choose_on.json")

    def write_choose_on(self, record: dict) -> None:
        """``--choose-on``: the folder, the seed of its split, each part's files and every
        file's sha256 (a resume on a changed folder is refused)."""
        atomic_write_json(self.choose_on, record)

    def read_choose_on(self) -> dict | None:
        if not self.choose_on.exists():
            return None
        saved = read_json(self.choose_on)
        if not (isinstance(saved, dict) and isinstance(saved.get("parts"), dict)
                and isinstance(saved.get("sha256"), dict)):
            raise damaged(self.choose_on, "not a record of the --choose-on folder's split")
        return saved

    def read_test_domains(self) -> dict[str, dict]:
        if not self.test_domains.exists():
            return {}
        saved = read_json(self.test_domains)
        if not (isinstance(saved, dict) and all(
                isinstance(v, dict) and isinstance(v.get("labels"), list)
                and isinstance(v.get("files"), list) and len(v["labels"]) == len(v["files"])
                for v in saved.values())):
            raise damaged(self.test_domains, "not a mapping of folder name to files and labels")
        return saved
    metrics = property(lambda self: self.root / "metrics.csv")  # finetune: per epoch
    splits = property(lambda self: self.root / "splits.json")  # finetune's split
    result = property(lambda self: self.root / "result.json")  # finetune's result
    cache = property(lambda self: self.root / "cache")

    def seed(self, seed: int) -> SeedFolder:
        root = self.root / f"{SEED_PREFIX}{seed}"
        if root.exists() and not root.is_dir():  # else read as "not started"
            raise damaged(root, "a file stands where the seed's folder belongs")
        return SeedFolder(root)

    def seed_splits(self) -> list[Path]:
        """Every split this folder holds: a run's per seed, a finetune's one."""
        return sorted([*self.root.glob("splits.json"),
                       *self.root.glob(f"{SEED_PREFIX}*/splits.json")])

    def is_run(self) -> bool:
        return self.config.exists()

    # -- config and environment ------------------------------------------------------------
    def saved_config(self) -> dict:
        """``config.yaml``, its keys checked for type and range (not for the environment: its
        data folder and weights need not exist where it is read), and against the digest
        ``environment.json`` recorded when it was written: a file cut short at a line end is
        still YAML, with keys missing that an older version's file would lack too."""
        saved = read_yaml_mapping(self.config)
        # keys whose default changed after older versions wrote configs without them: such a run
        # had the old default (no recipes beside the baselines), not today's
        for key, then in PAST_DEFAULTS.items():
            saved.setdefault(key, then)
        recorded = self.versions().get("config_sha256")
        if recorded and hashlib.sha256(self.config.read_bytes()).hexdigest() != recorded:
            raise damaged(self.config, "it is not the file this run wrote (cut short or "
                                       "edited)")
        try:
            RunConfig.from_dict(saved)
        except BlocktuneError as error:
            raise damaged(self.config, str(error)) from None
        return saved

    def ran_on(self) -> str | None:
        """The device type the run was started on, if recorded."""
        return read_json(self.environment).get("device") if self.environment.exists() else None

    def versions(self) -> dict:
        return read_json(self.environment) if self.environment.exists() else {}

    def check_resume(self, config: RunConfig, device: str, force_new: bool = False) -> None:
        """Refuse to resume a folder started with a config that changes results, or on
        another device type, naming the keys."""
        if force_new:
            return
        if not self.config.exists():
            recorded = [p for p in (*self.root.glob(f"{SEED_PREFIX}*/*.csv"), self.metrics,
                                    self.result) if p.exists()]
            if recorded:  # rows whose settings nobody can check: damage, not a fresh start
                raise BlocktuneError(
                    f"run folder {self.root} holds results ({recorded[0].name}) but not the "
                    f"{self.config.name} they were made with: their settings cannot be checked "
                    "against this run's; restore it, use another --out folder, or --force-new")
            return
        keys = differing_keys(self.saved_config(), config)
        ran_on = self.ran_on()
        if ran_on is not None and ran_on != device:
            raise BlocktuneError(
                f"run folder {self.root} was started on {ran_on}; resuming on {device} would "
                f"mix rows trained with other numerics in one table: pass --device {ran_on}, "
                "use another --out folder, or --force-new")
        if keys:
            raise BlocktuneError(
                f"run folder {self.root} was started with a different {', '.join(keys)}: use "
                "another --out folder, or --force-new to start it over")

    def write_config(self, config: RunConfig, environment: dict) -> None:
        """Record what was asked (and with which versions), once the inputs proved valid."""
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        atomic_write_text(self.config, text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        atomic_write_json(self.environment, {**environment, "config_sha256": digest})

    def clear_results(self) -> None:
        """``--force-new``: forget the finished work of an earlier run in this folder; the
        published model and its card too (predict must never serve the old run's model)."""
        seeds = f"{SEED_PREFIX}*"
        for stale in [*self.root.glob(f"{seeds}/*.csv"), *self.root.glob(f"{seeds}/*.json"),
                      *self.root.glob(f"{seeds}/rungs/*.pt"),
                      *self.root.glob(f"{seeds}/*.safetensors"), self.metrics, self.splits,
                      self.summary, self.weights, self.model_json, self.card, self.report_md,
                      self.report_html, self.test_domains, self.choose_on,
                      *self.plots.glob("*.png")]:
            stale.unlink(missing_ok=True)
        shutil.rmtree(self.tensorboard, ignore_errors=True)

    # -- the published model -----------------------------------------------------------------
    def model_card(self) -> dict:
        """``model.json``, checked for what rebuilding the model needs."""
        card = read_json(self.model_json)
        wrong = [k for k, kind in CARD_KEYS.items() if not isinstance(card.get(k), kind)]
        if wrong:
            raise damaged(self.model_json,
                          f"{wrong[0]!r} is missing or not a {CARD_KEYS[wrong[0]].__name__}")
        # values a network can be rebuilt with (a config's own bounds for the image size)
        numbers = [*card["mean"], *card["std"]]
        problem = (
            "'image_size' is out of range (16 to 4096)" if not 16 <= card["image_size"] <= 4096
            else "'classes' is empty or not all names" if not card["classes"] or not all(
                isinstance(c, str) for c in card["classes"])
            else "'mean' and 'std' are not three numbers each, std positive"
            if len(card["mean"]) != 3 or len(card["std"]) != 3
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers)
            or min(card["std"]) <= 0 else None)
        if problem:
            raise damaged(self.model_json, problem)
        return card

    def has_model(self) -> bool:
        return self.model_json.exists() and self.weights.exists()


def summarize(folder: Path, seeds: list[int]) -> list[dict]:
    """Mean and std of test accuracy over seeds, per method; written to ``summary.csv``."""
    per_method: dict[str, list[float]] = {}
    files = RunFolder(folder)
    for seed in seeds:
        for row in files.seed(seed).read_finals():
            if row.status == "ok":
                per_method.setdefault(row.method, []).append(row.test_acc)
    summary = []
    for method, values in per_method.items():
        tensor = torch.tensor(values, dtype=torch.float64)
        summary.append({"method": method, "label": label(method), "seeds": len(values),
                        "test_acc_mean": f"{tensor.mean().item():.4f}",
                        "test_acc_std": f"{tensor.std(unbiased=False).item():.4f}",
                        "test_acc_var": f"{tensor.var(unbiased=False).item():.6f}"})
    atomic_write_csv(files.summary, summary,
                     ["method", "label", "seeds", "test_acc_mean", "test_acc_std", "test_acc_var"])
    return summary


# -- who owns a folder ------------------------------------------------------------------------
def _owner(folder: Path) -> str | None:
    """The command a folder was made by: its marker, or for folders made before markers, its
    layout (a config.yaml of blocktune's keys, and seed folders for ``run``)."""
    try:
        return json.loads((folder / MARKER).read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        saved = yaml.safe_load(RunFolder(folder).config.read_text())
    except Exception:  # noqa: BLE001 - absent, unreadable or not YAML: no owner
        return None
    if not isinstance(saved, dict) or "model" not in saved:
        return None
    return "run" if any(folder.glob(f"{SEED_PREFIX}*")) else "finetune"


def owner(folder: str | Path) -> str | None:
    """Which command made ``folder`` (``run`` or ``finetune``), or None."""
    return _owner(Path(folder))


def _is_atomic_temp(name: str) -> bool:
    """A temp file an atomic write was killed in (``.model.json.x1y2z3.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def check_owned(folder: Path, command: str) -> None:
    """Refuse, in one line, an ``--out`` folder that is neither empty nor this command's."""
    if not folder.is_dir():
        return
    entries = sorted(p.name for p in folder.iterdir())
    allowed = RUN_FILES if command == "run" else FINETUNE_FILES
    foreign = [n for n in entries if n not in allowed and not (
        command == "run" and n.startswith(SEED_PREFIX)) and not _is_atomic_temp(n)]
    owner = _owner(folder) if entries else command
    if owner is None and not foreign and set(entries) <= {"run.lock", "run.pid", MARKER}:
        owner = command  # a run refused or killed before it wrote anything
    if owner == command and not foreign:
        return
    if owner is not None and owner != command:
        raise BlocktuneError(f"--out {folder} holds a blocktune {owner}, not a {command}: "
                             "give an empty or new folder")
    shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
    raise BlocktuneError(f"--out {folder} already holds files that are not a blocktune "
                         f"{command}'s ({shown or ', '.join(entries[:3])}): give an empty or "
                         "new folder")


class RunLock:
    """One writer per run folder: an OS lock on ``run.lock`` (``filelock``), released by the
    kernel when its process dies however it dies, so no lock is ever stale; ``run.pid`` names
    the holder for the error message.

    With ``command``, the folder must be empty or that command's (:func:`check_owned`), and it
    is marked as that command's. A folder this lock created is removed again when the work
    inside fails before it wrote its config: a refused run leaves nothing behind.
    """

    def __init__(self, folder: str | Path, command: str | None = None):
        self.path = Path(folder) / "run.lock"
        self.pid_path = Path(folder) / "run.pid"
        self.command = command
        self._lock = None
        self._created: Path | None = None

    def __enter__(self) -> RunLock:
        from filelock import FileLock, Timeout

        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise BlocktuneError(f"--out {folder} is a file, not a folder: give a folder for "
                                 "the run (created if missing)")
        if self.command is not None:
            check_owned(folder, self.command)
        if not folder.exists():  # the topmost folder this lock creates
            self._created = folder
            while not self._created.parent.exists():
                self._created = self._created.parent
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BlocktuneError(f"run folder {folder} is not writable: fix its permissions, "
                                 "or use another --out folder")
        self._lock = FileLock(self.path, timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            try:
                holder = f"process {int(self.pid_path.read_text().strip())}"
            except (OSError, ValueError):
                holder = "another process"
            raise BlocktuneError(f"run folder {self.path.parent} is being written by {holder}: "
                                 "wait for it to finish, or use another --out folder") from None
        self.pid_path.write_text(f"{os.getpid()}\n")
        if self.command is not None and not (folder / MARKER).exists():
            atomic_write_json(folder / MARKER, {"command": self.command})
        return self

    def __exit__(self, kind, *exc) -> None:
        self.pid_path.unlink(missing_ok=True)
        self._lock.release()
        folder = self.path.parent
        if kind is not None and self._created is not None and not RunFolder(folder).is_run():
            shutil.rmtree(self._created, ignore_errors=True)
