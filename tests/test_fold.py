"""Folding frozen BatchNorms into frozen convolutions: which pairs, exactness, restoration."""

import copy

import pytest
import torch
from torch import nn

from blocktune.core.config import TrainConfig
from blocktune.data import decode_folder, scan_folder, stratified_split
from blocktune.models.build import BlockModel, LinearHead
from blocktune.models.fold import foldable_pairs, folded
from blocktune.models.layers import walk
from blocktune.training.cache import ImageFeed
from blocktune.training.train import train_group


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Pretrained-looking statistics: with the defaults (0, 1, 1, 0) any fold looks right."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(1 + 0.3 * torch.randn(n, generator=generator))
            module.bias.data.copy_(torch.randn(n, generator=generator))
    return model


class PreActBlock(nn.Module):
    """conv0's output feeds its norm *and* the skip: folding that norm would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)

    def forward(self, x):
        x = self.conv0(x)
        return self.bn1(self.conv1(torch.relu(self.bn(x)))) + x


def test_pairs_on_a_mobilenet_like_model(mobilenet_like):
    model = randomize_norms(mobilenet_like)
    w = walk(model, input_size=(3, 16, 16))
    assert w.names([0, 1, 2, 3, 4, 5, 6, 7])[:2] == ["stem", "bn"]
    assert foldable_pairs(model, w) == [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_a_conv_that_also_feeds_a_skip_is_not_folded():
    torch.manual_seed(0)
    model = randomize_norms(PreActBlock())
    w = walk(model, input_size=(3, 8, 8))
    assert w.names([0, 1, 2, 3]) == ["conv0", "bn", "conv1", "bn1"]
    assert foldable_pairs(model, w) == [(2, 3)]


def test_folded_output_matches_and_the_model_is_restored(mobilenet_like):
    model = randomize_norms(mobilenet_like).eval()
    w = walk(model, input_size=(3, 16, 16))
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 16, 16)
    reference = model(x)
    with folded(model, w, foldable_pairs(model, w), trainable=(3,)):
        assert "forward" in vars(model.bn) and "forward" not in vars(model.block.bn1)
        assert model.stem.bias is not None
        assert torch.allclose(model(x), reference, atol=1e-5)
    assert model.stem.bias is None and "forward" not in vars(model.bn)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with folded(model, w, foldable_pairs(model, w), trainable=None):  # all layers train
        assert "forward" not in vars(model.bn)


def test_timm_batchnormact_keeps_its_activation_when_folded():
    timm = pytest.importorskip("timm")
    model = randomize_norms(timm.create_model("test_efficientnet", pretrained=False)).eval()
    w = walk(model, input_size=(3, 32, 32))
    pairs = foldable_pairs(model, w)
    assert len(pairs) >= 10
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    with folded(model, w, pairs):
        assert torch.allclose(model(x), reference, atol=1e-4 * reference.abs().max().item())


def test_lite0_folds_every_conv_norm_pair(lite0):
    w = walk(lite0, input_size=(3, 64, 64))
    pairs = foldable_pairs(lite0, w)
    convs = [layer.index for layer in w.layers if layer.type.startswith("Conv2d")]
    assert len(pairs) == 49 and [conv for conv, _ in pairs] == convs
    assert all(w.layers[norm].type == "BatchNormAct2d" for _, norm in pairs)


@pytest.mark.parametrize("group", [(6, 7), (2, 3), ()])
def test_training_with_folded_norms_matches_training_without(image_folder, mobilenet_like,
                                                             group):
    decoded = decode_folder(scan_folder(image_folder), 16)
    split = stratified_split(decoded.labels.tolist(), seed=0)
    model = BlockModel(randomize_norms(mobilenet_like), LinearHead(8, 3))
    w = walk(model.body, input_size=(3, 16, 16))
    feed = ImageFeed(model.body, w, decoded.pixels, decoded.labels, split, (0.5,) * 3,
                     (0.5,) * 3)
    pristine = copy.deepcopy(model.state_dict())
    results, states = [], []
    for fold in ([], foldable_pairs(model.body, w)):
        model.load_state_dict(pristine)
        torch.manual_seed(0)
        results.append(train_group(model, w, group, feed, TrainConfig(epochs=3, lr=0.02),
                                   fold=fold)[0])
        states.append(copy.deepcopy(model.state_dict()))
    plain, fast = results
    assert plain.val_curve == fast.val_curve
    assert plain.loss_curve == pytest.approx(fast.loss_curve, rel=1e-4)
    trained = {f"body.{name}." for name in w.names(group)}
    for key in states[0]:
        if key.startswith("head.") or any(key.startswith(t) for t in trained):
            # Adam divides by sqrt(v): rounding-level gradient differences on near-zero
            # gradients move a weight by up to ~lr per step
            assert torch.allclose(states[0][key], states[1][key], atol=0.01), key
        else:  # frozen: restored bit for bit
            assert torch.equal(states[0][key], states[1][key]), key
