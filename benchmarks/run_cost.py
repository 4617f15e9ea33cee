"""What a default small-data run costs against one Baseline II fine-tune, side by side in the
same run (issue: "a run at most twice one full fine-tune").

    BLOCKTUNE_DATA_DIR=../shared/data python benchmarks/run_cost.py \
        [--datasets tf_flowers,caltech101,blood_cells,flowers102,eurosat] [--seed 30] \
        [--learn-images 1000] [--threads 1] [--out runs/run_cost]

Per dataset, ``blocktune run`` as a user calls it — every product default, ``--learn-images
1000``, the small-data suite's image size (96 px; eurosat 64 px) — in its own run folder, timed
from the call to the published model. Its Baseline II final is the reference: the whole run's
wall time and its recorded training seconds (every search row and every final), each ÷ that
final's seconds, with where the seconds went. A folder whose run was interrupted is started
again from empty (a wall time is one uninterrupted run); a finished one is read back.
Writes ``run_cost.md`` beside the run folders.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from suite import DATASETS, DEFAULT_SIZE, IMAGE_SIZE, data_spec

from blocktune.config import RunConfig
from blocktune.io import atomic_write_json, atomic_write_text, read_json
from blocktune.plan import BASELINE_II, label
from blocktune.runfolder import RunFolder
from blocktune.search import run


def measure(dataset: str, seed: int, learn_images: int, out: Path) -> dict:
    """Run (or read back) one dataset's default run: its wall time and recorded seconds."""
    folder = out / dataset
    timing = out / f"{dataset}.wall.json"
    if timing.exists():
        wall = read_json(timing)["wall_seconds"]
    else:
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted run: timed again whole
        config = RunConfig(data=data_spec(dataset), seeds=[seed], learn_images=learn_images,
                           image_size=IMAGE_SIZE.get(dataset, DEFAULT_SIZE))
        started = time.perf_counter()
        run(config, folder)
        wall = time.perf_counter() - started
        atomic_write_json(timing, {"wall_seconds": wall})
    files = RunFolder(folder).seed(seed)
    search = [r for r in files.read_candidates() if not r.same_as]
    finals = [r for r in files.read_finals() if not r.same_as]
    reference = next(r.seconds for r in finals if r.method == BASELINE_II)
    parts = {f"search: {label(k)}": sum(r.seconds for r in search if r.strategy == k)
             for k in dict.fromkeys(r.strategy for r in search)}
    parts |= {f"final: {label(r.method)}": r.seconds for r in finals}
    return {"dataset": dataset, "wall": wall, "recorded": sum(parts.values()),
            "reference": reference, "parts": parts}


def table(results: list[dict], seed: int, learn_images: int) -> str:
    lines = [f"# A default run against one Baseline II fine-tune (seed {seed}, "
             f"--learn-images {learn_images})", "",
             "| dataset | whole run, wall (s) | recorded training (s) | Baseline II final (s) "
             "| wall ÷ B-II | recorded ÷ B-II | where the recorded seconds went (÷ B-II) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        went = ", ".join(f"{k} {v / r['reference']:.2f}" for k, v in r["parts"].items())
        lines.append(f"| {r['dataset']} | {r['wall']:.0f} | {r['recorded']:.0f} | "
                     f"{r['reference']:.0f} | {r['wall'] / r['reference']:.2f}× | "
                     f"{r['recorded'] / r['reference']:.2f}× | {went} |")
    if len(results) > 1:
        mean = sum(r["wall"] / r["reference"] for r in results) / len(results)
        recorded = sum(r["recorded"] / r["reference"] for r in results) / len(results)
        lines += ["", f"Mean over {len(results)} datasets: wall {mean:.2f}×, recorded "
                  f"{recorded:.2f}× one Baseline II fine-tune."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--learn-images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/run_cost"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for dataset in (d for d in args.datasets.split(",") if d):
        results.append(measure(dataset, args.seed, args.learn_images, args.out))
        text = table(results, args.seed, args.learn_images)
        atomic_write_text(args.out / "run_cost.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
