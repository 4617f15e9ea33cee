"""Walk a model in execution order: its layers, its delimiters and its single-tensor spine.

One forward pass on a dummy input, with hooks on every module, answers three questions as
plain data (:class:`ModelWalk`), so that every strategy is a pure function of it:

* **layers** — modules that directly own parameters, in the order their forward first *starts*
  (pre-hooks), not the order they were declared. A module called twice appears once.
* **delimiters** — parameter-free leaf modules (activations, pooling, dropout, identity,
  flatten…) with the number of layers that ran before them, plus ``residual`` events: the exit
  of a container whose output is its input plus its last child's output (an identity skip).
  timm's ``BatchNormAct2d`` runs its ``act`` child after the norm starts, so the activation
  shows up right after the norm layer.
* **spine** — the model as a chain of *segments* through which exactly one tensor flows:
  a container is expanded into its called children when (checked on the traced tensors, by
  identity and version counter) each child consumes exactly the previous child's output, the
  first consumes the container's input and the last produces its output. Residual blocks fail
  that check and stay whole. Running the segments one after another reproduces the forward
  pass, which is what lets :mod:`blocktune.training.cache` cut the model between any two of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

_ACTIVATION_NAME = re.compile(r"relu|swish|silu|gelu|sigmoid|tanh|mish|hardswish|elu|act|softmax")


@dataclass(frozen=True)
class Layer:
    """A module that directly owns parameters."""

    index: int
    name: str
    type: str
    num_params: int
    segment: int


@dataclass(frozen=True)
class Delimiter:
    """A parameter-free event between layers ``position - 1`` and ``position``."""

    position: int
    name: str
    type: str
    kind: str


@dataclass(frozen=True)
class Segment:
    """One link of the spine: a module called with a single tensor; layers ``[start, stop)``."""

    index: int
    name: str
    start: int
    stop: int


@dataclass
class ModelWalk:
    layers: list[Layer]
    delimiters: list[Delimiter]
    segments: list[Segment]
    unused: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()

    @property
    def total_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    def names(self, indices) -> list[str]:
        return [self.layers[i].name for i in indices]

    def index_of(self, name: str) -> int:
        for layer in self.layers:
            if layer.name == name:
                return layer.index
        raise KeyError(name)

    def cut_for(self, layer_indices) -> int:
        """The deepest spine cut below every given layer: the segment index the suffix starts at."""
        if not layer_indices:
            return len(self.segments)
        return min(self.layers[i].segment for i in layer_indices)


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for a module without any)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def delimiter_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Identity):
        return "identity"
    if isinstance(module, nn.Flatten):
        return "flatten"
    name = type(module).__name__.lower()
    if "pool" in name:
        return "pool"
    if isinstance(module, nn.modules.dropout._DropoutNd) or "drop" in name:
        return "dropout"
    if type(module).__module__ == "torch.nn.modules.activation" or _ACTIVATION_NAME.search(name):
        return "activation"
    return "other"


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


@dataclass
class _Call:
    order: int
    input: torch.Tensor | None
    input_version: int
    output: torch.Tensor | None = None
    output_version: int = -1
    count: int = 0
    single_tensor_call: bool = False


def walk(model: nn.Module, example: torch.Tensor | None = None,
         input_size: tuple[int, int, int] = (3, 224, 224)) -> ModelWalk:
    """Trace ``model`` once and return its layers, delimiters and spine.

    Args:
        model: any ``nn.Module`` taking one image tensor.
        example: an input batch; defaults to ``zeros(1, *input_size)``.
    """
    if example is None:
        example = torch.zeros(1, *input_size, device=device_of(model))
    names = {module: name for name, module in model.named_modules()}
    calls: dict[str, _Call] = {}
    events: list[tuple[str, str]] = []  # ("layer", name) or ("delim:<kind>", name)
    layer_names: list[str] = []
    seen_params: set[int] = set()
    layer_params: dict[str, int] = {}
    children = {name: [f"{name}.{child}" if name else child for child, _ in m.named_children()]
                for name, m in model.named_modules()}

    def pre_hook(module, args, kwargs):
        name = names[module]
        leaf_delimiter = not children[name] and not _own_params(module)
        call = calls.get(name)
        if call is not None:
            call.count += 1
            if leaf_delimiter:  # a reused activation delimits at every use, as ResNet's relu
                events.append((f"delim:{delimiter_kind(module)}", name))
            return
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        call = _Call(order=len(calls), input=first,
                     input_version=first._version if first is not None else -1, count=1)
        call.single_tensor_call = first is not None and len(args) == 1 and not kwargs
        calls[name] = call
        own = [p for p in _own_params(module) if id(p) not in seen_params]
        if own:
            seen_params.update(id(p) for p in own)
            layer_params[name] = sum(p.numel() for p in own)
            layer_names.append(name)
            events.append(("layer", name))
        elif leaf_delimiter:
            events.append((f"delim:{delimiter_kind(module)}", name))

    def post_hook(module, args, kwargs, output):
        name = names[module]
        call = calls[name]
        if call.count != 1 or not isinstance(output, torch.Tensor):
            return
        call.output, call.output_version = output, output._version
        if children[name] and call.input is not None and call.input.shape == output.shape:
            last = max((calls[n] for n in _called_descendants(name, children, calls)),
                       key=lambda c: c.order, default=None)
            if (last is not None and last.output is not None and last.output is not output
                    and last.output.shape == output.shape
                    and torch.allclose(output, call.input + last.output, atol=1e-5)):
                events.append(("delim:residual", name))

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    owners = {name for name in layer_names if children[name]}
    segment_names = _spine("", children, calls, owners)
    segment_of_layer = _assign_segments(layer_names, segment_names)
    layers = [Layer(i, _display(name), type(model.get_submodule(name)).__name__,
                    layer_params[name], segment_of_layer[i])
              for i, name in enumerate(layer_names)]

    delimiters, position = [], 0
    for kind, name in events:
        if kind == "layer":
            position += 1
        else:
            module = model.get_submodule(name)
            delimiters.append(Delimiter(position, _display(name), type(module).__name__,
                                        kind.split(":", 1)[1]))

    segments = []
    for i, name in enumerate(segment_names):
        members = [j for j in range(len(layers)) if segment_of_layer[j] == i]
        start = members[0] if members else (segments[-1].stop if segments else 0)
        stop = members[-1] + 1 if members else start
        segments.append(Segment(i, name, start, stop))

    unused = [name for name, m in model.named_modules()
              if _own_params(m) and name not in calls]
    out_shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
    return ModelWalk(layers, delimiters, segments, unused, tuple(example.shape[1:]), out_shape)


def _display(name: str) -> str:
    return name or "<root>"


def _called_descendants(name: str, children: dict, calls: dict) -> list[str]:
    """Maximal called modules below ``name``: uncalled intermediate containers are looked through."""
    found = []
    for child in children[name]:
        if child in calls:
            found.append(child)
        else:
            found.extend(_called_descendants(child, children, calls))
    return found


def _is_chain(name: str, parts: list[str], calls: dict, model_owns_params: bool) -> bool:
    if not parts or model_owns_params:
        return False
    whole = calls[name]
    ordered = [calls[p] for p in parts]
    if any(c.count != 1 or not c.single_tensor_call or c.output is None for c in ordered):
        return False
    if whole.output is None or ordered[0].input is not whole.input:
        return False
    if ordered[0].input_version != whole.input_version:
        return False
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.input is not before.output or after.input_version != before.output_version:
            return False
    return ordered[-1].output is whole.output and ordered[-1].output_version == whole.output_version


def _spine(name: str, children: dict, calls: dict, owners: set[str]) -> list[str]:
    parts = sorted(_called_descendants(name, children, calls), key=lambda n: calls[n].order)
    # A container that owns parameters itself uses them functionally (ViT's pos_embed), so its
    # children alone do not make up its forward: it stays one segment.
    if name in calls and _is_chain(name, parts, calls, name in owners):
        return [segment for part in parts for segment in _spine(part, children, calls, owners)]
    return [name]


def _assign_segments(layer_names, segment_names) -> list[int]:
    """Each layer belongs to the segment that is it or contains it (by qualified-name prefix)."""
    result = []
    for name in layer_names:
        owner = None
        for i, seg in enumerate(segment_names):
            if seg == "" or name == seg or name.startswith(seg + "."):
                owner = i
                break
        if owner is None:
            # A layer outside every segment can only happen if the root is not a chain.
            owner = 0
        result.append(owner)
    return result


class SpineRunner(nn.Module):
    """Run spine segments ``[start, stop)`` of ``model`` one after another."""

    def __init__(self, model: nn.Module, walk_result: ModelWalk, start: int = 0,
                 stop: int | None = None):
        super().__init__()
        stop = len(walk_result.segments) if stop is None else stop
        self.parts = nn.ModuleList(
            model if seg.name == "" else model.get_submodule(seg.name)
            for seg in walk_result.segments[start:stop]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x
