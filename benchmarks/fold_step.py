"""One training step with and without frozen BatchNorms folded into frozen convolutions.

    python benchmarks/fold_step.py --model tf_efficientnet_lite0 --image-size 160

For a few single-layer candidates from the stem to the output end, times a forward + backward
+ Adam step on a random batch (the whole network from the input, as a stem candidate trains):
with timm's own layers, plain (with blocktune's exact fast layers, as built:
:mod:`blocktune.models.fastlayers`),
folded, and folded under CPU bf16 autocast, alternately, and prints the best of ``--repeats``
for each with the ratios and the largest difference from the plain network's outputs. Freed
memory is kept for reuse, as in a blocktune run.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from blocktune.models.build import build_model
from blocktune.models.fastlayers import use_fast_layers
from blocktune.models.fold import foldable_pairs, folded
from blocktune.models.layers import SpineRunner, walk
from blocktune.training.train import freeze, keep_freed_memory, set_train_mode


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


def trainable(model, w, index: int) -> tuple[nn.Module, list, torch.optim.Optimizer]:
    """(net, frozen norms, optimizer) for training layer ``index`` of ``model`` alone."""
    frozen = freeze(model, w, (index,))
    net = nn.Sequential(SpineRunner(model.body, w), model.head)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    return net, frozen, optimizer


def profile_folded_step(model, w, pairs, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
    """The operators of a folded training step by their own CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    net, frozen, optimizer = trainable(model, w, index)
    with folded(model.body, w, pairs, (index,)):
        for _ in range(3):  # warm-ups
            step(net, frozen, optimizer, x, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step(net, frozen, optimizer, x, y)
    print(f"folded step training layer {index} `{w.layers[index].name}`, 5 steps:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", type=int, metavar="LAYER",
                        help="instead: profile 5 folded steps training this layer index and "
                             "print the operators by their own CPU time")
    parser.add_argument("--timm-layers", action="store_true",
                        help="with --profile: profile timm's layers, not the fast ones")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: PyTorch's)")
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, source = build_model(args.model, 5, "linear", args.image_size)
    if args.profile is not None and args.timm_layers:
        use_fast_layers(model, enabled=False)
    model.to(memory_format=torch.channels_last)
    w = walk(model.body, input_size=(3, args.image_size, args.image_size))
    pairs = foldable_pairs(model.body, w)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (args.batch_size,), generator=generator)
    if args.profile is not None:
        profile_folded_step(model, w, pairs, args.profile, x, y)
        return
    timm_model = copy.deepcopy(model)
    swapped = use_fast_layers(timm_model, enabled=False)
    timm_walk = walk(timm_model.body, input_size=(3, args.image_size, args.image_size))
    print(f"{args.model} ({source}), {args.image_size}px, batch {args.batch_size}, "
          f"{len(pairs)} foldable pairs, {swapped} layers swapped back to timm's, "
          f"{torch.get_num_threads()} threads\n")
    print("| trained layer | timm layers step (s) | plain step (s) | speed-up | "
          "folded step (s) | speed-up | max output diff (timm; folded) | "
          "folded + bf16 autocast (s) |")
    print("|---|---|---|---|---|---|---|---|")
    pristine = copy.deepcopy(model.state_dict())
    n = len(w.layers)
    for index in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1}):
        model.load_state_dict(pristine)  # undo the earlier rows' steps
        timm_model.load_state_dict(pristine)
        runs = {"timm": trainable(timm_model, timm_walk, index),
                "plain": trainable(model, w, index)}
        with torch.no_grad():  # before any step moves the trained layer
            for net, _, _ in runs.values():
                net.eval()
            reference = runs["plain"][0](x)
            timm_diff = (runs["timm"][0](x) - reference).abs().max().item()
            with folded(model.body, w, pairs, (index,)):
                fold_diff = (runs["plain"][0](x) - reference).abs().max().item()
        times = {"timm": [], "plain": [], "folded": [], "bf16": []}
        for key in ("timm", "plain"):  # warm-ups
            step(*runs[key], x, y)
        with folded(model.body, w, pairs, (index,)):
            step(*runs["plain"], x, y, bf16=True)
        for _ in range(args.repeats):
            times["timm"].append(step(*runs["timm"], x, y))
            times["plain"].append(step(*runs["plain"], x, y))
            with folded(model.body, w, pairs, (index,)):
                times["folded"].append(step(*runs["plain"], x, y))
                times["bf16"].append(step(*runs["plain"], x, y, bf16=True))
        best = {key: min(value) for key, value in times.items()}
        print(f"| {index} `{w.layers[index].name}` | {best['timm']:.3f} | {best['plain']:.3f} | "
              f"{best['timm'] / best['plain']:.2f}× | {best['folded']:.3f} | "
              f"{best['plain'] / best['folded']:.2f}× | {timm_diff:.1e}; {fold_diff:.1e} | "
              f"{best['bf16']:.3f} |")


if __name__ == "__main__":
    main()
