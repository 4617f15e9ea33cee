"""Image folders and named datasets (tf_flowers, caltech101, flowers102, eurosat): where they
are, how they download (resumable, checked), and their labelled files."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFile

from blocktune.core.errors import BlocktuneError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

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


def folder_role(min_classes: int) -> str:
    """How messages name a folder: data to learn from needs two classes, a test folder one."""
    return "data folder" if min_classes > 1 else "test data folder"


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
    role = folder_role(min_classes)
    if not files:
        raise BlocktuneError(f"{role} {root} holds no images: put each class's images "
                             "in a sub-folder named after the class")
    empty = [name for label, name in enumerate(classes) if label not in set(labels)]
    if empty:  # it would become an output class with no image to learn it from
        raise BlocktuneError(f"class folder {root / empty[0]} holds no images: add images to "
                             f"it or move it out of the {role}")
    present = sorted(set(labels))
    if len(present) < min_classes:
        raise BlocktuneError(f"data folder {root} has images of only one class: fine-tuning a "
                             "classifier needs at least two class sub-folders")
    return ImageFolder(root, classes, files, labels, skipped)


