"""Exact, faster stand-ins for two layers of timm's mobile networks on a CPU.

Both compute the same numbers as the layers they replace (bit for bit on lite0: the benchmark
``benchmarks/fold_step.py`` prints the difference) and keep their parameters and names, so
state dicts, weights files and the layer walk do not change. :func:`use_fast_layers` swaps
them into a model; :func:`blocktune.models.build.build_model` does so for every model it builds.

- :class:`SameConv2d` replaces timm's ``Conv2dSame`` (TensorFlow's SAME padding). Where
  stride 2 meets an even size (or the kernel is even), SAME pads one more row or column at the
  end than at the start, which ``conv2d`` cannot do, so timm pads every input with ``F.pad``:
  a copy of the whole input each forward and a slice of its gradient each backward. Here the
  kernel gets a leading row or column of zeros instead and the convolution pads both sides by
  the larger amount: the same windows, the same products (the zeros add exact zeros), no copy.
- :class:`InplaceReLU6` replaces ``nn.ReLU6(inplace=True)``. PyTorch's in-place ``hardtanh_``
  computes its gradient from the *input*, so under autograd it first clones the input it is
  about to overwrite: a copy of every activation, 8% of a lite0 training step. The gradient
  mask is the same computed from the output (``0 < x < 6`` exactly when ``0 < relu6(x) < 6``),
  so this one saves the output and copies nothing. That output must then stay as it is until
  the backward pass; a model that changes it in place (an in-place dropout right after the
  activation) makes autograd refuse, so :func:`use_fast_layers` tries a training step on a copy
  of the model and keeps PyTorch's ReLU6 where that fails.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) of one dimension, dilation 1."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """TensorFlow's 'SAME' convolution (timm's ``Conv2dSame``) without padding its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = [
            _same_padding(size, kernel, stride)
            for size, kernel, stride in zip(x.shape[-2:], self.kernel_size, self.stride,
                                            strict=True)]
        weight = self.weight
        if bottom != top or right != left:
            weight = F.pad(weight, (right - left, 0, bottom - top, 0))
        return F.conv2d(x, weight, self.bias, self.stride, (bottom, right), self.dilation,
                        self.groups)


class _ReLU6Inplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x.clamp_(0.0, 6.0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, output, 0.0, 6.0)


class InplaceReLU6(nn.ReLU6):
    """``nn.ReLU6(inplace=True)`` whose backward reads its output: no copy of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _ReLU6Inplace.apply(x)
        return super().forward(x)


def _replacements() -> dict[type, tuple[type, Callable]]:
    """original type -> (fast type, a function building the fast module from the original)."""
    from timm.layers import Conv2dSame

    def conv(module: nn.Module, target: type) -> nn.Module | None:
        if module.dilation != (1, 1):
            return None  # a zero tap would shift the window by the dilation, not by one
        fast = target(module.in_channels, module.out_channels, module.kernel_size,
                      module.stride, 0, module.dilation, module.groups,
                      bias=module.bias is not None, device="meta")
        fast.weight, fast.bias = module.weight, module.bias
        return fast

    def relu6(module: nn.Module, target: type) -> nn.Module | None:
        return target(inplace=True) if module.inplace else None

    return {Conv2dSame: (SameConv2d, conv), nn.ReLU6: (InplaceReLU6, relu6)}


def use_fast_layers(model: nn.Module, enabled: bool = True,
                    example: torch.Tensor | None = None) -> int:
    """Swap the layers above for their fast stand-ins in ``model`` (``enabled=False``: back).

    Parameters are shared, not copied. Call it before walking the model: modules are replaced,
    so references to the old ones go stale. With an ``example`` input, a forward and backward
    pass in training mode on a copy of the model checks that nothing changes an
    :class:`InplaceReLU6`'s output in place; if something does, PyTorch's ReLU6 is put back.

    Returns:
        how many modules are swapped in the end.
    """
    swapped = _swap(model, enabled, _replacements())
    relus = sum(isinstance(m, InplaceReLU6) for m in model.modules())
    if enabled and relus and example is not None and not _backward_works(model, example):
        log.info("an output of ReLU6 is changed in place: keeping PyTorch's ReLU6")
        swapped -= _swap(model, False, {nn.ReLU6: _replacements()[nn.ReLU6]})
    return swapped


def _swap(model: nn.Module, enabled: bool, replacements: dict) -> int:
    swapped = 0
    for name, module in list(model.named_modules()):
        if not name:
            continue  # the model itself: nothing to put it in
        for slow, (fast, make) in replacements.items():
            source, target = (slow, fast) if enabled else (fast, slow)
            if type(module) is not source:
                continue
            replacement = make(module, target)
            if replacement is not None:
                replacement.train(module.training)
                model.set_submodule(name, replacement)
                swapped += 1
    return swapped


def _backward_works(model: nn.Module, example: torch.Tensor) -> bool:
    """False when autograd refuses a training step because a saved output was changed."""
    probe = copy.deepcopy(model).train()
    x = example.clone().requires_grad_(True)
    try:
        output = probe(x)
        while isinstance(output, (tuple, list, dict)):  # e.g. (logits, distilled logits)
            output = next(iter(output.values() if isinstance(output, dict) else output))
        torch.autograd.grad(output.float().sum(), x)
    except RuntimeError as error:
        return "inplace operation" not in str(error)  # other failures are not ours to judge
    except Exception:  # noqa: BLE001 - an output that is no tensor: nothing to check with
        return True
    return True
