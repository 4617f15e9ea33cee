"""Naive vs optimized vs pruned search: the same candidates, epochs and seed, in one process.

    python benchmarks/search_speed.py --data tf_flowers --image-size 160 --epochs 5 \
        --strategies layer,block --sample 12

Each mode is blocktune's own search (:mod:`blocktune.runner.seedrun`) on the same split,
candidates, epochs and seed, one after the other in a fresh run folder:

* *naive*: ``cache: false, fold_norms: false, keep_freed_memory: false``: the whole network
  runs for every candidate, every batch, in a process whose C allocator is left as PyTorch
  finds it (the paper's way; images come from the decoded-image store, which favours it: the
  paper decodes JPEGs every epoch, a cost this benchmark prints on its own).
* *naive+heap*: naive in a process where freed memory is kept for reuse
  (:func:`blocktune.training.train.keep_freed_memory`): how much of the speed-up is the allocator's.
* *optimized*: the default fast path: the frozen-prefix activation cache (fp16), prepared in
  one pass for all cuts, frozen BatchNorms folded into frozen convolutions, freed memory kept
  for reuse. Results must match naive (up to float rounding).
* *pruned*: the fast path plus ``prune: true``: successive halving, rungs at 1, 3, 9 … epochs;
  survivors continue from their rung state, so their rows must match naive exactly too.

The allocator setting is one-way, so modes that leave it alone must come first. Prints a
table (wall and CPU time, the ratio against the first mode, RSS at the start and peak, the candidate
each picks), the largest difference in any candidate's val accuracy between modes (for pruned,
over the candidates it trained to the end), and where the pruned winner ranks in the full one.
``--sample N`` keeps N candidates per strategy spread evenly from the output end to the input
(a naive full search takes hours on a CPU); every mode runs exactly the same ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from blocktune.core.callbacks import LambdaCallback
from blocktune.core.config import RunConfig
from blocktune.core.methods import label
from blocktune.core.records import CandidateRow, rank_key
from blocktune.data import decode_folder, resolve_data, scan_folder
from blocktune.protocol.select import choose
from blocktune.runner.context import SeedContext, open_seed
from blocktune.runner.seedrun import search
from blocktune.training.loading import load_images
from blocktune.training.train import device_for

MODES = {"naive": {"cache": False, "fold_norms": False, "keep_freed_memory": False},
         "naive+heap": {"cache": False, "fold_norms": False, "keep_freed_memory": True},
         "optimized": {"cache": True, "fold_norms": True, "keep_freed_memory": True},
         "pruned": {"cache": True, "fold_norms": True, "keep_freed_memory": True,
                    "prune": True}}


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def evenly(items: list, n: int | None) -> list:
    if n is None or n >= len(items):
        return items
    step = (len(items) - 1) / max(1, n - 1)
    return [items[round(i * step)] for i in range(n)]


@dataclasses.dataclass(frozen=True)
class SampledRun(SeedContext):
    """A seed whose strategies keep ``sample`` candidates each, spread evenly."""

    sample: int | None = None

    def planned(self, strategy, rows):
        return evenly(super().planned(strategy, rows), self.sample)


def sampled(context: SeedContext, sample: int | None) -> SampledRun:
    return SampledRun(**{f.name: getattr(context, f.name)
                         for f in dataclasses.fields(context)}, sample=sample)


def decode_seconds(data: str, image_size: int, interpolation: str, count: int) -> float:
    """What decoding ``count`` JPEGs costs once (a per-epoch cost without a store)."""
    import os

    with tempfile.TemporaryDirectory() as store:
        old = os.environ.get("BLOCKTUNE_CACHE_DIR")
        os.environ["BLOCKTUNE_CACHE_DIR"] = store
        try:
            started = time.perf_counter()
            decoded = decode_folder(scan_folder(resolve_data(data)), image_size, interpolation)
            return (time.perf_counter() - started) * count / len(decoded.files)
        finally:
            if old is None:
                os.environ.pop("BLOCKTUNE_CACHE_DIR")
            else:
                os.environ["BLOCKTUNE_CACHE_DIR"] = old


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
    parser.add_argument("--quarter", action="store_true",
                        help="only candidates in the last quarter of the model (conference paper)")
    parser.add_argument("--modes", default="naive,optimized,pruned",
                        help=f"comma-separated from {', '.join(MODES)}; ratios against the first")
    parser.add_argument("--prune-grace", type=int, default=1,
                        help="epochs of the pruned mode's first rung")
    parser.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when present), cpu or cuda: where every mode trains")
    args = parser.parse_args()

    base = RunConfig(model=args.model, data=args.data, strategies=args.strategies.split(","),
                     image_size=args.image_size, epochs=args.epochs, seeds=[args.seed],
                     max_images_per_class=args.max_images_per_class, baselines=False,
                     quarter=args.quarter, device=args.device,
                     patience=args.epochs)
    device = device_for(base.device)
    images, data_cfg = load_images(base)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="search-speed-"))
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}: choose from {', '.join(MODES)}")
    heap = [MODES[m]["keep_freed_memory"] for m in modes]
    if heap != sorted(heap):
        parser.error("modes that keep freed memory are one-way: list naive before them")
    results = {}
    for mode in modes:
        config = RunConfig(**{**base.to_dict(), **MODES[mode], "prune_grace": args.prune_grace})
        reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start_rss = rss_mb()
        started, cpu_started = time.perf_counter(), time.process_time()
        seed_run = sampled(open_seed(config, args.seed, out / mode / f"seed_{args.seed}", images,
                              data_cfg, LambdaCallback(on_candidate_end=lambda row, best, mode=mode: print(
                                  f"  {mode:9s} {row.strategy:6s} #{row.index!s:<3} "
                                  f"rung {row.rung!s:>2} val {row.val_acc:.4f} "
                                  f"{row.seconds:7.1f}s", flush=True))), args.sample)
        if mode == modes[0]:
            split = seed_run.split
            planned = sum(len(seed_run.planned(s, [])) for s in config.strategies)
            print(f"{args.model} ({seed_run.bench.weights_source}), {args.image_size}px, "
                  f"{len(images.files)} images, search {len(split['search'])} / val "
                  f"{len(split['val'])}, {planned} candidates, {args.epochs} epochs each, "
                  f"{torch.get_num_threads()} threads, on {_device_name(device)}",
                  flush=True)
        rows, _ = search(seed_run)
        seed_run.close()
        results[mode] = {"wall": time.perf_counter() - started,
                         "cpu": time.process_time() - cpu_started, "peak": peak_rss_mb(),
                         "start_rss": start_rss, "rows": rows,
                         "gpu_peak": torch.cuda.max_memory_allocated(device) / 2**20
                         if device.type == "cuda" else None}

    def finished(rows):
        return {(r.strategy, r.layer_indices): r.val_acc for r in rows if r.status == "ok"}

    reference = results[modes[0]]
    full = finished(reference["rows"])
    print()
    print("| mode | wall time (s) | speed-up (wall) | CPU time (s) | speed-up (CPU) | "
          "RSS at start (MB) | peak RSS (MB) | candidates trained to the end | "
          "largest val acc difference (points) | chosen per strategy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        r = results[mode]
        mine = finished(r["rows"])
        diff = max(abs(acc - full[key]) for key, acc in mine.items())
        chosen = "; ".join(f"{label(s)} #{choose(r['rows'], s).index}"
                           for s in base.strategies if choose(r["rows"], s))
        print(f"| {mode} | {r['wall']:.1f} | {reference['wall'] / r['wall']:.2f}× | "
              f"{r['cpu']:.1f} | {reference['cpu'] / r['cpu']:.2f}× | {r['start_rss']:.0f} | "
              f"{r['peak']:.0f} | "
              f"{len(mine)} of {len(full)} | {diff * 100:.2f} | {chosen} |"
              + (f" peak GPU memory {r['gpu_peak']:.0f} MB" if r["gpu_peak"] else ""))
    for mode in modes[1:]:
        print()
        print(f"{mode}: rank of its choice in the {modes[0]} search's ranking")
        for strategy in base.strategies:
            ranking = sorted((r for r in reference["rows"]
                              if r.strategy == strategy and r.status == "ok"), key=rank_key)
            pick = choose(results[mode]["rows"], strategy)
            if pick is None:
                continue
            rank = [r.layer_indices for r in ranking].index(pick.layer_indices) + 1
            print(f"  {label(strategy)}: #{pick.index} ranks {rank} of {len(ranking)}"
                  f" ({modes[0]} picks #{ranking[0].index})")
    if "optimized" in results:
        simulate_pruning(results["optimized"]["rows"], base.strategies, args.epochs)
    seconds = decode_seconds(args.data, args.image_size, data_cfg.interpolation,
                             len(split["search"]) + len(split["val"]))
    print(f"\ndecoding the search and val JPEGs once takes {seconds:.2f}s: a pipeline without "
          f"a decoded-image store pays it every epoch of every candidate "
          f"({seconds * args.epochs * planned:.0f}s for this benchmark's naive search).")


def simulate_pruning(rows: list[CandidateRow], strategies: list[str], epochs: int) -> None:
    """What other successive-halving schedules would pick, from the full search's val curves.

    A survivor continues exactly where it paused, so a pruned search is a function of the full
    search's per-epoch val accuracies: its score at a rung of ``e`` epochs is the best of the
    first ``e``. Cost: each candidate's seconds per epoch (from the full search) times the
    epochs it would train.
    """
    import math

    full = {s: [r for r in rows if r.strategy == s and r.status == "ok"] for s in strategies}
    if not all(r.val_curve for group in full.values() for r in group):
        return

    def ranking(group: list[CandidateRow], upto: int) -> list[CandidateRow]:
        # the one ranking, on the val accuracy the candidate had after ``upto`` epochs
        return sorted(group, key=lambda r: rank_key(
            dataclasses.replace(r, val_acc=max(r.val_curve[:upto]))))

    print("\nsuccessive halving simulated on the full search's val curves "
          "(rank 1 = the full search's pick):")
    print("| rungs (epochs) | keep | epochs trained | est. time vs full | "
          + " | ".join(f"{label(s)} pick (rank)" for s in strategies) + " |")
    print("|---|---|---|---|" + "---|" * len(strategies))
    for ladder in ([1, 3], [2], [1, 2, 4], [3]):
        ladder = [e for e in ladder if e < epochs] + [epochs]
        for eta in (2, 3):
            trained, seconds, full_seconds, picks = 0, 0.0, 0.0, []
            for strategy in strategies:
                alive = full[strategy]
                done = {r.index: 0 for r in alive}
                for rung in ladder:
                    for r in alive:
                        per_epoch = r.seconds / r.epochs
                        seconds += per_epoch * (rung - done[r.index])
                        trained += rung - done[r.index]
                        done[r.index] = rung
                    if rung != epochs:
                        alive = ranking(alive, rung)[:max(1, math.ceil(len(alive) / eta))]
                full_seconds += sum(r.seconds for r in full[strategy])
                pick = ranking(alive, epochs)[0]
                picks.append(f"#{pick.index} ({ranking(full[strategy], epochs).index(pick) + 1})")
            total = sum(len(g) for g in full.values()) * epochs
            print(f"| {', '.join(map(str, ladder))} | 1/{eta} | {trained} of {total} | "
                  f"{seconds / full_seconds:.2f} | " + " | ".join(picks) + " |")


if __name__ == "__main__":
    main()
