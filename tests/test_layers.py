import pytest
import timm
import torch
from torch import nn

from blocktune.models.build import build_body
from blocktune.models.layers import SpineRunner, walk


def kinds_at(w, kind):
    return sorted({d.position for d in w.delimiters if d.kind == kind})


def test_vgg_like_layers_delimiters_and_spine(vgg_like):
    w = walk(vgg_like, input_size=(3, 16, 16))
    assert [layer.name for layer in w.layers] == ["features.0", "features.2", "features.5"]
    assert [layer.num_params for layer in w.layers] == [3 * 4 * 9 + 4, 4 * 4 * 9 + 4, 4 * 8 * 9 + 8]
    assert kinds_at(w, "activation") == [1, 2, 3]
    assert kinds_at(w, "pool") == [2, 3]
    assert [s.name for s in w.segments] == [f"features.{i}" for i in range(8)]


def test_mobilenet_like_spine_keeps_the_residual_block_whole(mobilenet_like):
    w = walk(mobilenet_like, input_size=(3, 16, 16))
    assert [layer.name for layer in w.layers] == [
        "stem", "bn", "block.conv_pw", "block.bn1", "block.conv_dw", "block.bn2",
        "block.conv_pwl", "block.bn3"]
    assert [s.name for s in w.segments] == ["stem", "bn", "act", "block"]
    assert [layer.segment for layer in w.layers] == [0, 1, 3, 3, 3, 3, 3, 3]
    assert kinds_at(w, "activation") == [2, 4, 6]
    assert kinds_at(w, "residual") == [8]  # the skip add at the block's exit


def test_reused_module_is_one_layer_but_delimits_each_time(resnet_like):
    w = walk(resnet_like, input_size=(3, 16, 16))
    assert [layer.name for layer in w.layers] == [
        "conv", "layer.conv1", "layer.bn1", "layer.conv2", "layer.bn2"]
    assert kinds_at(w, "activation") == [3, 5]  # layer.relu runs twice
    assert kinds_at(w, "pool") == [1]
    assert [s.name for s in w.segments] == ["conv", "pool", "layer"]


def test_shared_layer_appears_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    w = walk(model, example=torch.zeros(1, 4))
    assert [layer.name for layer in w.layers] == ["0"]
    assert w.total_params == 20


def test_execution_order_not_declaration_order():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.last = nn.Linear(3, 2)
            self.first = nn.Linear(5, 3)

        def forward(self, x):
            return self.last(self.first(x))

    w = walk(Reversed(), example=torch.zeros(1, 5))
    assert [layer.name for layer in w.layers] == ["first", "last"]


def test_batchnormact_shows_its_activation_as_a_delimiter():
    body = build_body(timm.create_model("tf_efficientnet_lite0"), "linear")
    w = walk(body, input_size=(3, 64, 64))
    bn1 = w.index_of("model.bn1")
    acts = [d for d in w.delimiters if d.kind == "activation"]
    assert acts[0].name == "model.bn1.act" and acts[0].position == bn1 + 1


@pytest.mark.parametrize("name, num_layers", [
    ("vgg16", 13), ("mobilenetv2_100", 104), ("resnet50", 106),
    ("tf_efficientnet_lite0", 98), ("mobilenetv3_small_100", 86)])
def test_real_timm_walks(name, num_layers):
    body = build_body(timm.create_model(name), "linear")
    w = walk(body, input_size=(3, 64, 64))
    assert len(w.layers) == num_layers
    x = torch.randn(2, 3, 64, 64)
    body.eval()
    with torch.no_grad():  # the spine, run link by link, is the model's forward pass
        assert torch.allclose(SpineRunner(body, w)(x), body(x), atol=1e-5)
    assert len(w.segments) > 1
    counted = sum(p.numel() for n, p in body.named_parameters()
                  if not any(n.startswith(u + ".") for u in w.unused))
    assert w.total_params == counted


def test_torchvision_resnet_walk():
    import torchvision

    w = walk(torchvision.models.resnet18(weights=None), input_size=(3, 64, 64))
    assert len(w.layers) == 2 + 8 * 4 + 3 * 2 + 1  # stem, 8 blocks of 2 conv+bn, 3 downsamples, fc
    # every conv's bn is followed by the (reused) relu, except the second of each block
    assert len([d for d in w.delimiters if d.kind == "activation"]) == 1 + 8 * 2
