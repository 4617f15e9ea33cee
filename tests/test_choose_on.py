"""--choose-on (issue 46): a few labelled images from the deployment domain choose the
recommendation. The folder is split once, stratified and seeded, into a choosing part and a test
part; the choice reads the choosing part only; a changed folder refuses a resume."""

import json
import math
import shutil

import pytest

from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.records import FinalRow
from blocktune.data.target import part_names, split_target
from blocktune.protocol.recommend import recommend_on
from blocktune.results.report import build_report
from blocktune.results.runfolder import RunFolder
from blocktune.results.status import run_status
from blocktune.runner.search import run

from .conftest import make_image_folder
from .test_search import tiny_config

CHOOSE, TEST = "t (choosing part)", "t (test part)"


def test_the_split_is_stratified_seeded_and_halves_each_class():
    labels = [0] * 5 + [1] * 4 + [2] * 2
    choosing, testing = split_target(labels, 0)
    assert sorted(choosing + testing) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in choosing) for c in (0, 1, 2)] == [3, 2, 1]
    assert split_target(labels, 0) == (choosing, testing)
    assert split_target(labels, 1) != (choosing, testing)


def test_a_class_with_one_image_cannot_choose_and_test_and_is_one_line():
    with pytest.raises(BlocktuneError, match="needs at least two"):
        split_target([0, 0, 1], 0)


def row(method, params, choose_pred, test_pred, val=0.9):
    def scored(pred, truth):
        return {"acc": sum(p == t for p, t in zip(pred, truth, strict=True)) / len(pred),
                "pred": pred}

    return FinalRow(method, "", "", params, math.nan, val, 0.5, 1, 1.0, "ok",
                    val_pred=[0, 0], domains={CHOOSE: scored(choose_pred, [0, 1, 1, 0]),
                                              TEST: scored(test_pred, [1, 1])})


def test_the_choice_reads_the_choosing_part_only():
    rows = [row("baseline-I", 10, [0, 1, 1, 1], [1, 1], val=0.99),
            row("baseline-II", 1000, [0, 1, 1, 0], [0, 0], val=0.1)]
    chosen = recommend_on(rows, CHOOSE, [0, 1, 1, 0])
    assert chosen["method"] == "baseline-II" and chosen["on"] == CHOOSE  # not val's pick
    assert chosen["images"] == 4
    # the test part's predictions never move it
    flipped = [row("baseline-I", 10, [0, 1, 1, 1], [0, 0]),
               row("baseline-II", 1000, [0, 1, 1, 0], [1, 1])]
    assert recommend_on(flipped, CHOOSE, [0, 1, 1, 0])["method"] == "baseline-II"
    # relabelled choosing images do
    assert recommend_on(rows, CHOOSE, [0, 1, 1, 1])["method"] == "baseline-I"


def test_choose_on_with_the_auto_keys_chooses_among_the_measured_finals_by_val(tmp_path):
    """--choose-on alone: the five finals PROTOCOL-choose-on.md measured (both baselines, the
    pick, LP-FT, LP-BW), chosen among by val on the choosing part, not LP-FT handed over
    whatever the deployment images say; flags given are kept."""
    decided = RunConfig(choose_on=str(tmp_path)).for_data(1000, 5)
    assert (decided.choose_by, decided.methods, decided.pick_finals) == (
        "val", ["lp-ft", "lp-bw"], True)
    given = RunConfig(choose_on=str(tmp_path), choose_by="paired").for_data(1000, 5)
    assert (given.choose_by, given.methods) == ("paired", ["lp-bw"])
    assert RunConfig(choose_on=str(tmp_path), methods=["lp-bw"]).for_data(1000, 5).choose_by \
        == "val"


def test_choose_on_and_cross_validation_is_one_line(tmp_path):
    with pytest.raises(BlocktuneError, match="give one of the two"):
        RunConfig(choose_on=str(tmp_path), choose_by="cv3")


def relabel(folder, predictions, files, classes):
    """Move every file of ``folder`` to the class a final predicted for it."""
    moved = folder.parent / (folder.name + "_moved")
    for name, pred in zip(files, predictions, strict=True):
        target = moved / classes[pred] / name.split("/")[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / name, target)
    shutil.rmtree(folder)
    moved.rename(folder)


