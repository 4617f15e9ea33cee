"""Hand a run's saved model to the ecosystem: a folder plain timm loads, or an ONNX file.

``timm``: the weights renamed to timm's own keys (the new linear head becomes the model's
classifier) and written with timm's ``save_for_hf`` (``config.json`` with the architecture,
``num_classes``, ``label_names`` and the preprocessing; ``model.safetensors``), so that
``timm.create_model("local-dir:FOLDER", pretrained=True)`` rebuilds it without blocktune.
Heads timm cannot express (``paper``, ``keep-pretrained``) are refused in one line, and so is
any architecture whose timm head is not the same function (checked on real images).

``onnx``: ``torch.onnx.export`` with a dynamic batch size, checked with onnxruntime against
the PyTorch model on real images from the run's test split; the largest difference is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from blocktune.core.errors import BlocktuneError
from blocktune.core.io import parsing
from blocktune.data import decode_resized, normalize, open_data, read_splits
from blocktune.models.build import BlockModel, build_model, load_weights_strict
from blocktune.models.fastlayers import use_fast_layers
from blocktune.results.runfolder import RunFolder

FORMATS = ("timm", "onnx")
AGREE = 1e-4  # largest logit difference an export may show against the run's model
CHECK_IMAGES = 16


@dataclass
class Exported:
    path: Path
    images: int  # real images the export was checked on
    max_difference: float  # largest |logit difference| against the run's PyTorch model


def saved_card(folder: str | Path) -> dict:
    files = RunFolder(folder)
    if not files.has_model():
        raise BlocktuneError(f"{files.root} holds no saved model ({files.model_json.name} + "
                             f"{files.weights.name}): pass the --out folder of a finished "
                             "blocktune run or finetune")
    return files.model_card()


def load_saved_model(folder: str | Path, fast_layers: bool = True) -> tuple[BlockModel, dict]:
    """The model a run saved, in eval mode, with its card (``model.json``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    card = saved_card(folder)
    model, _ = build_model(card["model"], len(card["classes"]), card["head"], card["image_size"],
                           pretrained=False, model_args=card.get("model_args"))
    weights = RunFolder(folder).weights
    with parsing(weights):  # cut short, garbage, or other tensors
        model.load_state_dict(load_file(str(weights)))
    if not fast_layers:  # plain PyTorch modules: what exporters and other tools know
        use_fast_layers(model, enabled=False)
    return model.eval(), card


def prepare_images(card: dict, paths) -> torch.Tensor:
    """Images as the saved model expects them (its size, interpolation, mean and std)."""
    pixels = []
    for path in paths:
        if Path(path).is_dir():
            raise BlocktuneError(f"{path} is a folder, not an image: pass image files (e.g. "
                                 f"{Path(path) / '*.jpg'})")
        if not Path(path).is_file():
            raise BlocktuneError(f"image {path} does not exist: pass paths of image files")
        try:
            pixels.append(torch.from_numpy(decode_resized(Path(path), card["image_size"],
                                                          card["interpolation"])))
        except Exception as error:  # noqa: BLE001 - PIL's many decode errors
            raise BlocktuneError(f"cannot read image {path} ({type(error).__name__}): pass "
                                 "a JPEG, PNG or other image PIL can open") from error
    return normalize(torch.stack(pixels), card["mean"], card["std"])


def check_images(folder: Path, card: dict, count: int = CHECK_IMAGES) -> list[Path]:
    """Real images to check an export on: the first of the run's test split."""
    files = RunFolder(folder)
    splits = files.seed_splits()
    if not splits:
        raise BlocktuneError(f"{files.root} has no {files.splits.name}: export needs the run "
                             "folder")
    data = files.saved_config()["data"] if files.is_run() else card["data"]
    try:
        root = open_data(data, download=False).root
    except BlocktuneError as error:
        raise BlocktuneError(f"the run's data is needed to check the export on real images: "
                             f"{error}") from None
    files = read_splits(splits[0])["files"].get("test", [])[:count]
    return [root / f for f in files]


# what each format writes into its folder
EXPORT_FILES = {"timm": {"model.safetensors", "config.json", "README.md"},
                "onnx": {"model.onnx", "model.onnx.data", "model.json"}}


def export(folder: str | Path, fmt: str, out: str | Path | None = None) -> Exported:
    if fmt not in FORMATS:
        raise BlocktuneError(f"unknown export format {fmt!r}: choose {' or '.join(FORMATS)}")
    folder = Path(folder)
    out = Path(out) if out is not None else RunFolder(folder).export / fmt
    if out.exists() and not out.is_dir():
        raise BlocktuneError(f"--out {out} is a file: give a folder for the export")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES[fmt]) \
        if out.is_dir() else []
    if foreign:  # an export writes over its own earlier files, never over a user's
        raise BlocktuneError(f"--out {out} already holds files that are not a {fmt} export's "
                             f"({', '.join(foreign[:3])}): give an empty or new folder")
    return export_timm(folder, out) if fmt == "timm" else export_onnx(folder, out)


