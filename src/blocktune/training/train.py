"""Train a set of layers plus the head; everything else frozen.

The freezing contract (docs/method.md): layers outside the group get ``requires_grad=False`` and
their norm layers stay in eval mode while the model trains, so their running statistics never
move (the Keras meaning of ``trainable=False``). Everything below the training cut runs under
``no_grad`` in eval mode inside a *feed* (:mod:`blocktune.training.cache`), so the trainer sees only the
suffix of the spine and the head, and does not know how its inputs were produced.
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from blocktune.core import faults
from blocktune.core.config import TrainConfig, parse_device
from blocktune.core.errors import BlocktuneError
from blocktune.models.build import BlockModel
from blocktune.models.fold import FoldPair, folded
from blocktune.models.layers import ModelWalk, SpineRunner, device_of
from blocktune.training.cache import Feed, to_model_layout


@dataclass
class TrainResult:
    best_val_acc: float = 0.0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    epochs: int = 0
    trainable_params: int = 0
    seconds: float = 0.0
    val_curve: list[float] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)  # train loss per epoch
    val_loss_curve: list[float] = field(default_factory=list)
    val_pred: list[int] = field(default_factory=list)  # per val image, at the kept epoch
    status: str = "ok"  # ok | failed
    error: str = ""
    # --score-on val+train: the kept weights scored on the train split as well
    pool_correct: int = 0
    pool_images: int = 0
    pool_seconds: float = 0.0
    # set when fit() paused at ``stop_after`` with epochs to go: pass it back to continue
    checkpoint: dict | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "checkpoint"}


NORM_TYPES = (nn.modules.batchnorm._NormBase,)
# every normalisation layer with a scale and shift (what `norms` trains)
NORM_LIKE = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
             nn.modules.instancenorm._InstanceNorm)


PARAMETER_SETS = ("all", "norms")  # which parameters of a group's layers train


def is_norm_or_bias(module: nn.Module, name: str) -> bool:
    """BitFit / TinyTL for CNNs: a normalisation layer's scale and shift, and every bias."""
    return isinstance(module, NORM_LIKE) or name == "bias"


def freeze(model: BlockModel, walk: ModelWalk, group: Sequence[int] | None,
           parameters: str = "all") -> list[nn.Module]:
    """Make only ``group``'s layers (all layers when None) and the head trainable; with
    ``parameters="norms"`` only their normalisation parameters and biases
    (:func:`is_norm_or_bias`).

    Returns:
        the norm modules of the body that must stay in eval mode while the model trains.
    """
    if parameters not in PARAMETER_SETS:
        raise ValueError(f"parameters = {parameters!r}: one of {PARAMETER_SETS}")
    trainable = {walk.layers[i].name for i in range(len(walk.layers))} if group is None else \
        {walk.layers[i].name for i in group}
    model.body.requires_grad_(False)
    for name in trainable:
        module = model.body if name == "<root>" else model.body.get_submodule(name)
        for param_name, param in module.named_parameters(recurse=False):
            if parameters == "all" or is_norm_or_bias(module, param_name):
                param.requires_grad_(True)
    model.head.requires_grad_(True)
    return [m for m in model.body.modules()
            if isinstance(m, NORM_TYPES) and not any(p.requires_grad for p in m.parameters(False))]


