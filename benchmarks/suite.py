"""The small-data suite of ``benchmarks/PROTOCOL-small.md``: where does the choice pay?

    BLOCKTUNE_DATA_DIR=../shared/data python benchmarks/suite.py [--out runs/suite] \
        [--datasets tf_flowers,caltech101,blood_cells,flowers102,eurosat] \
        [--seeds 20,21,22,23,24] [--no-full] [--passes val,full,cv5] [--threads 2]
    python benchmarks/suite.py --decide [--out runs/suite]      # the tables and decisions

Per (seed, dataset), seed-major so that a partial suite is balanced: ``blocktune run`` as a
user would call it — ``--learn-images 1000``, the protocol's seven methods as finals — with
three corrupted copies of (up to 1,000 of) that run's own test images as ``--test-data``,
written once before the run. When every run has its finals, each dataset runs once at full
size (seed 20, ``val`` only); then the 1,000-image folders are resumed with ``--choose-by
cv5`` (the cross-validated choice; ``val``'s is read from the same finals). Every run is
its own run folder and resumes from its files: the suite can be stopped at any point and
started again.

``--decide`` prints the protocol's tables and decisions (computed by :mod:`blocktune.protocol`)
from whatever run folders are finished; until every planned run is in, it says "provisional".
Test accuracy is read here only because this is a benchmark: the product never chooses on it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from blocktune.core.callbacks import Callback
from blocktune.core.config import RunConfig
from blocktune.core.io import atomic_write_bytes, atomic_write_json
from blocktune.core.methods import label
from blocktune.data import stratified_split
from blocktune.runner.search import run
from blocktune.training.loading import load_images

DATASETS = ("tf_flowers", "caltech101", "blood_cells", "flowers102", "eurosat")
SEEDS = (20, 21, 22, 23, 24)
FULL_ORDER = ("caltech101", "flowers102", "tf_flowers", "blood_cells", "eurosat")  # by size
LEARN_IMAGES = 1000
IMAGE_SIZE = {"eurosat": 64}  # every other dataset: 96 px (PROTOCOL-small.md)
DEFAULT_SIZE = 96
DOMAIN_IMAGES = 1000  # test images corrupted per run, at most
# ImageNet-C severity 2: Gaussian noise σ 0.12 of the [0, 1] range; Gaussian blur σ 2 px at
# 224 px, scaled to the image; JPEG quality 18
NOISE_SIGMA, BLUR_SIGMA_224, JPEG_QUALITY = 0.12, 2.0, 18
CORRUPTIONS = ("noise", "blur", "jpeg")
SETTINGS = dict(model="tf_efficientnet_lite0", strategies=["quarter", "block"],
                select="max-val", methods=["lp-ft", "lp-bw", "norms"])


def data_spec(dataset: str) -> str:
    """``--data`` for a dataset: a named one, or its folder under BLOCKTUNE_DATA_DIR."""
    if dataset in ("tf_flowers", "caltech101", "flowers102", "eurosat"):
        return dataset
    root = os.environ.get("BLOCKTUNE_DATA_DIR")
    if not root:
        sys.exit("set BLOCKTUNE_DATA_DIR to the folder holding the datasets (../shared/data)")
    return str(Path(root) / dataset)


def run_config(dataset: str, seed: int, full: bool = False, test_data: list[str] | None = None,
               choose_by: str = "cv5") -> RunConfig:
    """The protocol's config of one run: 1,000 learning images (finals, then cv5), or full
    size and val. ``choose_by`` is no resume key: the same folder first gets its finals
    (``val``), later its cross-validation (``cv5``)."""
    small = {} if full else {"learn_images": LEARN_IMAGES, "choose_by": choose_by,
                             "test_data": test_data or []}
    return RunConfig(data=data_spec(dataset), seeds=[seed],
                     image_size=IMAGE_SIZE.get(dataset, DEFAULT_SIZE), **SETTINGS, **small)


def run_folder(out: Path, dataset: str, seed: int, full: bool = False) -> Path:
    return out / dataset / (f"full_seed{seed}" if full else f"n{LEARN_IMAGES}_seed{seed}")


# -- test domains: corrupted copies of the run's own test images ------------------------------
def corrupt(pixels: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """One H×W×3 uint8 image corrupted ImageNet-C style at the protocol's severity, as file
    bytes (PNG, lossless, for noise and blur; the JPEG itself for jpeg)."""
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if kind == "noise":
        noisy = pixels / 255.0 + rng.normal(0.0, NOISE_SIGMA, pixels.shape)
        Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)).save(buffer,
                                                                                   "PNG")
    elif kind == "blur":
        sigma = BLUR_SIGMA_224 * pixels.shape[0] / 224
        image.filter(ImageFilter.GaussianBlur(sigma)).save(buffer, "PNG")
    elif kind == "jpeg":
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(kind)
    return buffer.getvalue()


def write_domains(config: RunConfig, folder: Path, seed: int, count: int = DOMAIN_IMAGES
                  ) -> list[str]:
    """The run's test split (made exactly as the run makes it), up to ``count`` of its
    images drawn per class in proportion (seeded), and three corrupted copies of them under
    ``folder/<kind>/<class>/`` (beside the run folder, not in it). Written once: a ``.done``
    file marks a finished folder; an unfinished one is written again."""
    roots = [folder / kind for kind in CORRUPTIONS]
    if all((root / ".done").exists() for root in roots):
        return [str(r) for r in roots]
    images, _ = load_images(config)
    split = stratified_split(images.labels.tolist(), config.fractions, seed, images.classes,
                             config.learn_images)
    test = np.array(split["test"])
    rng = np.random.default_rng([seed, 7])
    labels = images.labels.numpy()[test]
    keep = []
    share = min(1.0, count / len(test))
    for label_id in np.unique(labels):
        members = test[labels == label_id]
        take = max(1, round(len(members) * share))
        keep.extend(rng.choice(members, size=min(take, len(members)), replace=False).tolist())
    keep.sort()
    for kind, root in zip(CORRUPTIONS, roots, strict=True):
        if (root / ".done").exists():
            continue
        noise = np.random.default_rng([seed, CORRUPTIONS.index(kind)])
        for index in keep:
            name = images.files[index]
            klass = images.classes[int(images.labels[index])]
            suffix = ".jpg" if kind == "jpeg" else ".png"
            target = root / klass / (Path(name).stem + f"_{index}{suffix}")
            target.parent.mkdir(parents=True, exist_ok=True)
            pixels = images.pixels[index].permute(1, 2, 0).numpy()
            atomic_write_bytes(target, corrupt(pixels, kind, noise))
        atomic_write_json(root / ".done", {"images": len(keep), "seed": seed, "kind": kind})
    return [str(r) for r in roots]


class Log(Callback):
    """One line per finished search row, final and phase, with the time."""

    def __init__(self, name: str):
        self.name, self.started = name, time.perf_counter()

    def _print(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} {self.name}] {text}", flush=True)

    def on_phase(self, text):
        self._print(text)

    def on_notice(self, text):
        self._print(f"notice: {text}")

    def on_candidate_end(self, row, best):
        self._print(f"{label(row.strategy)} #{row.index}: val {row.val_acc:.3f} "
                    f"({row.seconds:.0f} s)")

    def on_final_end(self, row):
        domains = " ".join(f"{k} {v['acc']:.3f}" for k, v in row.domains.items())
        self._print(f"final {label(row.method)}: val {row.val_acc:.3f} test {row.test_acc:.3f} "
                    f"{domains} ({row.seconds:.0f} s)")


def timed_run(config: RunConfig, folder: Path, name: str) -> None:
    """One protocol run as a user calls it, its rows logged as they come and its wall time
    printed at the end (``name`` heads every line)."""
    started = time.perf_counter()
    run(config, folder, [Log(name)])
    print(f"[{time.strftime('%H:%M:%S')} {name}] done in "
          f"{time.perf_counter() - started:.0f} s", flush=True)


def plan(datasets: list[str], seeds: list[int], full: bool) -> list[tuple[str, int, bool]]:
    """Seed-major: every dataset gains a seed before any gains the next; full size last, the
    largest datasets first (PROTOCOL-small.md's second amendment: two shards share them
    evenly)."""
    runs = [(d, s, False) for s in seeds for d in datasets]
    larger_first = sorted(datasets, key=lambda d: (FULL_ORDER.index(d) if d in FULL_ORDER
                                                   else len(FULL_ORDER)))
    return runs + ([(d, seeds[0], True) for d in larger_first] if full else [])


PASSES = ("val", "full", "cv5")


def passes(runs: list[tuple[str, int, bool]], shard: int, shards: int,
           only: tuple[str, ...] = PASSES) -> list[tuple[str, int, bool, str]]:
    """This shard's work in order: the finals of every 1,000-image run (``val``), then the
    full-size runs (``full``), then the 1,000-image runs' cross-validation (``cv5``, the same
    folders resumed; PROTOCOL-small.md's second amendment put it last); ``only`` keeps some
    passes. A run belongs to one shard in every pass, so two shards never share a folder."""
    mine = [r for i, r in enumerate(runs) if i % shards == shard]
    small = [r for r in mine if not r[2]]
    work = {"val": [(*r, "val") for r in small], "full": [(*r, "val") for r in mine if r[2]],
            "cv5": [(*r, "cv5") for r in small]}
    return [item for name in PASSES if name in only for item in work[name]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/suite"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--no-full", action="store_true", help="skip the full-size runs")
    parser.add_argument("--passes", default=",".join(PASSES),
                        help="which passes to run, of val (the 1,000-image finals), full (the "
                        "full-size runs) and cv5 (the cross-validation)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shard", default="0/1",
                        help="I/N: run every N-th planned run from the I-th (two processes of "
                        "one thread each use two cores better than one of two)")
    parser.add_argument("--decide", action="store_true",
                        help="print the tables and decisions from the finished runs; train "
                        "nothing")
    args = parser.parse_args()
    datasets = [d for d in args.datasets.split(",") if d]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs = plan(datasets, seeds, not args.no_full)
    if args.decide:
        from protocol_small import read_suite, report

        print(report(read_suite(args.out, [(d, s, f, run_folder(args.out, d, s, f))
                                           for d, s, f in runs])))
        return
    torch.set_num_threads(args.threads)
    shard, shards = (int(x) for x in args.shard.split("/"))
    only = tuple(p for p in args.passes.split(",") if p)
    if unknown := sorted(set(only) - set(PASSES)):
        parser.error(f"--passes: unknown {', '.join(unknown)}; choose from {', '.join(PASSES)}")
    for dataset, seed, full, choose_by in passes(runs, shard, shards, only):
        folder = run_folder(args.out, dataset, seed, full)
        name = f"{dataset} {'full' if full else LEARN_IMAGES} seed {seed} {choose_by}"
        domains = [] if full else write_domains(
            run_config(dataset, seed), args.out / dataset / f"domains_seed{seed}", seed)
        timed_run(run_config(dataset, seed, full, domains, choose_by), folder, name)


if __name__ == "__main__":
    main()
