"""The run folder's one owner: its layout, its reads and writes, and run folders written by an
older blocktune (``tests/fixtures/run_1fc0959``, made by commit 1fc0959: a run SIGKILLed after
its third search row, and a finished run with its weights and report removed). Their images were
``make_image_folder(images, per_class=12, size=24)``: the test makes them again, byte for byte."""

import shutil
from pathlib import Path

import pytest

from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.io import read_csv
from blocktune.results.report import build_report
from blocktune.results.runfolder import RUN_FILES, RunFolder
from blocktune.results.status import run_status
from blocktune.runner.search import run

from .conftest import make_image_folder
from .test_search import STABLE

FIXTURE = Path(__file__).parent / "fixtures" / "run_1fc0959"


@pytest.fixture
def old(tmp_path, monkeypatch):
    """A copy of the fixture, as the working directory (its config names data "images")."""
    copy = tmp_path / "old"
    shutil.copytree(FIXTURE, copy)
    make_image_folder(copy / "images", per_class=12, size=24)
    monkeypatch.chdir(copy)
    return copy


def test_every_top_level_file_a_run_writes_is_one_the_folder_names():
    files = RunFolder("r")
    named = {files.config, files.environment, files.summary, files.weights, files.model_json,
             files.card, files.report_md, files.report_html, files.plots, files.tensorboard,
             files.export, files.metrics, files.splits, files.cache}
    assert {p.name for p in named} <= RUN_FILES
    seed = files.seed(3)
    assert seed.root == Path("r/seed_3") and seed.weights("block") == Path("r/seed_3/block.safetensors")


def test_a_saved_config_loads_where_its_data_folder_does_not_exist(tmp_path):
    # read from elsewhere: "images" does not resolve, and need not
    saved = RunFolder(FIXTURE / "finished").saved_config()
    assert saved["data"] == "images" and not Path("images").exists()
    assert RunConfig.from_dict(saved).model == "test_efficientnet"


def test_a_run_killed_by_an_older_version_resumes_to_what_a_fresh_run_gives(old):
    config = RunConfig.from_dict(RunFolder("killed").saved_config())
    before = read_csv(old / "killed" / "seed_0" / "candidates.csv")
    assert len(before) == 3 and "score" not in before[0]  # the old columns
    run(config, "killed")
    run(config, "fresh")
    resumed = {tuple(r[k] for k in STABLE) for r in read_csv(old / "killed/seed_0/candidates.csv")}
    fresh = {tuple(r[k] for k in STABLE) for r in read_csv(old / "fresh/seed_0/candidates.csv")}
    # the old rows are kept as they were, none is trained again; the plan's rows are the same
    assert fresh <= resumed and {tuple(r[k] for k in STABLE) for r in before} <= resumed
    fields = ["method", "group", "val_acc", "test_acc"]
    assert [{k: r[k] for k in fields} for r in read_csv(old / "killed/seed_0/finals.csv")] == \
        [{k: r[k] for k in fields} for r in read_csv(old / "fresh/seed_0/finals.csv")]
    assert (old / "killed" / "model.safetensors").exists()


def test_a_finished_run_of_an_older_version_reports_and_says_its_status(old):
    report = build_report("finished").read_text()
    assert "## Verdict" in report and "Chosen: **" in report  # no choices.json: its final's
    lines = run_status("finished")
    assert lines[1].startswith("seed 0: search ") and "finals 3 of 3 done" in lines[1]


def test_a_resume_with_another_result_key_is_refused_naming_it(old):
    saved = RunFolder("finished").saved_config()
    with pytest.raises(BlocktuneError, match="started with a different lr"):
        RunFolder("finished").check_resume(RunConfig.from_dict({**saved, "lr": 0.5}), "cpu")
    with pytest.raises(BlocktuneError, match="was started on cpu; resuming on cuda"):
        RunFolder("finished").check_resume(RunConfig.from_dict(saved), "cuda")
