"""The decoded-image store: every image of a folder decoded and resized once per (folder, size,
interpolation) into a uint8 ``N×3×S×S`` array kept on disk under the cache folder, so every
candidate of every run reads the same pixels without decoding again; a changed file (by size
and modification time) is decoded again; unreadable images are skipped, counted and reported.
Also the ``--test-data`` folders, decoded the same way."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blocktune.core import faults
from blocktune.core.errors import BlocktuneError
from blocktune.core.io import atomic_file, atomic_write_json
from blocktune.core.resources import require
from blocktune.data.datasets import ImageFolder, cache_dir, folder_role, scan_folder

log = logging.getLogger(__name__)

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
        previous = _open_pixels(store, old, size) if old is not None else None
        if previous is None:  # no store, or its pixels cut short or not what meta.json says
            old = None
        # a row is reused when its file has the same name, size and modification time
        known = {(e["file"], *e["stat"]): i for i, e in enumerate(old["entries"])} if old else {}
        reuse = {i: known[(f, *st)] for i, (f, st) in enumerate(zip(folder.files, stats,
                                                                      strict=True))
                 if (f, *st) in known}
        if old is not None and len(old["entries"]) == len(folder.files) \
                and all(reuse.get(i) == i for i in range(len(folder.files))):
            return _decoded(folder, torch.from_numpy(previous), [e["ok"] for e in old["entries"]],
                            [e["sha256"] for e in old["entries"]], strict, min_classes)
        todo = [i for i in range(len(folder.files)) if i not in reuse]
        size_bytes = len(folder.files) * 3 * size * size
        require(f"decoding {len(folder.files)} images at {size}×{size}", size_bytes,
                size_bytes, store, "use a smaller --image-size or --max-images-per-class, "
                "or set BLOCKTUNE_CACHE_DIR to a larger disk")
        if old is not None:
            log.info("decoded-image store: %d of %d files changed, decoding them",
                     len(todo), len(folder.files))
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


def _open_pixels(store: Path, saved: dict, size: int) -> np.ndarray | None:
    """The store's pixels, memory-mapped copy-on-write; None when the file is cut short or is
    not the array ``meta.json`` describes (the images are then decoded again)."""
    try:
        pixels = np.load(store / saved["pixels"], mmap_mode="c")
    except (OSError, ValueError, EOFError):
        return None
    rows = sum(bool(e["ok"]) for e in saved["entries"])
    if pixels.dtype != np.uint8 or pixels.shape != (rows, 3, size, size):
        return None
    return pixels


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
    if len(labels) == 0:  # not "only one class": none of its images could be read
        raise BlocktuneError(f"{folder_role(min_classes)} {folder.root} holds no readable "
                             f"image (its {len(unreadable)} file(s) are not images PIL can "
                             "open): give folders of JPEG, PNG or other images per class")
    if len(set(labels.tolist())) < min_classes:
        raise BlocktuneError(f"data folder {folder.root} has readable images of only one class: "
                             "fine-tuning a classifier needs at least two classes")
    kept = [d for d, good in zip(digests, ok, strict=True) if good]
    return DecodedImages(pixels, files, labels, folder.classes, unreadable, kept,
                         folder.official)


@dataclass(frozen=True)
class TestDomain:
    """An extra test folder (``--test-data``): its images decoded like the data's, labelled
    with the *training* classes' ids."""

    name: str
    pixels: torch.Tensor
    labels: torch.Tensor
    files: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()  # sha256 of each file's bytes: a changed folder is noticed


def domain_names(folders: Sequence[str | Path]) -> list[str]:
    """A short unique name per ``--test-data`` folder: its own name, with as many of its parents
    as it takes to tell it from the others (``x/test`` and ``y/test``; ``a/x/test`` and
    ``b/x/test``). The same folder given twice is one line."""
    paths = [Path(f).expanduser() for f in folders]
    resolved = [p.resolve() for p in paths]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            raise BlocktuneError(f"test data folder {folders[i]} is given twice (as "
                                 f"{folders[resolved.index(r)]} too): name each folder once")
    depth = 1
    while True:
        names = ["/".join(r.parts[-depth:]) for r in resolved]
        if len(set(names)) == len(names) or depth >= max(len(r.parts) for r in resolved):
            return names if depth > 1 else [p.name or str(p) for p in paths]
        depth += 1


def check_test_folder(folder: str | Path) -> Path:
    """A ``--test-data`` folder that exists, or one line."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise BlocktuneError(f"test data folder {folder} does not exist: pass folders with "
                             "one sub-folder of images per class, as --data has")
    return path


def load_test_domains(folders: Sequence[str | Path], classes: list[str], size: int,
                      interpolation: str = "bilinear", strict: bool = False
                      ) -> tuple[list[TestDomain], list[str]]:
    """Decode the ``--test-data`` folders like the data; (domains, notices). A folder with a
    class the training data lacks is refused in one line; one holding only some of the classes
    is allowed and said."""
    index = {name: i for i, name in enumerate(classes)}
    domains, notes = [], []
    for folder, name in zip(folders, domain_names(folders), strict=True):
        path = check_test_folder(folder)
        unknown = sorted(p.name for p in path.iterdir() if p.is_dir()
                         and not p.name.startswith(".") and p.name not in index)
        if unknown:
            raise BlocktuneError(
                f"test data folder {folder} has class {unknown[0]!r}, which the training data "
                f"does not ({len(unknown)} such): its sub-folders must be named as the data's "
                f"classes ({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''})")
        found = scan_folder(path, min_classes=1)
        # (a folder none of whose images can be read is one line from the decoding)
        decoded = decode_folder(found, size, interpolation, strict=strict, min_classes=1)
        labels = torch.tensor([index[decoded.classes[int(y)]] for y in decoded.labels])
        domains.append(TestDomain(name, decoded.pixels, labels, tuple(decoded.files),
                                  tuple(decoded.digests)))
        if len(found.classes) < len(classes):
            notes.append(f"test data {name}: {len(found.classes)} of the {len(classes)} classes "
                         f"({len(labels)} images); its accuracy is over those classes only")
    return domains, notes


def copies_of(domain: TestDomain, images: DecodedImages) -> list[tuple[str, str]]:
    """(test file, data file) for every image of ``domain`` whose bytes are an image of the
    data's: scored there, it says how the model does on what it may have learnt from."""
    data = {d: f for f, d in zip(images.files, images.digests, strict=False)}
    return [(f, data[d]) for f, d in zip(domain.files, domain.digests, strict=False)
            if d in data]


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``N×3×H×W`` → float, scaled to [0, 1] then standardised."""
    x = pixels.float().div_(255.0)
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


