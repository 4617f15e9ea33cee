"""The commands, and every bad input giving one line that says what to do, exit status 2."""

import subprocess
import sys

import pytest
import timm
import torch

from blocktune.cli import main

from .conftest import make_image_folder

TINY = ["--model", "test_efficientnet", "--no-pretrained", "--image-size", "32", "--epochs", "1",
        "--final-epochs", "1", "--batch-size", "8"]


def error_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("blocktune: error: ") and "\n" not in err and "Traceback" not in err
    return err


def bad_inputs(tmp_path):
    """(name, argv, expected words) for every bad input the product must explain."""
    good = make_image_folder(tmp_path / "good", per_class=12)
    make_image_folder(tmp_path / "one", classes=("only",), per_class=10)
    (tmp_path / "empty").mkdir()
    few = make_image_folder(tmp_path / "few", per_class=12)
    for extra in sorted((few / "blue").iterdir())[3:]:
        extra.unlink()
    corrupt = make_image_folder(tmp_path / "corrupt", per_class=12)
    (corrupt / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.pth")
    (tmp_path / "bad.yaml").write_text("modle: resnet50\n")
    run = ["run", *TINY, "--out", str(tmp_path / "out")]
    return [
        ("missing data folder", [*run, "--data", str(tmp_path / "nope")], "does not exist"),
        ("empty data folder", [*run, "--data", str(tmp_path / "empty")], "holds no images"),
        ("one class", [*run, "--data", str(tmp_path / "one")], "only one class"),
        ("class too small for the split", [*run, "--data", str(few)], "class 'blue' has 3"),
        ("corrupt image with --strict", [*run, "--data", str(corrupt), "--strict"],
         "drop --strict"),
        ("unknown model", ["run", "--model", "resnet5O", "--data", str(good), "--out",
                           str(tmp_path / "o2")], "Did you mean"),
        ("weights of another architecture", [*run, "--data", str(good), "--weights",
                                             str(tmp_path / "resnet.pth")], "another architecture"),
        ("image size too small", ["run", "--model", "vgg16", "--no-pretrained", "--head",
                                  "paper", "--image-size", "16", "--data", str(good), "--out",
                                  str(tmp_path / "o3")], "too small for vgg16"),
        ("unknown strategy", [*run, "--data", str(good), "--strategy", "blocks"],
         "strategies = 'blocks' is not allowed: unknown 'blocks'"),
        ("unknown config key", [*run, "--data", str(good), "--config",
                                str(tmp_path / "bad.yaml")], "unknown config key 'modle'"),
        ("absent device", [*run, "--data", str(good), "--device", "cuda:99"],
         "not available on this machine"),
        ("not a run folder", ["report", str(tmp_path)], "not a run folder"),
        ("empty --train", ["finetune", *TINY, "--data", str(good), "--train", "", "--out",
                           str(tmp_path / "o4")], "--train '' names no layer"),
        ("predict without a model", ["predict", "--run", str(tmp_path), "x.jpg"],
         "holds no saved model"),
        ("seeds not numbers", [*run, "--data", str(good), "--seeds", "a,b"], "whole numbers"),
        ("negative lr", [*run, "--data", str(good), "--lr", "-1"], "lr = -1.0 is out of range"),
        ("zero batch size", [*run, "--data", str(good), "--batch-size", "0"],
         "batch_size = 0 is out of range"),
        ("negative time budget", [*run, "--data", str(good), "--time-budget", "-1"],
         "time_budget = -1.0 is out of range"),
        ("--out naming a file", [*run, "--data", str(good), "--out", str(tmp_path / "bad.yaml")],
         "is a file, not a folder"),
    ]


def test_every_bad_input_gives_one_line(tmp_path, capsys):
    for name, argv, words in bad_inputs(tmp_path):
        assert words in error_line(capsys, argv), name


def test_error_has_no_traceback_in_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "blocktune.cli", "run", "--data",
                             str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_corrupt_images_are_skipped_without_strict(tmp_path, caplog):
    folder = make_image_folder(tmp_path / "images", per_class=12)
    (folder / "red" / "broken.jpg").write_bytes(b"")
    assert main(["run", *TINY, "--data", str(folder), "--max-candidates", "1", "--out",
                 str(tmp_path / "out")]) == 0
    assert "1 file(s)" in caplog.text and "red/broken.jpg" in caplog.text


def test_groups_command_prints_the_table_and_plot(tmp_path, capsys):
    plot = tmp_path / "fig2.png"
    assert main(["groups", "--model", "vgg16", "--strategy", "block", "--delimiters", "pool",
                 "--image-size", "64", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "5 candidates, 13 layers" in out
    assert "model.features.24 … model.features.28" in out
    assert plot.stat().st_size > 1000


def test_finetune_then_predict(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "images", per_class=20)
    out = tmp_path / "ft"
    assert main(["finetune", *TINY, "--final-epochs", "10", "--lr", "0.05", "--patience", "10",
                 "--data", str(folder), "--train", "head", "--out", str(out)]) == 0
    for name in ("config.yaml", "splits.json", "metrics.csv", "result.json", "model.safetensors"):
        assert (out / name).exists(), name
    capsys.readouterr()
    # unseen photos of each colour come back as their colour
    unseen = make_image_folder(tmp_path / "unseen", per_class=2, seed=99)
    images = [unseen / c / "001.jpg" for c in ("red", "green", "blue")]
    # a path with a TAB, a newline and a quote stays one field of one line (csv quoting)
    odd = unseen / "blue" / 'a\tb\n"c".jpg'
    odd.write_bytes(images[2].read_bytes())
    images.append(odd)
    assert main(["predict", "--run", str(out), *map(str, images)]) == 0
    import csv
    import io

    lines = list(csv.reader(io.StringIO(capsys.readouterr().out), delimiter="\t"))
    assert [path for path, _, _ in lines] == list(map(str, images))
    lines = lines[:3]
    assert [name for _, name, _ in lines] == ["red", "green", "blue"]
    assert all(1 / 3 < float(probability) <= 1 for _, _, probability in lines)


def test_finetune_by_regex_trains_only_those_layers(tmp_path):
    import json

    folder = make_image_folder(tmp_path / "images", per_class=12)
    out = tmp_path / "ft"
    assert main(["finetune", *TINY, "--data", str(folder), "--train", r"^model\.bn2$",
                 "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["layers"] == 1
    bn2 = dict(timm.create_model("test_efficientnet").named_modules())["bn2"]
    head = bn2.num_features * 3 + 3
    assert result["trainable_params"] == 2 * bn2.num_features + head


@pytest.mark.parametrize("spec, words", [("nothing_matches", "matches no layer"),
                                         ("(", "neither layer names nor a valid regex")])
def test_finetune_bad_train_spec(tmp_path, capsys, spec, words):
    folder = make_image_folder(tmp_path / "images", per_class=12)
    argv = ["finetune", *TINY, "--data", str(folder), "--train", spec, "--out", str(tmp_path / "o")]
    assert words in error_line(capsys, argv)


def test_baseline_functions(tmp_path):
    from blocktune import api

    folder = make_image_folder(tmp_path / "images", per_class=12)
    config = api.RunConfig(model="test_efficientnet", pretrained=False, data=str(folder),
                           image_size=32, final_epochs=1, batch_size=8)
    head = api.baseline_head(config, tmp_path / "b1")
    everything = api.baseline_all(config, tmp_path / "b2")
    assert head["trainable_params"] < everything["trainable_params"]
    assert 0 <= head["test_acc"] <= 1 and 0 <= everything["test_acc"] <= 1


def test_config_precedence_defaults_then_file_then_flags(tmp_path):
    from blocktune.cli import _config, build_parser

    (tmp_path / "run.yaml").write_text("epochs: 7\nimage_size: 96\n")
    args = build_parser().parse_args(["run", "--config", str(tmp_path / "run.yaml"),
                                      "--image-size", "64", "--out", str(tmp_path)])
    config = _config(args, base={"epochs": 2, "image_size": 128, "final_epochs": 9})
    assert (config.epochs, config.image_size, config.final_epochs) == (7, 64, 9)


def test_a_run_whose_trials_failed_exits_1_with_one_line(tmp_path, capsys):
    # lr 1e30 makes some losses non-finite: those rows are recorded as failed, the rest of
    # the run finishes and is reported, and the exit status says it was not a clean run
    data = make_image_folder(tmp_path / "images", per_class=16)
    out = tmp_path / "out"
    code = main(["run", *TINY, "--data", str(data), "--lr", "1e30", "--max-candidates", "2",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1, err
    assert err.startswith("blocktune: error: ") and "trial(s) failed (first: seed 0" in err
    assert (out / "report.md").exists()


def _someone_elses(folder):
    folder.mkdir(parents=True)
    mine = {"README.md": "my notes\n", "report.md": "my report\n", "summary.csv": "a,b\n1,2\n",
            "config.json": "{}\n"}
    for name, text in mine.items():
        (folder / name).write_text(text)
    return mine


OUT_COMMANDS = {
    "run": lambda data, out, run: ["run", *TINY, "--data", str(data), "--out", str(out)],
    "finetune": lambda data, out, run: ["finetune", *TINY, "--data", str(data), "--train",
                                        "head", "--out", str(out)],
    "export-timm": lambda data, out, run: ["export", str(run), "--format", "timm", "--out",
                                           str(out)],
    "export-onnx": lambda data, out, run: ["export", str(run), "--format", "onnx", "--out",
                                           str(out)],
}


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_no_command_writes_over_someone_elses_folder(command, tmp_path, capsys):
    data = make_image_folder(tmp_path / "images", per_class=8)
    out = tmp_path / "mine"
    mine = _someone_elses(out)
    err = error_line(capsys, OUT_COMMANDS[command](data, out, tmp_path / "a-run"))
    assert "already holds files that are not" in err and "give an empty or new folder" in err
    assert {p.name: p.read_text() for p in out.iterdir()} == mine  # untouched, nothing added


def test_finetune_refuses_a_run_folder_and_run_a_finetune_folder(tmp_path, capsys):
    data = make_image_folder(tmp_path / "images", per_class=8)
    a_run = tmp_path / "a-run"
    (a_run / "seed_0").mkdir(parents=True)
    (a_run / "config.yaml").write_text("model: test_efficientnet\n")  # made before markers
    err = error_line(capsys, OUT_COMMANDS["finetune"](data, a_run, None))
    assert "holds a blocktune run, not a finetune" in err
    a_finetune = tmp_path / "a-finetune"
    a_finetune.mkdir()
    (a_finetune / ".blocktune").write_text('{"command": "finetune"}')
    err = error_line(capsys, OUT_COMMANDS["run"](data, a_finetune, None))
    assert "holds a blocktune finetune, not a run" in err


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capsys):
    few = make_image_folder(tmp_path / "few", per_class=12)
    for extra in sorted((few / "blue").iterdir())[3:]:
        extra.unlink()
    out = tmp_path / "new" / "out"
    err = error_line(capsys, ["run", *TINY, "--data", str(few), "--out", str(out)])
    assert "class 'blue' has 3" in err
    assert not (tmp_path / "new").exists()


def test_the_run_display_says_each_thing_once_and_plainly(tmp_path, capsys):
    # what `make demo` printed: a "cli.py:106" column on every line, "best 0.000" on the
    # baselines' lines, and the duplicate-photo warning twice (a WARNING and a note)
    import shutil

    data = make_image_folder(tmp_path / "images", per_class=12)
    for copy in range(6):  # copies of one photo: some land in different splits
        shutil.copy(data / "red" / "000.jpg", data / "red" / f"copy{copy}.jpg")
    assert main(["run", *TINY, "--data", str(data), "--out", str(tmp_path / "out"),
                 "--max-candidates", "2", "--verbose"]) == 0
    err = capsys.readouterr().err
    assert err.count("exact-duplicate image(s) lie in two splits") == 1
    assert "cli.py:" not in err
    baseline_lines = [line for line in err.splitlines() if line.strip().startswith("Baseline")
                      and "#0" in line]
    assert baseline_lines and not any("best" in line for line in baseline_lines)
