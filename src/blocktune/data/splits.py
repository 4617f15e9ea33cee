"""Splits: seeded, stratified (``--learn-images`` for a small learning pool, ``--split
official`` for a dataset's own), saved with the run and checked on resume; exact duplicates
across them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blocktune.core.errors import BlocktuneError
from blocktune.core.io import atomic_write_json, damaged, read_json
from blocktune.core.registry import DEFAULT_FRACTIONS
from blocktune.data.store import DecodedImages

SPLITS = ("search", "val", "train", "test")

LEARNING_SPLITS = ("search", "val", "train")  # what the protocol learns and chooses from


def learning_images(split: dict[str, list[int]]) -> int:
    """How many images a split learns from (search + val + train): what ``auto`` decides by."""
    return sum(len(split[name]) for name in LEARNING_SPLITS)


def stratified_split(labels, fractions: dict[str, float] | None = None, seed: int = 0,
                     classes: list[str] | None = None, learn_images: int | None = None
                     ) -> dict[str, list[int]]:
    """Seeded, stratified split of indices into ``fractions`` (search/val/train/test).

    Per class, counts are allotted by largest remainder, with at least one image per split
    whose fraction is positive; a class too small for that is an error.

    ``learn_images``: draw exactly this many images to learn from (search, val and train, in
    the proportions of their fractions), stratified by class in proportion to its size, and put
    every other image in test: a small-data run with a large test split.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or any(v < 0 for v in fractions.values()):
        raise BlocktuneError(f"split fractions {fractions} must be non-negative and sum to 1")
    labels = [int(x) for x in labels]
    members_of = {label: [i for i, lab in enumerate(labels) if lab == label]
                  for label in sorted(set(labels))}
    learn_counts = None
    if learn_images is not None:
        learn_counts = _learning_counts(members_of, learn_images, fractions, classes)
        share = sum(fractions[n] for n in LEARNING_SPLITS)
        fractions = {**{n: fractions[n] / share for n in LEARNING_SPLITS}, "test": 0.0}
    names = list(fractions)
    needed = [n for n in names if fractions[n] > 0]
    generator = np.random.default_rng(seed)
    result: dict[str, list[int]] = {n: [] for n in [*names, "test"]}
    for label, members in members_of.items():
        if len(members) < len(needed):
            name = classes[label] if classes else str(label)
            raise BlocktuneError(
                f"class {name!r} has {len(members)} image(s), fewer than the {len(needed)} splits "
                "it must be stratified into: add images to it or remove the class")
        order = generator.permutation(members).tolist()
        pool = order if learn_counts is None else order[:learn_counts[label]]
        if learn_counts is not None:
            result["test"].extend(order[learn_counts[label]:])
        counts = _allot(len(pool), [fractions[n] for n in names])
        start = 0
        for name, count in zip(names, counts, strict=True):
            result[name].extend(pool[start:start + count])
            start += count
    return {name: sorted(indices) for name, indices in result.items()}


