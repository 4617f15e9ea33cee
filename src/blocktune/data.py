"""Image folders, named datasets (tf_flowers, caltech101, flowers102), stratified splits and the decoded-image cache.

An image folder has one sub-folder per class (the tf_flowers layout). Every image is decoded
and resized once per (folder, size, interpolation) into a uint8 array ``N×3×S×S`` kept on
disk under the cache folder, so every candidate of every run reads the same pixels without
decoding again; a changed file (by size and modification time) is decoded again. Images that
cannot be decoded are skipped, counted and reported.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from blocktune import faults
from blocktune.errors import BlocktuneError
from blocktune.io import atomic_file, atomic_write_json, damaged, read_json
from blocktune.resources import require

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("search", "val", "train", "test")
DEFAULT_FRACTIONS = {"search": 0.1, "val": 0.1, "train": 0.6, "test": 0.2}

TF_FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
# the archive as TensorFlow Datasets pins it
TF_FLOWERS_BYTES = 228_813_984
TF_FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a corrupt file, not a grey one


def cache_dir() -> Path:
    root = os.environ.get("BLOCKTUNE_CACHE_DIR") or Path.home() / ".cache" / "blocktune"
    return Path(root)


@dataclass
class ImageFolder:
    """The labelled files of an image folder (paths relative to ``root``)."""

    root: Path
    classes: list[str]
    files: list[str]
    labels: list[int]
    skipped: list[str]
    # the dataset's own split, where it has one (Flowers-102): split name -> its files
    official: dict[str, list[str]] | None = None

    def counts(self) -> dict[str, int]:
        counter = Counter(self.labels)
        return {c: counter[i] for i, c in enumerate(self.classes)}


# the folder torchvision extracts each named dataset into
TORCHVISION_FOLDERS = {"caltech101": "caltech101", "flowers102": "flowers-102",
                       "eurosat": "eurosat"}


def _torchvision_root(folder: str) -> Path:
    """Where a torchvision dataset lies: under BLOCKTUNE_DATA_DIR when there, else the cache."""
    env = os.environ.get("BLOCKTUNE_DATA_DIR")
    if env and (Path(env) / folder).is_dir():
        return Path(env)
    return cache_dir() / "datasets"


def _open_torchvision(name: str, make, download: bool):
    try:
        return make(download=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        if not download:
            raise BlocktuneError(f"{name} is not available offline: set BLOCKTUNE_DATA_DIR to a "
                                 "folder holding it in torchvision's layout, or go online to "
                                 "download it") from None
    except (ValueError, KeyError, IndexError, OSError) as error:
        # present but not as torchvision lays it out (Caltech-101 without BACKGROUND_Google:
        # ValueError from list.remove), or unreadable: a download would not mend it
        raise BlocktuneError(f"{name} under {_torchvision_root(TORCHVISION_FOLDERS[name])} is "
                             f"incomplete or not in torchvision's layout ({type(error).__name__}"
                             f": {error}): restore the extracted archive as it was, or move it "
                             "away to download it again") from error
    try:
        return make(download=True)
    except Exception as error:  # noqa: BLE001 - network and archive errors alike
        raise BlocktuneError(f"cannot download {name} ({type(error).__name__}: {error}): check "
                             "the connection, or download it yourself into "
                             f"{cache_dir() / 'datasets'}") from error


def caltech101(download: bool = True) -> ImageFolder:
    """Caltech-101 through torchvision: 101 classes, the BACKGROUND_Google clutter dropped."""
    from torchvision.datasets import Caltech101

    root = _torchvision_root(TORCHVISION_FOLDERS["caltech101"])
    data = _open_torchvision("caltech101", lambda download: Caltech101(root, download=download),
                             download)
    # torchvision lists the categories without BACKGROUND_Google ("not a real class")
    files = [f"{data.categories[y]}/image_{i:04d}.jpg" for y, i in zip(data.y, data.index,
                                                                          strict=True)]
    return ImageFolder(Path(data.root) / "101_ObjectCategories", list(data.categories), files,
                       list(data.y), [])


def flowers102(download: bool = True) -> ImageFolder:
    """Oxford Flowers-102 through torchvision: its train, val and test sets pooled (blocktune
    makes its own stratified split)."""
    from torchvision.datasets import Flowers102

    root = _torchvision_root(TORCHVISION_FOLDERS["flowers102"])
    by_file: dict[str, int] = {}
    official: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        data = _open_torchvision(
            "flowers102", lambda download, split=split: Flowers102(root, split, download=download),
            download)
        download = False  # one download brings all three splits
        by_file.update((path.name, label) for path, label in
                       zip(data._image_files, data._labels, strict=True))
        official[split] = sorted(path.name for path in data._image_files)
    files = sorted(by_file)
    return ImageFolder(root / "flowers-102" / "jpg", list(Flowers102.classes), files,
                       [by_file[f] for f in files], [], official)


def eurosat(download: bool = True) -> ImageFolder:
    """EuroSAT RGB through torchvision: Sentinel-2 tiles, 64×64 px, 10 land-use classes."""
    from torchvision.datasets import EuroSAT

    root = _torchvision_root(TORCHVISION_FOLDERS["eurosat"])
    data = _open_torchvision("eurosat", lambda download: EuroSAT(root, download=download),
                             download)
    folder = Path(data.root) / "eurosat" / "2750"
    files = [Path(path).relative_to(folder).as_posix() for path, _ in data.samples]
    return ImageFolder(folder, list(data.classes), files, [y for _, y in data.samples], [])


# --data names that are not folders: each opens (downloading when online) an ImageFolder
NAMED_DATASETS = {"caltech101": caltech101, "flowers102": flowers102, "eurosat": eurosat}


def open_data(spec: str | Path, download: bool = True) -> ImageFolder:
    """``--data`` as labelled files: a named dataset, ``tf_flowers``, or an image folder."""
    if str(spec) in NAMED_DATASETS:
        return NAMED_DATASETS[str(spec)](download=download)
    return scan_folder(resolve_data(spec, download))


def resolve_data(spec: str | Path, download: bool = True) -> Path:
    """Turn ``--data`` into a folder: a path, or ``tf_flowers`` (local copy, else download)."""
    if str(spec) == "tf_flowers":
        env = os.environ.get("BLOCKTUNE_DATA_DIR")
        if env and (Path(env) / "flower_photos").is_dir():
            return Path(env) / "flower_photos"
        target = cache_dir() / "datasets" / "flower_photos"
        if target.is_dir():
            return target
        if not download:
            raise BlocktuneError("tf_flowers is not available offline: set BLOCKTUNE_DATA_DIR to "
                                 "a folder holding flower_photos/, or go online to download it")
        return download_tf_flowers(cache_dir() / "datasets")
    return Path(spec).expanduser()


def download(url: str, dest: Path, expected_bytes: int | None = None,
             sha256: str | None = None) -> Path:
    """Download ``url`` to ``dest`` with a progress bar, resuming a partial ``.part`` file.

    A ``.part`` already complete (a process killed after the last byte, before the rename) is
    verified and kept without asking the server again; a server answering 416 (nothing left
    in range) means the same. The sha256, when given, is checked before ``dest`` exists, so
    a file at ``dest`` is always whole. One process downloads a file at a time (a lock).
    """
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    with FileLock(str(dest) + ".lock"):
        if dest.exists():  # another process finished it while this one waited
            return dest
        start = part.stat().st_size if part.exists() else 0
        if expected_bytes is not None and start > expected_bytes:
            part.unlink()  # longer than the file can be: not a prefix of it
            start = 0
        if expected_bytes is None or start < expected_bytes:
            _fetch(url, dest, part, start, expected_bytes)
        size = part.stat().st_size
        if expected_bytes is not None and size != expected_bytes:
            raise BlocktuneError(f"{dest.name}: got {size} bytes, expected {expected_bytes}: "
                                 f"run again to resume, or delete {part} to start over")
        digest = file_sha256(part)
        if sha256 is not None and digest != sha256:
            part.unlink()
            raise BlocktuneError(f"{dest.name}: sha256 {digest} does not match {sha256}: the "
                                 "download was corrupted, run again")
        part.rename(dest)
        dest.with_suffix(dest.suffix + ".sha256").write_text(digest + "\n")
    return dest


def _fetch(url: str, dest: Path, part: Path, start: int, expected_bytes: int | None) -> None:
    import urllib.error
    import urllib.request

    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:
            return  # nothing left to send: the part is the whole file (verified next)
        raise BlocktuneError(f"cannot download {url} (HTTP {error.code}): check the URL, or "
                             "download it yourself and pass the extracted folder") from error
    except OSError as error:
        raise BlocktuneError(f"cannot download {url} ({error}): check the connection or "
                             "download it yourself and pass the extracted folder") from error
    if start and response.status != 206:
        start = 0  # the server ignored the range: start over
    total = expected_bytes or (int(response.headers.get("Content-Length", 0)) + start) or None
    with open(part, "ab" if start else "wb") as out, Progress(
            *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn()) as bar:
        task = bar.add_task(f"download {dest.name}", total=total, completed=start)
        while chunk := response.read(1 << 20):
            out.write(chunk)
            bar.advance(task, len(chunk))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_tf_flowers(root: Path) -> Path:
    archive = root / "flower_photos.tgz"
    if not archive.exists():
        download(TF_FLOWERS_URL, archive, TF_FLOWERS_BYTES, TF_FLOWERS_SHA256)
    staging = root / "flower_photos.extracting"
    shutil.rmtree(staging, ignore_errors=True)  # a kill mid-extraction leaves a partial one
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    (staging / "flower_photos").rename(root / "flower_photos")
    staging.rmdir()
    return root / "flower_photos"


def scan_folder(root: str | Path, min_classes: int = 2) -> ImageFolder:
    """List the class folders and image files of ``root``; non-image files are skipped. Data
    to learn from needs two classes; a test folder (``min_classes=1``) may hold one."""
    root = Path(root)
    if not root.is_dir():
        raise BlocktuneError(f"data folder {root} does not exist: pass a folder with one "
                             "sub-folder of images per class, or --data tf_flowers, "
                             "caltech101, flowers102 or eurosat")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unprintable = next((c for c in classes if not c.isprintable()), None)
    if unprintable is not None:  # a newline or TAB breaks predict's TSV and the model card
        raise BlocktuneError(f"class folder {unprintable!r} in {root} has a control character "
                             "(newline, TAB…) in its name: rename it")
    files, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(rel)
                labels.append(label)
            else:
                skipped.append(rel)
    if not files:
        raise BlocktuneError(f"data folder {root} holds no images: put each class's images "
                             "in a sub-folder named after the class")
    empty = [name for label, name in enumerate(classes) if label not in set(labels)]
    if empty:  # it would become an output class with no image to learn it from
        raise BlocktuneError(f"class folder {root / empty[0]} holds no images: add images to "
                             "it or move it out of the data folder")
    present = sorted(set(labels))
    if len(present) < min_classes:
        raise BlocktuneError(f"data folder {root} has images of only one class: fine-tuning a "
                             "classifier needs at least two class sub-folders")
    return ImageFolder(root, classes, files, labels, skipped)


def load_rgb(path: Path) -> Image.Image:
    """Open any image as 8-bit RGB: grayscale, palette, RGBA, CMYK and 16-bit are converted."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
            img = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        return img.convert("RGB")


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS, "box": Image.BOX}


