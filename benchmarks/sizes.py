"""The runs of ``benchmarks/PROTOCOL-sizes.md``: one choice at every data size?

    BLOCKTUNE_DATA_DIR=../shared/data python benchmarks/sizes.py [--out runs/sizes] \
        [--shard 0/2] [--threads 1] [--passes small,full]
    python benchmarks/sizes.py --export [--out runs/sizes] [--results benchmarks/results/sizes]
    python benchmarks/sizes.py --decide [--results benchmarks/results/sizes]

Per (model, dataset, seed, size), seed-major so that a partial pass is balanced: one
``blocktune run`` as a user would call it, with the protocol's five finals (Baseline I,
Baseline II, the last-quarter block, LP-FT, LP-BW); each is its own run folder and resumes from
its files. ``--export`` copies every finished run's small tables (finals.csv, candidates.csv,
choices.json, the split's labels per split and the sha256 of its splits.json; no weights) under
``--results``, where ``--decide`` reads them: a decision re-derives on a fresh clone.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import torch
from suite import data_spec, timed_run

from blocktune.core.config import RunConfig
from blocktune.core.io import atomic_write_json, read_json

MODELS = ("tf_efficientnet_lite0", "mobilenetv2_100")
DATASETS = ("tf_flowers", "caltech101", "flowers102", "blood_cells", "eurosat", "brain_tumor_mri")
SEEDS = (30, 31, 32)
FULL_SEED, FULL_MODELS = 30, ("tf_efficientnet_lite0",)
FULL_ORDER = ("caltech101", "flowers102", "tf_flowers", "blood_cells", "brain_tumor_mri",
              "eurosat")  # largest first
LEARN_IMAGES = 1000
IMAGE_SIZE = {"eurosat": 64}
DEFAULT_SIZE = 96
SETTINGS = dict(strategies=["block"], select="last-quarter", methods=["lp-ft", "lp-bw"],
                pick_finals=True, search_baseline_ii=False)
PASSES = ("small", "full")


def run_config(model: str, dataset: str, seed: int, full: bool) -> RunConfig:
    return RunConfig(model=model, data=data_spec(dataset), seeds=[seed],
                     image_size=IMAGE_SIZE.get(dataset, DEFAULT_SIZE),
                     learn_images=None if full else LEARN_IMAGES, **SETTINGS)


def run_name(model: str, dataset: str, seed: int, full: bool) -> Path:
    return Path(model) / dataset / (f"full_seed{seed}" if full else f"n{LEARN_IMAGES}_seed{seed}")


def plan(only: tuple[str, ...] = PASSES) -> list[tuple[str, str, int, bool]]:
    """Seed-major 1,000-image runs (every model and dataset gain a seed before any gains the
    next), then the full-size runs, largest first."""
    small = [(m, d, s, False) for s in SEEDS for m in MODELS for d in DATASETS]
    full = [(m, d, FULL_SEED, True) for m in FULL_MODELS for d in FULL_ORDER]
    return (small if "small" in only else []) + (full if "full" in only else [])


def finished(folder: Path, seed: int) -> bool:
    """Every final of the run recorded and its model published."""
    return (folder / "model.json").exists() and (folder / f"seed_{seed}" / "finals.csv").exists()


def write_split_record(seed_dir: Path, target: Path, meta: dict,
                       domains: Path | None = None) -> None:
    """``split.json`` of an exported run: ``meta``, the classes, images per split, the val and
    test labels, the sha256 of the run's ``splits.json``; with ``domains`` (a run folder's
    ``test_domains.json``) each test folder's labels, in the order of the predictions."""
    splits = read_json(seed_dir / "splits.json")
    atomic_write_json(target / "split.json", {
        **meta, "classes": len(splits["classes"]),
        "sizes": {k: len(v) for k, v in splits["files"].items()},
        "labels": {k: splits["labels"][k] for k in ("val", "test")},
        **({"domains": {name: d["labels"] for name, d in read_json(domains).items()}}
           if domains is not None else {}),
        "splits_sha256": hashlib.sha256((seed_dir / "splits.json").read_bytes()).hexdigest()})


def my_share(planned: list, spec: str) -> list:
    """``--shard I/N``: every N-th planned run from the I-th (each run in one shard only)."""
    shard, shards = (int(x) for x in spec.split("/"))
    return planned[shard::shards]


def serve(args, export_runs, decision: str, planned: int) -> bool:
    """``--export`` (copy the finished runs' tables) or ``--decide`` (print the decision from
    module ``decision``'s ``read_results`` and ``report``): True when one of them was done."""
    if args.export:
        print(f"{export_runs(args.out, args.results)} finished runs exported to {args.results}")
        return True
    if args.decide:
        module = __import__(decision)
        print(module.report(module.read_results(args.results), planned=planned))
        return True
    return False


def export(out: Path, results: Path) -> int:
    """Copy every finished run's small tables under ``results``; returns how many runs."""
    count = 0
    for model, dataset, seed, full in plan():
        folder = out / run_name(model, dataset, seed, full)
        if not finished(folder, seed):
            continue
        seed_dir = folder / f"seed_{seed}"
        target = results / run_name(model, dataset, seed, full)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("finals.csv", "candidates.csv", "choices.json"):
            if (seed_dir / name).exists():
                shutil.copyfile(seed_dir / name, target / name)
        write_split_record(seed_dir, target, {"model": model, "dataset": dataset, "seed": seed,
                                              "full": full})
        count += 1
    return count


def protocol_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The options every protocol runner has: where its runs go (``runs/<name>``) and its
    tables (``benchmarks/results/<name>``), threads, the shard, ``--export`` and ``--decide``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / name)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results"
                        / name)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shard", default="0/1", help="I/N: every N-th planned run from the I-th")
    parser.add_argument("--export", action="store_true", help="copy the finished runs' tables")
    parser.add_argument("--decide", action="store_true", help="print the tables and decisions")
    return parser


def main() -> None:
    parser = protocol_parser("sizes", __doc__)
    parser.add_argument("--passes", default=",".join(PASSES))
    args = parser.parse_args()
    if args.export:
        print(f"{export(args.out, args.results)} finished runs exported to {args.results}")
        return
    if args.decide:
        from sizes_decide import read_results, report

        print(report(read_results(args.results)))
        return
    torch.set_num_threads(args.threads)
    only = tuple(p for p in args.passes.split(",") if p)
    if unknown := sorted(set(only) - set(PASSES)):
        parser.error(f"--passes: unknown {', '.join(unknown)}; choose from {', '.join(PASSES)}")
    for model, dataset, seed, full in my_share(plan(only), args.shard):
        folder = args.out / run_name(model, dataset, seed, full)
        if finished(folder, seed):
            continue
        timed_run(run_config(model, dataset, seed, full), folder,
                  str(run_name(model, dataset, seed, full)))


if __name__ == "__main__":
    main()
