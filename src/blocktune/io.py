"""Crash-safe files: every write goes to a temp file in the same folder, then ``os.replace``.

A run killed at any moment leaves each file either as it was or as it was meant to be, never
half-written. :class:`RunLock` refuses a second live process on the same run folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import yaml

from blocktune import faults
from blocktune.errors import BlocktuneError


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process's umask (read without
    changing it where the OS tells it, else by setting it back at once)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle on a temp file beside ``path`` that replaces it when the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; a result file is like any other file
            os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        faults.point("write")
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:  # say which file could not be written
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


def atomic_copy(source: str | Path, path: str | Path) -> None:
    """Copy ``source`` to ``path`` (streamed: weights files can be large)."""
    with open(source, "rb") as src, atomic_file(path) as handle:
        shutil.copyfileobj(src, handle)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_yaml(path: str | Path, data) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def atomic_write_csv(path: str | Path, rows: Iterable[Mapping], fields: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def damaged(path: str | Path, error: BaseException | str) -> BlocktuneError:
    """The one line for a file of a run folder that cannot be read back as written."""
    detail = error if isinstance(error, str) else (
        f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
    return BlocktuneError(f"{path} is damaged ({detail[:160]}): restore it from a copy, or "
                          "delete it (or start a new --out folder) to compute it again; "
                          "nothing was written")


@contextmanager
def parsing(path: str | Path) -> Iterator[None]:
    """Whatever goes wrong turning a file's bytes into values is one line naming the file."""
    try:
        yield
    except BlocktuneError:
        raise
    except Exception as error:  # noqa: BLE001 - parsers raise many types for bad bytes
        raise damaged(path, error) from error


def read_json(path: str | Path, expect: type = dict):
    """A JSON file blocktune wrote: its top-level value, of type ``expect``."""
    with parsing(path):
        value = json.loads(Path(path).read_text())
    if not isinstance(value, expect):
        raise damaged(path, f"a JSON {type(value).__name__}, not a {expect.__name__}")
    return value


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file blocktune wrote, which must hold a mapping."""
    with parsing(path):
        value = yaml.safe_load(Path(path).read_text())
    if not isinstance(value, dict):
        raise damaged(path, f"YAML holding a {type(value).__name__}, not a mapping of keys")
    return value


# model.json: what predict and export need, with the type each must have
CARD_KEYS = {"model": str, "classes": list, "head": str, "image_size": int, "mean": list,
             "std": list, "interpolation": str, "method": str}


def read_model_card(folder: str | Path) -> dict:
    """``model.json`` of a run or finetune folder, checked for what rebuilding the model needs."""
    path = Path(folder) / "model.json"
    card = read_json(path)
    wrong = [k for k, kind in CARD_KEYS.items() if not isinstance(card.get(k), kind)]
    if wrong:
        raise damaged(path, f"{wrong[0]!r} is missing or not a {CARD_KEYS[wrong[0]].__name__}")
    return card


def read_csv(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """Rows of a CSV blocktune wrote; a header without the ``required`` columns, or a row cut
    short or with extra cells, is damage."""
    path = Path(path)
    if not path.exists():
        return []
    with parsing(path), open(path, newline="") as handle:
        text = handle.read()
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing and text:
        raise damaged(path, f"no {missing[0]!r} column")
    if text and not text.endswith("\n"):  # every row blocktune writes ends its line
        raise damaged(path, "it ends mid-line, cut short")
    for number, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise damaged(path, f"line {number} has {len(row) - (None in row)} of "
                          f"{len([k for k in row if k is not None])} cells")
    return rows


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(contiguous, metadata=metadata))


MARKER = ".blocktune"  # {"command": "run"}: which command's folder this is
# What each command writes at the top of its --out folder. A folder holding anything else
# belongs to someone else: a run never writes over it.
RUN_FILES = frozenset({
    "config.yaml", "environment.json", "run.lock", "run.pid", "summary.csv", "model.safetensors",
    "model.json", "README.md", "report.md", "report.html", "plots", "tensorboard", "export",
    "metrics.csv", "splits.json", "cache", MARKER})
FINETUNE_FILES = frozenset({
    "config.yaml", "environment.json", "run.lock", "run.pid", "splits.json", "metrics.csv",
    "result.json", "model.safetensors", "model.json", "README.md", "cache", "rungs",
    "tensorboard", MARKER})


def _owner(folder: Path) -> str | None:
    """The command a folder was made by: its marker, or for folders made before markers, its
    layout (a config.yaml of blocktune's keys, and seed folders for ``run``)."""
    try:
        return json.loads((folder / MARKER).read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
    except Exception:  # noqa: BLE001 - absent, unreadable or not YAML: no owner
        return None
    if not isinstance(saved, dict) or "model" not in saved:
        return None
    return "run" if any(folder.glob("seed_*")) else "finetune"


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
        command == "run" and n.startswith("seed_")) and not _is_atomic_temp(n)]
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
        if kind is not None and self._created is not None and not (
                folder / "config.yaml").exists():
            shutil.rmtree(self._created, ignore_errors=True)


def predictions_text(predictions) -> str:
    """Per-image class ids as one CSV cell: ``"3 0 1 …"`` in the split's file order."""
    return " ".join(str(int(p)) for p in predictions)


def parse_predictions(text: str | None):
    """The inverse of :func:`predictions_text`; None for a row written without predictions."""
    if not text:
        return None
    return np.array([int(p) for p in text.split()], dtype=np.int64)
