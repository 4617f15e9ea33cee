"""The protocol of METHOD.md: split, search the candidates, fine-tune the best, test once.

Everything a run finishes is on disk the moment it finishes, written atomically:

    RUN/config.yaml, environment.json        what was asked, and with which versions
    RUN/seed_<s>/splits.json                 the split, reused on resume
    RUN/seed_<s>/candidates.csv              one row per finished search candidate (with its
                                             val accuracy after every epoch)
    RUN/seed_<s>/finals.csv                  one row per method: val and test accuracy
    RUN/seed_<s>/<method>.safetensors        the fine-tuned models
    RUN/summary.csv                          mean and std over seeds per method

Running the same command on the same folder skips what is finished and gives the same tables.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from blocktune import __version__
from blocktune.cache import ActivationCache, CachedFeed, ImageFeed
from blocktune.config import RunConfig, differing_keys
from blocktune.data import (
    DecodedImages,
    decode_folder,
    load_or_make_split,
    resolve_data,
    scan_folder,
)
from blocktune.errors import BlocktuneError
from blocktune.fold import foldable_pairs
from blocktune.groups import Candidate, StrategyOptions, candidates, describe
from blocktune.io import (
    RunLock,
    atomic_copy,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_yaml,
    predictions_text,
    read_csv,
)
from blocktune.layers import ModelWalk, walk
from blocktune.models import BlockModel, build_model, check_model_name, data_config
from blocktune.select import SearchView, get_rule, pick
from blocktune.train import TrainResult, device_for, evaluate, keep_freed_memory, train_group

log = logging.getLogger(__name__)

CANDIDATE_FIELDS = ["strategy", "rung", "index", "layers", "layer_indices", "first", "last",
                    "trained_params", "val_acc", "val_loss", "epochs", "best_epoch", "seconds",
                    "status", "error", "val_curve", "same_as", "val_pred"]
FINAL_FIELDS = ["method", "group", "layer_indices", "trained_params", "search_val_acc",
                "val_acc", "test_acc", "epochs", "seconds", "status", "same_as", "select",
                "val_pred", "test_pred"]
BASELINE_I, BASELINE_II = "baseline-I", "baseline-II"
BASELINES = (BASELINE_I, BASELINE_II)
PRUNE_ETA = 3  # successive halving keeps the best third after each rung
LABELS = {BASELINE_I: "Baseline I", BASELINE_II: "Baseline II", "layer": "LW", "block": "BW",
          "window": "BWSW", "ranked-3": "BWT3", "ranked-5": "BWT5", "native": "Native",
          "random": "Random", "quarter": "Quarter"}


def label(method: str) -> str:
    if method.startswith("ranked-") and method not in LABELS:
        return f"BWT{method.split('-')[1]}"
    return LABELS.get(method, method)


@dataclass
class Events:
    """Hooks for progress display; the library itself prints nothing."""

    on_candidate_start: Callable[[str, int, int], None] = lambda strategy, i, n: None
    on_candidate_end: Callable[[dict, float], None] = lambda row, best: None
    on_epoch: Callable[[int, float, float, float], None] = lambda e, loss, acc, s: None
    on_phase: Callable[[str], None] = lambda text: None
    # a finding the user must see, one line (e.g. no candidate beat Baseline I on val)
    on_notice: Callable[[str], None] = lambda text: None


def environment() -> dict:
    import timm

    return {"blocktune": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else False,
            "threads": torch.get_num_threads()}


def check_resume(folder: Path, config: RunConfig, force_new: bool = False) -> None:
    """Refuse to resume a folder started with a config that changes results, naming the keys."""
    saved_path = folder / "config.yaml"
    if saved_path.exists() and not force_new:
        import yaml

        saved = yaml.safe_load(saved_path.read_text()) or {}
        keys = differing_keys(saved, config)
        if keys:
            raise BlocktuneError(
                f"run folder {folder} was started with a different {', '.join(keys)}: use "
                "another --out folder, or --force-new to start it over")


def write_config(folder: Path, config: RunConfig) -> None:
    """Record what was asked (and with which versions), once the inputs proved valid."""
    atomic_write_yaml(folder / "config.yaml", config.to_dict())
    atomic_write_json(folder / "environment.json", environment())


def clear_results(folder: Path) -> None:
    """``--force-new``: forget the finished work of an earlier run in this folder."""
    for stale in [*folder.glob("seed_*/*.csv"), *folder.glob("seed_*/splits.json"),
                  *folder.glob("seed_*/rungs/*.pt"),
                  folder / "metrics.csv", folder / "splits.json", folder / "summary.csv"]:
        stale.unlink(missing_ok=True)


def load_images(config: RunConfig) -> tuple[DecodedImages, object]:
    """Decode the data once for all seeds; return (images, data config of the model)."""
    check_model_name(config.model)
    folder = scan_folder(resolve_data(config.data))
    cfg = data_config(config.model, config.paper_settings)
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
                         images.labels[index], images.classes, images.corrupt)


class SeedRun:
    """One seed of the protocol on one run folder."""

    def __init__(self, config: RunConfig, seed: int, folder: Path, images: DecodedImages,
                 data_cfg, events: Events | None = None):
        self.config, self.seed, self.folder, self.images = config, seed, folder, images
        self.data_cfg = data_cfg
        self.events = events or Events()
        if config.keep_freed_memory:
            keep_freed_memory()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.split = load_or_make_split(folder / "splits.json", images, config.fractions, seed)
        torch.manual_seed(seed)  # random-weight bodies (--no-pretrained) are seeded too
        self.model, self.weights_source = build_model(
            config.model, len(images.classes), config.head, config.image_size,
            weights=config.weights, pretrained=config.pretrained, head_seed=seed)
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
                                    self.split, data_cfg.mean, data_cfg.std,
                                    augment=config.augment, seed=seed)
        self._caches: dict[tuple[str, ...], ActivationCache] = {}

    # -- feeds -------------------------------------------------------------------------
    def feed(self, cover: tuple[str, ...]):
        if not self.config.cache:
            return self.image_feed
        if cover not in self._caches:
            # Only one cache lives at a time: the search's is dropped before the finals'.
            self._caches.clear()
            self._caches[cover] = ActivationCache(
                self.model.body, self.walk, self.images.pixels, self.images.labels, self.split,
                self.data_cfg.mean, self.data_cfg.std, cover=cover,
                dtype=self.config.cache_dtype, max_bytes=int(self.config.cache_max_gb * 2**30),
                spill_dir=self.folder / "cache")
        return CachedFeed(self.image_feed, self._caches[cover])

    def close(self) -> None:
        """Drop the activation caches, and their spill files once the seed is finished."""
        self._caches.clear()
        shutil.rmtree(self.folder / "cache", ignore_errors=True)

    def reset(self) -> BlockModel:
        self.model.load_state_dict(self.pristine)
        torch.manual_seed(self.seed)  # dropout in the head draws from the global generator
        return self.model

    # -- search ------------------------------------------------------------------------
    def options(self, layer_scores=None, k=None) -> StrategyOptions:
        c = self.config
        return StrategyOptions(delimiters=tuple(c.delimiters), window=c.window, stride=c.stride,
                               k=k or c.random_k, seed=self.seed, native=c.native,
                               quarter=c.quarter, layer_scores=layer_scores or {},
                               model=self.model.body)

    def planned(self, strategy: str, rows: list[dict]) -> list[tuple[str, Candidate]]:
        """(method name, candidate) pairs of a strategy; ``ranked`` expands to one per k."""
        if strategy != "ranked":
            return [(strategy, c) for c in candidates(self.walk, strategy, self.options())]
        scores = {int(r["layer_indices"]): float(r["val_acc"]) for r in rows
                  if r["strategy"] == "layer" and r["status"] == "ok"}
        out = []
        for k in self.config.ranked_k:
            for c in candidates(self.walk, "ranked", self.options(scores, k)):
                out.append((f"ranked-{k}", Candidate(f"ranked-{k}", c.index, c.layers)))
        return out

    def search(self) -> tuple[list[dict], bool]:
        """Train every candidate not yet in ``candidates.csv``; returns (rows, complete).

        With ``prune``, a strategy's candidates climb rungs of :func:`rungs` epochs; after each
        rung only the best third (by val accuracy, ties to fewer parameters) goes on, and goes
        on from where it stopped: its training state is saved at the rung (``rungs/``), so a
        survivor's row is exactly the row an unpruned search gives it. Every rung's result is
        a row (``status`` ``rung``), so a resume picks up mid-rung; a lost rung state is
        recomputed from the pretrained weights, with the same result.

        A candidate whose group another strategy has already trained for as many epochs (the
        ``quarter`` candidates in a ``block`` search, a timm stage that is also a block) is
        not trained again: training depends only on the group, the seed and the data, so its
        row is that one's, with ``same_as`` naming it and no seconds of its own.
        """
        path = self.folder / "candidates.csv"
        rows = read_csv(path)
        done = {(r["strategy"], r["layer_indices"], r["rung"]): r for r in rows}
        feed = self.feed(("search", "val"))
        started = time.perf_counter()
        best = max((float(r["val_acc"]) for r in rows if r["strategy"] not in BASELINES),
                   default=0.0)
        epochs = self.config.search_training(self.seed).epochs
        ladder = rungs(epochs, grace=self.config.prune_grace) if self.config.prune else [epochs]
        if self.config.baselines and not self._search_baselines(rows, done, feed, epochs,
                                                                started):
            return rows, False
        for strategy in self.config.strategies:
            if strategy == "ranked" and not any(r["strategy"] == "layer" for r in rows):
                continue
            plan = self.planned(strategy, rows)
            if self.config.max_candidates is not None:
                plan = plan[:self.config.max_candidates]
            for rung_index, rung_epochs in enumerate(ladder):
                final = rung_index == len(ladder) - 1
                todo = [(m, c) for m, c in plan
                        if (m, _indices(c.layers), str(rung_epochs)) not in done]
                if todo and isinstance(feed, CachedFeed) and feed.cache is not None:
                    self.events.on_phase(f"caching activations at {len(todo)} cuts")
                    self.reset()  # candidates train in place: the cache needs pretrained weights
                    feed.cache.prepare_cuts([self.walk.cut_for(c.layers) for _, c in todo])
                for position, (method, cand) in enumerate(todo):
                    budget = self.config.time_budget
                    if budget is not None and time.perf_counter() - started > budget:
                        log.warning("time budget of %.0f s spent: %d candidates left for a "
                                    "resume", budget, len(todo) - position)
                        return rows, False
                    self.events.on_candidate_start(method, position, len(todo))
                    twin = _trained_twin(rows, _indices(cand.layers), rung_epochs)
                    if twin is not None:
                        row = {**twin, "strategy": method, "index": cand.index, "seconds": "0.00",
                               "same_as": f"{twin['strategy']} #{twin['index']}"}
                    else:
                        training = self.config.search_training(self.seed)
                        previous = self._rung_state(method, cand) if rung_index else None
                        result, _, _ = train_group(self.reset(), self.walk, cand.layers, feed,
                                                   training, on_epoch=self.events.on_epoch,
                                                   checkpoint=previous, stop_after=rung_epochs,
                                                   fold=self.fold)
                        if result.checkpoint is not None and not final:
                            self._save_rung_state(method, cand, result.checkpoint)
                        row = self._candidate_row(method, cand, result, rung_epochs, final)
                    rows.append(row)
                    done[(method, row["layer_indices"], str(rung_epochs))] = row
                    atomic_write_csv(path, rows, CANDIDATE_FIELDS)
                    if row["status"] == "ok":
                        best = max(best, float(row["val_acc"]))
                    self.events.on_candidate_end(row, best)
                if not final:
                    scored = [(done[(m, _indices(c.layers), str(rung_epochs))], (m, c))
                              for m, c in plan]
                    scored = [(r, mc) for r, mc in scored if r["status"] == "rung"]
                    scored.sort(key=lambda item: (-float(item[0]["val_acc"]),
                                                  int(item[0]["trained_params"])))
                    plan = [mc for _, mc in scored[:max(1, math.ceil(len(scored) / PRUNE_ETA))]]
        shutil.rmtree(self.folder / "rungs", ignore_errors=True)  # the pruned ones' states
        return rows, True

    def _search_baselines(self, rows: list[dict], done: dict, feed, epochs: int,
                          started: float) -> bool:
        """Baselines I and II trained and scored exactly like a candidate: the search's
        reference lines (no pruning: they always train every epoch). False when the time
        budget ran out first."""
        path = self.folder / "candidates.csv"
        todo = [(m, g) for m, g in ((BASELINE_I, ()), (BASELINE_II, None))
                if (m, _indices(g), str(epochs)) not in done]
        if todo and isinstance(feed, CachedFeed) and feed.cache is not None:
            self.reset()
            feed.cache.prepare_cuts([self.walk.cut_for(())])
        for position, (method, group) in enumerate(todo):
            budget = self.config.time_budget
            if budget is not None and time.perf_counter() - started > budget:
                log.warning("time budget of %.0f s spent before the baselines were searched",
                            budget)
                return False
            self.events.on_candidate_start(method, position, len(todo))
            result, _, _ = train_group(self.reset(), self.walk, group, feed,
                                       self.config.search_training(self.seed),
                                       on_epoch=self.events.on_epoch, fold=self.fold)
            row = self._row(method, 0, group, result, epochs, result.status)
            rows.append(row)
            done[(method, row["layer_indices"], str(epochs))] = row
            atomic_write_csv(path, rows, CANDIDATE_FIELDS)
            self.events.on_candidate_end(row, float(row["val_acc"]))
        return True

    def _rung_path(self, method: str, cand: Candidate) -> Path:
        digest = hashlib.sha1(_indices(cand.layers).encode()).hexdigest()[:12]
        return self.folder / "rungs" / f"{method}-{cand.layers[0] if cand.layers else 'head'}-{digest}.pt"

    def _save_rung_state(self, method: str, cand: Candidate, state: dict) -> None:
        path = self._rung_path(method, cand)
        path.parent.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def _rung_state(self, method: str, cand: Candidate) -> dict | None:
        """The training state a candidate paused with at the last rung, taken from disk."""
        path = self._rung_path(method, cand)
        if not path.exists():
            return None
        state = torch.load(path, map_location=self.device, weights_only=True)
        path.unlink()  # the row of the next rung replaces it
        return state

    def _candidate_row(self, method: str, cand: Candidate, result: TrainResult, rung: int,
                       final: bool = True) -> dict:
        status = result.status if final or result.status != "ok" else "rung"
        return self._row(method, cand.index, cand.layers, result, rung, status)

    def _row(self, method: str, index: int, group: tuple[int, ...] | None, result: TrainResult,
             rung: int, status: str) -> dict:
        return {"strategy": method, "rung": rung, "index": index,
                "layers": self.group_text(group), "layer_indices": _indices(group),
                "first": group[0] if group else "", "last": group[-1] if group else "",
                "trained_params": result.trainable_params,
                "val_acc": f"{result.best_val_acc:.6f}", "val_loss": f"{result.best_val_loss:.6f}",
                "epochs": result.epochs, "best_epoch": result.best_epoch,
                "seconds": f"{result.seconds:.2f}", "status": status,
                "error": result.error,
                "val_curve": " ".join(f"{acc:.6f}" for acc in result.val_curve),
                "val_pred": predictions_text(result.val_pred)}

    def group_text(self, group: tuple[int, ...] | None) -> str:
        if group is None:
            return "all layers"
        return describe(self.walk, group) if group else "head only"

    # -- selection ---------------------------------------------------------------------
    def view(self, rows: list[dict], method: str, refits: list[dict] | None = None) -> SearchView:
        """What a selection rule sees of one strategy's search (val only)."""
        val_labels = self.images.labels[torch.tensor(self.split["val"], dtype=torch.long)]
        refit_rows = {r["layer_indices"]: r for r in (refits or []) if r["strategy"] == method}
        return SearchView([r for r in rows if r["strategy"] == method and r["status"] == "ok"],
                          num_layers=len(self.walk.layers), val_labels=val_labels.numpy(),
                          refits=refit_rows)

    def refit(self, rows: list[dict], rules: list[str] | None = None) -> list[dict]:
        """Train the groups the selection rules ask for on the swapped fold (trained on val,
        scored on search), once each; rows go to ``refits.csv``. Returns every refit row."""
        path = self.folder / "refits.csv"
        refits = read_csv(path)
        have = {(r["strategy"], r["layer_indices"]) for r in refits}
        feed = None
        for method in _strategies(rows):
            view = self.view(rows, method, refits)
            wanted = dict.fromkeys(i for name in (rules or [self.config.select])
                                   for i in get_rule(name).refits(view))
            for indices in wanted:
                if (method, indices) in have:
                    continue
                feed = feed or self.feed(("search", "val"))
                row = next(r for r in view.rows if r["layer_indices"] == indices)
                group = _group(indices)
                self.events.on_phase(f"{label(method)}: {row['layers']} on the swapped fold")
                result, _, _ = train_group(self.reset(), self.walk, group, feed,
                                           self.config.search_training(self.seed),
                                           train_split="val", val_split="search",
                                           on_epoch=self.events.on_epoch, fold=self.fold)
                refits.append(self._row(method, int(row["index"]), group, result,
                                        result.epochs, result.status))
                have.add((method, indices))
                atomic_write_csv(path, refits, CANDIDATE_FIELDS)
        return refits

    def chosen(self, rows: list[dict], method: str, refits: list[dict] | None = None,
               rule: str | None = None) -> dict | None:
        """The row the selection rule picks for ``method``."""
        return pick(rule or self.config.select, self.view(rows, method, refits))

    def notices(self, rows: list[dict]) -> list[str]:
        return notices(self.seed, rows)

    # -- selection and final fine-tunes -------------------------------------------------
    def methods(self, rows: list[dict], refits: list[dict] | None = None
                ) -> list[tuple[str, tuple[int, ...] | None, float]]:
        """(method, group, search val acc): baselines, then each strategy's chosen group."""
        out: list[tuple[str, tuple[int, ...] | None, float]] = []
        if self.config.baselines:
            for method, group in ((BASELINE_I, ()), (BASELINE_II, None)):
                searched = next((r for r in rows if r["strategy"] == method
                                 and r["status"] == "ok"), None)
                out.append((method, group,
                            float(searched["val_acc"]) if searched else math.nan))
        for method in _strategies(rows):
            chosen = self.chosen(rows, method, refits)
            if chosen is not None:
                out.append((method, _group(chosen["layer_indices"]), float(chosen["val_acc"])))
        return out

    def fit_final(self, group: tuple[int, ...] | None, weights_path: Path | None, on_epoch,
                  feed=None) -> tuple[TrainResult, float, list[int]]:
        """Train ``group`` from the pretrained weights on search+train (val for the schedule,
        early stopping and the kept weights), then score it once on test and save it.

        Returns:
            (result, test accuracy, per-image test predictions in ``splits.json`` order).
        """
        feed = feed or self.feed(("search", "train", "val", "test"))
        model = self.reset()
        result, net, cut = train_group(model, self.walk, group, feed,
                                       self.config.final_training(self.seed),
                                       train_split=("search", "train"), on_epoch=on_epoch,
                                       fold=self.fold)
        if result.status != "ok":
            return result, math.nan, []
        # The one and only use of the test split: after every choice was made on val.
        test_x, test_y = feed.inputs(cut, "test")
        device = next(net.parameters()).device
        test_acc, _, test_pred = evaluate(net, test_x, test_y, feed.prepare(cut, device),
                                          device=device)
        if weights_path is not None:
            atomic_save_safetensors(weights_path, model.state_dict(), {"model": self.config.model})
        return result, test_acc, test_pred.tolist()

    def finals(self, rows: list[dict], refits: list[dict] | None = None) -> list[dict]:
        path = self.folder / "finals.csv"
        finished = read_csv(path)
        feed = self.feed(("search", "train", "val", "test"))
        for method, group, search_acc in self.methods(rows, refits):
            indices = "" if group is None else _indices(group)
            if any(r["method"] == method and r["layer_indices"] == indices for r in finished):
                continue
            # A resume with a larger budget (--max-candidates, --time-budget) can change a
            # strategy's choice: its earlier final no longer belongs to the table.
            finished = [r for r in finished if r["method"] != method]
            group_text = self.group_text(group)
            search_text = "" if math.isnan(search_acc) else f"{search_acc:.6f}"
            twin = self._final_twin(finished, group_text, indices)
            if twin is not None:  # another strategy chose the same group: same fine-tune
                atomic_copy(self.folder / f"{twin['method']}.safetensors",
                            self.folder / f"{method}.safetensors")
                finished.append({**twin, "method": method, "search_val_acc": search_text,
                                 "seconds": "0.00", "same_as": twin["method"],
                                 "select": self._rule_of(method)})
                atomic_write_csv(path, finished, FINAL_FIELDS)
                continue
            self.events.on_phase(f"final fine-tune: {label(method)}")
            result, test_acc, test_pred = self.fit_final(
                group, self.folder / f"{method}.safetensors", self.events.on_epoch, feed)
            finished.append({
                "method": method,
                "group": group_text,
                "layer_indices": indices,
                "trained_params": result.trainable_params,
                "search_val_acc": search_text,
                "val_acc": f"{result.best_val_acc:.6f}", "test_acc": f"{test_acc:.6f}",
                "epochs": result.epochs, "seconds": f"{result.seconds:.2f}",
                "status": result.status, "select": self._rule_of(method),
                "val_pred": predictions_text(result.val_pred),
                "test_pred": predictions_text(test_pred)})
            atomic_write_csv(path, finished, FINAL_FIELDS)
        return finished

    def _rule_of(self, method: str) -> str:
        return "" if method in BASELINES else self.config.select

    def _final_twin(self, finished: list[dict], group_text: str, indices: str) -> dict | None:
        """A finished final of the same group, trained (not copied), with its weights on disk."""
        for row in finished:
            if row["group"] == group_text and row["layer_indices"] == indices \
                    and row["status"] == "ok" and not row.get("same_as") \
                    and (self.folder / f"{row['method']}.safetensors").exists():
                return row
        return None


