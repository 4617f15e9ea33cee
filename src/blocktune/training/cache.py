"""Feeds: where a candidate's training inputs come from, naively or from the frozen-prefix cache.

A candidate whose lowest trainable layer lies in spine segment ``c`` trains segments ``c…``
and the head; segments ``0…c-1`` (the *frozen prefix*) are frozen and in eval mode, so, with no
random augmentation, they give the same output every epoch. Design:

* **Cut only where a single tensor flows.** Cuts are the boundaries of the spine
  (:mod:`blocktune.models.layers`): a residual block is one segment, so a cut never passes through a
  skip connection and one tensor per image is all the suffix needs. A layer inside a residual
  block trains with its block's frozen earlier layers recomputed each step (exact, a little
  slower than a finer cut).
* **One pass serves many cuts.** :meth:`ActivationCache.prepare_cuts` runs the images once
  through the prefix of the deepest cut and keeps the activations at every requested cut on the
  way. With fp32 storage a later cut is computed from the nearest cached shallower cut; with
  fp16/bf16 storage it is computed from the images, so that a cut's values never depend on
  which cuts were cached before it (a resumed search gives bit-identical candidates).
* **Storage** is fp16 by default (half the memory; the search's val accuracies match the fp32
  path, see tests/test_cache.py), fp32 or bf16 on request. Past ``max_bytes`` in memory, new
  cuts go to memory-mapped files on disk; a failed allocation falls back to disk and says so.
* **Device.** The prefix pass runs where the model lives. On CUDA the activations are kept in
  GPU memory (``max_bytes`` then counts GPU memory), so a training step copies nothing from the
  host; elsewhere they are kept in host memory.
* Exactness: the prefix runs in eval mode under ``no_grad`` in both the naive and the cached
  feed, so the cached numbers are the numbers the naive path computes, up to storage dtype.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from blocktune.core.resources import require
from blocktune.data import normalize
from blocktune.models.layers import ModelWalk, SpineRunner, device_of

log = logging.getLogger(__name__)

STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class Feed(Protocol):
    """Inputs for training from spine cut ``cut`` on, and the function that prepares a batch."""

    def inputs(self, cut: int, split: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def prepare(self, cut: int, device: torch.device, training: bool = False
                ) -> Callable[[torch.Tensor], torch.Tensor]: ...


def to_model_layout(x: torch.Tensor) -> torch.Tensor:
    """channels_last for image-like tensors: 1.4x faster end to end for a lite0 search on a
    2-core CPU, and the layout CUDA convolutions prefer (benchmarks/search_speed.py)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _indices(splits: Mapping[str, Sequence[int]], split: str | Sequence[str]) -> list[int]:
    names = [split] if isinstance(split, str) else list(split)
    return sorted(i for name in names for i in splits[name])


