"""Sound 3 (issue 38): each kind of defect, its members parametrized — numbers beyond what the
code can hold, keys that change rows but were no resume keys, data whose classes changed under
a run, zero variance read as certainty, YAML that is not what it seems, an item given twice, a
damaged final published over a good model, a seed left open on an early exit."""

import dataclasses
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from blocktune.cli import main
from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.stats import compare_over_seeds
from blocktune.runner.context import SeedContext
from blocktune.runner.search import run

from .conftest import make_image_folder
from .test_config import as_flag_value, one_line, shaped
from .test_search import tiny_config

HINTS = typing.get_type_hints(RunConfig)


def _numeric(f) -> bool:
    hint = HINTS[f.name]
    inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if typing.get_origin(hint) is list:
        inner = list(typing.get_args(hint))
    return any(a in (int, float) for a in inner) and typing.get_origin(hint) is not dict


NUMERIC = [f for f in dataclasses.fields(RunConfig) if _numeric(f)]


@pytest.mark.parametrize("f", NUMERIC, ids=[f.name for f in NUMERIC])
def test_every_number_has_a_bound_it_can_honour_and_beyond_it_is_one_line(f, tmp_path, capsys):
    high = f.metadata["high"]
    hint = HINTS[f.name]
    floats = any(a is float for a in typing.get_args(hint)) or hint is float
    assert high is not None and (high < 3e38 if floats else high < 2**63), f.name
    beyond = high * 10 if floats else high * 2**40
    value = shaped(f, beyond)
    flag = "--" + f.name.replace("_", "-")
    err = one_line(capsys, ["run", "--out", str(tmp_path / "o"), flag, as_flag_value(value)])
    assert f"{f.name} = " in err and f"at most {high}" in err, err
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({f.name: value}))
    err = one_line(capsys, ["run", "--out", str(tmp_path / "o"), "--config",
                            str(tmp_path / "c.yaml")])
    assert f"at most {high}" in err, err


LISTS = [("seeds", "0,0", "seed 0 is given twice"), ("methods", "lp-ft,lp-ft", "'lp-ft'"),
         ("strategies", "block,block", "'block'"), ("ranked_k", "3,3", "3 is given twice"),
         ("delimiters", "pool,pool", "'pool'")]


@pytest.mark.parametrize("key, value, words", LISTS, ids=[k for k, _, _ in LISTS])
def test_an_item_given_twice_is_one_line(key, value, words, tmp_path, capsys):
    flag = "--" + key.replace("_", "-")
    err = one_line(capsys, ["run", "--out", str(tmp_path / "o"), flag, value])
    assert words in err and "given twice" in err, err


@pytest.mark.parametrize("content, words", [
    (b"epochs: 2\nepochs: 3\n", "key 'epochs' is given twice"),
    ("epochs: 2\n# caf\u00e9\n".encode("latin-1"), "UnicodeDecodeError"),
], ids=["duplicate-key", "not-utf8"])
def test_a_config_file_that_is_not_what_it_seems_is_one_line(content, words, tmp_path, capsys):
    (tmp_path / "c.yaml").write_bytes(content)
    err = one_line(capsys, ["run", "--out", str(tmp_path / "o"), "--config",
                            str(tmp_path / "c.yaml")])
    assert words in err, err


ROW_KEYS = [f.name for f in dataclasses.fields(RunConfig) if f.name in ("baselines", "cache")]


@pytest.mark.parametrize("key", ROW_KEYS)
def test_a_key_that_changes_rows_cannot_change_on_resume(key, image_folder, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(image_folder, max_candidates=1, epochs=1, final_epochs=1), out)
    with pytest.raises(BlocktuneError, match=key):
        run(tiny_config(image_folder, max_candidates=1, epochs=1, final_epochs=1,
                        **{key: False}), out)


def tiny_command(command: str, data, out) -> list[str]:
    """A tiny ``run`` or ``finetune`` of ``data`` into ``out``, as a user would type it."""
    base = ["--data", str(data), "--model", "test_efficientnet", "--no-pretrained",
            "--image-size", "32", "--epochs", "1", "--final-epochs", "1", "--batch-size", "8",
            "--out", str(out)]
    return ["run", *base, "--max-candidates", "1"] if command == "run" else \
        ["finetune", *base, "--train", "head"]


@pytest.mark.parametrize("change", ["added", "removed", "renamed"])
@pytest.mark.parametrize("command", ["run", "finetune"])
def test_a_class_set_changed_under_a_run_is_refused_on_resume(change, command, tmp_path,
                                                              capsys):
    data = make_image_folder(tmp_path / "images", classes=("red", "green", "blue", "grey"),
                             per_class=12)
    argv = tiny_command(command, data, tmp_path / "out")
    assert main(argv) == 0
    capsys.readouterr()
    if change == "added":
        make_image_folder(tmp_path / "extra", classes=("amber",), per_class=12)
        shutil.move(tmp_path / "extra" / "amber", data / "amber")
    elif change == "removed":  # its files were in the split: the old check caught those too
        shutil.rmtree(data / "grey")
    else:
        (data / "grey").rename(data / "aaa_grey")
    err = one_line(capsys, argv)
    assert "classes" in err and "start a new run folder" in err, err


