"""Fault injection, for the test suite: ``BLOCKTUNE_FAULT=<point>:<n>`` kills the process with
SIGKILL the n-th time it reaches ``<point>`` (no clean-up, no ``finally``: what a power cut or
the OOM killer does). Without the variable, :func:`point` does nothing.

``<point>:<n>:int`` sends SIGINT instead (a user's Ctrl-C), ``<point>:<n>:enospc`` raises
the disk-full ``OSError`` there, and ``<point>:<n>:spend`` spends the ``--time-budget`` there
(:func:`spent` turns true: no trial starts after it, on any executor).

Points: ``decode`` (an image decoded), ``epoch`` (an epoch of any training ended),
``candidate`` (a search row recorded), ``final`` (a final recorded), ``cv`` (a fold of the
cross-validated choice recorded), ``write`` (an atomic
write has its bytes in the temp file, not yet renamed), ``report`` (a report being written).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections import Counter

POINTS = ("decode", "epoch", "candidate", "final", "cv", "write", "report")
_hits: Counter[str] = Counter()
_lock = threading.Lock()
_spent = threading.Event()


def spent() -> bool:
    """Whether a ``spend`` fault has spent the time budget (never, without the variable)."""
    return _spent.is_set()


def point(name: str) -> None:
    spec = os.environ.get("BLOCKTUNE_FAULT")
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    count, _, action = rest.partition(":")
    with _lock:
        _hits[name] += 1
        if _hits[name] != int(count or 1):
            return
    if action == "spend":
        _spent.set()
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<injected at {name}>")
    os.kill(os.getpid(), signal.SIGINT if action == "int" else signal.SIGKILL)
