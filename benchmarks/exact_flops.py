"""How much work an exact frozen-prefix cache can remove from a search, counted in FLOPs.

    python benchmarks/exact_flops.py --model tf_efficientnet_lite0 --image-size 160

For every candidate of each strategy (or ``--sample N`` spread evenly, as in
``search_speed.py``), counts with :class:`torch.utils.flop_counter.FlopCounterMode` the
FLOPs of one image's training step (forward, and the backward autograd runs with the
candidate's layers trainable, the rest frozen, as :func:`blocktune.training.train.freeze` leaves them)
and one val image's forward, twice: from the input (the naive search) and from the
candidate's spine cut (the cached search, which cuts where a single tensor flows). A third
count removes the forward FLOPs of every layer below the candidate's lowest layer, as a cache
holding every tensor at that layer would (inside residual blocks too): the limit of any exact
cache, since everything from that layer up still runs forward and backward. The ratios of
the sums over the candidates are the speed-ups where time follows FLOPs (a compute-bound
device).

Counted are the operators FlopCounterMode knows (convolutions, matrix products); norms and
activations are not, and on a CPU they cost more per FLOP near the input, where the cache
removes the most, so CPU speed-ups exceed this ratio. ``--val-per-search`` is the number of
val images per search image (METHOD.md's split: 10% search, 10% val: 1).
"""

from __future__ import annotations

import argparse

import torch

# a sibling script (on the path when run as `python benchmarks/exact_flops.py`): the same
# candidate sample as the timed benchmark
from search_speed import evenly
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from blocktune.models.build import build_model
from blocktune.models.groups import StrategyOptions, candidates
from blocktune.models.layers import SpineRunner, walk
from blocktune.training.train import freeze


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def step_flops(model, w, group, cut: int, x: torch.Tensor) -> tuple[int, int]:
    """(training step, val forward) FLOPs of one image for ``group`` run from spine cut ``cut``."""
    freeze(model, w, group)
    net = nn.Sequential(SpineRunner(model.body, w, cut), model.head)
    with torch.no_grad():
        inputs = SpineRunner(model.body, w, 0, cut)(x)
    train = flops(lambda: net(inputs).sum().backward())
    with torch.no_grad():
        val = flops(lambda: net(inputs))
    return train, val


def layer_forward_flops(model, w, x: torch.Tensor) -> dict[int, int]:
    """Forward FLOPs of each walk layer (by module, as FlopCounterMode attributes them)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.body(x)
    per_module = {name.split(".", 1)[1]: sum(ops.values())
                  for name, ops in counter.get_flop_counts().items() if "." in name}
    return {layer.index: per_module.get(layer.name, 0) for layer in w.layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--strategies", default="layer,block")
    parser.add_argument("--sample", type=int, help="candidates per strategy, spread evenly")
    parser.add_argument("--quarter", action="store_true", help="only the last quarter's groups")
    parser.add_argument("--val-per-search", type=float, default=1.0)
    args = parser.parse_args()

    model, source = build_model(args.model, 5, "linear", args.image_size)
    model.eval()
    w = walk(model.body, input_size=(3, args.image_size, args.image_size))
    x = torch.randn(1, 3, args.image_size, args.image_size)
    print(f"{args.model} ({source}), {args.image_size}px, val/search images "
          f"{args.val_per_search:g}{', last quarter only' if args.quarter else ''}\n")
    per_layer = layer_forward_flops(model, w, x)
    print("| strategy | candidates | naive GFLOPs per image-epoch | cached (spine cut) | ratio | "
          "limit of any exact cache | ratio |")
    print("|---|---|---|---|---|---|---|")
    for strategy in args.strategies.split(","):
        groups = evenly(candidates(w, strategy, StrategyOptions(quarter=args.quarter)),
                        args.sample)
        naive = cached = limit = 0.0
        for candidate in groups:
            for cut, total in ((0, "naive"), (w.cut_for(candidate.layers), "cached")):
                train, val = step_flops(model, w, candidate.layers, cut, x)
                work = train + args.val_per_search * val
                if total == "naive":
                    naive += work
                    below = sum(f for i, f in per_layer.items() if i < min(candidate.layers))
                    limit += work - (1 + args.val_per_search) * below
                else:
                    cached += work
        print(f"| {strategy} | {len(groups)} | {naive / 1e9:.2f} | {cached / 1e9:.2f} | "
              f"{naive / cached:.2f}× | {limit / 1e9:.2f} | {naive / limit:.2f}× |")


if __name__ == "__main__":
    main()
