"""The Python API: everything the CLI does, as functions that return data.

    >>> from blocktune import api
    >>> api.model_groups("vgg16", "block", delimiters="pool")["rows"][0]["layers"]
    >>> api.run(api.RunConfig(model="tf_efficientnet_lite0", data="tf_flowers"), "runs/x",
    ...         callbacks=[api.LambdaCallback(on_candidate_end=lambda row, best: print(row))])
    >>> print("\n".join(api.assess("runs/x").lines()))  # the recommendation and verdicts
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from blocktune.core.callbacks import Callback, LambdaCallback
from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.executors import EXECUTORS, register_executor
from blocktune.models.build import build_body, create_timm
from blocktune.models.groups import (
    STRATEGIES,
    StrategyOptions,
    candidates,
    register_strategy,
    table,
)
from blocktune.models.layers import ModelWalk, walk
from blocktune.protocol.select import RULES, register_rule
from blocktune.results.assess import assess
from blocktune.results.report import build_report, plot_layer_params
from blocktune.runner.finetune import finetune
from blocktune.runner.search import run

__all__ = ["EXECUTORS", "RULES", "STRATEGIES", "Callback", "LambdaCallback", "RunConfig",
           "assess", "baseline_all", "baseline_head", "build_report", "finetune", "model_groups",
           "model_walk", "predict", "register_executor", "register_rule", "register_strategy",
           "run"]


def baseline_head(config: RunConfig, out: str | Path) -> dict:
    """Baseline I: the whole base model frozen, only the new head trained; tested once."""
    return finetune(config, "head", out)


def baseline_all(config: RunConfig, out: str | Path) -> dict:
    """Baseline II: every layer trained with the new head; tested once."""
    return finetune(config, "all", out)


def model_walk(model: str | torch.nn.Module, image_size: int = 224, head: str = "linear",
               pretrained: bool = False) -> tuple[ModelWalk, torch.nn.Module]:
    """Walk a timm model by name (random weights by default: structure only) or any module."""
    if isinstance(model, str):
        module, _ = create_timm(model, pretrained=pretrained)
        body = build_body(module, head)
    else:
        body = model
    return walk(body, input_size=(3, image_size, image_size)), body


def model_groups(model: str | torch.nn.Module, strategy: str = "block", image_size: int = 224,
                 head: str = "linear", delimiters: str | Sequence[str] = ("pool", "activation"),
                 window: int = 3, stride: int = 1, k: int = 3, seed: int = 0,
                 native: str = "fine", quarter: bool = False, plot: str | None = None) -> dict:
    """The candidate groups of ``strategy`` on ``model``: rows of index, layers, params, share."""
    if strategy == "ranked":
        raise BlocktuneError("'ranked' groups come from a finished layer search: use "
                             "blocktune run --strategy layer,ranked")
    result_walk, body = model_walk(model, image_size, head)
    if isinstance(delimiters, str):
        delimiters = [d for d in delimiters.split(",") if d]
    options = StrategyOptions(delimiters=tuple(delimiters), window=window, stride=stride, k=k,
                              seed=seed, native=native, quarter=quarter, model=body)
    cands = candidates(result_walk, strategy, options)
    if plot:
        name = model if isinstance(model, str) else type(model).__name__
        plot_layer_params(result_walk, [c.layers for c in cands], plot, f"{name}: {strategy}")
    return {"rows": table(result_walk, cands), "num_layers": len(result_walk.layers),
            "total_params": result_walk.total_params, "candidates": cands, "walk": result_walk}


def predict(run_folder: str | Path, images: Sequence[str | Path]) -> list[tuple[str, float]]:
    """Class name and probability for each image, with the model a run saved."""
    from blocktune.results.export import load_saved_model, prepare_images

    model, card = load_saved_model(run_folder)
    out = []
    for image in images:
        with torch.no_grad():
            probs = model(prepare_images(card, [image])).softmax(1)[0]
        best = int(probs.argmax())
        out.append((card["classes"][best], float(probs[best])))
    return out