def test_equal_differences_on_every_seed_are_no_claim():
    for differences in ([0.02, 0.02], [0.02, 0.02, 0.02], [-0.01, -0.01]):
        comparison = compare_over_seeds("A", "B", differences, images=100)
        assert comparison.word.startswith("no claim")
    assert compare_over_seeds("A", "B", [0.02, 0.03, 0.025], 100).word in (
        "better", "no clear difference")


def test_a_damaged_final_never_replaces_the_published_model(image_folder, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(image_folder, max_candidates=1, epochs=1, final_epochs=1)
    run(config, out)
    published = (out / "model.safetensors").read_bytes()
    import json

    method = json.loads((out / "model.json").read_text())["method"]
    weights = out / "seed_0" / f"{method}.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    with pytest.raises(BlocktuneError, match="damaged or missing"):
        run(config, out)
    assert (out / "model.safetensors").read_bytes() == published


def test_a_seed_is_closed_however_it_ends(image_folder, tmp_path, monkeypatch):
    closed = []
    real_close = SeedContext.close

    def close(self):
        closed.append(self.seed)
        real_close(self)

    monkeypatch.setattr(SeedContext, "close", close)
    # a spent budget leaves the search for a resume: the seed is closed all the same
    run(tiny_config(image_folder, time_budget=0), tmp_path / "a")
    assert closed == [0]

    class Boom(Exception):
        pass

    from blocktune.core.callbacks import LambdaCallback

    def explode(row, best):
        raise Boom

    with pytest.raises(Boom):
        run(tiny_config(image_folder), tmp_path / "b",
            [LambdaCallback(on_candidate_end=explode)])
    assert closed == [0, 0]


def test_test_is_scored_through_the_path_val_took(image_folder, one_thread):
    # test made of the val images: scored by the test path, they give val's exact predictions
    import torch

    from blocktune.data import DecodedImages, decode_folder, scan_folder, stratified_split
    from blocktune.models.build import data_config
    from blocktune.models.groups import StrategyOptions, candidates
    from blocktune.training.workbench import Workbench

    config = tiny_config(image_folder, final_epochs=2)
    decoded = decode_folder(scan_folder(image_folder), 32)
    split = stratified_split(decoded.labels.tolist(), config.fractions, seed=0)
    val = torch.tensor(split["val"])
    n = len(decoded.labels)  # the val images again, as the test split
    images = DecodedImages(torch.cat([decoded.pixels, decoded.pixels[val]]),
                           decoded.files + [f"copy/{decoded.files[i]}" for i in split["val"]],
                           torch.cat([decoded.labels, decoded.labels[val]]), decoded.classes, [])
    split["test"] = list(range(n, n + len(val)))
    bench = Workbench(config, 0, images, split, data_config(config.model, config.image_size))
    middle = candidates(bench.walk, "block", StrategyOptions())[2].layers  # folded pairs
    assert bench.fold
    for group in ((), middle, None):
        outcome = bench.fit_final(group)
        assert outcome.test_pred == outcome.result.val_pred, group
        assert outcome.test_acc == outcome.result.best_val_acc, group
        assert outcome.test_loss == outcome.result.best_val_loss, group  # to the last bit


TINY_RUN = ["--model", "test_efficientnet", "--no-pretrained", "--image-size", "32",
            "--epochs", "1", "--final-epochs", "1", "--batch-size", "8", "--max-candidates", "1",
            "--methods", ""]


@pytest.mark.parametrize("obstacle", [
    "folder:summary.csv", "folder:report.md", "folder:README.md", "folder:seed_0/choices.json",
    "file:plots", "file:seed_0", "out-under-a-file", "proc"])
def test_paths_the_system_refuses_are_one_line(obstacle, image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    kind, _, name = obstacle.partition(":")
    if kind == "folder":
        (out / name).mkdir(parents=True)
    elif kind == "file":
        out.mkdir()
        (out / name).write_text("mine")
    elif kind == "out-under-a-file":
        (tmp_path / "afile").write_text("mine")
        out = tmp_path / "afile" / "sub"
    else:
        out = Path("/proc/blocktune-test-run")
    err = one_line(capsys, ["run", "--data", str(image_folder), *TINY_RUN, "--out", str(out)])
    assert "--out" in err or "move it away" in err, err


def test_a_rule_whose_region_holds_no_candidate_has_its_fallback_planned():
    # one block spans layers 1-3 of four: none lies in the last quarter (layer 3 on)
    import torch.nn as nn

    from blocktune.models.groups import StrategyOptions, candidates, last_quarter_start
    from blocktune.models.layers import walk

    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1),
                         nn.Conv2d(4, 4, 1))
    model_walk = walk(body, input_size=(3, 16, 16))
    every = candidates(model_walk, "block", StrategyOptions())
    assert [c.layers for c in every] == [(1, 2, 3), (0,)]
    planned = candidates(model_walk, "block", StrategyOptions(picks_from=last_quarter_start))
    assert [c.layers for c in planned] == [c.layers for c in every]


