"""Fault injection on the run folder: SIGKILL at seeded points of decoding, the search, the
finals, an atomic write and the report; a full disk during a write; a read-only run folder.
Each ends in a one-line error, or, after a resume, in the table an uninterrupted run gives,
and never in a half-written file a later run trusts.

More kill points: ``BLOCKTUNE_FAULT_POINTS=20 pytest tests/test_faults.py``.
"""

import errno
import os
import random
import shutil
import subprocess
import sys

import pytest

from blocktune.cli import main
from blocktune.core.io import read_csv

from .conftest import make_image_folder

pytestmark = pytest.mark.slow  # make test-quick leaves these out

CANDIDATE = ["strategy", "index", "layers", "layer_indices", "trained_params", "val_acc",
             "val_loss", "epochs", "best_epoch", "status", "rung"]
FINAL = ["method", "group", "val_acc", "test_acc", "status"]


def argv(data, out):
    return ["run", "--model", "test_efficientnet", "--no-pretrained", "--data", str(data),
            "--image-size", "32", "--epochs", "2", "--final-epochs", "2", "--batch-size", "8",
            "--lr", "0.01", "--strategy", "block", "--max-candidates", "3", "--out", str(out)]


def table(out):
    """Everything a run's results are: both tables, the split, the saved model."""
    seed = out / "seed_0"
    return ([{k: r[k] for k in CANDIDATE} for r in read_csv(seed / "candidates.csv")],
            [{k: r[k] for k in FINAL} for r in read_csv(seed / "finals.csv")],
            (seed / "splits.json").read_text(),
            (out / "model.safetensors").read_bytes() if (out / "model.safetensors").exists()
            else None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("faults") / "images", per_class=16)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "reference"
    cli(argv(data, out), cache=out.parent / "cache")
    return table(out)


def cli(args, fault=None, cache=None, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("BLOCKTUNE_FAULT", None)
    if fault:
        env["BLOCKTUNE_FAULT"] = fault
    if cache is not None:
        env["BLOCKTUNE_CACHE_DIR"] = str(cache)
    result = subprocess.run([sys.executable, "-m", "blocktune.cli", *args], env=env,
                            capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def kill_points():
    """Seeded (point, n): the n-th time the run reaches the point, it is SIGKILLed. A run
    of argv() reaches decode 48 times, epoch 16, candidate 5, final 3, write 20+, report 1."""
    rng = random.Random(11)
    bounds = {"decode": 48, "epoch": 16, "candidate": 5, "final": 3, "write": 20, "report": 1}
    count = int(os.environ.get("BLOCKTUNE_FAULT_POINTS", "1"))
    return [(point, rng.randint(1, bounds[point])) for point in bounds for _ in range(count)]


@pytest.mark.parametrize("point, n", kill_points(), ids=lambda v: str(v))
def test_sigkill_then_resume_gives_the_uninterrupted_table(point, n, data, reference, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"  # a fresh store: decoding is killed too
    killed = cli(argv(data, out), fault=f"{point}:{n}", cache=cache, check=False)
    assert killed.returncode == -9, f"{point}:{n} was never reached: nothing was tested"
    # whatever the kill left is readable: every CSV parses, the store is not trusted half-made
    for csv in out.rglob("*.csv"):
        read_csv(csv)
    cli(argv(data, out), cache=cache)  # the resume
    assert table(out) == reference
    assert not list(out.rglob(".*.tmp")) or point == "write"  # only a kill mid-write leaves one
    assert main(["report", str(out)]) == 0


def test_a_full_disk_during_a_write_gives_one_line_then_resumes(data, reference, tmp_path,
                                                                  monkeypatch, capsys,
                                                                  one_thread):
    import blocktune.core.io as io_module

    out = tmp_path / "run"
    real, calls = io_module.os.fsync, {"n": 0}

    def full_disk(fd):
        calls["n"] += 1
        if calls["n"] == 6:  # a few files in: config, split, some rows
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(io_module.os, "fsync", full_disk)
    assert main(argv(data, out)) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
    assert [line for line in lines if "error" in line] == lines[-1:]
    assert lines[-1].startswith(f"blocktune: error: No space left on device writing {out}")
    assert lines[-1].endswith("run the same command to resume (finished work is saved)")
    assert not list(out.rglob(".*.tmp"))  # the failed write removed its temp file
    monkeypatch.setattr(io_module.os, "fsync", real)
    assert main(argv(data, out)) == 0
    assert table(out) == reference


def _read_only(folder):
    """Make ``folder`` read-only for this process: permissions, or (as root, whom permissions
    do not stop) a read-only bind mount. None if neither is possible."""
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        return lambda: [p.chmod(0o755) for p in [folder, *folder.rglob("*")] if p.is_dir()]
    if shutil.which("mount") is None:
        return None
    bound = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)],
                           capture_output=True)
    if bound.returncode != 0:
        return None
    return lambda: subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_run_folder_gives_one_line(data, reference, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    cli(argv(data, out))
    undo = _read_only(out)
    if undo is None:
        pytest.skip("cannot make a read-only folder here")
    try:
        assert main(argv(data, out)) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"blocktune: error: run folder {out} is not writable: fix its " \
                      "permissions, or use another --out folder"
        assert main(["status", str(out)]) == 0  # reading still works
    finally:
        undo()
    assert table(out) == reference