def rungs(epochs: int, eta: int = PRUNE_ETA, grace: int = 1) -> list[int]:
    """Successive-halving rungs at grace, grace·eta, grace·eta², … epochs, ending at ``epochs``:
    9 → [1, 3, 9], 5 → [1, 3, 5], 2 → [1, 2], 1 → [1]; with grace 2, 5 → [2, 5]."""
    ladder = [max(1, min(grace, epochs))]
    while ladder[-1] * eta < epochs:
        ladder.append(ladder[-1] * eta)
    return ladder if ladder[-1] == epochs else [*ladder, epochs]


def _trained_twin(rows: list[dict], indices: str, rung_epochs: int) -> dict | None:
    """A row that trained this group for this many epochs and did not fail (not itself reused)."""
    for row in rows:
        if row["layer_indices"] == indices and str(row["rung"]) == str(rung_epochs) \
                and row["status"] in ("ok", "rung") and not row.get("same_as"):
            return row
    return None


def _indices(group) -> str:
    """A group as CSV text: ``"3,4,5"``; the head alone ``""``; every layer ``"all"``."""
    return "all" if group is None else ",".join(str(i) for i in group)


def _group(indices: str) -> tuple[int, ...] | None:
    return None if indices == "all" else tuple(int(i) for i in indices.split(",") if i)


