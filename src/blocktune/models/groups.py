"""The strategies: ways of grouping a model's layers into candidate groups.

Each strategy is one small function, registered under its name, that maps a
:class:`~blocktune.models.layers.ModelWalk` (plus options) to groups of layer indices in model order.
:func:`candidates` orders them from the output end, as the paper searches, and applies the
``quarter`` restriction. Nothing here trains or touches tensors.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from blocktune.core.errors import BlocktuneError
from blocktune.core.registry import DELIMITER_KINDS, STRATEGIES
from blocktune.models.layers import ModelWalk

Group = tuple[int, ...]
StrategyFn = Callable[[ModelWalk, "StrategyOptions"], list[Group]]



def register_strategy(name: str) -> Callable[[StrategyFn], StrategyFn]:
    def decorate(fn: StrategyFn) -> StrategyFn:
        STRATEGIES[name] = fn
        return fn
    return decorate


@dataclass(frozen=True)
class StrategyOptions:
    """Knobs of the strategies; each strategy reads only its own."""

    delimiters: tuple[str, ...] = ("pool", "activation")
    window: int = 3
    stride: int = 1
    k: int = 3
    seed: int = 0
    native: str = "fine"
    quarter: bool = False
    # Finished `layer` search: layer index -> (val accuracy). Needed by `ranked`.
    layer_scores: Mapping[int, float] = field(default_factory=dict)
    # The model the walk came from, for strategies that ask the model itself (`native`).
    model: nn.Module | None = field(default=None, compare=False, hash=False)
    # The selection rule's part of the model: number of layers -> the first layer it can pick
    # from. Candidates starting before it are not planned (``ranked`` and ``random``, one
    # group each, are controls and stay whole).
    picks_from: Callable[[int], int] | None = field(default=None, compare=False, hash=False)

    def __post_init__(self):
        unknown = set(self.delimiters) - set(DELIMITER_KINDS)
        if unknown:
            raise BlocktuneError(f"unknown delimiter kind(s) {sorted(unknown)}: choose from "
                                 f"{', '.join(DELIMITER_KINDS)}")
        if self.window < 1 or self.stride < 1 or self.k < 1:
            raise BlocktuneError("window, stride and k must be at least 1")
        if self.native not in ("fine", "coarse"):
            raise BlocktuneError(f"native grouping must be 'fine' or 'coarse', not {self.native!r}")


@dataclass(frozen=True)
class Candidate:
    """A group of layers to train together; ``index`` is its place in the search (0 = output end)."""

    strategy: str
    index: int
    layers: Group

    def key(self) -> str:
        return f"{self.strategy}:{self.index}:{','.join(map(str, self.layers))}"


@register_strategy("layer")
def layer_groups(walk: ModelWalk, options: StrategyOptions) -> list[Group]:
    """LW: every layer on its own."""
    return [(layer.index,) for layer in walk.layers]


@register_strategy("block")
def block_groups(walk: ModelWalk, options: StrategyOptions) -> list[Group]:
    """BW: maximal runs of consecutive layers with no delimiter of the chosen kinds between them."""
    cuts = sorted({d.position for d in walk.delimiters
                   if d.kind in options.delimiters and 0 < d.position < len(walk.layers)})
    bounds = [0, *cuts, len(walk.layers)]
    return [tuple(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@register_strategy("window")
def window_groups(walk: ModelWalk, options: StrategyOptions) -> list[Group]:
    """BWSW: every run of ``window`` consecutive layers, moved by ``stride``; the last run ends at the top."""
    n, w = len(walk.layers), min(options.window, len(walk.layers))
    starts = list(range(0, n - w + 1, options.stride))
    if starts and starts[-1] != n - w:
        starts.append(n - w)  # a stride that skips the top would leave the last layers out
    return [tuple(range(s, s + w)) for s in starts]


@register_strategy("ranked")
def ranked_groups(walk: ModelWalk, options: StrategyOptions) -> list[Group]:
    """BWT-k: one group, the k best layers of a finished `layer` search."""
    if not options.layer_scores:
        raise BlocktuneError("strategy 'ranked' needs a finished 'layer' search: run it with "
                             "--strategy layer,ranked")
    # Best val accuracy first; ties to fewer parameters, then to the output end (searched first).
    order = sorted(options.layer_scores, key=lambda i: (
        -options.layer_scores[i], walk.layers[i].num_params, -i))
    return [tuple(sorted(order[:options.k]))]


@register_strategy("random")
def random_groups(walk: ModelWalk, options: StrategyOptions) -> list[Group]:
    """Fig. 3's control: k layers drawn at random with the run's seed."""
    k = min(options.k, len(walk.layers))
    return [tuple(sorted(random.Random(options.seed).sample(range(len(walk.layers)), k)))]


@register_strategy("native")
def native_groups(walk: ModelWalk, options: StrategyOptions) -> list[Group]:
    """The model's own stem/blocks/stages: timm's ``group_matcher`` applied by timm's own
    ``group_parameters`` (``MATCH_PREV_GROUP`` patterns join the previous group), fine or coarse."""
    from timm.models import group_parameters

    timm_model, prefix = _find_group_matcher(options.model)
    if timm_model is None:
        raise BlocktuneError("strategy 'native' needs a model with timm's group_matcher(): use "
                             "'block' or 'window' for this model")
    group_of = group_parameters(timm_model, timm_model.group_matcher(
        coarse=options.native == "coarse"), reverse=True)
    params = {}
    for name, module in timm_model.named_modules():
        first = next((p for p, _ in module.named_parameters(recurse=False)), None)
        if first is not None:
            params[f"{prefix}{name}"] = f"{name}.{first}" if name else first
    groups: dict[int, list[int]] = {}
    for layer in walk.layers:
        key = params.get(layer.name)
        gid = group_of.get(key, len(group_of)) if key else len(group_of)
        groups.setdefault(gid, []).append(layer.index)
    return sorted((tuple(v) for v in groups.values()), key=lambda g: g[0])


@register_strategy("top")
def top_groups(walk: ModelWalk, options: StrategyOptions) -> list[Group]:
    """Everything from stage k to the output, k over the model's own stages (timm's coarse
    ``group_matcher``; models without one: the `block` groups): what fastai's ``freeze_to`` and
    Keras' "fine-tune the top N layers" do. Its two ends are the baselines — from the first
    stage is Baseline II, from past the last is Baseline I — which the search trains anyway:
    the candidates are the ones in between."""
    if _find_group_matcher(options.model)[0] is not None:
        stages = native_groups(walk, StrategyOptions(native="coarse", model=options.model))
    else:
        stages = block_groups(walk, options)
    last = len(walk.layers) - 1
    starts = sorted({min(g) for g in stages} - {0})
    return [tuple(range(start, last + 1)) for start in starts]


@register_strategy("quarter")
def quarter_groups(walk: ModelWalk, options: StrategyOptions) -> list[Group]:
    """The conference paper's shortcut: `block` groups lying in the last quarter of the layers."""
    return block_groups(walk, options)  # candidates() restricts every quarter search


