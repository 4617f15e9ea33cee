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

from blocktune.core import faults
from blocktune.core.errors import BlocktuneError


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
        if error.filename is None or error.filename == tmp:  # name the file, not its temp
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
    if not text:  # blocktune writes a header even with no rows: empty is not "nothing done"
        raise damaged(path, "it is empty (blocktune writes its header row even with no rows)")
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


def predictions_text(predictions) -> str:
    """Per-image class ids as one CSV cell: ``"3 0 1 …"`` in the split's file order."""
    return " ".join(str(int(p)) for p in predictions)


def parse_predictions(text: str | None):
    """The inverse of :func:`predictions_text`; None for a row written without predictions."""
    if not text:
        return None
    return np.array([int(p) for p in text.split()], dtype=np.int64)