def set_train_mode(net: nn.Module, frozen_norms: Sequence[nn.Module]) -> None:
    net.train()
    for module in frozen_norms:
        module.eval()


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    A CPU training step allocates and frees activations of tens of MB; glibc serves each from a
    fresh ``mmap`` and unmaps it on free, so every step pays page faults to zero new memory (a
    fifth of a lite0 training step at 160 px, half of a no-grad forward). Served from the heap
    and never trimmed below 1 GiB, freed blocks are reused: same results, faster steps; the
    process keeps its peak memory until it exits. Process-wide and one-way: glibc's own
    defaults (a dynamic mmap threshold) cannot be put back.

    Returns:
        whether it was applied (False where the C library is not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def device_for(preference: str = "auto") -> torch.device:
    """The device a run trains on: ``auto`` is CUDA when present, else the CPU."""
    device = parse_device(preference)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not (torch.cuda.is_available()
                                      and (device.index or 0) < torch.cuda.device_count()):
        raise BlocktuneError(f"{preference} is not available on this machine "
                             f"({torch.cuda.device_count()} CUDA devices): use --device auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BlocktuneError("mps is not available on this machine: use --device auto or cpu")
    return device


@torch.no_grad()
def evaluate(net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 128,
             device: torch.device | None = None) -> tuple[float, float, torch.Tensor]:
    """Accuracy, mean cross-entropy and the predictions of ``net`` in eval mode."""
    device = device or torch.device("cpu")
    was_training = net.training
    net.eval()
    correct, loss_sum, predictions = 0, 0.0, []
    for start in range(0, len(labels), batch_size):
        x = prepare(inputs[start:start + batch_size])
        y = labels[start:start + batch_size].to(device)
        with _autocast(device):
            logits = net(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        correct += (pred == y).sum().item()
        predictions.append(pred.cpu())
    net.train(was_training)
    n = max(1, len(labels))
    return correct / n, loss_sum / n, torch.cat(predictions) if predictions else torch.empty(0)


def _autocast(device: torch.device):
    # bf16 autocast on CUDA only: on CPU it is slower than fp32 for these nets.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def trained_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of ``net``'s state that training can change: every parameter and buffer of
    the modules with a trainable parameter (a trained BatchNorm's running statistics too)."""
    out = {}
    for prefix, module in net.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for name, tensor in [*module.named_parameters(recurse=False),
                                 *module.named_buffers(recurse=False)]:
                out[f"{prefix}.{name}" if prefix else name] = tensor.detach().clone()
    return out


def fit(net: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
        val_x: torch.Tensor | None, val_y: torch.Tensor | None,
        prepare: Callable[[torch.Tensor], torch.Tensor],
        frozen_norms: Sequence[nn.Module], config: TrainConfig, head: nn.Module | None = None,
        on_epoch: Callable[[int, float, float, float], None] | None = None,
        device: torch.device | None = None,
        prepare_train: Callable[[torch.Tensor], torch.Tensor] | None = None,
        checkpoint: dict | None = None, stop_after: int | None = None,
        lr_scales: Mapping[int, float] | None = None) -> TrainResult:
    """Train the parameters of ``net`` that require grad; keep the best-val weights.

    With no val (``val_x`` None: every learning image is trained on, nothing is held out), it
    trains the configured epochs at a constant learning rate (the schedule and early stopping
    read val) and keeps the last epoch's weights; ``best_val_acc`` is NaN.

    Args:
        net: maps prepared inputs to logits.
        prepare: turns a stored batch into the net's input (runs the frozen prefix if needed).
        prepare_train: the same for training batches (adds augmentation); defaults to prepare.
        frozen_norms: norm modules kept in eval mode while training.
        head: parameters of this module get ``config.lr``; all others ``lr * body_lr_scale``,
            times their entry in ``lr_scales`` (``id(parameter)`` → factor; layer-wise
            learning-rate decay), 1 for a parameter it does not hold.
        on_epoch: called with (epoch, train loss, val acc, seconds) after each epoch.
        stop_after: pause after this epoch (a rung of successive halving). When training would
            go on, the result carries a ``checkpoint``: passed back here, training continues
            exactly as if it had never stopped (weights, optimizer, schedule, early-stopping
            count, data order and dropout's global RNGs, CPU and CUDA, all restored), so a
            pruned search scores its survivors exactly as an unpruned one does.
    """
    device = device or torch.device("cpu")
    started = time.perf_counter()
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    params = [p for p in net.parameters() if p.requires_grad]
    scales = lr_scales or {}
    body: dict[float, list[nn.Parameter]] = {}
    for p in params:
        if id(p) not in head_ids:
            body.setdefault(scales.get(id(p), 1.0), []).append(p)
    groups = [{"params": [p for p in params if id(p) in head_ids], "lr": config.lr}]
    groups += [{"params": members, "lr": config.lr * config.body_lr_scale * scale}
               for scale, members in sorted(body.items(), reverse=True)]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]],
                                 weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience)
    result = TrainResult(trainable_params=sum(p.numel() for p in params))
    generator = torch.Generator().manual_seed(config.seed)
    prepare_train = prepare_train or prepare
    since_best, first_epoch = 0, 1
    if checkpoint is not None:
        net.load_state_dict(checkpoint["weights"], strict=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        generator.set_state(checkpoint["generator"].cpu())  # RNG states are CPU byte tensors
        torch.set_rng_state(checkpoint["rng"].cpu())
        if checkpoint.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint["cuda_rng"].cpu(), device)
        best_state = checkpoint["best"]
        since_best, first_epoch = checkpoint["since_best"], checkpoint["epoch"] + 1
        saved = checkpoint["result"]
        result = TrainResult(**{**saved, "seconds": 0.0})
        started -= saved["seconds"]
    else:
        best_state = trained_state(net) if val_x is not None else None
    if val_x is None:
        result.best_val_acc = math.nan
    last_epoch = config.epochs if stop_after is None else min(stop_after, config.epochs)
    stopped_early = False
    for epoch in range(first_epoch, last_epoch + 1):
        epoch_start = time.perf_counter()
        set_train_mode(net, frozen_norms)
        order = torch.randperm(len(train_y), generator=generator)
        loss_sum, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            if len(idx) < 2 and seen:  # a batch of one breaks trainable BatchNorm
                continue
            x = prepare_train(train_x[idx.to(train_x.device)])
            y = train_y[idx].to(device)
            with _autocast(device):
                loss = nn.functional.cross_entropy(net(x).float(), y)
            if not torch.isfinite(loss):
                result.status, result.error = "failed", f"non-finite loss at epoch {epoch}"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
        if result.status == "failed":
            break
        result.epochs = epoch
        result.loss_curve.append(loss_sum / max(1, seen))
        if val_x is None:  # nothing held out: every epoch runs, the last one is kept
            result.best_epoch = epoch
            if on_epoch is not None:
                on_epoch(epoch, result.loss_curve[-1], math.nan,
                         time.perf_counter() - epoch_start)
            faults.point("epoch")
            continue
        val_acc, val_loss, val_pred = evaluate(net, val_x, val_y, prepare, device=device)
        result.val_curve.append(val_acc)
        result.val_loss_curve.append(val_loss)
        if val_acc > result.best_val_acc or (val_acc == result.best_val_acc
                                             and val_loss < result.best_val_loss) or epoch == 1:
            result.best_val_acc, result.best_val_loss, result.best_epoch = val_acc, val_loss, epoch
            result.val_pred = val_pred.tolist()
            best_state = trained_state(net)
            since_best = 0
        else:
            since_best += 1
        scheduler.step(val_acc)
        if on_epoch is not None:
            on_epoch(epoch, result.loss_curve[-1], val_acc, time.perf_counter() - epoch_start)
        faults.point("epoch")
        if since_best >= config.patience:
            stopped_early = True
            break
    result.seconds = time.perf_counter() - started
    if result.status == "ok" and not stopped_early and result.epochs < config.epochs:
        result.checkpoint = {
            "weights": trained_state(net), "best": best_state, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
            "rng": torch.get_rng_state(), "since_best": since_best, "epoch": result.epochs,
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "result": result.to_dict()}
    if best_state is not None:
        net.load_state_dict(best_state, strict=False)
    return result


def _in_layout(prepare: Callable[[torch.Tensor], torch.Tensor]
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda batch: to_model_layout(prepare(batch))


def evaluate_split(net: nn.Module, feed: Feed, cut: int, split: str, config: TrainConfig,
                   device: torch.device) -> tuple[float, float, torch.Tensor]:
    """:func:`evaluate` on one split of ``feed``, prepared as :func:`train_group` prepares."""
    x, y = feed.inputs(cut, split)
    prepare = feed.prepare(cut, device)
    if config.channels_last:
        prepare = _in_layout(prepare)
    return evaluate(net, x, y, prepare, device=device)


def train_group(model: BlockModel, walk: ModelWalk, group: Sequence[int] | None, feed: Feed,
                config: TrainConfig, train_split: str | Sequence[str] = "search",
                val_split: str | None = "val", on_epoch=None, checkpoint: dict | None = None,
                stop_after: int | None = None, fold: Sequence[FoldPair] = (),
                lr_scales: Mapping[int, float] | None = None, parameters: str = "all"
                ) -> tuple[TrainResult, nn.Module, int]:
    """Train ``group`` (None: every layer; empty: the head only) of ``model`` from ``feed``.

    ``parameters``: ``all`` of the group's parameters, or ``norms`` (see :func:`freeze`).
    ``checkpoint`` and ``stop_after`` pause and continue training (see :func:`fit`). ``fold``:
    (conv, norm) pairs from :func:`blocktune.models.fold.foldable_pairs`, folded while training when
    both are frozen (the model's weights are restored before returning).

    Trains where ``model`` lives (move it to the GPU first to train there; bf16 autocast on CUDA).

    ``val_split`` None: nothing held out (see :func:`fit`).

    Returns:
        (result, net, cut): ``net`` maps the feed's inputs at ``cut`` to logits, with the best
        val weights loaded (they are ``model``'s own modules, trained in place).
    """
    device = device_of(model)
    frozen_norms = freeze(model, walk, group, parameters)
    cut = 0 if group is None else walk.cut_for(group)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    net = nn.Sequential(SpineRunner(model.body, walk, cut), model.head).to(
        device, memory_format=layout)
    train_x, train_y = feed.inputs(cut, train_split)
    val_x, val_y = feed.inputs(cut, val_split) if val_split is not None else (None, None)
    prepare, prepare_train = feed.prepare(cut, device), feed.prepare(cut, device, training=True)
    if config.channels_last:
        prepare, prepare_train = _in_layout(prepare), _in_layout(prepare_train)
    try:
        with folded(model.body, walk, fold, group):
            result = fit(net, train_x, train_y, val_x, val_y, prepare, frozen_norms, config,
                         head=model.head, on_epoch=on_epoch, device=device,
                         prepare_train=prepare_train, checkpoint=checkpoint,
                         stop_after=stop_after, lr_scales=lr_scales)
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        result = TrainResult(status="failed", error=f"out of memory: {error}"[:200])
    return result, net, cut
