"""The run's one typed configuration, from defaults → YAML file → flags.

:class:`RunConfig` is the single source: every field carries its help, its allowed values or
range, and whether it changes results (a *resume key*). The CLI's flags and their help, the
``groups`` command's options and the resume check are derived from the fields; every value,
from a flag (text) or a YAML file (typed), is converted and checked here, and a wrong one gives
one line naming the key, the value and what is allowed.

The resolved config is written next to the results as ``config.yaml``; resuming a folder with
a config that differs in a resume key is refused, naming the keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from blocktune.core.errors import BlocktuneError
from blocktune.core.methods import (
    BASELINES,
    FIXED_CHOICES,
    PAIRED,
    PAIRED_PRIOR,
    RECIPES,
    cv_folds_of,
    label,
)
from blocktune.core.registry import (
    DATASET_NAMES,
    DEFAULT_FRACTIONS,
    DELIMITER_KINDS,
    HEADS,
    LOGGERS,
    RULES,
    STRATEGIES,
)


@dataclass
class TrainConfig:
    """Optimisation settings. The defaults are the tool's fast CPU settings; see :data:`PAPER`."""

    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3  # for the new head; pretrained layers get lr * body_lr_scale
    body_lr_scale: float = 0.1  # pretrained weights move gently: a 1e-3 Adam step wrecks BN nets
    weight_decay: float = 0.0
    patience: int = 3  # early stop after this many epochs without a better val accuracy
    plateau_patience: int = 1  # ReduceLROnPlateau on val accuracy
    plateau_factor: float = 0.3
    seed: int = 0
    channels_last: bool = True  # memory layout of the trained net and its input batches

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")


# The full paper's settings: Adam, batch 4, 50 epochs, ReduceLROnPlateau on val accuracy. The
# learning rate is lost from its text; 1e-4 is the usual Keras fine-tuning rate, used for all
# layers alike as Keras does. No early stopping in the paper: patience = epochs.
PAPER = TrainConfig(epochs=50, batch_size=4, lr=1e-4, body_lr_scale=1.0, patience=50,
                    plateau_patience=3, plateau_factor=0.2)



def parse_device(preference: str = "auto") -> torch.device | None:
    """A device name checked for what it says (None for ``auto``), not for its presence."""
    if preference == "auto":
        return None
    try:
        device = torch.device(preference)
    except RuntimeError as error:
        raise BlocktuneError(f"unknown device {preference!r}: use auto, cpu, cuda, cuda:N "
                             "or mps") from error
    if device.type not in ("cpu", "cuda", "mps"):
        raise BlocktuneError(f"device {preference!r} is not supported: use auto, cpu, cuda, "
                             "cuda:N or mps")
    return device



# PROTOCOL-sizes.md's answer (docs/results.md, benchmarks/results/sizes): at 1,000 learning
# images no choice procedure had a lower regret than every fixed recipe under the correction
# fixed in advance, so the fixed recipe with the lowest mean regret, LP-FT, is handed over;
# criterion 3 carries it to full size unless a fixed recipe beat it there, in which case that
# recipe is handed over above SWITCH_PER_CLASS learning images per class.
DEFAULT_METHOD = "lp-ft"
# --choose-on with the auto keys: the five finals PROTOCOL-choose-on.md chose among on the
# deployment images (both baselines, each strategy's pick, LP-FT, LP-BW), by val there
CHOOSE_ON_METHODS = ("lp-ft", "lp-bw")
SWITCH_PER_CLASS: float | None = None
LARGER_METHOD: str | None = None


def default_method(per_class: float) -> str:
    """The method the protocol hands over for a run learning from ``per_class`` images per
    class."""
    if SWITCH_PER_CLASS is not None and LARGER_METHOD is not None and per_class > SWITCH_PER_CLASS:
        return LARGER_METHOD
    return DEFAULT_METHOD


