"""The runs of ``benchmarks/PROTOCOL-default.md``: a default at about one fine-tune, no worse
than always LP-FT, in the domain and under shift?

    BLOCKTUNE_DATA_DIR=../shared/data python benchmarks/default.py [--out runs/default] \
        [--shard 0/2] [--threads 1]
    python benchmarks/default.py --export [--out runs/default] [--results benchmarks/results/default]
    python benchmarks/default.py --decide [--results benchmarks/results/default]

Per (seed, model, dataset), seed-major: three corrupted copies of 400 of the run's own test
images written once beside the run folder, then ``PROTOCOL-sizes.md``'s run (five finals) with
them as ``--test-data``. Each run is its own folder and resumes from its files.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from sizes import DATASETS, MODELS, finished, my_share, protocol_parser, serve, write_split_record
from sizes import run_config as sizes_config
from suite import timed_run, write_domains

SEEDS = (50, 51)
LEARN_IMAGES = 1000
CORRUPTED_IMAGES = 400


def run_name(model: str, dataset: str, seed: int) -> Path:
    return Path(model) / dataset / f"n{LEARN_IMAGES}_seed{seed}"


def plan() -> list[tuple[str, str, int]]:
    """Seed-major: every model and dataset gain a seed before any gains the next."""
    return [(m, d, s) for s in SEEDS for m in MODELS for d in DATASETS]


def export(out: Path, results: Path) -> int:
    """Copy every finished run's small tables under ``results``; returns how many runs."""
    count = 0
    for model, dataset, seed in plan():
        folder = out / run_name(model, dataset, seed)
        seed_dir = folder / f"seed_{seed}"
        if not finished(folder, seed):
            continue
        target = results / run_name(model, dataset, seed)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("finals.csv", "candidates.csv", "choices.json"):
            shutil.copyfile(seed_dir / name, target / name)
        write_split_record(seed_dir, target, {"model": model, "dataset": dataset, "seed": seed,
                                              "full": False}, folder / "test_domains.json")
        count += 1
    return count


def main() -> None:
    args = protocol_parser("default", __doc__).parse_args()
    if serve(args, export, "default_decide", len(plan())):
        return
    torch.set_num_threads(args.threads)
    for model, dataset, seed in my_share(plan(), args.shard):
        folder = args.out / run_name(model, dataset, seed)
        if finished(folder, seed):
            continue
        base = sizes_config(model, dataset, seed, False)
        domains = write_domains(base, args.out / model / dataset / f"domains_seed{seed}", seed,
                                CORRUPTED_IMAGES)
        timed_run(dataclasses.replace(base, test_data=domains), folder,
                  str(run_name(model, dataset, seed)))


if __name__ == "__main__":
    main()