def notices(seed: int, rows: list[dict]) -> list[str]:
    """One line per strategy none of whose candidates beat Baseline I's search score on val."""
    baseline = next((r for r in rows if r["strategy"] == BASELINE_I and r["status"] == "ok"),
                    None)
    if baseline is None:
        return []
    out = []
    for method in _strategies(rows):
        ok = [float(r["val_acc"]) for r in rows if r["strategy"] == method
              and r["status"] == "ok"]
        if ok and max(ok) <= float(baseline["val_acc"]):
            out.append(f"seed {seed}: no {label(method)} candidate beat Baseline I on val in "
                       f"the search (best {max(ok):.3f}, Baseline I "
                       f"{float(baseline['val_acc']):.3f}): the head alone does as well here")
    return out


def _strategies(rows: list[dict]) -> list[str]:
    """The searched strategies (methods) of ``rows`` in search order, baselines left out."""
    return [m for m in dict.fromkeys(r["strategy"] for r in rows) if m not in BASELINES]


def choose(rows: list[dict], method: str) -> dict | None:
    """The paper's rule (max-val): highest val accuracy; ties to fewer trained parameters,
    then to the earlier searched."""
    return pick("max-val", SearchView([r for r in rows if r["strategy"] == method
                                        and r["status"] == "ok"]))


