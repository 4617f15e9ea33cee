"""What a run reads before any training: the data decoded once for all seeds, the model's
preprocessing, and the environment the run records beside its results."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from blocktune.core import __version__
from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.data import (
    NAMED_DATASETS,
    DecodedImages,
    check_test_folder,
    decode_folder,
    open_data,
)
from blocktune.models.build import check_model_name, data_config, packaged_source
from blocktune.training.train import device_for


def check_environment(config: RunConfig) -> None:
    """What must exist where the work runs — the model name, the data folder, the weights file,
    the test folders, the device — checked there, before any work. A config is a plain value:
    it loads on a machine without the driver's data (``status``, a Ray worker)."""
    check_model_name(config.model)
    if config.data not in ("tf_flowers", *NAMED_DATASETS) and not Path(config.data).expanduser(
            ).is_dir():
        raise BlocktuneError(f"data folder {config.data} does not exist: pass a folder with "
                             "one sub-folder of images per class, or tf_flowers, "
                             + ", ".join(NAMED_DATASETS))
    if config.weights is not None and not Path(config.weights).expanduser().is_file():
        raise BlocktuneError(f"weights file {config.weights} does not exist: pass the path of a "
                             ".pth, .pt or .safetensors state dict")
    for folder in [*config.test_data, *([config.choose_on] if config.choose_on else [])]:
        check_test_folder(folder)
    device_for(config.device)  # an absent device is refused before any work


def environment(config: RunConfig | None = None) -> dict:
    import timm

    device = {"device": device_for(config.device).type} if config is not None else {}
    return {**device, "blocktune": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else False,
            "threads": torch.get_num_threads()}


def load_images(config: RunConfig) -> tuple[DecodedImages, object]:
    """Decode the data once for all seeds; return (images, data config of the model)."""
    check_model_name(config.model)
    folder = open_data(config.data)
    cfg = data_config(config.model, config.paper_settings,
                      packaged_source(config.model, config.weights, config.pretrained))
    images = decode_folder(folder, config.image_size, cfg.interpolation, strict=config.strict)
    if config.max_images_per_class:
        images = subsample(images, config.max_images_per_class, seed=0)
    return images, cfg


def subsample(images: DecodedImages, per_class: int, seed: int) -> DecodedImages:
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label_id in sorted(set(images.labels.tolist())):
        members = (images.labels == label_id).nonzero().flatten()
        keep.extend(members[torch.randperm(len(members), generator=generator)[:per_class]].tolist())
    keep.sort()
    index = torch.tensor(keep)
    return DecodedImages(images.pixels[index], [images.files[i] for i in keep],
                         images.labels[index], images.classes, images.corrupt,
                         [images.digests[i] for i in keep] if images.digests else [])