def opt(default=dataclasses.MISSING, help: str = "", *, factory=None, resume: bool = False,
        choices=None, low: float | None = None, above: float | None = None,
        high: float | None = None, auto: bool = False):
    """A config field: ``help`` for the flag, ``choices`` (a tuple, or a callable returning
    one: registries fill up on import), ``low``/``above`` the smallest value allowed
    (inclusive/exclusive), ``high`` the largest (every number gets one the code can honour),
    ``resume`` when a change makes earlier results meaningless, ``auto`` when unset (None,
    given as ``auto``) means "decided by the data" (:meth:`RunConfig.for_data`)."""
    metadata = {"help": help, "resume": resume, "choices": choices, "low": low, "above": above,
                "high": high, "auto": auto}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    model: str = opt("tf_efficientnet_lite0", "timm model name: arch, arch.tag, hf-hub:org/name, "
                     "local-dir:PATH", resume=True)
    data: str = opt("tf_flowers", "image folder with one sub-folder per class, or "
                    + ", ".join(DATASET_NAMES), resume=True)
    strategies: list[str] = opt(factory=lambda: ["block"], help="strategies to search, in order",
                                resume=True, choices=lambda: tuple(STRATEGIES))
    seeds: list[int] = opt(factory=lambda: [0], help="seeds, e.g. 0,1,2 (one split each)", low=0,
                           high=2**32 - 1)
    head: str = opt("linear", "the new head on the pretrained body", resume=True, choices=HEADS)
    image_size: int = opt(160, "side of the square input images, in pixels", resume=True, low=16,
                          high=4096)
    weights: str | None = opt(None, "state dict or safetensors file for the model", resume=True)
    pretrained: bool = opt(True, "pretrained weights (packaged, hub or --weights); "
                           "--no-pretrained: random", resume=True)
    fractions: dict[str, float] = opt(factory=lambda: dict(DEFAULT_FRACTIONS),
                                      help="split fractions, e.g. search=0.1,val=0.1,train=0.6,"
                                      "test=0.2", resume=True, above=0)
    max_images_per_class: int | None = opt(None, "subsample each class (seeded) before splitting",
                                           resume=True, low=1, high=10**8)
    learn_images: int | None = opt(None, "learn from this many images (search, val and train in "
                                   "the fractions' proportions, stratified and seeded) and test "
                                   "on all the others: small-data runs with a large test split",
                                   resume=True, low=3, high=10**8)
    split: str = opt("random", "random (stratified and seeded, in the fractions) or official "
                     "(the dataset's own train/val/test, the search split drawn from its "
                     "train: flowers102)", resume=True, choices=("random", "official"))
    test_data: list[str] = opt(factory=list, help="extra test folders with the data's class "
                               "names (another camera, site or style), scored once by every "
                               "final like test and never read by a choice", resume=True)
    choose_on: str | None = opt(None, "labelled images from where the model will be used (a "
                                "folder with the data's class names): split in half, "
                                "stratified and seeded; one half chooses the recommendation "
                                "instead of val, the other is reported as that domain's test",
                                resume=True)
    epochs: int = opt(5, "epochs per search candidate", resume=True, low=1, high=10_000)
    final_epochs: int = opt(5, "epochs of the final fine-tunes", resume=True, low=1, high=10_000)
    batch_size: int = opt(32, "images per training step (at least 2: BatchNorm cannot train "
                          "on one image)", resume=True, low=2, high=65_536)
    # float32 holds any lr up to 1e38: a rate that diverges fails its trials, nothing crashes
    lr: float = opt(1e-3, "learning rate of the new head", resume=True, above=0, high=1e38)
    body_lr_scale: float = opt(0.1, "pretrained layers learn at lr × this", resume=True, low=0,
                               high=1000.0)
    patience: int = opt(3, "early stop after this many epochs without a better val accuracy",
                        resume=True, low=1, high=10_000)
    paper_settings: bool = opt(False, "the paper's Adam, batch 4, 50 epochs, lr 1e-4, [0,1] "
                               "scaling (sets epochs, final_epochs, batch_size, lr)", resume=True)
    delimiters: list[str] = opt(factory=lambda: ["pool", "activation"],
                                help="what separates blocks", resume=True,
                                choices=DELIMITER_KINDS)
    window: int = opt(3, "window strategy: layers per window", resume=True, low=1, high=10_000)
    stride: int = opt(1, "window strategy: layers between window starts", resume=True, low=1,
                      high=10_000)
    ranked_k: list[int] = opt(factory=lambda: [3, 5], help="ranked strategy: top-k layers",
                              resume=True, low=1, high=10_000)
    random_k: int = opt(3, "random strategy: layers drawn", resume=True, low=1, high=10_000)
    native: str = opt("fine", "native strategy: timm's fine or coarse groups", resume=True,
                      choices=("fine", "coarse"))
    quarter: bool = opt(False, "search only the last quarter of the layers", resume=True)
    prune: bool = opt(False, "successive halving: rungs at grace, 3·grace, 9·grace … epochs, "
                      "capped at epochs; the best third go on", resume=True)
    prune_grace: int = opt(1, "epochs of the first rung of --prune (Ray Tune's grace_period)",
                           resume=True, low=1, high=10_000)
    max_candidates: int | None = opt(None, "per strategy, from the output end", low=1, high=10**6)
    time_budget: float | None = opt(None, "seconds of search per seed; candidates not started "
                                    "in time are left for a resume (0: plan only)", low=0,
                                    high=10**9)
    baselines: bool = opt(True, "train Baseline I (head only) and II (all layers) in the search "
                          "and the finals", resume=True)
    search_baseline_ii: bool | None = opt(
        None, "train Baseline II in the search as well, the search plots' reference line "
        "(auto, the default: no; no choice reads that row, and it costs about a sixth of a full "
        "fine-tune; its final is trained either way)", auto=True)
    select: str = opt("last-quarter", "selection rule: which candidate of each strategy is "
                      "fine-tuned (val only; see docs/method.md)",
                      choices=lambda: tuple(RULES))
    score_on: str = opt("val", "what a searched candidate is scored on: val, or val+train "
                        "(its kept weights also scored on the train split, which the search "
                        "never trains on: forward only, several times the images)",
                        resume=True, choices=("val", "val+train"))
    methods: list[str] | None = opt(None, help="recipes fine-tuned as finals beside the "
                                    "baselines and each strategy's pick: lp-ft (head first, "
                                    "then all layers), llrd (all layers, layer-wise "
                                    "learning-rate decay), lp-bw (head first, then the first "
                                    "strategy's pick), norms (norm layers' scale and shift and "
                                    "every bias); '' for none; auto (the default): the method "
                                    "the pre-registered protocol hands over (lp-ft; "
                                    "docs/results.md)", resume=True, choices=lambda: RECIPES,
                                    auto=True)
    pick_finals: bool | None = opt(None, "fine-tune each strategy's pick as a final of its own "
                                   "(auto, the default: only when the choice reads the finals' "
                                   "val accuracies and LP-BW, which trains the pick, is not a "
                                   "method)", resume=True, auto=True)
    choose_by: str | None = opt(
        None, "how the recommendation is chosen among the finals: val (best final val "
        "accuracy), paired (LP-BW unless another final is right on more of the same val images, "
        "one-sided sign test p <= 0.10), cvK, e.g. cv5 (each final's recipe trained on K-1 "
        "folds of the learning images and scored on the held-out fold; best pooled out-of-fold "
        "accuracy; costs about K times the finals), or a method to hand over always (lp-ft, "
        "lp-bw, baseline-II, …; the baselines are still trained for the verdicts); auto (the "
        "default): the method the pre-registered protocol hands over (lp-ft) when it is a "
        "final, else val; with choose_on, val on its choosing part", resume=True, auto=True)
    layer_decay: float = opt(0.75, "llrd: each of the model's groups (timm's blocks) learns at "
                             "this times the rate of the group above it (1: one rate, as "
                             "Baseline II)", resume=True, above=0, high=10.0)
    search_all: bool = opt(False, "train every candidate, also those the selection rule can "
                           "never pick (by default a rule that picks from part of the model, "
                           "like last-quarter, has only that part searched)")
    cache: bool = opt(True, "frozen-prefix activation cache (--no-cache: run the whole "
                      "network every batch; its numerics differ in the 4th digit)", resume=True)
    cache_dtype: str = opt("float16", "dtype of cached activations", resume=True,
                           choices=("float16", "bfloat16", "float32"))
    cache_max_gb: float = opt(4.0, "memory for cached activations before they spill to disk",
                              low=0, high=10**6)
    fold_norms: bool = opt(True, "fold frozen BatchNorms into frozen convolutions while "
                           "training", resume=True)
    keep_freed_memory: bool = opt(True, "CPU: let malloc reuse freed activations instead of "
                                  "unmapping them (faster steps, same results)")
    augment: bool = opt(False, "random flips (turns the activation cache off)", resume=True)
    strict: bool = opt(False, "refuse unreadable images (instead of skipping them) and exact "
                       "duplicates across the splits (instead of warning)")
    executor: str = opt("local", "local (one process) or ray (Ray Tune trials on a local or "
                        "running cluster), or any registered executor; the name is looked up "
                        "when the run starts, as timm's create_model looks up a model")
    trial_resources: str = opt("cpu=1", "--executor ray: resources of one trial, e.g. "
                               "cpu=1,gpu=0.25")
    ray_address: str | None = opt(None, "--executor ray: address of a running cluster (auto, "
                                  "HOST:PORT or ray://HOST:PORT); default a local Ray")
    device: str = opt("auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps")
    log: list[str] = opt(factory=list, help="loggers besides the CSVs: tensorboard (one run per "
                         "candidate and per final, under RUN/tensorboard)", choices=LOGGERS)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, convert(f, hints[f.name], getattr(self, f.name)))
        if "ranked" in self.strategies and "layer" not in self.strategies:
            self.strategies.insert(self.strategies.index("ranked"), "layer")
        if "ranked" in self.strategies:  # ranked is built from the layer results: after them
            self.strategies.remove("ranked")
            self.strategies.insert(self.strategies.index("layer") + 1, "ranked")
        if not self.seeds:
            raise BlocktuneError("seeds = []: give at least one seed, e.g. --seeds 0,1,2")
        if not self.strategies:
            raise BlocktuneError("strategies = []: give at least one, e.g. --strategies block")
        if set(self.fractions) != set(DEFAULT_FRACTIONS) or abs(sum(self.fractions.values())
                                                                 - 1) > 1e-6:
            raise BlocktuneError(f"fractions = {self.fractions}: give search, val, train and "
                                 "test, summing to 1")
        if self.split == "official" and self.learn_images is not None:
            raise BlocktuneError("split = official and learn_images both fix the images learnt "
                                 "from: give one of the two")
        if self.paper_settings:
            self._paper_settings()
        if not re.fullmatch(r"cpu=\d+(\.\d+)?(,gpu=\d+(\.\d+)?)?|gpu=\d+(\.\d+)?",
                            self.trial_resources):
            raise BlocktuneError(f"trial_resources = {self.trial_resources!r}: give cpu=N and/or "
                                 "gpu=F, e.g. cpu=1,gpu=0.25")
        if self.ray_address is not None and not re.fullmatch(
                r"auto|local|(ray://)?[\w.\-]+:\d+", self.ray_address):
            raise BlocktuneError(f"ray_address = {self.ray_address!r}: give auto, HOST:PORT or "
                                 "ray://HOST:PORT")
        parse_device(self.device)  # a name torch does not know; its presence: below
        if self.choose_by is not None:
            cv_folds_of(self.choose_by)  # val, paired, cvK or a method
        if self.choose_on is not None and self.choose_by is not None \
                and cv_folds_of(self.choose_by) is not None:
            raise BlocktuneError(f"choose_on and choose_by = {self.choose_by} both say what "
                                 "chooses: cross-validation reads the learning images, "
                                 "--choose-on the deployment domain's; give one of the two")
        if not self.baselines and self.pick_finals is False and self.methods == []:
            raise BlocktuneError("baselines, pick_finals and methods all off: this run would "
                                 "fine-tune no final and hand over nothing; keep one (e.g. "
                                 "--methods lp-ft)")
        if self.split == "official" and self.max_images_per_class:
            raise BlocktuneError("split = official fixes which images are learnt from and "
                                 "tested on; max_images_per_class would drop some of them: give "
                                 "one of the two")
        if self.score_on != "val" and RULES[self.select].reads_loss:
            raise BlocktuneError(f"select = {self.select} reads the val loss, which score_on = "
                                 f"{self.score_on} does not pool (every rule reads one score): "
                                 "choose another rule, e.g. max-val or smooth, or score on val")

    def for_data(self, learning_images: int, classes: int = 1) -> RunConfig:
        """This config with its ``auto`` keys decided for a run that learns from
        ``learning_images`` images (search + val + train) of ``classes`` classes: the method
        the pre-registered protocol hands over (:func:`default_method`), trained beside both
        baselines, and handed over."""
        method = default_method(learning_images / max(classes, 1))
        auto_on_target = self.choose_on is not None and self.choose_by is None  # --choose-on
        if self.methods is not None:
            methods = self.methods
        elif self.choose_by in FIXED_CHOICES and self.choose_by not in BASELINES:
            methods = [self.choose_by]  # --choose-by METHOD alone trains that method
        elif self.choose_by == PAIRED:
            methods = [PAIRED_PRIOR]  # --choose-by paired alone trains the prior it keeps
        elif auto_on_target:
            methods = list(CHOOSE_ON_METHODS)  # the finals PROTOCOL-choose-on.md chose among
        else:
            methods = [] if method in BASELINES else [method]
        trained = [*(BASELINES if self.baselines else ()), *methods]
        if self.choose_by is not None:
            choose_by = self.choose_by
        elif auto_on_target:  # the deployment images choose: by val there
            choose_by = "val"
        else:
            choose_by = method if method in trained else "val"
        fixed = choose_by in FIXED_CHOICES
        if self.pick_finals is not None:
            pick_finals = self.pick_finals
        elif auto_on_target and self.methods is None:
            pick_finals = True  # the last-quarter pick a final of its own, as measured
        else:
            pick_finals = not fixed and "lp-bw" not in methods
        searched = self.search_baseline_ii if self.search_baseline_ii is not None else False
        if fixed and choose_by not in trained:
            raise BlocktuneError(f"choose_by = {choose_by} hands over a final this run does "
                                 f"not train (its finals: {', '.join(trained) or 'none'}): add "
                                 f"it to --methods, or choose by val")
        return dataclasses.replace(self, methods=list(methods), pick_finals=pick_finals,
                                   search_baseline_ii=searched, choose_by=choose_by)

    def _paper_settings(self) -> None:
        """The paper's optimiser settings, recorded as the values used (not silently
        overriding others): a value given that differs from the paper's is refused."""
        paper = {"epochs": PAPER.epochs, "final_epochs": PAPER.epochs,
                 "batch_size": PAPER.batch_size, "lr": PAPER.lr}
        default = {f.name: f.default for f in dataclasses.fields(self)}
        for key, value in paper.items():
            given = getattr(self, key)
            if given not in (value, default[key]):
                raise BlocktuneError(f"{key} = {given} conflicts with paper_settings, which "
                                     f"trains with {key} = {value}: drop one of the two")
            setattr(self, key, value)

    def search_training(self, seed: int = 0) -> TrainConfig:
        return self._training(self.epochs, seed)

    def final_training(self, seed: int = 0) -> TrainConfig:
        return self._training(self.final_epochs, seed)

    def _training(self, epochs: int, seed: int) -> TrainConfig:
        """The seed orders the batches too, so that seeds vary everything they can."""
        if self.paper_settings:
            return dataclasses.replace(PAPER, epochs=epochs, seed=seed)
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr,
                           body_lr_scale=self.body_lr_scale, patience=self.patience, seed=seed)

    def adopt(self, saved: dict) -> RunConfig:
        """Resuming a folder: each ``auto`` key left unset here takes the value the folder was
        started with when that was a value, not ``auto`` (a folder written before the key became
        automatic resumes as it started, rather than being refused for a changed default)."""
        hints = typing.get_type_hints(type(self))
        changes = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("auto") and getattr(self, f.name) is None \
                    and saved.get(f.name, "auto") not in ("auto", None):
                changes[f.name] = convert(f, hints[f.name], saved[f.name])
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict:
        """Plain values, as ``config.yaml`` holds them (an unset auto key as ``auto``)."""
        values = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("auto") and values[f.name] is None:
                values[f.name] = "auto"
        return values

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


class DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKey(f"key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """The keys of a YAML config file (validated when they become a RunConfig)."""
    try:
        values = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        detail = f": {error}" if isinstance(error, DuplicateKey) else ""
        raise BlocktuneError(f"cannot read config {path} ({type(error).__name__}{detail}): pass "
                             "a UTF-8 YAML file of RunConfig keys, each once") from error
    if not isinstance(values, dict):
        raise BlocktuneError(f"config {path} is not a mapping of RunConfig keys to values")
    return values


def resume_keys() -> list[str]:
    """Keys whose change makes earlier results meaningless for a run folder."""
    return [f.name for f in dataclasses.fields(RunConfig) if f.metadata["resume"]]


def differing_keys(saved: dict, current: RunConfig) -> list[str]:
    """Result-changing keys whose values differ; a key the saved config predates counts as
    its default."""
    now, default = current.to_dict(), RunConfig().to_dict()
    return [k for k in resume_keys() if saved.get(k, default[k]) != now.get(k)]


# ---------------------------------------------------------------------------------------------
# conversion and checks, from text (flags) or typed values (YAML, Python)

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _choices(f: dataclasses.Field) -> tuple | None:
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def describe_type(hint) -> str:
    """A type in a user's words, for errors and help."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if _is_optional(hint):
        return describe_type(args[0])
    origin = typing.get_origin(hint)
    if origin is list:
        return "comma-separated " + {int: "whole numbers", float: "finite numbers"}.get(
            args[0], "names")
    if origin is dict:
        return "name=number pairs (finite numbers), comma-separated"
    return {bool: "true or false", int: "a whole number", float: "a finite number",
            str: "text"}[hint]


def _is_optional(hint) -> bool:
    return (typing.get_origin(hint) in (typing.Union, types.UnionType)
            and type(None) in typing.get_args(hint))


def _scalar(hint, value):
    """``value`` as ``hint`` (bool, int, float, str), from its own type or from text."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
    elif hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        # NaN passes every `v < low` check and inf is no setting: neither is a number here
        if number is not None and math.isfinite(number):
            return number
    elif hint is str and isinstance(value, str):
        return value
    raise ValueError


def convert(f: dataclasses.Field, hint, value):
    """Check and convert one key's value; one line naming the key, the value and what is
    allowed when it is wrong."""
    def wrong(allowed: str) -> BlocktuneError:
        return BlocktuneError(f"{f.name} = {value!r} is not allowed: {allowed}")

    if _is_optional(hint):
        unset = ("none", "null", "auto") if f.metadata.get("auto") else ("none", "null")
        if value is None or (isinstance(value, str) and value.lower() in unset):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    try:
        if origin is list:
            items = value.split(",") if isinstance(value, str) else value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                items = [value]  # seeds: 3 in a YAML file
            if not isinstance(items, list):
                raise ValueError
            converted = [_scalar(typing.get_args(hint)[0], v.strip() if isinstance(v, str)
                                 else v) for v in items if v != ""]
        elif origin is dict:
            pairs = value
            if isinstance(value, str):
                pairs = dict(item.split("=", 1) for item in value.split(",") if item)
            if not isinstance(pairs, dict):
                raise ValueError
            converted = {str(k).strip(): _scalar(typing.get_args(hint)[1], v)
                         for k, v in pairs.items()}
        else:
            converted = _scalar(hint, value)
    except (ValueError, TypeError):
        raise wrong(describe_type(hint)) from None
    values = converted if isinstance(converted, list) else (
        list(converted.values()) if isinstance(converted, dict) else [converted])
    if isinstance(converted, list):
        twice = next((v for i, v in enumerate(converted) if v in converted[:i]), None)
        if twice is not None:  # run once and counted twice (seeds), or trained twice
            what = f"seed {twice}" if f.name == "seeds" else repr(twice)
            raise BlocktuneError(f"{f.name} = {converted}: {what} is given twice; give each "
                                 "once")
    choices = _choices(f)
    if choices is not None:
        bad = [v for v in values if v not in choices]
        if bad:
            raise wrong(f"unknown {bad[0]!r}; choose from {', '.join(map(str, choices))}")
    low, above, high = f.metadata.get("low"), f.metadata.get("above"), f.metadata.get("high")
    named = converted.items() if isinstance(converted, dict) else [(None, v) for v in values]
    for key, v in named:
        if (low is not None and v < low) or (above is not None and v <= above) or (
                high is not None and v > high):
            bound = (f"at most {high}" if high is not None and v > high else
                     f"at least {low}" if low is not None else f"greater than {above}")
            which = f"{f.name} = {v}" if key is None else f"{f.name} = {converted}: {key} = {v}"
            raise BlocktuneError(f"{which} is out of range: it must be {bound}")
    return converted


def field_help(f: dataclasses.Field) -> str:
    """A field's help with its default and allowed values, for ``--help``."""
    text = f.metadata.get("help", "")
    choices = _choices(f)
    if choices:
        text += f" [{', '.join(map(str, choices))}]"
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default not in (None, [], {}) and not isinstance(default, bool):
        shown = ",".join(map(str, default)) if isinstance(default, list) else (
            ",".join(f"{k}={v}" for k, v in default.items()) if isinstance(default, dict)
            else default)
        text += f" (default {shown})"
    return text


def auto_notice(given: RunConfig, decided: RunConfig, images: int, classes: int = 1) -> str:
    """What the ``auto`` keys became, and why: said once per run."""
    finals = ["Baseline I", "Baseline II"] if decided.baselines else []
    finals += ["each strategy's pick"] if decided.pick_finals else []
    finals += [label(m) for m in decided.methods]
    keys = [f"--{k.replace('_', '-')}" for k in ("methods", "choose_by", "pick_finals",
                                                 "search_baseline_ii")
            if getattr(given, k) is None]
    override = " and ".join([", ".join(keys[:-1]), keys[-1]] if len(keys) > 1 else keys)
    searched = "" if decided.search_baseline_ii or not decided.baselines else (
        "; Baseline II is not trained in the search, only as a final (no choice reads its "
        "search row)")
    by_protocol = given.choose_by is None
    handed = (f"{label(decided.choose_by)} is handed over whatever the val accuracies"
              + (", as the pre-registered protocol chose (no choice procedure beat every fixed "
                 "recipe; docs/results.md)" if by_protocol else " (--choose-by)")
              if decided.choose_by in FIXED_CHOICES
              else f"the recommendation is chosen by `{decided.choose_by}`")
    return (f"{images:,} images of {classes} classes are learnt from "
            f"({images / max(classes, 1):.0f} per class): the finals are {', '.join(finals)}; "
            f"{handed}{searched}; {override} override")