def summarize(folder: Path, seeds: list[int]) -> list[dict]:
    """Mean and std of test accuracy over seeds, per method; written to ``summary.csv``."""
    per_method: dict[str, list[float]] = {}
    for seed in seeds:
        for row in read_csv(folder / f"seed_{seed}" / "finals.csv"):
            if row["status"] == "ok":
                per_method.setdefault(row["method"], []).append(float(row["test_acc"]))
    summary = []
    for method, values in per_method.items():
        tensor = torch.tensor(values, dtype=torch.float64)
        summary.append({"method": method, "label": label(method), "seeds": len(values),
                        "test_acc_mean": f"{tensor.mean().item():.4f}",
                        "test_acc_std": f"{tensor.std(unbiased=False).item():.4f}",
                        "test_acc_var": f"{tensor.var(unbiased=False).item():.6f}"})
    atomic_write_csv(folder / "summary.csv", summary,
                     ["method", "label", "seeds", "test_acc_mean", "test_acc_std", "test_acc_var"])
    return summary


def run(config: RunConfig, folder: str | Path, events: Events | None = None,
        force_new: bool = False) -> list[dict]:
    """The whole protocol for every seed; resumable. Returns the summary rows."""
    folder = Path(folder)
    with RunLock(folder):
        check_resume(folder, config, force_new)
        images, data_cfg = load_images(config)
        if force_new:
            clear_results(folder)
        for seed in config.seeds:
            seed_run = SeedRun(config, seed, folder / f"seed_{seed}", images, data_cfg, events)
            if seed == config.seeds[0]:
                write_config(folder, config)
            rows, complete = seed_run.search()
            if not complete:
                log.warning("seed %d: search not finished, final fine-tunes wait for a resume",
                            seed)
                continue
            for notice in seed_run.notices(rows):
                (events or Events()).on_notice(notice)
            refits = seed_run.refit(rows)
            finals = seed_run.finals(rows, refits)
            seed_run.close()
            if seed == config.seeds[0]:
                publish_model(folder, seed_run, finals, images, data_cfg)
        summary = summarize(folder, config.seeds)
    return summary


