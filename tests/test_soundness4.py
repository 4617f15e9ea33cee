"""Sound 4 (issue 45): the small-data options held to the standard of the rest — a key that
changes the answer is a resume key, every option has bounds it refuses in one line, and an
interval is given only where the data can give one."""

import math

import pytest

from blocktune.cli import main
from blocktune.core.errors import BlocktuneError
from blocktune.core.stats import compare_over_seeds
from blocktune.data import stratified_split
from blocktune.results.runfolder import RunFolder
from blocktune.runner.search import run
from blocktune.training.workbench import cv_folds

from .test_search import tiny_config

LABELS = [0] * 50 + [1] * 50 + [2] * 50


@pytest.mark.parametrize("learn", [148, 149, 150, 151])
def test_learn_images_above_what_leaves_a_test_image_per_class_is_one_line(learn):
    with pytest.raises(BlocktuneError, match="ask for between 9 .* and 147"):
        stratified_split(LABELS, None, 0, ["a", "b", "c"], learn)


def test_learn_images_at_the_upper_bound_leaves_one_test_image_per_class():
    split = stratified_split(LABELS, None, 0, ["a", "b", "c"], 147)
    assert sorted(LABELS[i] for i in split["test"]) == [0, 1, 2]


@pytest.mark.parametrize("folds", [28, 100])
def test_more_folds_than_learning_images_is_one_line(folds):
    split = {"search": list(range(9)), "val": list(range(9, 18)), "train": list(range(18, 27)),
             "test": list(range(27, 40))}
    with pytest.raises(BlocktuneError, match=f"choose_by = cv{folds}: the run learns from 27 "
                                             "images"):
        cv_folds(split, [i % 3 for i in range(40)], folds, 0)
    assert all(cv_folds(split, [i % 3 for i in range(40)], 27, 0).values())  # 27 is allowed


@pytest.mark.parametrize("differences, has_interval", [
    ([-0.5, 0.2], False),  # two seeds: a t interval of about ±450 points
    ([0.02, 0.03, 0.01], True),
    ([0.9, -0.9, 0.95], False),
])
def test_an_interval_wider_than_an_accuracy_difference_can_be_is_not_given(differences,
                                                                           has_interval):
    comparison = compare_over_seeds("A", "B", differences, 100)
    assert (not math.isnan(comparison.difference.low)) == has_interval
    if not has_interval:
        assert "seeds are too few" in comparison.word
        assert "[" not in comparison.sentence().split(",")[0]


@pytest.mark.parametrize("first, then", [("cv2", "cv3"), ("paired", "lp-bw")])
def test_choose_by_is_a_resume_key(image_folder, tmp_path, capsys, first, then):
    out = tmp_path / "run"
    config = tiny_config(image_folder, methods=["lp-bw"], pick_finals=False, epochs=1,
                         final_epochs=1, choose_by=first)
    run(config, out)
    model = (out / "model.safetensors").read_bytes()
    recommendation = RunFolder(out).seed(0).read_recommendation()
    args = ["run", "--model", "test_efficientnet", "--data", str(image_folder), "--no-pretrained",
            "--image-size", "32", "--epochs", "1", "--final-epochs", "1", "--batch-size", "8",
            "--lr", "0.01", "--fractions", "search=0.25,val=0.25,train=0.3,test=0.2",
            "--select", "max-val", "--methods", "lp-bw", "--no-pick-finals",
            "--search-baseline-ii", "--choose-by", then, "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "choose_by" in err[0]
    assert (out / "model.safetensors").read_bytes() == model
    assert RunFolder(out).seed(0).read_recommendation() == recommendation


@pytest.mark.parametrize("change", ["moved", "added", "edited"])
def test_a_test_folder_changed_since_the_run_scored_it_refuses_a_resume(image_folder, tmp_path,
                                                                      change):
    import shutil

    from .conftest import make_image_folder

    domain = make_image_folder(tmp_path / "shifted", per_class=4, seed=9)
    out = tmp_path / "run"
    config = tiny_config(image_folder, test_data=[str(domain)], epochs=1, final_epochs=1)
    run(config, out)
    saved = (out / "test_domains.json").read_text()
    assert '"sha256"' in saved
    finals = RunFolder(out).seed(0).finals.read_text()
    if change == "moved":  # a photo moved to another class
        shutil.move(str(domain / "red" / "000.jpg"), str(domain / "green" / "000r.jpg"))
    elif change == "added":
        shutil.copyfile(domain / "red" / "000.jpg", domain / "red" / "new.jpg")
    else:  # the same name, other bytes
        shutil.copyfile(domain / "green" / "001.jpg", domain / "red" / "001.jpg")
    with pytest.raises(BlocktuneError, match="test folder shifted changed since this run "
                                             "scored it"):
        run(config, out)
    assert (out / "test_domains.json").read_text() == saved
    assert RunFolder(out).seed(0).finals.read_text() == finals


@pytest.mark.parametrize("flags", [["--test-data", "."], ["--choose-by", "cv2"],
                                   ["--choose-on", "."]])
def test_finetune_refuses_the_options_it_would_ignore(image_folder, tmp_path, capsys, flags):
    out = tmp_path / "ft"
    assert main(["finetune", "--data", str(image_folder), "--train", "head", "--out", str(out),
                 *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flags[0] in err[0] and "use blocktune run" in err[0]
    assert not (out / "model.safetensors").exists()


def test_test_folders_named_twice_or_alike_are_told_apart_or_refused(tmp_path):
    from blocktune.data.store import domain_names

    assert domain_names([tmp_path / "a/x/test", tmp_path / "b/x/test"]) == ["a/x/test",
                                                                              "b/x/test"]
    assert domain_names([tmp_path / "x/t", tmp_path / "y/t"]) == ["x/t", "y/t"]
    with pytest.raises(BlocktuneError, match="is given twice"):
        domain_names([str(tmp_path / "t3"), str(tmp_path / "t3") + "/"])


def test_a_test_folder_of_the_datas_own_images_is_said_and_refused_with_strict(image_folder,
                                                                             tmp_path):
    from blocktune.core.callbacks import LambdaCallback

    notices = []
    config = tiny_config(image_folder, test_data=[str(image_folder)], epochs=1, final_epochs=1)
    run(config, tmp_path / "a", LambdaCallback(on_notice=notices.append))
    assert any("are exact copies of --data images" in n for n in notices)
    import dataclasses

    with pytest.raises(BlocktuneError, match="exact copies of --data images.*drop --strict"):
        run(dataclasses.replace(config, strict=True), tmp_path / "b")


def test_a_cross_validated_choice_not_yet_made_is_reported_as_pending(image_folder, tmp_path):
    import json

    from blocktune.results.assess import assess

    out = tmp_path / "run"
    run(tiny_config(image_folder, choose_by="cv2", methods=[], epochs=1, final_epochs=1), out)
    choices = out / "seed_0" / "choices.json"
    saved = json.loads(choices.read_text())
    saved.pop("recommendation")  # as a run killed while its folds train leaves it
    choices.write_text(json.dumps(saved))
    answer = assess(out)
    assert answer.recommended is None
    lines = answer.lines()
    assert lines[0].startswith("**Recommended: pending**") and "cv2" in lines[0]
    assert not any("best final val accuracy" in line for line in lines)