def flip_augment(generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Random horizontal flips, seeded: the augmentation that makes the prefix non-constant."""
    def apply(x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = x.clone()
        x[flip] = x[flip].flip(-1)
        return x
    return apply


class ImageFeed:
    """The naive feed: decoded uint8 images, normalised and run through the prefix every batch."""

    def __init__(self, body: nn.Module, walk: ModelWalk, pixels: torch.Tensor,
                 labels: torch.Tensor, splits: Mapping[str, Sequence[int]], mean, std,
                 augment: bool = False, seed: int = 0):
        self.body, self.walk, self.pixels, self.labels = body, walk, pixels, labels
        self.splits, self.mean, self.std = splits, mean, std
        self.seed = seed
        self.flips = torch.Generator().manual_seed(seed) if augment else None
        self.augment = flip_augment(self.flips) if augment else None

    def reseed(self, state: torch.Tensor | None = None) -> None:
        """Every trial draws its flips afresh from the seed (or, continuing a paused trial,
        from the state it paused with): a candidate's flips never depend on what trained
        before it in this process, so resumes, Ray workers and twins see the same ones."""
        if self.flips is not None:
            if state is None:
                self.flips.manual_seed(self.seed)
            else:
                self.flips.set_state(state.cpu())

    def flip_state(self) -> torch.Tensor | None:
        return None if self.flips is None else self.flips.get_state()

    def inputs(self, cut: int, split) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor(_indices(self.splits, split), dtype=torch.long)
        return self.pixels[index], self.labels[index]

    def prepare(self, cut: int, device: torch.device, training: bool = False
                ) -> Callable[[torch.Tensor], torch.Tensor]:
        prefix = SpineRunner(self.body, self.walk, 0, cut).eval()
        augment = self.augment if training else None

        def run(batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                if augment is not None:  # flips drawn on the CPU: the same on every device
                    batch = augment(batch.cpu())
                # uint8 goes to the device (a quarter of float32's bytes), is normalised there
                x = normalize(batch.to(device), self.mean, self.std)
                return prefix(x) if len(prefix.parts) else x
        return run


class ActivationCache:
    """Activations entering chosen spine cuts, for a fixed set of images, computed once.

    Args:
        pixels, labels: the whole decoded dataset.
        splits: split name -> indices into ``pixels``.
        cover: the split names whose images the cache holds (e.g. search and val).
        dtype: storage dtype name (``float16``, ``bfloat16``, ``float32``).
        max_bytes: memory for activations; beyond it, cuts are stored on disk.
    """

    def __init__(self, body: nn.Module, walk: ModelWalk, pixels: torch.Tensor,
                 labels: torch.Tensor, splits: Mapping[str, Sequence[int]], mean, std,
                 cover: Sequence[str], dtype: str = "float16", max_bytes: int = 4 << 30,
                 spill_dir: str | Path | None = None, batch_size: int = 64):
        self.body, self.walk, self.pixels, self.labels = body, walk, pixels, labels
        self.splits, self.mean, self.std = splits, mean, std
        self.rows = {g: r for r, g in enumerate(_indices(splits, cover))}
        self.dtype = STORAGE_DTYPES[dtype]
        self.max_bytes, self.batch_size = max_bytes, batch_size
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.device = device_of(body)
        self.store_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.store: dict[int, torch.Tensor] = {}
        self.bytes_in_memory = 0
        self.on_disk: list[int] = []
        self.passes = 0  # prefix passes over the images: what the cache saves

    def _allocate(self, cut: int, shape: tuple[int, ...]) -> torch.Tensor:
        n = len(self.rows)
        size = n * math.prod(shape) * self.dtype.itemsize
        if self.bytes_in_memory + size <= self.max_bytes:
            try:
                tensor = torch.empty((n, *shape), dtype=self.dtype, device=self.store_device)
                self.bytes_in_memory += size
                return tensor
            except (RuntimeError, MemoryError):  # torch.OutOfMemoryError is a RuntimeError
                log.warning("activation cache: out of memory for cut %d, storing it on disk", cut)
        return self._allocate_on_disk(cut, (n, *shape))

    def _allocate_on_disk(self, cut: int, shape: tuple[int, ...]) -> torch.Tensor:
        # numpy has no bfloat16: its bits go to disk as int16 and are viewed back, so a cut
        # on disk holds exactly what it would in memory (the memory cap changes no result)
        np_dtype = {torch.float32: np.float32, torch.float16: np.float16,
                    torch.bfloat16: np.int16}[self.dtype]
        if self.spill_dir is None:
            self.spill_dir = Path(tempfile.mkdtemp(prefix="blocktune-cache-"))
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        array = np.lib.format.open_memmap(self.spill_dir / f"cut{cut}.npy", mode="w+",
                                          dtype=np_dtype, shape=shape)
        self.on_disk.append(cut)
        log.warning("activation cache: over its memory cap, cut %d goes to disk in %s", cut,
                    self.spill_dir)
        tensor = torch.from_numpy(array)
        return tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor

    @torch.no_grad()
    def prepare_cuts(self, cuts: Sequence[int]) -> None:
        """One pass from the nearest cached start to the deepest cut, keeping every cut asked."""
        wanted = sorted({c for c in cuts if c not in self.store and c > 0})
        if not wanted:
            return
        # Extending from a cached cut is exact only in fp32; from fp16 storage it would make a
        # cut's values depend on which cuts happened to be cached first (and break resume).
        exact = self.dtype == torch.float32
        start = max((c for c in self.store if c <= wanted[0]), default=0) if exact else 0
        stop = wanted[-1]
        runner = SpineRunner(self.body, self.walk, start, stop).eval()
        self._check_room(wanted)
        order = sorted(self.rows, key=self.rows.get)
        source = self.store.get(start)
        self.passes += 1
        for first in range(0, len(order), self.batch_size):
            batch = order[first:first + self.batch_size]
            rows = torch.tensor([self.rows[g] for g in batch])
            if source is None:
                x = normalize(self.pixels[torch.tensor(batch)].to(self.device), self.mean,
                              self.std)
            else:
                x = source[rows.to(source.device)].to(self.device, torch.float32)
            x = to_model_layout(x)
            for offset, part in enumerate(runner.parts):
                cut = start + offset
                if cut in wanted and cut != start:
                    self._put(cut, rows, x)
                x = part(x)
            self._put(stop, rows, x)

    def _check_room(self, cuts: Sequence[int]) -> None:
        """Estimate the cuts' bytes (one image through the spine) and refuse, in one line,
        what neither the memory cap nor the free disk can hold."""
        one = self.pixels[:1].to(self.device)
        x = to_model_layout(normalize(one, self.mean, self.std))
        sizes = []  # elements per image entering each cut
        for cut, part in enumerate(SpineRunner(self.body, self.walk, 0, max(cuts)).eval().parts):
            if cut in cuts:
                sizes.append(x[0].numel())
            x = part(x)
        sizes.append(x[0].numel())  # the deepest cut
        total = len(self.rows) * sum(sizes) * self.dtype.itemsize
        in_memory = min(total, max(0, self.max_bytes - self.bytes_in_memory))
        if self.store_device.type == "cpu":
            disk = self.spill_dir or Path(tempfile.gettempdir())
            require(f"the activation cache ({len(self.rows)} images at {len(cuts)} cuts)",
                    in_memory, total - in_memory, disk,
                    "lower --cache-max-gb, use a smaller --image-size, or --no-cache")

    def adopt(self, store: Mapping[int, torch.Tensor], max_bytes: int | None = None) -> None:
        """Take cuts another process computed (a Ray worker gets the driver's cache through
        the object store instead of running the prefix again). A cut is copied to this
        cache's device while ``max_bytes`` (default: the cache's cap) has room; beyond it, it
        is used where it is."""
        room = self.max_bytes if max_bytes is None else max_bytes
        for cut, tensor in store.items():
            if cut in self.store:
                continue
            size = tensor.numel() * tensor.element_size()
            if self.bytes_in_memory + size <= room:
                self.store[cut] = tensor.to(self.store_device)
                self.bytes_in_memory += size
            else:
                self.store[cut] = tensor

    def _put(self, cut: int, rows: torch.Tensor, x: torch.Tensor) -> None:
        if cut not in self.store:
            self.store[cut] = self._allocate(cut, tuple(x.shape[1:]))
        store = self.store[cut]
        store[rows.to(store.device)] = x.to(store.device, store.dtype)

    def inputs(self, cut: int, split) -> tuple[torch.Tensor, torch.Tensor]:
        if cut not in self.store:
            self.prepare_cuts([cut])
        global_index = _indices(self.splits, split)
        store = self.store[cut]
        rows = torch.tensor([self.rows[g] for g in global_index], dtype=torch.long,
                            device=store.device)
        return store[rows], self.labels[torch.tensor(global_index, dtype=torch.long)]

    def prepare(self, cut: int, device: torch.device, training: bool = False
                ) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda batch: batch.to(device=device, dtype=torch.float32)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.store.values())


class CachedFeed:
    """The fast feed: the activation cache at cuts above the input, images at cut 0.

    At cut 0 (every layer trainable) there is no frozen prefix to save, so images are used.
    With augmentation on, the prefix output changes every epoch: the cache is bypassed.
    """

    def __init__(self, images: ImageFeed, cache: ActivationCache | None):
        self.images, self.cache = images, cache
        if images.augment is not None and cache is not None:
            log.warning("activation cache bypassed: random augmentation is on")
            self.cache = None

    def _for(self, cut: int) -> Feed:
        return self.cache if (self.cache is not None and cut > 0) else self.images

    def inputs(self, cut: int, split):
        return self._for(cut).inputs(cut, split)

    def prepare(self, cut: int, device: torch.device, training: bool = False):
        return self._for(cut).prepare(cut, device, training)
