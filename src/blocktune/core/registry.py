"""The registries and fixed vocabularies the run's config is checked against: leaves that the
code using them fills (a strategy, a selection rule) or reads (heads, delimiters, loggers,
dataset names), so that :mod:`blocktune.core.config` validates a name without importing the
code that implements it. Importing :mod:`blocktune` registers every built-in."""

from __future__ import annotations

from typing import Any

# name -> function(walk, options) -> groups (filled by blocktune.models.groups and plugins)
STRATEGIES: dict[str, Any] = {}
# name -> Rule (filled by blocktune.protocol.select and plugins)
RULES: dict[str, Any] = {}

HEADS = ("paper", "linear", "keep-pretrained")
DELIMITER_KINDS = ("activation", "pool", "dropout", "identity", "flatten", "residual", "other")
LOGGERS = ("tensorboard",)
# `--data` names besides an image folder (blocktune.data.datasets implements each)
DATASET_NAMES = ("tf_flowers", "caltech101", "flowers102", "eurosat")
DEFAULT_FRACTIONS = {"search": 0.1, "val": 0.1, "train": 0.6, "test": 0.2}