@pytest.mark.parametrize("name", ["with\nnewline", "with\ttab"])
def test_a_class_name_with_a_control_character_is_one_line(name, tmp_path):
    from blocktune.data import scan_folder

    data = make_image_folder(tmp_path / "images", classes=("red", name), per_class=3)
    with pytest.raises(BlocktuneError, match="control character"):
        scan_folder(data)


def test_a_class_whose_every_file_is_unreadable_is_one_line(tmp_path):
    from blocktune.data import decode_folder, scan_folder

    data = make_image_folder(tmp_path / "images", classes=("red", "green", "blue"), per_class=3)
    for path in (data / "blue").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(BlocktuneError, match="blue holds no readable image"):
        decode_folder(scan_folder(data), 32)


def test_imagenet_defaults_only_for_a_model_without_a_pretrained_config_and_said(
        image_folder, tmp_path, caplog):
    import json

    import torch.nn as nn

    from blocktune.models.build import data_config

    plain = nn.Sequential(nn.Conv2d(3, 4, 3))  # no pretrained config: the one fallback
    with caplog.at_level("WARNING"):
        cfg = data_config(plain)
    assert "no pretrained config" in cfg.source and "ImageNet" in caplog.text
    assert data_config("test_efficientnet").source == "timm's pretrained config"
    run(tiny_config(image_folder, max_candidates=1, epochs=1, final_epochs=1), tmp_path / "r")
    environment = json.loads((tmp_path / "r" / "environment.json").read_text())
    assert environment["preprocessing"] == "timm's pretrained config"


def test_status_and_report_on_a_finetune_folder(image_folder, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["finetune", "--data", str(image_folder), "--model", "test_efficientnet",
            "--no-pretrained", "--image-size", "32", "--final-epochs", "1", "--batch-size", "8",
            "--train", "head", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    said = capsys.readouterr().out
    assert "a finetune of test_efficientnet" in said and "trained head: val" in said
    err = one_line(capsys, ["report", str(out)])
    assert "is a finetune folder" in err
    assert main(argv) == 0  # finetune still owns its folder: nothing foreign was written


@pytest.mark.parametrize("command", ["run", "finetune"])
def test_rows_without_their_config_are_damage(command, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--data", str(image_folder), "--model", "test_efficientnet", "--no-pretrained",
            "--image-size", "32", "--final-epochs", "1", "--batch-size", "8", "--out", str(out)]
    argv = ["run", *base, "--epochs", "1", "--max-candidates", "1", "--methods", ""] \
        if command == "run" else ["finetune", *base, "--train", "head"]
    assert main(argv) == 0
    capsys.readouterr()
    (out / "config.yaml").unlink()
    err = one_line(capsys, [*argv, "--final-epochs", "2"])  # other settings, same folder
    assert "not the config.yaml they were made with" in err, err


@pytest.mark.parametrize("command", ["run", "finetune"])
def test_a_photo_replaced_in_place_under_a_run_is_refused_on_resume(command, tmp_path, capsys):
    # item 17: its rows were scored on the old photo; the store noticed the new bytes, the
    # split did not
    from PIL import Image

    data = make_image_folder(tmp_path / "images", per_class=12)
    argv = tiny_command(command, data, tmp_path / "out")
    assert main(argv) == 0
    capsys.readouterr()
    photo = data / "red" / "003.jpg"
    Image.new("RGB", (40, 40), (0, 0, 255)).save(photo)  # same name, other content
    err = one_line(capsys, argv)
    assert "changed content since the run started" in err and "003.jpg" in err, err


def test_a_decoded_image_store_cut_short_is_decoded_again(image_folder, tmp_path, monkeypatch):
    # item 19: the memory-mapped pixels file cut short was a traceback on the next run
    from blocktune.data import decode_folder, scan_folder

    monkeypatch.setenv("BLOCKTUNE_CACHE_DIR", str(tmp_path / "cache"))
    folder = scan_folder(image_folder)
    first = decode_folder(folder, 32)
    [pixels] = list((tmp_path / "cache").rglob("pixels-*.npy"))
    pixels.write_bytes(pixels.read_bytes()[: pixels.stat().st_size // 2])
    again = decode_folder(folder, 32)
    assert torch.equal(again.pixels, first.pixels) and again.files == first.files
    # an array of another shape where the pixels should be: decoded again too
    [pixels] = list((tmp_path / "cache").rglob("pixels-*.npy"))
    np.save(pixels, np.zeros((2, 3, 8, 8), dtype=np.uint8))
    assert torch.equal(decode_folder(folder, 32).pixels, first.pixels)


def test_an_hf_hub_model_out_of_reach_is_one_line(image_folder, tmp_path):
    # item 19: offline with an empty cache, timm's config read was a traceback
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "blocktune.cli", "run", "--model",
                           "hf-hub:nobody/nothing", "--data", str(image_folder), "--out",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("blocktune: ")]
    assert len(lines) == 1 and "hf-hub:nobody/nothing" in lines[0], done.stderr[-2000:]
    assert "Hugging Face Hub did not give it" in lines[0] and "Traceback" not in done.stderr