def decode_resized(path: Path | io.BytesIO, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop: a ``3×size×size`` uint8 array."""
    img = load_rgb(path)
    width, height = img.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    img = img.resize(new, _RESAMPLE.get(interpolation, Image.BILINEAR))
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.array(img, dtype=np.uint8).transpose(2, 0, 1)


@dataclass
class DecodedImages:
    """Decoded, resized images of an :class:`ImageFolder`, with the files that failed removed."""

    pixels: torch.Tensor  # N×3×S×S uint8 (may be backed by a memory-mapped file)
    files: list[str]
    labels: torch.Tensor
    classes: list[str]
    corrupt: list[str]
    digests: list[str] = field(default_factory=list)  # sha256 of each file's bytes (duplicates)
    official: dict[str, list[str]] | None = None  # the dataset's own split (ImageFolder's)


def _stat(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def decode_folder(folder: ImageFolder, size: int, interpolation: str = "bilinear",
                  strict: bool = False, use_cache: bool = True,
                  workers: int | None = None, min_classes: int = 2) -> DecodedImages:
    """Decode every image of ``folder`` once into a uint8 store; reuse the store next time.

    The store (one per folder, size and interpolation) records each file's size and
    modification time: a file added, removed, replaced or renamed is noticed, and only those
    are decoded again. Processes share the store through a lock (two decoding the same folder
    both succeed, the second reusing the first's work); its files are replaced whole, so a
    process killed mid-decode leaves nothing a later run trusts.
    """
    from filelock import FileLock

    if not use_cache:
        pixels, ok, digests = _decode(folder, list(range(len(folder.files))), size,
                                      interpolation, workers, None, {})
        return _decoded(folder, torch.from_numpy(pixels), ok, digests, strict, min_classes)
    key = hashlib.sha256(json.dumps([str(folder.root.resolve()), size, interpolation]).encode()
                         ).hexdigest()[:16]
    store = cache_dir() / "decoded" / f"{folder.root.name}-{size}-{key}"
    store.mkdir(parents=True, exist_ok=True)
    with FileLock(store / "store.lock"):
        stats = [_stat(folder.root / f) for f in folder.files]
        old = _read_store(store)
        # a row is reused when its file has the same name, size and modification time
        known = {(e["file"], *e["stat"]): i for i, e in enumerate(old["entries"])} if old else {}
        reuse = {i: known[(f, *st)] for i, (f, st) in enumerate(zip(folder.files, stats,
                                                                      strict=True))
                 if (f, *st) in known}
        if old is not None and len(old["entries"]) == len(folder.files) \
                and all(reuse.get(i) == i for i in range(len(folder.files))):
            pixels = np.load(store / old["pixels"], mmap_mode="c")
            return _decoded(folder, torch.from_numpy(pixels), [e["ok"] for e in old["entries"]],
                            [e["sha256"] for e in old["entries"]], strict, min_classes)
        todo = [i for i in range(len(folder.files)) if i not in reuse]
        size_bytes = len(folder.files) * 3 * size * size
        require(f"decoding {len(folder.files)} images at {size}×{size}", size_bytes,
                size_bytes, store, "use a smaller --image-size or --max-images-per-class, "
                "or set BLOCKTUNE_CACHE_DIR to a larger disk")
        if old is not None:
            log.info("decoded-image store: %d of %d files changed, decoding them",
                     len(todo), len(folder.files))
        previous = np.load(store / old["pixels"], mmap_mode="r") if old else None
        pixels, ok, digests = _decode(folder, todo, size, interpolation, workers, previous,
                                      {i: old["entries"][j] for i, j in reuse.items()}
                                      if old else {})
        entries = [{"file": f, "stat": st, "ok": good, "sha256": digest}
                   for f, st, good, digest in zip(folder.files, stats, ok, digests, strict=True)]
        _write_store(store, pixels, entries)
        del previous
    return _decoded(folder, torch.from_numpy(pixels), ok, digests, strict, min_classes)


def _decode(folder: ImageFolder, todo: list[int], size: int, interpolation: str,
            workers: int | None, previous: np.ndarray | None, reused: dict[int, dict]
            ) -> tuple[np.ndarray, list[bool], list[str]]:
    """All rows of the folder: ``reused`` ones copied from ``previous`` (stored rows of good
    files only, in order), ``todo`` decoded; returns (pixels of the good files, ok, sha256)."""
    n = len(folder.files)
    full = np.zeros((n, 3, size, size), dtype=np.uint8)
    ok, digests = [True] * n, [""] * n
    for i, entry in reused.items():
        ok[i], digests[i] = entry["ok"], entry["sha256"]
        if entry["ok"]:
            full[i] = previous[entry["row"]]

    def work(i: int) -> None:
        path = folder.root / folder.files[i]
        try:
            data = path.read_bytes()
            digests[i] = hashlib.sha256(data).hexdigest()
            full[i] = decode_resized(io.BytesIO(data), size, interpolation)
        except Exception:  # noqa: BLE001 - PIL raises many types for broken files
            ok[i] = False
        faults.point("decode")

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, todo))
    kept = np.asarray([i for i, good in enumerate(ok) if good], dtype=np.int64)
    return full[kept], ok, digests


def _read_store(store: Path) -> dict | None:
    meta = store / "meta.json"
    if not meta.exists():
        return None
    try:
        saved = json.loads(meta.read_text())
        if saved.get("version") != 2 or not (store / saved["pixels"]).exists():
            return None
    except (OSError, ValueError, KeyError):
        return None  # unreadable: decoded again
    row = 0
    for entry in saved["entries"]:  # each good file's row in the pixels file
        entry["row"] = row
        row += bool(entry["ok"])
    return saved


def _write_store(store: Path, pixels: np.ndarray, entries: list[dict]) -> None:
    """The pixels under a new name, then meta.json pointing at it (both replaced whole)."""
    name = f"pixels-{uuid.uuid4().hex[:12]}.npy"
    with atomic_file(store / name) as handle:
        np.save(handle, pixels)
    atomic_write_json(store / "meta.json", {
        "version": 2, "pixels": name,
        "entries": [{k: e[k] for k in ("file", "stat", "ok", "sha256")} for e in entries]})
    for stale in store.glob("pixels*.npy"):  # earlier versions; open memory maps keep theirs
        if stale.name != name:
            stale.unlink(missing_ok=True)
    for stale in store.glob(".pixels-*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)


def _decoded(folder: ImageFolder, pixels: torch.Tensor, ok: list[bool], digests: list[str],
             strict: bool, min_classes: int = 2) -> DecodedImages:
    corrupt = [f for f, good in zip(folder.files, ok, strict=True) if not good]
    unreadable = folder.skipped + corrupt
    if unreadable:
        shown = ", ".join(unreadable[:3])
        message = (f"{len(unreadable)} file(s) in {folder.root} are not readable images "
                   f"(e.g. {shown})")
        if strict:
            raise BlocktuneError(f"{message}: remove them, or drop --strict to skip them")
        log.warning("%s: skipped", message)
    files = [f for f, good in zip(folder.files, ok, strict=True) if good]
    labels = torch.tensor([lab for lab, good in zip(folder.labels, ok, strict=True) if good])
    unread = [c for i, c in enumerate(folder.classes) if i in set(folder.labels)
              and i not in set(labels.tolist())]
    if unread and min_classes > 1:  # it would become a class never trained nor tested
        raise BlocktuneError(f"class folder {folder.root / unread[0]} holds no readable image "
                             f"({len(unread)} such): add readable images or move it out of the "
                             "data folder")
    if len(set(labels.tolist())) < min_classes:
        raise BlocktuneError(f"data folder {folder.root} has readable images of only one class: "
                             "fine-tuning a classifier needs at least two classes")
    kept = [d for d, good in zip(digests, ok, strict=True) if good]
    return DecodedImages(pixels, files, labels, folder.classes, unreadable, kept,
                         folder.official)


LEARNING_SPLITS = ("search", "val", "train")  # what the protocol learns and chooses from


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
    if learn_images >= total or learn_images < low:
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


@dataclass(frozen=True)
class TestDomain:
    """An extra test folder (``--test-data``): its images decoded like the data's, labelled
    with the *training* classes' ids."""

    name: str
    pixels: torch.Tensor
    labels: torch.Tensor
    files: tuple[str, ...] = ()


def domain_names(folders: Sequence[str | Path]) -> list[str]:
    """A short unique name per ``--test-data`` folder: its own name, its parent's too when two
    share one."""
    paths = [Path(f).expanduser() for f in folders]
    names = [p.name or str(p) for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(n) > 1 else n
            for p, n in zip(paths, names, strict=True)]


def load_test_domains(folders: Sequence[str | Path], classes: list[str], size: int,
                      interpolation: str = "bilinear", strict: bool = False
                      ) -> tuple[list[TestDomain], list[str]]:
    """Decode the ``--test-data`` folders like the data; (domains, notices). A folder with a
    class the training data lacks is refused in one line; one holding only some of the classes
    is allowed and said."""
    index = {name: i for i, name in enumerate(classes)}
    domains, notes = [], []
    for folder, name in zip(folders, domain_names(folders), strict=True):
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise BlocktuneError(f"test data folder {folder} does not exist: pass folders with "
                                 "one sub-folder of images per class, as --data has")
        unknown = sorted(p.name for p in path.iterdir() if p.is_dir()
                         and not p.name.startswith(".") and p.name not in index)
        if unknown:
            raise BlocktuneError(
                f"test data folder {folder} has class {unknown[0]!r}, which the training data "
                f"does not ({len(unknown)} such): its sub-folders must be named as the data's "
                f"classes ({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''})")
        found = scan_folder(path, min_classes=1)
        decoded = decode_folder(found, size, interpolation, strict=strict, min_classes=1)
        if len(decoded.labels) == 0:
            raise BlocktuneError(f"test data folder {folder} holds no readable image: give "
                                 "folders of images per class")
        labels = torch.tensor([index[decoded.classes[int(y)]] for y in decoded.labels])
        domains.append(TestDomain(name, decoded.pixels, labels, tuple(decoded.files)))
        if len(found.classes) < len(classes):
            notes.append(f"test data {name}: {len(found.classes)} of the {len(classes)} classes "
                         f"({len(labels)} images); its accuracy is over those classes only")
    return domains, notes


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``N×3×H×W`` → float, scaled to [0, 1] then standardised."""
    x = pixels.float().div_(255.0)
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


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
