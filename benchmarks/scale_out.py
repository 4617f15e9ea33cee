"""Scale-out: candidates per minute with the local executor and with Ray, 1, 2, … workers.

    python benchmarks/scale_out.py --workers 1,2 [--model tf_efficientnet_lite0] \
        [--image-size 96] [--epochs 2] [--candidates 8] [--out runs/scale_out]

The same search (the first ``--candidates`` ``block`` candidates of one seed, no baselines,
no finals) runs once per mode, each in a fresh run folder, one after another:

* ``local, T threads``: the local executor, torch using T threads;
* ``ray, W workers``: a local Ray with W CPUs, one trial per CPU (``--trial-resources cpu=1``,
  one thread each), so W candidates train at once.

Printed: wall time, candidates per minute, speed-up over local with one thread, and Ray's
per-trial overhead: (Ray with one worker − local with one thread) / candidates. Every mode's
val accuracies are compared with the first mode's (they must be equal).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from blocktune.core.config import RunConfig
from blocktune.results.runfolder import SeedFolder
from blocktune.runner.context import open_seed
from blocktune.runner.seedrun import search
from blocktune.training.loading import load_images


def search_seconds(config: RunConfig, images, data_cfg, folder: Path) -> tuple[float, dict]:
    shutil.rmtree(folder, ignore_errors=True)
    seed_run = open_seed(config, 0, folder, images, data_cfg)
    started = time.perf_counter()
    rows, complete = search(seed_run)
    wall = time.perf_counter() - started
    assert complete
    seed_run.close()
    return wall, {r.layer_indices: f"{r.val_acc:.6f}" for r in SeedFolder(folder).read_candidates()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--data", default="tf_flowers")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--max-images-per-class", type=int, default=None)
    parser.add_argument("--out", default="runs/scale_out")
    args = parser.parse_args()
    import ray

    base = dict(model=args.model, data=args.data, strategies=["block"], baselines=False,
                image_size=args.image_size, epochs=args.epochs,
                max_candidates=args.candidates, max_images_per_class=args.max_images_per_class)
    images, data_cfg = load_images(RunConfig(**base))
    out = Path(args.out)
    results = []
    threads = torch.get_num_threads()
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        wall, accs = search_seconds(RunConfig(**base), images, data_cfg, out / f"local-{t}")
        results.append((f"local, {t} thread(s)", wall, accs))
        print(f"local {t} thread(s): {wall:.1f} s", flush=True)
    torch.set_num_threads(threads)
    for workers in (int(w) for w in args.workers.split(",")):
        ray.shutdown()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        config = RunConfig(**base, executor="ray", trial_resources="cpu=1")
        wall, accs = search_seconds(config, images, data_cfg, out / f"ray-{workers}")
        results.append((f"ray, {workers} worker(s)", wall, accs))
        print(f"ray {workers} worker(s): {wall:.1f} s", flush=True)
    ray.shutdown()

    one_thread = results[0][1]
    print(f"\n{args.model}, {args.image_size} px, {args.candidates} block candidates × "
          f"{args.epochs} epochs, {len(images.files)} images\n")
    print("| mode | wall (s) | candidates per minute | speed-up vs local, 1 thread | "
          "same val accuracies |")
    print("|---|---|---|---|---|")
    for name, wall, accs in results:
        print(f"| {name} | {wall:.1f} | {args.candidates / wall * 60:.2f} | "
              f"{one_thread / wall:.2f}× | {accs == results[0][2]} |")
    ray_one = next((wall for name, wall, _ in results if name.startswith("ray, 1 ")), None)
    if ray_one is not None:
        print(f"\nRay's overhead per trial (ray 1 worker − local 1 thread) / candidates: "
              f"{(ray_one - one_thread) / args.candidates:.1f} s")


if __name__ == "__main__":
    main()
