"""Publishing a run's recommendation: its final's weights as ``model.safetensors`` and the
``model.json`` that ``predict`` and ``export`` rebuild the network from."""

from __future__ import annotations

import math
from pathlib import Path

from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.io import atomic_copy, atomic_write_json
from blocktune.core.records import LEARNING, FinalRow
from blocktune.data import DecodedImages
from blocktune.models.build import packaged_source
from blocktune.results.runfolder import RunFolder
from blocktune.training.loading import environment

# model.json's ``trained_on`` for a model trained on every learning image (a cvK choice's)
TRAINED_ON_LEARNING = "every learning image (search, val and train)"


def publish_model(folder: Path, config: RunConfig, seed: int, best: FinalRow, weights: Path,
                  images: DecodedImages, data_cfg, weights_source: str) -> None:
    """Copy the recommended final (``best``, its weights file ``weights``) to
    ``model.safetensors`` + ``model.json``."""
    files = RunFolder(folder)
    check_weights(weights)  # a damaged final never replaces a published model
    atomic_copy(weights, files.weights)
    atomic_write_json(files.model_json, model_record(
        config, images, data_cfg, weights_source, best.method,
        {"seed": seed, "trained": best.group, "layer_indices": best.layer_indices,
         "trained_params": best.trained_params,
         # none held out when trained on every learning image (JSON has no NaN)
         "val_acc": None if math.isnan(best.val_acc) else best.val_acc,
         "test_acc": best.test_acc, "select": best.select, "choose_by": config.choose_by,
         "trained_on": TRAINED_ON_LEARNING if best.trained_on == LEARNING
         else "search and train (val held out)"}))


def check_weights(path: Path) -> None:
    """One line when a final's weights file is missing or does not load (cut short,
    overwritten): the model it would publish is not there."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        load_file(str(path))
    except (OSError, SafetensorError, ValueError) as error:
        record = "learning_finals.csv" if path.name.endswith(f".{LEARNING}.safetensors") \
            else "finals.csv"
        raise BlocktuneError(f"{path} is damaged or missing ({type(error).__name__}): the "
                             "published model was left as it was; delete that file and its "
                             f"row in {path.parent / record} and resume to train it again"
                             ) from error


def model_record(config: RunConfig, images: DecodedImages, data_cfg, weights_source: str,
                 method: str, result: dict) -> dict:
    """``model.json``: what ``predict`` and ``export`` need to rebuild the network around the
    saved weights, and what it is (method, trained layers, accuracies, seed, versions)."""
    packaged = packaged_source(config.model, config.weights, config.pretrained)
    return {"model": config.model, "model_args": packaged.model_kwargs if packaged else {},
            "head": config.head, "image_size": config.image_size,
            "classes": images.classes, "mean": list(data_cfg.mean), "std": list(data_cfg.std),
            "interpolation": data_cfg.interpolation, "weights_source": weights_source,
            "weights_origin": packaged.origin if packaged else None,
            "weights_licence": packaged.licence if packaged else None,
            "method": method, **result, "data": config.data,
            "versions": {k: v for k, v in environment().items()
                         if k in ("blocktune", "torch", "timm")}}