def official_split(files: list[str], labels: list[int], official: dict[str, list[str]],
                   fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """The dataset's own train/val/test as blocktune's train/val/test; the search split drawn
    from its train set, stratified and seeded, in the fractions' proportion of search to
    train (1 : 6 by default)."""
    position = {f: i for i, f in enumerate(files)}
    missing = [f for names in official.values() for f in names if f not in position]
    if missing:
        raise BlocktuneError(f"{len(missing)} file(s) of the official split are not in the data "
                             f"(e.g. {missing[0]}): restore them, or use the random split")
    indices = {name: [position[f] for f in names] for name, names in official.items()}
    train = indices["train"]
    share = fractions["search"] / (fractions["search"] + fractions["train"])
    drawn = stratified_split([labels[i] for i in train], {"search": share, "train": 1 - share},
                             seed)
    return {"search": sorted(train[i] for i in drawn["search"]),
            "val": sorted(indices["val"]), "train": sorted(train[i] for i in drawn["train"]),
            "test": sorted(indices["test"])}


def _learning_counts(members_of: dict[int, list[int]], learn_images: int,
                     fractions: dict[str, float], classes: list[str] | None) -> dict[int, int]:
    """Per class, how many of ``learn_images`` it gives the learning pool: in proportion to
    its size (largest remainder), at least one per learning split, at least one left for
    test. Asking for more than the data holds, or fewer than that minimum, is refused."""
    total = sum(len(m) for m in members_of.values())
    splits = sum(fractions[n] > 0 for n in LEARNING_SPLITS)
    low = splits * len(members_of)
    if learn_images > total - len(members_of) or learn_images < low:
        raise BlocktuneError(
            f"learn_images = {learn_images}: the data has {total} images in {len(members_of)} "
            f"classes; ask for between {low} ({splits} per class, one per learning split) and "
            f"{total - len(members_of)} (one per class left for test)")
    small = [label for label, members in members_of.items() if len(members) < splits + 1]
    if small:
        name = classes[small[0]] if classes else str(small[0])
        raise BlocktuneError(f"class {name!r} has {len(members_of[small[0]])} image(s): with "
                             f"learn_images each class needs {splits + 1} (one per learning "
                             "split and one for test); add images to it or remove the class")
    sizes = [len(m) for m in members_of.values()]
    counts = _allot(learn_images, [n / total for n in sizes])
    counts = [min(max(c, splits), n - 1) for c, n in zip(counts, sizes, strict=True)]
    # the clamps moved the total: give or take one at a time where the class has room
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    while sum(counts) != learn_images:
        step = 1 if sum(counts) < learn_images else -1
        room = [i for i in order if splits <= counts[i] + step <= sizes[i] - 1]
        counts[room[0]] += step
    return dict(zip(members_of, counts, strict=True))


def _allot(total: int, fractions: list[float]) -> list[int]:
    exact = [f * total for f in fractions]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: total - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):  # every positive split gets one, taken from the largest
        if f > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


def load_or_make_split(path: Path, decoded: DecodedImages, fractions: dict[str, float],
                       seed: int, learn_images: int | None = None, split: str = "random"
                       ) -> dict[str, list[int]]:
    """Reuse ``splits.json`` when it exists and matches the files; else make and write it."""
    if path.exists():
        saved = read_splits(path)
        if saved["classes"] != list(decoded.classes):
            added = sorted(set(decoded.classes) - set(saved["classes"]))
            removed = sorted(set(saved["classes"]) - set(decoded.classes))
            change = "; ".join(part for part in (
                f"added {', '.join(added)}" if added else "",
                f"removed {', '.join(removed)}" if removed else "",
                "renamed or reordered" if not added and not removed else "") if part)
            raise BlocktuneError(f"{path} was made with {len(saved['classes'])} classes and "
                                 f"the data now has {len(decoded.classes)} ({change}): every "
                                 "saved row's class ids would shift; restore the class "
                                 "folders or start a new run folder")
        position = {f: i for i, f in enumerate(decoded.files)}
        missing = [f for files in saved["files"].values() for f in files if f not in position]
        if missing:
            raise BlocktuneError(f"{path} names {len(missing)} file(s) no longer in the data "
                                 f"(e.g. {missing[0]}): restore them or start a new run folder")
        listed = {f for files in saved["files"].values() for f in files}
        unlisted = [f for f in decoded.files if f not in listed]
        if unlisted:  # every image is in one split: these were added, or the file cut short
            raise BlocktuneError(
                f"{path} lists {len(listed)} of the data's {len(decoded.files)} images "
                f"({len(unlisted)} in no split, e.g. {unlisted[0]}): images were added to the "
                f"data since the run started, or {path.name} was cut short; restore the data "
                "or the file, or start a new run folder")
        # a photo replaced in place: its rows were scored on the old one (older splits.json
        # files have no digests)
        digest = dict(zip(decoded.files, decoded.digests, strict=False))
        changed = [f for name, files in saved["files"].items()
                   for f, was in zip(files, saved.get("sha256", {}).get(name, []), strict=False)
                   if f in digest and digest[f] != was]
        if changed:
            raise BlocktuneError(f"{path}: {len(changed)} file(s) changed content since the run "
                                 f"started (e.g. {changed[0]}): its rows were scored on the old "
                                 "images; restore them or start a new run folder")
        return {name: sorted(position[f] for f in files) for name, files in saved["files"].items()}
    kind = split
    if kind == "official":
        if decoded.official is None:
            raise BlocktuneError("split = official: this data has no official split (flowers102 "
                                 "has one); use the random split")
        if learn_images is not None:
            raise BlocktuneError("split = official and learn_images both fix what is learnt "
                                 "from: give one of the two")
        split = official_split(decoded.files, decoded.labels.tolist(), decoded.official,
                               fractions, seed)
    else:
        split = stratified_split(decoded.labels.tolist(), fractions, seed, decoded.classes,
                                 learn_images)
    atomic_write_json(path, {
        "seed": seed, "fractions": fractions, "learn_images": learn_images, "split": kind,
        "classes": decoded.classes,
        "counts": {n: len(v) for n, v in split.items()},
        "files": {n: [decoded.files[i] for i in v] for n, v in split.items()},
        "labels": {n: [int(decoded.labels[i]) for i in v] for n, v in split.items()},
        # each file's content, checked on resume (a photo replaced in place)
        "sha256": {n: [decoded.digests[i] for i in v] for n, v in split.items()}
        if decoded.digests else {},
    })
    return split


