"""The run's configuration: a dataclass that validates itself, from defaults → YAML file → flags.

The resolved config is written next to the results as ``config.yaml``; resuming a folder with
a config that differs in a key that changes results is refused, naming the keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from blocktune.data import DEFAULT_FRACTIONS
from blocktune.errors import BlocktuneError
from blocktune.groups import STRATEGIES
from blocktune.layers import DELIMITER_KINDS
from blocktune.models import HEADS
from blocktune.select import get_rule
from blocktune.train import PAPER, TrainConfig, device_for


@dataclass
class RunConfig:
    model: str = field(default="tf_efficientnet_lite0", metadata={"help": "timm model name"})
    data: str = field(default="tf_flowers", metadata={"help": "image folder, or tf_flowers, caltech101, flowers102"})
    strategies: list[str] = field(default_factory=lambda: ["block"],
                                  metadata={"help": "strategies to search, in order"})
    seeds: list[int] = field(default_factory=lambda: [0])
    head: str = "linear"
    image_size: int = 160
    weights: str | None = field(default=None, metadata={"help": "state dict / safetensors file"})
    pretrained: bool = True
    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    max_images_per_class: int | None = field(
        default=None, metadata={"help": "subsample each class (seeded) before splitting"})
    epochs: int = field(default=5, metadata={"help": "epochs per search candidate"})
    final_epochs: int = field(default=5, metadata={"help": "epochs of the final fine-tunes"})
    batch_size: int = 32
    lr: float = 1e-3
    body_lr_scale: float = 0.1
    patience: int = 3
    paper_settings: bool = field(default=False, metadata={
        "help": "the paper's Adam, batch 4, 50 epochs, [0,1] scaling"})
    delimiters: list[str] = field(default_factory=lambda: ["pool", "activation"])
    window: int = 3
    stride: int = 1
    ranked_k: list[int] = field(default_factory=lambda: [3, 5])
    random_k: int = 3
    native: str = "fine"
    quarter: bool = False
    prune: bool = field(default=False, metadata={
        "help": "successive halving: rungs at grace, 3·grace, 9·grace … epochs, capped at "
                "epochs; the best third go on"})
    prune_grace: int = field(default=1, metadata={
        "help": "epochs of the first rung of --prune (Ray Tune's grace_period)"})
    max_candidates: int | None = None
    time_budget: float | None = field(default=None, metadata={
        "help": "seconds of search per seed; candidates not started in time are left for a resume"})
    baselines: bool = field(default=True, metadata={
        "help": "train Baseline I (head only) and II (all layers) in the search and the finals"})
    select: str = field(default="max-val", metadata={
        "help": "selection rule: which candidate of each strategy is fine-tuned (val only)"})
    cache: bool = True
    cache_dtype: str = "float16"
    cache_max_gb: float = 4.0
    fold_norms: bool = field(default=True, metadata={
        "help": "fold frozen BatchNorms into frozen convolutions while training"})
    keep_freed_memory: bool = field(default=True, metadata={
        "help": "CPU: let malloc reuse freed activations instead of unmapping them (faster "
                "steps, same results; the process keeps its peak memory)"})
    augment: bool = False
    strict: bool = False
    executor: str = field(default="local", metadata={
        "help": "local (one process) or ray (Ray Tune trials on a local or running cluster)"})
    trial_resources: str = field(default="cpu=1", metadata={
        "help": "--executor ray: resources of one trial, e.g. cpu=1,gpu=0.25"})
    ray_address: str | None = field(default=None, metadata={
        "help": "--executor ray: address of a running cluster (ray start --head); default "
                "a local Ray sized to this machine"})
    device: str = field(default="auto", metadata={
        "help": "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps"})

    def __post_init__(self):
        if isinstance(self.strategies, str):
            self.strategies = [s for s in self.strategies.split(",") if s]
        if isinstance(self.seeds, (int, str)):
            try:
                self.seeds = [int(s) for s in str(self.seeds).split(",") if s != ""]
            except ValueError:
                raise BlocktuneError(f"seeds {self.seeds!r}: give whole numbers separated by "
                                     "commas, e.g. --seeds 0,1,2") from None
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise BlocktuneError(f"unknown strategy {unknown[0]!r}: choose from "
                                 f"{', '.join(STRATEGIES)}")
        if "ranked" in self.strategies and "layer" not in self.strategies:
            self.strategies.insert(self.strategies.index("ranked"), "layer")
        if "ranked" in self.strategies:  # ranked is built from the layer results: after them
            self.strategies.remove("ranked")
            self.strategies.insert(self.strategies.index("layer") + 1, "ranked")
        if self.head not in HEADS:
            raise BlocktuneError(f"unknown head {self.head!r}: choose from {', '.join(HEADS)}")
        bad = set(self.delimiters) - set(DELIMITER_KINDS)
        if bad:
            raise BlocktuneError(f"unknown delimiter {sorted(bad)[0]!r}: choose from "
                                 f"{', '.join(DELIMITER_KINDS)}")
        if self.image_size < 16:
            raise BlocktuneError(f"image size {self.image_size} is too small: use 32 or more")
        if not self.seeds:
            raise BlocktuneError("give at least one seed, e.g. --seeds 0,1,2")
        if self.epochs < 1 or self.final_epochs < 1:
            raise BlocktuneError("epochs must be at least 1")
        for key, low, strict in (("batch_size", 1, False), ("lr", 0, True),
                                 ("body_lr_scale", 0, False), ("patience", 1, False),
                                 ("prune_grace", 1, False), ("time_budget", 0, False),
                                 ("max_candidates", 1, False), ("max_images_per_class", 1, False),
                                 ("cache_max_gb", 0, False), ("window", 1, False),
                                 ("stride", 1, False), ("random_k", 1, False)):
            value = getattr(self, key)
            if value is not None and (value <= low if strict else value < low):
                raise BlocktuneError(f"{key} = {value} is out of range: it must be "
                                     f"{'greater than' if strict else 'at least'} {low}")
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            raise BlocktuneError("cache dtype must be float16, bfloat16 or float32")
        get_rule(self.select)
        if self.executor not in ("local", "ray"):
            raise BlocktuneError(f"unknown executor {self.executor!r}: choose local or ray")
        device_for(self.device)  # an unknown or absent device is refused before any work

    def search_training(self, seed: int = 0) -> TrainConfig:
        return self._training(self.epochs, seed)

    def final_training(self, seed: int = 0) -> TrainConfig:
        return self._training(self.final_epochs, seed)

    def _training(self, epochs: int, seed: int) -> TrainConfig:
        """The seed orders the batches too, so that seeds vary everything they can."""
        if self.paper_settings:
            return dataclasses.replace(PAPER, seed=seed)
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr,
                           body_lr_scale=self.body_lr_scale, patience=self.patience, seed=seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BlocktuneError(f"unknown config key {unknown[0]!r}: valid keys are "
                                 f"{', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> RunConfig:
        return cls.from_dict({**read_yaml(path), **(overrides or {})})


def read_yaml(path: str | Path) -> dict:
    """The keys of a YAML config file (validated when they become a RunConfig)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise BlocktuneError(f"cannot read config {path} ({type(error).__name__}): pass a "
                             "YAML file of RunConfig keys") from error
    if not isinstance(values, dict):
        raise BlocktuneError(f"config {path} is not a mapping of RunConfig keys to values")
    return values


# Keys whose change makes earlier results meaningless for this folder.
RESUME_KEYS = ("model", "data", "strategies", "head", "image_size", "weights", "pretrained",
               "fractions", "max_images_per_class", "epochs", "final_epochs", "batch_size", "lr",
               "body_lr_scale", "patience", "paper_settings", "delimiters", "window", "stride",
               "ranked_k", "random_k", "native", "quarter", "prune", "prune_grace",
               "cache_dtype", "fold_norms",
               "augment")


def differing_keys(saved: dict, current: RunConfig) -> list[str]:
    """Result-changing keys whose values differ; a key the saved config predates counts as
    its default."""
    now, default = current.to_dict(), RunConfig().to_dict()
    return [k for k in RESUME_KEYS if saved.get(k, default[k]) != now.get(k)]
