"""What the machine can hold: available memory and free disk, checked before blocktune
allocates something large (the decoded-image store, the activation cache)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from blocktune.core.errors import BlocktuneError


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux's MemAvailable when known)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def free_disk(path: str | Path) -> int:
    """Free bytes on the file system that holds ``path`` (or would, once created)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def gib(size: float) -> str:
    return f"{size / (1 << 30):.2f} GiB"


def require(what: str, memory: int, disk: int, disk_path: str | Path, advice: str) -> None:
    """Refuse, in one line with the estimate, ``memory`` + ``disk`` bytes the machine lacks."""
    have_memory, have_disk = available_memory(), free_disk(disk_path)
    if memory > have_memory or disk > have_disk:
        raise BlocktuneError(
            f"{what} needs {gib(memory)} of memory and {gib(disk)} of disk; this machine has "
            f"{gib(have_memory)} of memory available and {gib(have_disk)} free in "
            f"{disk_path}: {advice}")
