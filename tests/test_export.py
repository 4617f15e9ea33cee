"""blocktune export: a folder plain timm loads, an ONNX file that agrees with PyTorch, and the
model card beside the saved weights."""

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

from blocktune.api import predict
from blocktune.cli import main
from blocktune.results.export import export, prepare_images

FLOWERS_TINY = ["--model", "test_efficientnet", "--no-pretrained", "--image-size", "48",
                "--epochs", "1", "--final-epochs", "1", "--batch-size", "16",
                "--max-images-per-class", "12"]


@pytest.fixture(scope="module")
def finetuned(flowers, tmp_path_factory) -> Path:
    """A finetune run on real photos (tf_flowers, 12 per class), the linear head."""
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["finetune", *FLOWERS_TINY, "--data", str(flowers), "--train", "all",
                 "--out", str(out)]) == 0
    return out


def photos(flowers, n=6):
    return [sorted((flowers / c).iterdir())[-1] for c in ("daisy", "roses", "tulips")][:n]


def test_timm_export_loads_in_plain_timm_and_predicts_alike(finetuned, flowers, tmp_path):
    done = export(finetuned, "timm", tmp_path / "timm")
    assert done.max_difference <= 1e-4 and done.images > 0
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet" and config["num_classes"] == 5
    assert config["label_names"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert config["pretrained_cfg"]["input_size"] == [3, 48, 48]
    # plain timm, no blocktune: the folder is all it needs
    plain = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    card = json.loads((finetuned / "model.json").read_text())
    with torch.no_grad():
        probs = plain(prepare_images(card, photos(flowers))).softmax(1)
    names = [config["label_names"][i] for i in probs.argmax(1).tolist()]
    expected = predict(finetuned, photos(flowers))
    assert names == [name for name, _ in expected]
    assert probs.max(1).values.tolist() == pytest.approx([p for _, p in expected], abs=1e-5)


def test_onnx_export_agrees_with_pytorch_with_any_batch_size(finetuned, flowers, tmp_path):
    import onnxruntime

    done = export(finetuned, "onnx", tmp_path / "onnx")
    assert done.max_difference <= 1e-4
    session = onnxruntime.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    card = json.loads((finetuned / "model.json").read_text())
    for n in (1, 3):
        (logits,) = session.run(None, {"pixels": prepare_images(card, photos(flowers)[:n])
                                       .numpy()})
        assert logits.shape == (n, 5)
        names = [card["classes"][i] for i in logits.argmax(1)]
        assert names == [name for name, _ in predict(finetuned, photos(flowers)[:n])]


def test_heads_timm_cannot_express_are_refused_in_one_line(finetuned, tmp_path, capsys):
    run = tmp_path / "paper"
    shutil.copytree(finetuned, run)
    card = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**card, "head": "paper"}))
    assert main(["export", str(run), "--format", "timm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("blocktune: error: the 'paper' head has no timm equivalent (timm's classifier "
                   "is one linear layer): export --format onnx instead, or train with --head "
                   "linear")


def test_export_of_a_folder_without_a_model_gives_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "holds no saved model" in capsys.readouterr().err


def test_model_json_says_what_the_model_is(finetuned):
    card = json.loads((finetuned / "model.json").read_text())
    assert card["trained"] == "all" and card["trained_params"] > 0 and card["seed"] == 0
    assert 0 <= card["test_acc"] <= 1 and set(card["versions"]) == {"blocktune", "torch", "timm"}