def publish_model(folder: Path, seed_run: SeedRun, finals: list[dict], images: DecodedImages,
                  data_cfg) -> None:
    """Copy the method with the best final *val* accuracy to ``model.safetensors`` + ``model.json``."""
    ok = [r for r in finals if r["status"] == "ok"]
    if not ok:
        return
    best = max(ok, key=lambda r: (float(r["val_acc"]), -int(r["trained_params"])))
    atomic_copy(seed_run.folder / f"{best['method']}.safetensors", folder / "model.safetensors")
    atomic_write_json(folder / "model.json", model_card(seed_run.config, images, data_cfg,
                                                        seed_run.weights_source, best["method"]))


def model_card(config: RunConfig, images: DecodedImages, data_cfg, weights_source: str,
               method: str) -> dict:
    """What ``blocktune predict`` needs to rebuild the network around the saved weights."""
    return {"model": config.model, "head": config.head, "image_size": config.image_size,
            "classes": images.classes, "mean": list(data_cfg.mean), "std": list(data_cfg.std),
            "interpolation": data_cfg.interpolation, "weights_source": weights_source,
            "method": method}


def parse_train_spec(spec: str, walk_result: ModelWalk) -> tuple[int, ...] | None:
    """``head`` → (), ``all`` → None, else comma-separated layer names or one regex."""
    import re

    if spec == "head":
        return ()
    if spec == "all":
        return None
    names = [layer.name for layer in walk_result.layers]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if all(w in names for w in wanted):
        return tuple(sorted(names.index(w) for w in wanted))
    try:
        pattern = re.compile(spec)
    except re.error as error:
        raise BlocktuneError(f"--train {spec!r} is neither layer names nor a valid regex "
                             f"({error}): see the names with blocktune groups --strategy layer") from error
    group = tuple(i for i, n in enumerate(names) if pattern.search(n))
    if not group:
        raise BlocktuneError(f"--train {spec!r} matches no layer: see the names with "
                             "blocktune groups --model M --strategy layer")
    return group