def duplicates_across_splits(images: DecodedImages, split: dict[str, list[int]]
                             ) -> list[tuple[str, str, str, str]]:
    """Exact duplicates (same bytes) in different splits: (file, its split, twin, its split).
    A photo in both train and test inflates the test accuracy."""
    first: dict[str, tuple[str, str]] = {}
    found = []
    for name, indices in split.items():
        for i in indices:
            digest = images.digests[i] if images.digests else ""
            if not digest:
                continue
            if digest in first and first[digest][1] != name:
                found.append((*first[digest], images.files[i], name))
            first.setdefault(digest, (images.files[i], name))
    return found


def read_splits(path: str | Path) -> dict:
    """A ``splits.json``, checked for the shape every reader relies on."""
    saved = read_json(path)
    files, classes = saved.get("files"), saved.get("classes")
    if not (isinstance(files, dict) and isinstance(classes, list) and all(
            isinstance(v, list) and all(isinstance(f, str) for f in v) for v in files.values())
            and set(files) <= {"search", "val", "train", "test"}):
        raise damaged(path, "not a split: 'files' must map split names to lists of files, "
                      "'classes' list the classes")
    labels = saved.get("labels")
    if labels is not None and not (isinstance(labels, dict) and all(
            isinstance(labels.get(k), list) and len(labels[k]) == len(v)
            for k, v in files.items())):
        raise damaged(path, "'labels' does not match 'files'")
    if labels is not None and not all(isinstance(y, int) and 0 <= y < len(classes)
                                      for v in labels.values() for y in v):
        raise damaged(path, f"'labels' holds a class id outside 0–{len(classes) - 1}")
    digests = saved.get("sha256")
    if digests and not (isinstance(digests, dict) and all(
            isinstance(digests.get(k), list) and len(digests[k]) == len(v)
            for k, v in files.items())):
        raise damaged(path, "'sha256' does not match 'files'")
    return saved


def split_labels(path: Path) -> dict[str, np.ndarray]:
    """Class ids of each split of a ``splits.json``, in its file order (the order predictions
    are saved in). Older files without labels: a file's class is its first folder."""
    saved = read_splits(path)
    if "labels" in saved:
        return {split: np.array(labels, dtype=np.int64) for split, labels in saved["labels"].items()}
    index = {name: i for i, name in enumerate(saved["classes"])}
    return {split: np.array([index[f.split("/")[0]] for f in files], dtype=np.int64)
            for split, files in saved["files"].items()}
