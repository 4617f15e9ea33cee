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


# -- kinds 3 and 4: records checked against themselves; failures loud and retried -------------
def _rewrite(path, change) -> None:
    """Rewrite the CSV at ``path`` with ``change(rows)`` applied to its rows (dicts)."""
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    fields = list(rows[0])
    change(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue())


def _results(out):
    """What a run's results are (seconds aside): every record file's rows and the model."""
    from blocktune.core.io import read_csv

    seed = out / "seed_0"
    tables = {name: [{k: v for k, v in r.items() if k not in ("seconds", "error")}
                     for r in read_csv(seed / name)]
              for name in ("candidates.csv", "finals.csv", "cv.csv", "learning_finals.csv")}
    return tables, (out / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    from .conftest import make_image_folder

    root = tmp_path_factory.mktemp("cv_run")
    data = make_image_folder(root / "images", per_class=12)
    other = make_image_folder(root / "other", per_class=4, seed=9)
    config = tiny_config(data, choose_by="cv2", methods=["lp-bw"], epochs=1, final_epochs=1,
                         max_candidates=2, test_data=[str(other)])
    run(config, root / "run")
    return config, root / "run"


@pytest.mark.parametrize("name", ["candidates.csv", "finals.csv", "cv.csv",
                                  "learning_finals.csv"])
def test_a_trial_that_failed_for_good_is_said_and_retried_by_a_resume(cv_run, tmp_path, capsys,
                                                                     name):
    """As a Ray trial lost after its retries is recorded: status failed, no weights. status
    says so and exits 1; the same command retrains it and ends with the results an unbroken
    run has."""
    import shutil

    config, original = cv_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    before = _results(out)

    def fail(rows):
        row = rows[-1]
        row.update(status="failed", error="failed on Ray after 3 attempts: the worker died")
        for field in ("val_acc", "test_acc", "fold_acc"):
            if field in row:
                row[field] = "nan"
        for field in ("val_pred", "test_pred", "fold_pred"):
            if field in row:
                row[field] = ""
        if name in ("finals.csv", "learning_finals.csv"):
            suffix = ".learning" if name == "learning_finals.csv" else ""
            (out / "seed_0" / f"{row['method']}{suffix}.safetensors").unlink()

    _rewrite(out / "seed_0" / name, fail)
    capsys.readouterr()
    assert main(["status", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 trial(s) failed" in err and "the worker died" in err
    assert "run the same command to retry" in err and "--force-new" not in err
    run(config, out)
    assert _results(out) == before
    assert main(["status", str(out)]) == 0


def test_a_fold_that_fails_again_leaves_the_choice_said_not_silent(cv_run, tmp_path,
                                                                   monkeypatch, capsys):
    """The retry of a failed fold fails too (here every fold training ends in a non-finite
    loss, as the trainer reports one): the method is left out of the cross-validated choice,
    said in a notice, and status exits 1 naming the fold."""
    import shutil

    from blocktune.core.callbacks import LambdaCallback
    from blocktune.training import workbench

    config, original = cv_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    _rewrite(out / "seed_0" / "cv.csv", lambda rows: rows[-1].update(
        status="failed", fold_acc="nan", fold_pred=""))
    real = workbench.train_group

    def diverging_on_folds(*args, **kwargs):
        result, net, cut = real(*args, **kwargs)
        if kwargs.get("val_split", "").startswith("cv"):
            result.status, result.error = "failed", "non-finite loss at epoch 1"
        return result, net, cut

    monkeypatch.setattr(workbench, "train_group", diverging_on_folds)
    heard = []
    run(config, out, LambdaCallback(on_notice=heard.append))
    assert any("fold 1 failed (non-finite loss at epoch 1)" in h
               and "left out of the cross-validated choice" in h for h in heard), heard
    capsys.readouterr()
    assert main(["status", str(out)]) == 1
    assert "fold 1: non-finite loss" in capsys.readouterr().err


@pytest.mark.parametrize("name, field", [("finals.csv", "val_acc"), ("finals.csv", "test_acc"),
                                         ("candidates.csv", "val_acc"),
                                         ("cv.csv", "fold_acc")])
def test_a_row_whose_accuracy_contradicts_its_own_predictions_is_damage(cv_run, tmp_path,
                                                                        capsys, name, field):
    """A resume must not re-choose (and hand over another model) from a row that contradicts
    itself: the stated accuracy is checked against the row's own predictions."""
    import shutil

    config, original = cv_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    model = (out / "model.safetensors").read_bytes()

    def lie(rows):
        row = next(r for r in rows if r["status"] == "ok" and not r.get("same_as"))
        row[field] = f"{1 - float(row[field]):.6f}" if float(row[field]) != 0.5 else "0.9"

    _rewrite(out / "seed_0" / name, lie)
    with pytest.raises(BlocktuneError, match=f"{name}.*(its own|fold_pred scores)"):
        run(config, out)
    assert (out / "model.safetensors").read_bytes() == model


def test_a_report_never_presents_another_final_than_the_model_handed_over(cv_run, tmp_path,
                                                                          capsys):
    """cvK hands over the chosen method trained on every learning image: with its row gone
    from learning_finals.csv, the report and status are one line each, not a report on the
    search + train final; the same command trains it again."""
    import shutil

    config, original = cv_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    before = _results(out)
    (out / "seed_0" / "learning_finals.csv").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blocktune: error:") and "learning_finals.csv" in err
    assert "trained on every learning image" in err and "\n" not in err
    run(config, out)
    assert _results(out) == before


# -- kinds 5 and 7: every option does something or is refused; messages name the user's path -
TINY = ["--model", "test_efficientnet", "--no-pretrained", "--image-size", "32", "--epochs", "1",
        "--final-epochs", "1", "--batch-size", "8"]


def _one_line(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blocktune: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_a_folder_where_a_file_belongs_is_named_with_the_commands_own_option(cv_run, tmp_path,
                                                                             capsys):
    import shutil

    _, original = cv_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    (out / "report.md").unlink(missing_ok=True)
    (out / "report.md").mkdir()
    err = _one_line(capsys, ["report", str(out)])
    assert f"{out / 'report.md'} is a folder" in err and ".tmp" not in err
    assert "--out" not in err and "written into the run folder" in err
    plot = tmp_path / "fig.png"
    plot.mkdir()
    err = _one_line(capsys, ["groups", "--model", "test_efficientnet", "--plot", str(plot)])
    assert f"{plot} is a folder" in err and "--plot" in err and "--out" not in err


def test_messages_name_what_the_user_gave(cv_run, image_folder, tmp_path, capsys):
    _, run_folder = cv_run
    # predict given a folder: a folder, not "does not exist"
    err = _one_line(capsys, ["predict", "--run", str(run_folder), str(image_folder)])
    assert "is a folder, not an image" in err
    # report on a finetune folder: the files finetune writes, no README.md it never writes
    tuned = tmp_path / "tuned"
    assert main(["finetune", *TINY, "--data", str(image_folder), "--train", "head", "--out",
                 str(tuned)]) == 0
    err = _one_line(capsys, ["report", str(tuned)])
    assert "finetune folder" in err and "README.md" not in err and "result.json" in err
    # an empty --test-data folder is a test data folder, not "the data folder"
    empty = tmp_path / "empty_test" / "red"
    empty.mkdir(parents=True)
    err = _one_line(capsys, ["run", *TINY, "--data", str(image_folder), "--test-data",
                             str(empty.parent), "--out", str(tmp_path / "r1")])
    assert "test data folder" in err and "holds no images" in err
    # a data folder whose files are none of them images: no readable image, not "one class"
    unreadable = tmp_path / "unreadable"
    for klass in ("a", "b"):
        (unreadable / klass).mkdir(parents=True)
        (unreadable / klass / "x.jpg").write_bytes(b"not a jpeg")
    err = _one_line(capsys, ["run", *TINY, "--data", str(unreadable), "--out",
                             str(tmp_path / "r2")])
    assert "holds no readable image" in err and "one class" not in err


@pytest.mark.parametrize("flags, words", [
    (["--no-baselines", "--no-pick-finals", "--methods", ""], "would fine-tune no final"),
    (["--split", "official", "--max-images-per-class", "5"], "give one of the two"),
], ids=["trains-nothing", "official-subsampled"])
def test_options_that_cannot_work_together_are_one_line(image_folder, tmp_path, capsys, flags,
                                                        words):
    err = _one_line(capsys, ["run", *TINY, "--data", str(image_folder), *flags, "--out",
                             str(tmp_path / "r")])
    assert words in err
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_under_cv_the_test_domains_show_the_model_handed_over(cv_run):
    """The cross-validated choice hands over its method trained on every learning image: the
    test-domain table shows that model, marked, beside the finals."""
    import json

    from blocktune.results.report import build_report

    _, out = cv_run
    method = json.loads((out / "model.json").read_text())["method"]
    text = build_report(out).read_text()
    domains = text[text.index("## Test domains"):]
    assert "every learning image (handed over)" in domains
    from blocktune.core.methods import label

    assert f"| {label(method)}, every learning image (handed over) |" in domains


def test_a_split_cut_short_is_named_and_never_silently_recomputed(cv_run, tmp_path, capsys):
    """splits.json's test list cut to four images (its labels and hashes with it): a resume is
    one line naming splits.json, not a recomputation on four test images; status names both
    files that disagree and advises deleting neither."""
    import json
    import shutil

    config, original = cv_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    path = out / "seed_0" / "splits.json"
    saved = json.loads(path.read_text())
    for key in ("files", "labels", "sha256"):
        if key in saved:
            saved[key]["test"] = saved[key]["test"][:4]
    path.write_text(json.dumps(saved))
    finals = (out / "seed_0" / "finals.csv").read_text()
    with pytest.raises(BlocktuneError, match=r"splits.json lists .* in no split.*cut short"):
        run(config, out)
    assert (out / "seed_0" / "finals.csv").read_text() == finals
    err = _one_line(capsys, ["status", str(out)])
    assert "finals.csv" in err and "splits.json" in err and "disagree" in err
    assert "delete" not in err
