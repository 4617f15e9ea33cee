"""One training step with and without frozen BatchNorms folded into frozen convolutions.

    python benchmarks/fold_step.py --model tf_efficientnet_lite0 --image-size 160

For a few single-layer candidates from the stem to the output end, times a forward + backward
+ Adam step on a random batch (the whole network from the input, as a stem candidate trains),
plain, folded and folded under CPU bf16 autocast, alternately, and prints the best of
``--repeats`` for each with the ratio and the largest difference between the plain and folded
networks' outputs. Freed memory is kept for reuse, as in a blocktune run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from blocktune.fold import foldable_pairs, folded
from blocktune.layers import SpineRunner, walk
from blocktune.models import build_model
from blocktune.train import freeze, keep_freed_memory, set_train_mode


def step(net: nn.Module, frozen, optimizer, x: torch.Tensor, y: torch.Tensor,
         bf16: bool = False) -> float:
    """Seconds for one forward + backward + optimizer step."""
    set_train_mode(net, frozen)
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = net(x)
    loss = nn.functional.cross_entropy(logits.float(), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()

    model, source = build_model(args.model, 5, "linear", args.image_size)
    model.to(memory_format=torch.channels_last)
    w = walk(model.body, input_size=(3, args.image_size, args.image_size))
    pairs = foldable_pairs(model.body, w)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (args.batch_size,), generator=generator)
    print(f"{args.model} ({source}), {args.image_size}px, batch {args.batch_size}, "
          f"{len(pairs)} foldable pairs, {torch.get_num_threads()} threads\n")
    print("| trained layer | plain step (s) | folded step (s) | speed-up | max output diff | "
          "folded + bf16 autocast (s) |")
    print("|---|---|---|---|---|---|")
    n = len(w.layers)
    for index in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1}):
        frozen = freeze(model, w, (index,))
        net = nn.Sequential(SpineRunner(model.body, w), model.head)
        optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-5)

        times = {"plain": [], "folded": [], "bf16": []}
        step(net, frozen, optimizer, x, y)  # warm-ups
        with folded(model.body, w, pairs, (index,)):
            step(net, frozen, optimizer, x, y, bf16=True)
        for _ in range(args.repeats):
            times["plain"].append(step(net, frozen, optimizer, x, y))
            with folded(model.body, w, pairs, (index,)):
                times["folded"].append(step(net, frozen, optimizer, x, y))
                times["bf16"].append(step(net, frozen, optimizer, x, y, bf16=True))
        net.eval()
        with torch.no_grad():
            reference = net(x)
            with folded(model.body, w, pairs, (index,)):
                diff = (net(x) - reference).abs().max().item()
        plain, fast = min(times["plain"]), min(times["folded"])
        print(f"| {index} `{w.layers[index].name}` | {plain:.3f} | {fast:.3f} | "
              f"{plain / fast:.2f}× | {diff:.1e} | {min(times['bf16']):.3f} |")


if __name__ == "__main__":
    main()
