"""What a default run costs against one Baseline II fine-tune, side by side in the same job
(issue 43: "at most 1.2x one full fine-tune, at 1,000 learning images and at full size").

    BLOCKTUNE_DATA_DIR=../shared/data python benchmarks/run_cost.py \
        [--datasets tf_flowers,caltech101,blood_cells,flowers102,eurosat] [--seed 30] \
        [--learn-images 1000 | 0] [--threads 1] [--out runs/run_cost]

Per dataset, ``blocktune run`` as a user calls it — every product default, ``--learn-images
1000`` (0: full size), the protocols' image size (96 px; eurosat 64 px) — in its own run folder,
timed from the call to the written report; the same with ``--no-baselines`` (the handed-over
method alone, no verdicts); then ``blocktune finetune --train all`` (one Baseline II fine-tune)
with the same config and split, timed the same way: the ratio of the wall times is what a run
costs a user. Beside it, the run's recorded training seconds (every search row
and every final) ÷ its own Baseline II final's, with where they went. A folder whose job was
interrupted is started again from empty (a wall time is one uninterrupted job); a finished one
is read back.
Writes ``run_cost.md`` beside the run folders.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import torch
from suite import DATASETS, DEFAULT_SIZE, IMAGE_SIZE, data_spec

from blocktune.core.config import RunConfig
from blocktune.core.io import atomic_write_json, atomic_write_text, read_json
from blocktune.core.methods import BASELINE_II, label
from blocktune.results.report import build_report
from blocktune.results.runfolder import RunFolder
from blocktune.runner.finetune import finetune
from blocktune.runner.search import run


def timed(job, folder: Path, timing: Path) -> float:
    """``job(folder)``'s wall seconds, from an empty folder (an interrupted job is timed again
    whole); read back from ``timing`` once finished."""
    if timing.exists():
        return read_json(timing)["wall_seconds"]
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    job(folder)
    wall = time.perf_counter() - started
    atomic_write_json(timing, {"wall_seconds": wall})
    return wall


def measure(dataset: str, seed: int, learn_images: int | None, out: Path) -> dict:
    """One dataset's default run, the same run with ``--no-baselines`` (the handed-over method
    alone, no verdicts), and a plain Baseline II fine-tune (``blocktune finetune --train all``)
    of the same config and split, each timed; the default run's recorded seconds."""
    config = RunConfig(data=data_spec(dataset), seeds=[seed], learn_images=learn_images,
                       image_size=IMAGE_SIZE.get(dataset, DEFAULT_SIZE))
    folder = out / dataset
    wall = timed(lambda f: (run(config, f), build_report(f)), folder,
                 out / f"{dataset}.wall.json")
    bare = timed(lambda f: (run(dataclasses.replace(config, baselines=False), f),
                            build_report(f)),
                 out / f"{dataset}-no-baselines", out / f"{dataset}-no-baselines.wall.json")
    alone = timed(lambda f: finetune(config, "all", f), out / f"{dataset}-baseline-II",
                  out / f"{dataset}-baseline-II.wall.json")
    files = RunFolder(folder).seed(seed)
    search = [r for r in files.read_candidates() if not r.same_as]
    finals = [r for r in files.read_finals() if not r.same_as]
    reference = next(r.seconds for r in finals if r.method == BASELINE_II)
    parts = {f"search: {label(k)}": sum(r.seconds for r in search if r.strategy == k)
             for k in dict.fromkeys(r.strategy for r in search)}
    parts |= {f"final: {label(r.method)}": r.seconds for r in finals}
    return {"dataset": dataset, "wall": wall, "bare": bare, "alone": alone,
            "recorded": sum(parts.values()), "reference": reference, "parts": parts,
            "method": read_json(folder / "model.json")["method"]}


def table(results: list[dict], seed: int, learn_images: int | None) -> str:
    size = "full size" if learn_images is None else f"--learn-images {learn_images}"
    lines = [f"# A default run against one Baseline II fine-tune (seed {seed}, {size})", "",
             "| dataset | handed over | run, wall (s) | `finetune --train all`, wall (s) | run ÷ "
             "finetune (wall) | run --no-baselines, wall (s) | ÷ finetune | run's recorded "
             "training ÷ its B-II final | where the recorded seconds went (÷ B-II final) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        went = ", ".join(f"{k} {v / r['reference']:.2f}" for k, v in r["parts"].items())
        lines.append(f"| {r['dataset']} | {label(r['method'])} | {r['wall']:.0f} | "
                     f"{r['alone']:.0f} | {r['wall'] / r['alone']:.2f}× | {r['bare']:.0f} | "
                     f"{r['bare'] / r['alone']:.2f}× | {r['recorded'] / r['reference']:.2f}× | "
                     f"{went} |")
    if len(results) > 1:
        mean = sum(r["wall"] / r["alone"] for r in results) / len(results)
        bare = sum(r["bare"] / r["alone"] for r in results) / len(results)
        lines += ["", f"Mean over {len(results)} datasets: the default run {mean:.2f}× a plain "
                  f"Baseline II fine-tune's wall time; with --no-baselines {bare:.2f}×."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--learn-images", type=int, default=1000,
                        help="images learnt from; 0: full size (the product's split)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/run_cost"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for dataset in (d for d in args.datasets.split(",") if d):
        learn = args.learn_images or None
        results.append(measure(dataset, args.seed, learn, args.out))
        text = table(results, args.seed, learn)
        atomic_write_text(args.out / "run_cost.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
