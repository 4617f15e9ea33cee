import copy

import pytest
import timm
import torch
from timm.layers import Conv2dSame
from torch import nn

from blocktune.models.build import build_model
from blocktune.models.fastlayers import InplaceReLU6, SameConv2d, use_fast_layers


def _forward_backward(net: nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = net(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in net.parameters()]


@pytest.mark.parametrize("kernel,stride,size", [(3, 2, 16), (3, 2, 15), (5, 2, 16), (5, 2, 17),
                                                (4, 1, 9), (3, (2, 1), 14), (1, 2, 10)])
def test_same_conv_without_input_padding_equals_timms(kernel, stride, size):
    torch.manual_seed(0)
    reference = nn.Sequential(Conv2dSame(6, 6, kernel, stride, groups=3))
    fast = nn.Sequential(Conv2dSame(6, 6, kernel, stride, groups=3))
    fast.load_state_dict(reference.state_dict())
    assert use_fast_layers(fast) == 1 and type(fast[0]) is SameConv2d
    x = torch.randn(2, 6, size, size + 1)
    for ours, theirs in zip(_forward_backward(fast, x), _forward_backward(reference, x),
                            strict=True):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_inplace_relu6_gives_the_same_values_and_gradients_without_a_copy():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU6(inplace=True),
                              nn.Conv2d(4, 2, 1))
    fast = copy.deepcopy(reference)
    assert use_fast_layers(fast) == 1 and type(fast[1]) is InplaceReLU6
    x = torch.randn(3, 4, 8, 8) * 8  # many values beyond both ends of [0, 6]
    x[0, 0, 0, :3] = torch.tensor([0.0, 6.0, float("nan")])
    for ours, theirs in zip(_forward_backward(fast, x), _forward_backward(reference, x),
                            strict=True):
        assert torch.equal(ours.nan_to_num(-1.0), theirs.nan_to_num(-1.0))
    copies = []
    for net in (reference, fast):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            net(x.clone().requires_grad_(True)).sum().backward()
        copies.append(sum(e.name in ("aten::clone", "aten::copy_") for e in prof.events()))
    assert copies[1] < copies[0]


def test_inplace_relu6_stays_plain_without_autograd_and_out_of_place_relu6_is_left_alone():
    relu = InplaceReLU6(inplace=True)
    x = torch.tensor([-1.0, 3.0, 7.0])
    with torch.no_grad():
        assert relu(x) is x and x.tolist() == [0.0, 3.0, 6.0]
    net = nn.Sequential(nn.ReLU6(inplace=False))
    assert use_fast_layers(net) == 0 and type(net[0]) is nn.ReLU6


def test_modified_output_after_the_relu6_is_caught_not_silently_wrong():
    x = torch.randn(5, requires_grad=True)
    y = InplaceReLU6(inplace=True)(x * 1.0)
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_built_models_use_the_fast_layers_and_keep_timms_names():
    model, _ = build_model("tf_efficientnet_lite0", 3, pretrained=False, image_size=64)
    types = [type(m) for m in model.modules()]
    assert Conv2dSame not in types and nn.ReLU6 not in types
    assert types.count(SameConv2d) == 5  # the stem and four stride-2 depthwise convolutions
    assert types.count(InplaceReLU6) == 33
    timm_model = timm.create_model("tf_efficientnet_lite0")
    assert list(model.body.model.state_dict()) == list(timm_model.state_dict())
    assert use_fast_layers(model, enabled=False) == 38
    assert {SameConv2d, InplaceReLU6}.isdisjoint(type(m) for m in model.modules())


def test_a_relu6_output_changed_in_place_keeps_pytorchs_relu6():
    torch.manual_seed(0)
    changes_output = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(inplace=True),
                                   nn.Dropout(0.5, inplace=True), nn.Conv2d(4, 2, 1),
                                   nn.ReLU6(inplace=True), nn.Flatten())
    example = torch.randn(2, 3, 8, 8)
    assert use_fast_layers(copy.deepcopy(changes_output)) == 2  # unchecked: both swapped
    unchecked = copy.deepcopy(changes_output)
    use_fast_layers(unchecked)
    with pytest.raises(RuntimeError, match="inplace operation"):
        unchecked(example.clone().requires_grad_(True)).sum().backward()
    assert use_fast_layers(changes_output, example=example) == 0
    assert [type(m) for m in changes_output if "ReLU6" in type(m).__name__] == [nn.ReLU6] * 2
    changes_output(example.clone().requires_grad_(True)).sum().backward()  # trains as before
    assert all(p.grad is not None for p in changes_output.parameters())

    fine = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(inplace=True), nn.Flatten())
    assert use_fast_layers(fine, example=example) == 1 and type(fine[1]) is InplaceReLU6
    assert all(p.grad is None for p in fine.parameters())  # the check trained a copy


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 3), nn.ReLU6(inplace=True)

    def forward(self, x):
        y = self.act(self.conv(x))
        return y.mean((2, 3)), y.amax((2, 3))


def test_the_check_reads_the_first_of_several_outputs():
    model = _TupleOut()
    assert use_fast_layers(model, example=torch.randn(2, 3, 8, 8)) == 1
    assert type(model.act) is InplaceReLU6