def _find_group_matcher(model: nn.Module | None) -> tuple[nn.Module | None, str]:
    if model is None:
        return None, ""
    for name, module in model.named_modules():
        if hasattr(module, "group_matcher"):
            return module, f"{name}." if name else ""
    return None, ""


def last_quarter_start(num_layers: int) -> int:
    """The first layer of a model's last quarter (at least its last layer)."""
    return num_layers - max(1, num_layers // 4)


def in_last_quarter(group: Group, num_layers: int) -> bool:
    return min(group) >= last_quarter_start(num_layers)


# strategies whose candidates a rule's region does not restrict (one group each: controls)
UNRESTRICTED = ("ranked", "random")


def candidates(walk: ModelWalk, strategy: str, options: StrategyOptions | None = None
               ) -> list[Candidate]:
    """The candidate groups of ``strategy``, ordered from the output end (search order)."""
    options = options or StrategyOptions()
    if strategy not in STRATEGIES:
        raise BlocktuneError(f"unknown strategy {strategy!r}: choose from {', '.join(STRATEGIES)}")
    if not walk.layers:
        raise BlocktuneError("the model has no layers with parameters: nothing to fine-tune")
    groups = STRATEGIES[strategy](walk, options)
    if options.quarter or strategy == "quarter":
        groups = [g for g in groups if in_last_quarter(g, len(walk.layers))]
    if options.picks_from is not None and strategy not in UNRESTRICTED:
        start = options.picks_from(len(walk.layers))
        # none in the rule's region: the rule falls back to all of them, so all are planned
        groups = [g for g in groups if min(g) >= start] or groups
    groups = sorted(dict.fromkeys(groups), key=lambda g: (-max(g), -min(g)))
    return [Candidate(strategy, i, g) for i, g in enumerate(groups)]


def group_params(walk: ModelWalk, group: Sequence[int]) -> int:
    return sum(walk.layers[i].num_params for i in group)


def describe(walk: ModelWalk, group: Sequence[int]) -> str:
    """Layer names of a group, compact: ``a`` or ``a … b (n layers)`` for a run."""
    names = walk.names(group)
    contiguous = list(group) == list(range(min(group), max(group) + 1))
    if len(names) <= 2:
        return ", ".join(names)
    if contiguous:
        return f"{names[0]} … {names[-1]} ({len(names)} layers)"
    return ", ".join(names)


def table(walk: ModelWalk, cands: Sequence[Candidate]) -> list[dict]:
    """One row per candidate: what `blocktune groups` prints and the API returns."""
    total = walk.total_params
    return [{
        "index": c.index, "layers": describe(walk, c.layers), "first": c.layers[0],
        "last": c.layers[-1], "num_layers": len(c.layers),
        "params": group_params(walk, c.layers),
        "share": group_params(walk, c.layers) / total if total else 0.0,
    } for c in cands]
