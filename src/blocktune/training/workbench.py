"""A workbench: one seed's model, walk, feeds and caches, and the one function that trains a trial.

Everything an executor needs to run a trial anywhere: the driver builds one for the seed, and
so does every Ray worker (from the same config, the images and the split, with the activation
cache handed over through Ray's object store instead of being computed again).
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.methods import PROBED
from blocktune.core.trials import FinalTrial, Trial
from blocktune.data import DecodedImages, TestDomain
from blocktune.data.splits import LEARNING_SPLITS
from blocktune.models.build import BlockModel, build_model
from blocktune.models.fold import foldable_pairs, folded
from blocktune.models.layers import ModelWalk, walk
from blocktune.training.cache import ActivationCache, CachedFeed, ImageFeed, to_model_layout
from blocktune.training.train import (
    TrainResult,
    device_for,
    evaluate,
    evaluate_split,
    keep_freed_memory,
    train_group,
)

SEARCH_COVER = ("search", "val")
POOLED_COVER = LEARNING_SPLITS  # --score-on val+train
FINAL_COVER = ("search", "train", "val", "test")


@dataclass
class FinalOutcome:
    result: TrainResult
    test_acc: float
    test_pred: list[int]
    state: dict[str, torch.Tensor] | None  # the fine-tuned model's weights (None if failed)
    # --test-data: per folder name, {"acc": accuracy, "pred": per-image predictions}
    domains: dict[str, dict] = field(default_factory=dict)
    test_loss: float = math.nan


def cv_fold_name(fold: int) -> str:
    return f"cv{fold}"


def cv_folds(split: Mapping[str, Sequence[int]], labels: Sequence[int], folds: int, seed: int
             ) -> dict[str, list[int]]:
    """``folds`` stratified, seeded folds of the learning images (search, val and train):
    ``{"cv0": [...], ...}`` indices into the data, each image in exactly one fold."""
    import numpy as np

    pool = sorted(i for name in LEARNING_SPLITS for i in split[name])
    if folds > len(pool):
        raise BlocktuneError(f"choose_by = cv{folds}: the run learns from {len(pool)} images "
                             f"and each of the {folds} folds needs at least one: choose at most "
                             f"cv{len(pool)}, e.g. cv5")
    generator = np.random.default_rng([seed, folds])
    out: dict[str, list[int]] = {cv_fold_name(k): [] for k in range(folds)}
    offset = 0
    for label in sorted({int(labels[i]) for i in pool}):
        members = generator.permutation([i for i in pool if int(labels[i]) == label]).tolist()
        for position, index in enumerate(members):  # dealt round-robin, continuing across
            out[cv_fold_name((offset + position) % folds)].append(index)  # classes
        offset += len(members)
    return {name: sorted(indices) for name, indices in out.items()}


class Workbench:
    """The model of one seed on its device, its layer walk and its feeds."""

    def __init__(self, config: RunConfig, seed: int, images: DecodedImages,
                 split: Mapping[str, Sequence[int]], data_cfg, spill_dir: Path | None = None,
                 weights_file_state: tuple[dict, str] | None = None,
                 domains: Sequence[TestDomain] = ()):
        """``weights_file_state``: (state dict, source) of a ``--weights`` file read on
        another machine (a Ray worker gets the driver's, the file need not exist here).
        ``split`` may hold cross-validation folds (:func:`cv_folds`) beside the four splits.
        ``domains``: the ``--test-data`` folders every final is also scored on."""
        self.config, self.seed, self.images, self.split = config, seed, images, split
        self.domains = list(domains)
        self.data_cfg, self.spill_dir = data_cfg, spill_dir
        if config.keep_freed_memory:
            keep_freed_memory()
        torch.manual_seed(seed)  # random-weight bodies (--no-pretrained) are seeded too
        from_file = weights_file_state is not None
        self.model, self.weights_source = build_model(
            config.model, len(images.classes), config.head, config.image_size,
            weights=None if from_file else config.weights,
            pretrained=config.pretrained and not from_file, head_seed=seed)
        if from_file:
            self.model.load_state_dict(weights_file_state[0])
            self.weights_source = weights_file_state[1]
        self.model.to(memory_format=torch.channels_last)  # the cache pass and prefix too
        self.walk: ModelWalk = walk(self.model.body,
                                    input_size=(3, config.image_size, config.image_size))
        self.fold = foldable_pairs(self.model.body, self.walk) if config.fold_norms else []
        # The model lives on the run's device from here on: every candidate, the activation
        # cache's prefix pass and the finals train and run there.
        self.device = device_for(config.device)
        self.model.to(self.device)
        self.pristine = copy.deepcopy(self.model.state_dict())
        self.image_feed = ImageFeed(self.model.body, self.walk, images.pixels, images.labels,
                                    split, data_cfg.mean, data_cfg.std,
                                    augment=config.augment, seed=seed)
        self._caches: dict[tuple[str, ...], ActivationCache] = {}

    # -- feeds -------------------------------------------------------------------------
    def feed(self, cover: tuple[str, ...]):
        if not self.config.cache:
            return self.image_feed
        return CachedFeed(self.image_feed, self.cache(cover))

    def cache(self, cover: tuple[str, ...]) -> ActivationCache:
        if cover not in self._caches:
            # Only one cache lives at a time: the search's is dropped before the finals'.
            self._caches.clear()
            self._caches[cover] = ActivationCache(
                self.model.body, self.walk, self.images.pixels, self.images.labels, self.split,
                self.data_cfg.mean, self.data_cfg.std, cover=cover,
                dtype=self.config.cache_dtype, max_bytes=int(self.config.cache_max_gb * 2**30),
                spill_dir=self.spill_dir)
        return self._caches[cover]

    @property
    def search_cover(self) -> tuple[str, ...]:
        """The splits the search's feed holds: search and val, and train when it scores too."""
        return POOLED_COVER if self.config.score_on == "val+train" else SEARCH_COVER

    def prepare_cuts(self, groups: Sequence[tuple[int, ...] | None],
                     cover: tuple[str, ...] | None = None) -> None:
        """Compute the cache at the cuts these groups train from, in one pass."""
        feed = self.feed(cover or self.search_cover)
        if isinstance(feed, CachedFeed) and feed.cache is not None:
            self.reset()  # candidates train in place: the cache needs pretrained weights
            feed.cache.prepare_cuts([self.walk.cut_for(g) for g in groups if g is not None])

    def prepare_finals(self, trials: Sequence[FinalTrial]) -> None:
        """The cache at every cut these finals train from (a probed recipe's head too), in one
        pass over the images rather than one per final."""
        self.prepare_cuts([g for t in trials for g in t.groups], FINAL_COVER)

    def close(self) -> None:
        """Drop the activation caches, and their spill files."""
        self._caches.clear()
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)

    def reset(self, flip_state: torch.Tensor | None = None) -> BlockModel:
        self.model.load_state_dict(self.pristine)
        torch.manual_seed(self.seed)  # dropout in the head draws from the global generator
        self.image_feed.reseed(flip_state)  # --augment's flips: per trial, from the seed
        return self.model

    def layer_decay_scales(self, decay: float) -> dict[int, float]:
        """Layer-wise learning-rate decay: ``id(parameter)`` → ``decay ** d``, d the number of
        the model's groups between the parameter's and the output (timm's
        ``param_groups_layer_decay`` over its fine ``group_matcher``: lite0's stem, 16 blocks,
        head conv; a model without one: the ``block`` groups). Decay 1 is Baseline II's
        single rate; towards 0, only the groups near the output move."""
        from timm.optim import param_groups_layer_decay

        from blocktune.models.groups import StrategyOptions, _find_group_matcher, block_groups

        timm_model, _ = _find_group_matcher(self.model.body)
        if timm_model is not None:
            groups = param_groups_layer_decay(timm_model, weight_decay=0.0, layer_decay=decay)
            return {id(p): float(g["lr_scale"]) for g in groups for p in g["params"]}
        blocks = block_groups(self.walk, StrategyOptions())
        modules = dict(self.model.body.named_modules())
        scales = {}
        for depth, block in enumerate(sorted(blocks, key=lambda g: -max(g))):
            for index in block:
                for p in modules[self.walk.layers[index].name].parameters(recurse=False):
                    scales[id(p)] = decay ** depth
        return scales

    def norms_scales(self) -> dict[int, float]:
        """``norms``: every body parameter at the head's learning rate (× 1 / body_lr_scale;
        with body_lr_scale 0 the body stays still, as everywhere)."""
        scale = self.config.body_lr_scale
        factor = 1.0 / scale if scale > 0 else 1.0
        return {id(p): factor for p in self.model.body.parameters()}

    # -- training ----------------------------------------------------------------------
    def train(self, trial: Trial, checkpoint: dict | None = None,
              on_epoch: Callable | None = None, train_split: str = "search",
              val_split: str = "val") -> TrainResult:
        """Train a search trial from the pretrained weights (or ``checkpoint``, the state it
        paused with at the previous rung) until ``trial.epochs``; a result that stopped before
        the configured epochs carries the state to continue from (``result.checkpoint``)."""
        flips = checkpoint.get("flips") if checkpoint is not None else None
        feed = self.feed(self.search_cover)
        training = self.config.search_training(self.seed)
        result, net, cut = train_group(self.reset(flips), self.walk, trial.group, feed, training,
                                       train_split=train_split, val_split=val_split,
                                       on_epoch=on_epoch, checkpoint=checkpoint,
                                       stop_after=trial.epochs, fold=self.fold)
        if result.checkpoint is not None and self.image_feed.flips is not None:
            result.checkpoint["flips"] = self.image_feed.flip_state()  # a rung pauses them too
        if (self.config.score_on == "val+train" and train_split == "search"
                and result.status == "ok" and result.checkpoint is None):
            # the kept weights on images the search never trained on: forward only
            started = time.perf_counter()
            with folded(self.model.body, self.walk, self.fold, trial.group):
                accuracy, _, _ = evaluate_split(net, feed, cut, "train", training, self.device)
            result.pool_images = len(self.split["train"])
            result.pool_correct = round(accuracy * result.pool_images)
            result.pool_seconds = time.perf_counter() - started
        return result

    def fit_final(self, group: tuple[int, ...] | None, on_epoch: Callable | None = None,
                  recipe: str | None = None, fold: int | None = None,
                  all_learning: bool = False) -> FinalOutcome:
        """Train ``group`` from the pretrained weights on search+train (val for the schedule,
        early stopping and the kept weights), then score it once on test and on every test
        domain.

        ``recipe``: ``lp-ft`` and ``lp-bw`` train the head alone first (a linear probe,
        exactly Baseline I's final) and then ``group`` from there, with a fresh optimizer and
        schedule; their curves and seconds are both stages'. ``llrd`` trains ``group`` with
        layer-wise learning-rate decay (:meth:`layer_decay_scales`); ``norms`` trains only the
        normalisation parameters and biases of ``group`` (and the head), at the head's rate.

        ``fold``: a cross-validation fold instead of the final: trained the same way on the
        other folds, with the held-out fold as val; nothing is tested and no weights are kept
        (its score is ``result.best_val_acc`` and ``result.val_pred`` on the held-out fold).

        ``all_learning``: trained on every learning image (search, val and train; nothing held
        out, so the configured epochs at a constant rate, the last kept — see
        :func:`blocktune.training.train.fit`), then tested: the final of a cross-validated choice."""
        train_split: tuple[str, ...]
        val_split: str | None
        if all_learning:
            train_split, val_split = LEARNING_SPLITS, None
        elif fold is None:
            train_split, val_split = ("search", "train"), "val"
        else:
            folds = sorted(k for k in self.split if k.startswith("cv"))
            val_split = cv_fold_name(fold)
            train_split = tuple(k for k in folds if k != val_split)
        feed = self.feed(FINAL_COVER)
        model = self.reset()
        training = self.config.final_training(self.seed)
        probe = None
        if recipe in PROBED:
            probe, _, _ = train_group(model, self.walk, (), feed, training,
                                      train_split=train_split, val_split=val_split,
                                      on_epoch=on_epoch, fold=self.fold)
            if probe.status != "ok":
                return FinalOutcome(probe, math.nan, [], None)
        scales = self.layer_decay_scales(self.config.layer_decay) if recipe == "llrd" else None
        if recipe == "norms":  # few parameters (BitFit, TinyTL): they learn at the head's rate
            scales = self.norms_scales()
        result, net, cut = train_group(model, self.walk, group, feed, training,
                                       train_split=train_split, val_split=val_split,
                                       on_epoch=on_epoch, fold=self.fold, lr_scales=scales,
                                       parameters="norms" if recipe == "norms" else "all")
        if probe is not None:  # one record of both stages
            result.seconds += probe.seconds
            result.epochs += probe.epochs
            for name in ("val_curve", "loss_curve", "val_loss_curve"):
                setattr(result, name, getattr(probe, name) + getattr(result, name))
        if result.status != "ok":
            return FinalOutcome(result, math.nan, [], None)
        if fold is not None:
            return FinalOutcome(result, math.nan, [], None)
        # The one and only use of the test split: after every choice was made on val, through
        # the path val took (the frozen norms folded as in training, the same input layout)
        with folded(self.model.body, self.walk, self.fold, group):
            test_acc, test_loss, test_pred = evaluate_split(net, feed, cut, "test", training,
                                                            self.device)
        domains = self.score_domains(model)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return FinalOutcome(result, test_acc, test_pred.tolist(), state, domains, test_loss)

    def score_domains(self, model: BlockModel) -> dict[str, dict]:
        """The fine-tuned model on every ``--test-data`` folder, the whole network from the
        pixels (scored like test: after every choice, never read by one)."""
        if not self.domains:
            return {}
        pixels = self.image_feed.prepare(0, self.device)  # normalised as the data's images

        def prepare(batch: torch.Tensor) -> torch.Tensor:
            return to_model_layout(pixels(batch))

        out = {}
        for domain in self.domains:
            accuracy, _, pred = evaluate(model, domain.pixels, domain.labels, prepare,
                                         device=self.device)
            out[domain.name] = {"acc": accuracy, "pred": pred.tolist()}
        return out
