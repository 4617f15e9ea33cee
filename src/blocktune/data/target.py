"""``--choose-on``: labelled images from where the model will be used (the deployment domain),
split once, stratified and seeded, into a *choosing part* (it chooses the recommendation
instead of val) and a *test part* (reported like test, read by no choice). Both parts are
scored by every final like a ``--test-data`` folder; the split and each file's sha256 are
recorded so that a resume on a changed folder is refused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from blocktune.core.errors import BlocktuneError
from blocktune.data.datasets import file_sha256
from blocktune.data.store import TestDomain, domain_names, load_test_domains

CHOOSING, TARGET_TEST = "choosing part", "test part"


def part_names(folder: str | Path) -> tuple[str, str]:
    """The two parts' domain names: ``<folder> (choosing part)`` and ``<folder> (test part)``."""
    [name] = domain_names([folder])
    return f"{name} ({CHOOSING})", f"{name} ({TARGET_TEST})"


def split_target(labels: Sequence[int], seed: int) -> tuple[list[int], list[int]]:
    """Per class, a seeded half (rounded up) to choose on and the rest to test on; a class with
    fewer than two images cannot give both, and is one line."""
    labels = [int(y) for y in labels]
    generator = np.random.default_rng([seed, 46])
    choosing, testing = [], []
    for label in sorted(set(labels)):
        members = generator.permutation([i for i, y in enumerate(labels) if y == label]).tolist()
        if len(members) < 2:
            raise BlocktuneError(f"the --choose-on folder has {len(members)} image of class "
                                 f"{label}: each class it holds needs at least two (one to "
                                 "choose on, one to test on); add images or remove the class")
        half = (len(members) + 1) // 2
        choosing += members[:half]
        testing += members[half:]
    return sorted(choosing), sorted(testing)


def load_target(folder: str | Path, classes: list[str], size: int, interpolation: str,
                strict: bool, seed: int) -> tuple[list[TestDomain], list[str], dict]:
    """The folder decoded like the data and split: (its two parts as domains, notices, the
    record of the split with every file's sha256)."""
    [domain], notes = load_test_domains([folder], classes, size, interpolation, strict)
    choosing, testing = split_target(domain.labels.tolist(), seed)
    names = part_names(folder)
    parts = [TestDomain(name, domain.pixels[index], domain.labels[index],
                        tuple(domain.files[i] for i in index),
                        tuple(domain.digests[i] for i in index) if domain.digests else ())
             for name, index in zip(names, (choosing, testing), strict=True)]
    root = Path(folder).expanduser()
    # the decoding already hashed every file (its duplicate check); read them again only for a
    # store written without hashes
    digests = domain.digests or tuple(file_sha256(root / f) for f in domain.files)
    record = {"folder": str(folder), "seed": seed,
              "parts": {name: list(part.files) for name, part in zip(names, parts, strict=True)},
              "sha256": dict(zip(domain.files, digests, strict=True))}
    return parts, notes, record


def changed_files(saved: dict, now: dict) -> list[str]:
    """Files of the folder added, removed, moved between classes or changed since ``saved``."""
    old, new = saved.get("sha256", {}), now.get("sha256", {})
    return sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
