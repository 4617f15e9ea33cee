"""Every file blocktune reads back from a run folder, damaged in every way a disk, an editor or
a copy can damage it: each command that reads it answers in one line naming the file (exit 2),
or does its job without needing it (exit 0), and never writes over it."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from blocktune.cli import main

from .conftest import make_image_folder

pytestmark = pytest.mark.slow  # make test-quick leaves these out

TINY = ["--model", "test_efficientnet", "--no-pretrained", "--image-size", "32", "--epochs", "1",
        "--final-epochs", "1", "--batch-size", "8", "--max-candidates", "2"]

# the files of a finished run that some command reads back
FILES = ["config.yaml", "environment.json", "model.json", "model.safetensors", ".blocktune",
         "seed_0/splits.json", "seed_0/candidates.csv", "seed_0/finals.csv",
         "seed_0/choices.json"]


def cut_short(data: bytes, path: Path) -> bytes:
    """Mid-line for text (a CSV cut at a line end is a shorter table, which is no damage: an
    interrupted run leaves one), mid-tensor for weights."""
    half = data[: len(data) // 2]
    return half.rstrip(b"\r\n")[:-1] if half.endswith(b"\n") else half


def garbage(data: bytes, path: Path) -> bytes:
    return bytes(range(256)) * 3 + b"\x00\xff not blocktune's \n,,\"\n"


def wrong_type(data: bytes, path: Path) -> bytes:
    """Well-formed, but not what the file holds: a list for a mapping, another table, other
    tensors."""
    if path.suffix == ".csv":
        return b"name,value\nlr,0.1\n"
    if path.suffix == ".safetensors":
        return save({"not.a.weight": torch.zeros(3)})
    return b"[1, 2, 3]\n"


# what a run publishes from its own records: a resume publishes it again, whole
REPUBLISHED = {"model.json", "model.safetensors", "seed_0/choices.json"}

def wrong_values(data: bytes, path: Path) -> bytes:
    """Well-formed and of the right kind, with values blocktune never writes: an accuracy of
    7.5, a class id past the classes, a negative image size (issue 38, item 15)."""
    import csv
    import io
    import json

    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        field = "val_acc" if "val_acc" in rows[0] else next(iter(rows[0]))
        rows[-1][field] = "7.5"
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode()
    if path.name == "splits.json":
        saved = json.loads(data)
        saved["labels"]["test"][0] = len(saved["classes"]) + 5
        return json.dumps(saved).encode()
    assert path.name == "model.json", path
    return json.dumps({**json.loads(data), "image_size": -5}).encode()


DAMAGES = {"cut-short": cut_short, "garbage": garbage, "wrong-type": wrong_type,
           "wrong-values": wrong_values}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    data = make_image_folder(root / "images", per_class=12)
    out = root / "run"
    assert main(["run", *TINY, "--data", str(data), "--out", str(out)]) == 0
    return data, out


def commands(data: Path, run: Path, tmp: Path) -> dict[str, list[str]]:
    image = next((data / "red").iterdir())
    return {"run": ["run", *TINY, "--data", str(data), "--out", str(run)],
            "status": ["status", str(run)], "report": ["report", str(run)],
            "predict": ["predict", "--run", str(run), str(image)],
            "export": ["export", str(run), "--format", "timm", "--out", str(tmp / "export")]}


# the files whose values blocktune reads back (others get wrong-type, which covers them)
VALUED = {"seed_0/candidates.csv", "seed_0/finals.csv", "seed_0/splits.json", "model.json"}


@pytest.mark.parametrize("name, damage", [
    (name, damage) for name in FILES for damage in sorted(DAMAGES)
    if damage != "wrong-values" or name in VALUED])
def test_a_damaged_file_gives_one_line_and_is_never_written_over(finished, tmp_path, capsys,
                                                                 name, damage):
    data, original = finished
    run = tmp_path / "run"
    shutil.copytree(original, run)
    path = run / name
    broken = DAMAGES[damage](path.read_bytes(), path)
    path.write_bytes(broken)
    capsys.readouterr()
    for command, argv in commands(data, run, tmp_path).items():
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code in (0, 2), (command, code, err)
        if code == 2:
            line = err.splitlines()[-1]
            assert len(err.splitlines()) == 1 or "Traceback" not in err, (command, err)
            assert line.startswith("blocktune: error: ") and "Traceback" not in err
            assert Path(name).name in line, (command, line)
        if command == "run" and code == 0 and name in REPUBLISHED:
            broken = path.read_bytes()  # published anew from the seed's own files
            continue
        assert path.read_bytes() == broken, f"{command} wrote over the damaged {name}"


def _edit_last_row(path: Path, field: str, change) -> None:
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    rows[-1][field] = change(rows[-1][field])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue())


@pytest.mark.parametrize("name, field, change, words", [
    ("finals.csv", "test_pred", lambda t: " ".join(t.split()[:-1]), "predictions for the"),
    ("candidates.csv", "val_pred", lambda t: " ".join(["99", *t.split()[1:]]), "names class 99"),
    ("finals.csv", "status", lambda t: "great", "status 'great'"),
    ("candidates.csv", "seconds", lambda t: "-1", "seconds = -1.0"),
    ("finals.csv", "test_acc", lambda t: "nan", None),  # a failed final's: allowed
    ("candidates.csv", "val_acc", lambda t: "nan", "has no accuracy"),
    ("finals.csv", "trained_on", lambda t: "everything", "trained_on 'everything'"),
], ids=["test_pred-short", "class-id", "status", "seconds", "nan-test", "nan-val",
        "trained_on"])
def test_records_that_parse_but_disagree_with_the_run_are_damage(finished, tmp_path, capsys,
                                                                 name, field, change, words):
    data, original = finished
    run = tmp_path / "run"
    shutil.copytree(original, run)
    path = run / "seed_0" / name
    _edit_last_row(path, field, change)
    if name == "finals.csv" and words is None:
        _edit_last_row(path, "status", lambda t: "failed")
    capsys.readouterr()
    code = main(["status", str(run)])
    err = capsys.readouterr().err.strip()
    if words is None:  # a failed final is no damage: status says it failed, exit 1
        assert code == 1 and "1 trial(s) failed" in err and "damaged" not in err, err
        return
    assert code == 2 and err.startswith("blocktune: error: ") and name in err, err
    assert words in err, err


@pytest.mark.parametrize("name", ["seed_0/candidates.csv", "seed_0/finals.csv", "seed_0"])
def test_an_empty_file_or_a_file_for_a_folder_is_damage_not_nothing_done(finished, tmp_path,
                                                                         capsys, name):
    # item 15: a 0-byte CSV read as "nothing done" beside "model saved"; seed_0 replaced by a
    # file read as "not started"
    data, original = finished
    run = tmp_path / "run"
    shutil.copytree(original, run)
    path = run / name
    if path.is_dir():
        shutil.rmtree(path)
    path.write_bytes(b"")
    capsys.readouterr()
    for command, argv in commands(data, run, tmp_path).items():
        if command in ("predict", "export"):
            continue  # they read the published model, not these files
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("blocktune: error: "), (command, err)
        assert Path(name).name in err.splitlines()[-1], (command, err)
        assert path.read_bytes() == b"", f"{command} wrote over the damaged {name}"