def test_a_run_chooses_on_the_deployment_domain_and_says_so(image_folder, tmp_path):
    target = make_image_folder(tmp_path / "target", per_class=6, seed=5)
    config = tiny_config(image_folder, choose_on=str(target), methods=["lp-bw"],
                         pick_finals=False, epochs=1, final_epochs=1)
    out = tmp_path / "run"
    run(config, out)
    seed = RunFolder(out).seed(0)
    finals = seed.read_finals()
    choosing, testing = part_names(target)
    domains = json.loads((out / "test_domains.json").read_text())
    assert set(domains) == {choosing, testing}
    assert len(domains[choosing]["files"]) == len(domains[testing]["files"]) == 9
    chosen = seed.read_recommendation()
    assert chosen["on"] == choosing
    assert chosen == recommend_on(finals, choosing, domains[choosing]["labels"])
    assert json.loads((out / "model.json").read_text())["method"] == chosen["method"]
    assert f"chosen on `{choosing}`" in build_report(out).read_text()
    assert f"**Chosen on** `{choosing}`" in (out / "README.md").read_text()
    assert f"the deployment domain {target} (--choose-on)" in run_status(out)[0]
    record = json.loads((out / "choose_on.json").read_text())
    assert len(record["sha256"]) == 18
    # a resume on the same folder trains nothing and chooses the same
    before = seed.finals.read_text()
    run(config, out)
    assert seed.finals.read_text() == before and seed.read_recommendation() == chosen
    # relabelled to agree with another final everywhere: a resume is refused in one line …
    other = max((r for r in finals if r.method != chosen["method"]),
                key=lambda r: sum(a != b for a, b in zip(
                    r.domains[choosing]["pred"],
                    next(f for f in finals if f.method == chosen["method"])
                    .domains[choosing]["pred"], strict=True)))
    classes = ["blue", "green", "red"]
    files = domains[choosing]["files"] + domains[testing]["files"]
    relabel(target, other.domains[choosing]["pred"] + other.domains[testing]["pred"], files,
            classes)
    with pytest.raises(BlocktuneError, match="changed since this run chose on it"):
        run(config, out)
    assert seed.read_recommendation() == chosen
    # … and a new run on it hands over that final, right on every image it chooses on
    again = tmp_path / "again"
    run(config, again)
    assert RunFolder(again).seed(0).read_recommendation()["method"] == other.method


def _choose_on_cli(tmp, out, fault=None):
    """``blocktune run --choose-on`` in a process of its own (a cache of its own: every image
    is decoded, so a decode fault point is reached)."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "blocktune.cli", "run", "--model", "test_efficientnet",
               "--no-pretrained", "--data", str(tmp / "images"), "--image-size", "32",
               "--epochs", "1", "--final-epochs", "1", "--batch-size", "8", "--strategies",
               "block", "--methods", "lp-bw", "--choose-on", str(tmp / "target"), "--out",
               str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "BLOCKTUNE_CACHE_DIR": str(out.parent / f"{out.name}_cache")}
    env.pop("BLOCKTUNE_FAULT", None)
    if fault:
        env["BLOCKTUNE_FAULT"] = fault
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _choose_on_answer(out):
    from blocktune.core.io import read_csv

    seed = RunFolder(out).seed(0)
    finals = [{k: r[k] for k in ("method", "val_acc", "test_acc", "status", "domains")}
              for r in read_csv(seed.finals)]
    return (finals, seed.read_recommendation(), (out / "model.safetensors").read_bytes(),
            (out / "choose_on.json").read_text())


@pytest.fixture(scope="module")
def choose_on_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("choose_on_kill")
    make_image_folder(tmp / "images", per_class=12)
    make_image_folder(tmp / "target", per_class=6, seed=5)
    assert _choose_on_cli(tmp, tmp / "reference").returncode == 0
    return tmp, _choose_on_answer(tmp / "reference")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["final:2", "decode:45"])
def test_a_choose_on_run_killed_anywhere_resumes_to_the_uninterrupted_answer(
        choose_on_reference, point):
    """SIGKILL at a point of a --choose-on run (a final recorded; an image of the target
    decoded, after the data's 36), then the same command: the same finals, predictions on both
    parts, recommendation and model as a run never killed."""
    tmp, reference = choose_on_reference
    out = tmp / point.replace(":", "_")
    assert _choose_on_cli(tmp, out, point).returncode != 0  # it was killed there
    resumed = _choose_on_cli(tmp, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _choose_on_answer(out) == reference
