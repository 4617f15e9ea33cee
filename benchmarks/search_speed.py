"""Naive vs optimized search: the same candidates, epochs and seed, in one process.

    python benchmarks/search_speed.py --data tf_flowers --image-size 160 --epochs 5 \
        --strategies layer,block --sample 6

Modes (``--modes``, all from the decoded-image store, which favours the baselines: the paper
also decodes JPEGs every epoch):

* *plain*: what a plain PyTorch loop does: NCHW tensors, the whole network every batch.
* *naive*: the whole network every batch, in the channels_last layout blocktune uses.
* *optimized*: channels_last plus the frozen-prefix activation cache (fp16), prepared in one
  pass for all cuts. ``naive`` → ``optimized`` isolates the cache; ``plain`` → ``optimized``
  is what blocktune's fast path buys over a plain implementation.

Ratios are against the first mode given.

Prints a table: wall time of each, the ratio, peak memory (RSS high-water mark, reset between
the two), the largest difference in any candidate's val accuracy, and the candidate each picks.
``--sample N`` keeps N candidates per strategy spread evenly from the output end to the input
(a naive full search takes hours on a CPU); both modes run exactly the same ones.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from blocktune.cache import ActivationCache, CachedFeed, ImageFeed
from blocktune.data import decode_folder, resolve_data, scan_folder, stratified_split
from blocktune.groups import StrategyOptions, candidates, group_params
from blocktune.layers import walk
from blocktune.models import build_model, data_config
from blocktune.search import subsample
from blocktune.train import TrainConfig, train_group


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass


def evenly(items: list, n: int | None) -> list:
    if n is None or n >= len(items):
        return items
    step = (len(items) - 1) / max(1, n - 1)
    return [items[round(i * step)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--data", default="tf_flowers")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--strategies", default="layer,block")
    parser.add_argument("--sample", type=int, help="candidates per strategy, spread evenly")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-images-per-class", type=int)
    parser.add_argument("--modes", default="naive,optimized",
                        help="comma-separated from plain, naive, optimized")
    parser.add_argument("--prune", action="store_true",
                        help="also run successive halving on the cache and compare rankings")
    args = parser.parse_args()

    model, source = build_model(args.model, 5, "linear", args.image_size)
    cfg = data_config(model.body.model if hasattr(model.body, "model") else model.body)
    started = time.perf_counter()
    images = decode_folder(scan_folder(resolve_data(args.data)), args.image_size,
                           cfg.interpolation)
    decode_seconds = time.perf_counter() - started
    if args.max_images_per_class:
        images = subsample(images, args.max_images_per_class, args.seed)
    model, source = build_model(args.model, len(images.classes), "linear", args.image_size,
                                head_seed=args.seed)
    split = stratified_split(images.labels.tolist(), seed=args.seed)
    w = walk(model.body, input_size=(3, args.image_size, args.image_size))
    plan = [c for s in args.strategies.split(",")
            for c in evenly(candidates(w, s, StrategyOptions(seed=args.seed)), args.sample)]
    pristine = copy.deepcopy(model.state_dict())
    print(f"{args.model} ({source}), {args.image_size}px, {len(images.files)} images, "
          f"search {len(split['search'])} / val {len(split['val'])}, {len(plan)} candidates, "
          f"{args.epochs} epochs each, {torch.get_num_threads()} threads; "
          f"decoding all images once took {decode_seconds:.1f}s")

    results = {}
    modes = args.modes.split(",")
    for mode in modes:
        reset_peak_rss()
        layout = torch.contiguous_format if mode == "plain" else torch.channels_last
        model.to(memory_format=layout)
        config = TrainConfig(epochs=args.epochs, patience=args.epochs, seed=args.seed,
                             channels_last=mode != "plain")
        images_feed = ImageFeed(model.body, w, images.pixels, images.labels, split, cfg.mean,
                                cfg.std)
        feed = images_feed
        started, cpu_started = time.perf_counter(), time.process_time()
        if mode == "optimized":
            model.load_state_dict(pristine)
            cache = ActivationCache(model.body, w, images.pixels, images.labels, split, cfg.mean,
                                    cfg.std, cover=("search", "val"))
            cache.prepare_cuts([w.cut_for(c.layers) for c in plan])
            feed = CachedFeed(images_feed, cache)
        accs = {}
        for cand in plan:
            model.load_state_dict(pristine)
            torch.manual_seed(args.seed)
            result, _, _ = train_group(model, w, cand.layers, feed, config)
            accs[(cand.strategy, cand.index)] = result.best_val_acc
            print(f"  {mode:9s} {cand.strategy:6s} #{cand.index:<3d} val {result.best_val_acc:.4f}"
                  f"  {result.seconds:6.1f}s", flush=True)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        best = {}
        for strategy in args.strategies.split(","):
            mine = [c for c in plan if c.strategy == strategy]
            chosen = min(mine, key=lambda c: (-accs[(c.strategy, c.index)],
                                              group_params(w, c.layers), c.index))
            best[strategy] = f"#{chosen.index} {w.names(chosen.layers)[0]}"
        results[mode] = {"wall": wall, "cpu": cpu, "peak": peak_rss_mb(), "accs": accs,
                         "best": best}

    naive, fast = results[modes[0]], results[modes[-1]]
    diff = max(abs(r["accs"][k] - naive["accs"][k]) for r in results.values() for k in r["accs"])
    print()
    # CPU time of this process is reported beside wall time: it is what a busy machine
    # disturbs least.
    print("| mode | wall time (s) | speed-up (wall) | CPU time (s) | speed-up (CPU) | "
          "peak RSS (MB) | best candidate per strategy |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        r = results[mode]
        print(f"| {mode} | {r['wall']:.1f} | {naive['wall'] / r['wall']:.2f}× | {r['cpu']:.1f} | "
              f"{naive['cpu'] / r['cpu']:.2f}× | {r['peak']:.0f} | "
              + "; ".join(f"{s}: {b}" for s, b in r["best"].items()) + " |")
    print(f"\nlargest val accuracy difference over {len(plan)} candidates: {diff * 100:.2f} points;"
          f" same best candidate in every mode: {all(r['best'] == naive['best'] for r in results.values())}")
    if args.prune and "optimized" in results:
        model.to(memory_format=torch.channels_last)
        compare_pruned(args, model, w, plan, pristine, images, split, cfg, fast)


def compare_pruned(args, model, w, plan, pristine, images, split, cfg, full) -> None:
    """Successive halving on the cache: its winner's place in the full ranking, and its time."""
    import math

    from blocktune.search import PRUNE_ETA, rungs

    cache = ActivationCache(model.body, w, images.pixels, images.labels, split, cfg.mean,
                            cfg.std, cover=("search", "val"))
    started = time.perf_counter()
    model.load_state_dict(pristine)
    cache.prepare_cuts([w.cut_for(c.layers) for c in plan])
    feed = CachedFeed(ImageFeed(model.body, w, images.pixels, images.labels, split, cfg.mean,
                                cfg.std), cache)
    print("\n| strategy | pruned winner | its rank in the full search | full winner |")
    print("|---|---|---|---|")
    for strategy in args.strategies.split(","):
        alive = [c for c in plan if c.strategy == strategy]
        for epochs in rungs(args.epochs):
            scores = {}
            for cand in alive:
                model.load_state_dict(pristine)
                torch.manual_seed(args.seed)
                config = TrainConfig(epochs=epochs, patience=epochs, seed=args.seed)
                scores[cand] = train_group(model, w, cand.layers, feed, config)[0].best_val_acc
            alive.sort(key=lambda c: (-scores[c], group_params(w, c.layers)))
            if epochs != args.epochs:
                alive = alive[:max(1, math.ceil(len(alive) / PRUNE_ETA))]
        winner = alive[0]
        mine = sorted((c for c in plan if c.strategy == strategy),
                      key=lambda c: (-full["accs"][(c.strategy, c.index)],
                                     group_params(w, c.layers), c.index))
        print(f"| {strategy} | #{winner.index} | {mine.index(winner) + 1} of {len(mine)} | "
              f"#{mine[0].index} |")
    seconds = time.perf_counter() - started
    print(f"\npruned search: {seconds:.1f}s vs {full['wall']:.1f}s for the full optimized search"
          f" ({full['wall'] / seconds:.2f}×)")


if __name__ == "__main__":
    main()