def finetune(config: RunConfig, train_spec: str, folder: str | Path,
             events: Events | None = None) -> dict:
    """Fine-tune one given set of layers (a baseline or any group) on search+train; test once.

    Writes config.yaml, splits.json, metrics.csv (one row per epoch), result.json and
    model.safetensors into ``folder``.
    """
    folder = Path(folder)
    events = events or Events()
    with RunLock(folder):
        check_resume(folder, config)
        images, data_cfg = load_images(config)
        seed = config.seeds[0]
        seed_run = SeedRun(config, seed, folder, images, data_cfg, events)
        write_config(folder, config)
        group = parse_train_spec(train_spec, seed_run.walk)
        epochs: list[dict] = []

        def on_epoch(epoch, loss, acc, seconds):
            epochs.append({"epoch": epoch, "train_loss": f"{loss:.6f}", "val_acc": f"{acc:.6f}",
                           "seconds": f"{seconds:.2f}"})
            atomic_write_csv(folder / "metrics.csv", epochs, list(epochs[0]))
            events.on_epoch(epoch, loss, acc, seconds)

        result, test_acc, _ = seed_run.fit_final(group, folder / "model.safetensors", on_epoch)
        if result.status != "ok":
            raise BlocktuneError(f"training failed ({result.error}): lower --lr or check the data")
        summary = {"train": train_spec, "layers": len(seed_run.walk.layers) if group is None
                   else len(group), **result.to_dict(), "val_acc": result.best_val_acc,
                   "test_acc": test_acc}
        atomic_write_json(folder / "result.json", summary)
        atomic_write_json(folder / "model.json", model_card(config, images, data_cfg,
                                                            seed_run.weights_source, train_spec))
    return summary

