"""The runs of ``benchmarks/PROTOCOL-choose-on.md``: do a few labelled deployment images choose
better than val?

    BLOCKTUNE_DATA_DIR=../shared/data python benchmarks/choose_on.py [--out runs/choose_on] \
        [--shard 0/2] [--threads 1]
    python benchmarks/choose_on.py --export [--out runs/choose_on] [--results benchmarks/results/choose_on]
    python benchmarks/choose_on.py --decide [--results benchmarks/results/choose_on]

Per (seed, dataset), seed-major: the target folders are written once beside the run folder
(three corrupted copies of 400 of the run's own test images, and for tf_flowers and flowers102
the other flower collection's photos of the four species both hold), then one ``blocktune run``
as a user would call it, every target folder given as ``--test-data``; then the handed-over
model's time to score them is measured. Each run is its own folder and resumes from its files.
``--export`` copies each finished run's small tables under ``--results``; ``--decide`` makes
the protocol's choices from them with the product's own ``--choose-on`` code.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sizes import SETTINGS, finished, my_share, protocol_parser, serve, write_split_record
from suite import data_spec, timed_run, write_domains

from blocktune.core.config import RunConfig
from blocktune.core.io import atomic_write_json
from blocktune.core.records import read_candidates, read_finals

MODEL = "tf_efficientnet_lite0"
DATASETS = ("tf_flowers", "eurosat", "blood_cells", "flowers102")
SEEDS = (40, 41, 42, 43, 44)
LEARN_IMAGES = 1000
IMAGE_SIZE = {"eurosat": 64}
DEFAULT_SIZE = 96
CORRUPTED_IMAGES = 400
# the four species both flower collections hold: tf_flowers' class name -> Flowers-102's
SHARED_SPECIES = {"daisy": "oxeye daisy", "dandelion": "common dandelion", "roses": "rose",
                  "sunflowers": "sunflower"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
REAL_SHIFT = {"tf_flowers": "flowers102_photos", "flowers102": "tf_flowers_photos"}
TF_FLOWERS_PER_CLASS = 100  # drawn per seed for the flowers102 runs' target


def run_config(dataset: str, seed: int, test_data: list[str]) -> RunConfig:
    return RunConfig(model=MODEL, data=data_spec(dataset), seeds=[seed],
                     image_size=IMAGE_SIZE.get(dataset, DEFAULT_SIZE),
                     learn_images=LEARN_IMAGES, test_data=test_data, **SETTINGS)


def run_name(dataset: str, seed: int) -> Path:
    return Path(dataset) / f"n{LEARN_IMAGES}_seed{seed}"


def plan() -> list[tuple[str, int]]:
    """Seed-major: every dataset gains a seed before any gains the next."""
    return [(d, s) for s in SEEDS for d in DATASETS]


def data_root() -> Path:
    root = os.environ.get("BLOCKTUNE_DATA_DIR")
    if not root:
        sys.exit("set BLOCKTUNE_DATA_DIR to the folder holding the datasets (../shared/data)")
    return Path(root)


def write_real_shift(dataset: str, folder: Path, seed: int) -> str | None:
    """The other flower collection's photos of the four shared species under ``folder``, named
    as the run's data names them (a ``.done`` file marks it finished); None for a dataset
    without one."""
    if dataset not in REAL_SHIFT:
        return None
    if (folder / ".done").exists():
        return str(folder)
    if dataset == "tf_flowers":  # every Flowers-102 photo of the four species
        from blocktune.data.datasets import flowers102

        source = flowers102(download=False)
        wanted = {source.classes.index(f102): tf for tf, f102 in SHARED_SPECIES.items()}
        picks = [(Path(source.root) / f, wanted[y]) for f, y in
                 zip(source.files, source.labels, strict=True) if y in wanted]
    else:  # 100 tf_flowers photos of each, drawn per seed
        rng = np.random.default_rng([seed, 46])
        picks = []
        for tf, f102 in SHARED_SPECIES.items():
            files = sorted((data_root() / "flower_photos" / tf).glob("*.jpg"))
            chosen = rng.choice(len(files), size=TF_FLOWERS_PER_CLASS, replace=False)
            picks += [(files[i], f102) for i in sorted(chosen)]
    for path, klass in picks:
        target = folder / klass / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    atomic_write_json(folder / ".done", {"images": len(picks), "seed": seed})
    return str(folder)


def targets(out: Path, dataset: str, seed: int) -> list[str]:
    """The run's target folders, written once: noise, blur, jpeg (+ the real shift)."""
    root = out / dataset / f"domains_seed{seed}"
    corrupted = write_domains(run_config(dataset, seed, []), root, seed, CORRUPTED_IMAGES)
    real = write_real_shift(dataset, root / REAL_SHIFT.get(dataset, ""), seed)
    return corrupted + ([real] if real else [])


def time_scoring(folder: Path, domains: list[str]) -> dict:
    """Seconds the handed-over model takes to read and score every target image, as
    ``blocktune predict`` does (decoded, resized, normalised; one thread): what --choose-on adds
    to a run per final, all of a folder's images (both parts) scored."""
    from blocktune.results.export import load_saved_model, prepare_images

    model, card = load_saved_model(folder)
    paths = sorted(p for d in domains for p in Path(d).rglob("*") if p.suffix in IMAGE_SUFFIXES)
    started = time.perf_counter()
    with torch.no_grad():
        for at in range(0, len(paths), 64):
            model(prepare_images(card, paths[at:at + 64]))
    return {"images": len(paths), "scoring_seconds": time.perf_counter() - started}


def export(out: Path, results: Path) -> int:
    """Copy every finished run's small tables under ``results``; returns how many runs."""
    count = 0
    for dataset, seed in plan():
        folder = out / run_name(dataset, seed)
        seed_dir = folder / f"seed_{seed}"
        if not finished(folder, seed) or not (folder / "timing.json").exists():
            continue
        target = results / run_name(dataset, seed)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("finals.csv", "choices.json"):
            shutil.copyfile(seed_dir / name, target / name)
        shutil.copyfile(folder / "timing.json", target / "timing.json")
        write_split_record(seed_dir, target, {"model": MODEL, "dataset": dataset, "seed": seed},
                           folder / "test_domains.json")
        count += 1
    return count


def main() -> None:
    args = protocol_parser("choose_on", __doc__).parse_args()
    if serve(args, export, "choose_on_decide", len(plan())):
        return
    torch.set_num_threads(args.threads)
    for dataset, seed in my_share(plan(), args.shard):
        folder = args.out / run_name(dataset, seed)
        domains = targets(args.out, dataset, seed)
        if not finished(folder, seed):
            timed_run(run_config(dataset, seed, domains), folder, str(run_name(dataset, seed)))
        if not (folder / "timing.json").exists():
            atomic_write_json(folder / "timing.json", {
                **time_scoring(folder, domains), "finals": 5,
                "training_seconds": training_seconds(folder / f"seed_{seed}")})


def training_seconds(seed_dir: Path) -> float:
    """The seconds the run's search rows and finals recorded."""
    return sum(r.seconds for r in read_candidates(seed_dir / "candidates.csv")) \
        + sum(r.seconds for r in read_finals(seed_dir / "finals.csv"))


if __name__ == "__main__":
    main()