def timm_state(model: BlockModel, plain: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The run's weights under a plain timm model's keys: body as it is, linear head as the
    model's classifier."""
    classifier = plain.pretrained_cfg.get("classifier")
    own = plain.state_dict()
    if not classifier or f"{classifier}.weight" not in own:
        raise BlocktuneError(f"{type(plain).__name__} has no single linear classifier timm "
                             "can load the head into: export --format onnx instead")
    state = {k.removeprefix("body.model."): v for k, v in model.state_dict().items()
             if k.startswith("body.model.")}
    state[f"{classifier}.weight"] = model.head.fc.weight.detach()
    state[f"{classifier}.bias"] = model.head.fc.bias.detach()
    return state


def export_timm(folder: Path, out: Path) -> Exported:
    import timm
    from timm.models import save_for_hf

    card = saved_card(folder)
    if card["head"] != "linear":
        raise BlocktuneError(f"the {card['head']!r} head has no timm equivalent (timm's "
                             "classifier is one linear layer): export --format onnx instead, "
                             "or train with --head linear")
    model, card = load_saved_model(folder, fast_layers=False)
    plain = timm.create_model(card["model"], pretrained=False, num_classes=len(card["classes"]),
                              **(card.get("model_args") or {}))
    load_weights_strict(plain, timm_state(model, plain), f"{card['model']} in timm")
    plain.eval()
    images = prepare_images(card, check_images(folder, card))
    with torch.no_grad():
        difference = float((plain(images) - model(images)).abs().max())
    if difference > AGREE:
        raise BlocktuneError(f"timm's {card['model']} head is not global average pooling then a "
                             f"linear layer (its logits differ by {difference:.2g}): export "
                             "--format onnx instead")
    out.mkdir(parents=True, exist_ok=True)
    size = card["image_size"]
    save_for_hf(plain, str(out), model_config={"label_names": list(card["classes"])},
                data_config={"input_size": (3, size, size), "mean": tuple(card["mean"]),
                             "std": tuple(card["std"]), "interpolation": card["interpolation"],
                             "crop_pct": 1.0},
                safe_serialization=True)
    card_text = RunFolder(folder).card
    if card_text.exists():  # the model card goes with the model
        (out / "README.md").write_text(card_text.read_text())
    return Exported(out, len(images), difference)


def export_onnx(folder: Path, out: Path) -> Exported:
    try:
        import onnxruntime
    except ImportError as error:
        raise BlocktuneError("ONNX export needs onnx, onnxscript and onnxruntime: "
                             "pip install 'blocktune[onnx]'") from error
    model, card = load_saved_model(folder, fast_layers=False)
    images = prepare_images(card, check_images(folder, card))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(model, (images[:2],), str(path), input_names=["pixels"],
                          output_names=["logits"], dynamic_shapes={"x": {0: batch}},
                          dynamo=True, verbose=False)
    except Exception as error:  # noqa: BLE001 - exporter errors are many and deep
        raise BlocktuneError(f"torch.onnx.export failed on {card['model']} "
                             f"({type(error).__name__}: {str(error).splitlines()[0]})") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"pixels": images.numpy()})  # another batch size
    with torch.no_grad():
        difference = float(np.abs(onnx_logits - model(images).numpy()).max())
    # the ONNX folder's own copy of the card: what predicting with it needs
    (out / "model.json").write_text(RunFolder(folder).model_json.read_text())
    return Exported(path, len(images), difference)
