"""Small data: ``--learn-images``, ``--test-data``, the ``norms`` recipe and the cross-validated
choice (``--choose-by cvK``), on the tiny test model."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from blocktune.cli import main
from blocktune.core.errors import BlocktuneError
from blocktune.core.methods import cv_folds_of
from blocktune.core.records import CvRow, FinalRow
from blocktune.data import load_test_domains, stratified_split
from blocktune.models.build import build_model
from blocktune.models.layers import walk
from blocktune.protocol.plan import search_settings
from blocktune.protocol.recommend import recommend
from blocktune.results.report import build_report
from blocktune.results.runfolder import RunFolder
from blocktune.runner.search import run
from blocktune.training import train as train_module
from blocktune.training.train import freeze, is_norm_or_bias
from blocktune.training.workbench import cv_folds

from .conftest import make_image_folder, workbench_for
from .test_search import tiny_config

LABELS = [0] * 50 + [1] * 30 + [2] * 20
FRACTIONS = {"search": 0.1, "val": 0.1, "train": 0.6, "test": 0.2}


# -- --learn-images ---------------------------------------------------------------------------
@pytest.mark.parametrize("learn", [9, 40, 64, 97])
def test_learn_images_draws_exactly_that_many_stratified_and_tests_on_the_rest(learn):
    split = stratified_split(LABELS, FRACTIONS, seed=3, learn_images=learn)
    pool = split["search"] + split["val"] + split["train"]
    assert len(pool) == learn
    assert sorted(pool + split["test"]) == list(range(len(LABELS)))  # each image once
    assert not set(pool) & set(split["test"])
    for label, size in ((0, 50), (1, 30), (2, 20)):  # every class in every split, in proportion
        mine = [i for i in pool if LABELS[i] == label]
        assert abs(len(mine) - learn * size / 100) <= 3
        for name in ("search", "val", "train", "test"):
            assert any(LABELS[i] == label for i in split[name])
    # the learning splits keep the fractions' proportions (10 : 10 : 60)
    assert abs(len(split["train"]) - 0.75 * learn) <= 4
    assert split == stratified_split(LABELS, FRACTIONS, seed=3, learn_images=learn)
    assert split != stratified_split(LABELS, FRACTIONS, seed=4, learn_images=learn)


@pytest.mark.parametrize("learn, words", [(100, "ask for between 9"), (8, "ask for between 9"),
                                          (1000, "the data has 100 images")])
def test_learn_images_out_of_reach_is_one_line(learn, words):
    with pytest.raises(BlocktuneError, match=words):
        stratified_split(LABELS, FRACTIONS, seed=0, learn_images=learn)


def test_a_class_too_small_to_learn_and_test_is_refused():
    with pytest.raises(BlocktuneError, match="class 'b' has 3 image"):
        stratified_split([0] * 30 + [1] * 3, FRACTIONS, classes=["a", "b"], learn_images=12)


def test_learn_images_is_recorded_and_a_resume_key(image_folder, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(image_folder, learn_images=24, final_epochs=1, epochs=1), out)
    saved = json.loads((out / "seed_0" / "splits.json").read_text())
    assert saved["learn_images"] == 24
    assert saved["counts"]["search"] + saved["counts"]["val"] + saved["counts"]["train"] == 24
    assert saved["counts"]["test"] == 60 - 24
    with pytest.raises(BlocktuneError, match="learn_images"):
        run(tiny_config(image_folder, learn_images=30, final_epochs=1, epochs=1), out)


# -- norms -------------------------------------------------------------------------------------
def test_norms_trains_only_norm_parameters_and_biases_and_the_head():
    model, _ = build_model("test_efficientnet", 3, "linear", 32, pretrained=False)
    model_walk = walk(model.body, input_size=(3, 32, 32))
    frozen = freeze(model, model_walk, None, "norms")
    modules = dict(model.body.named_modules())
    body = list(model.body.named_parameters())
    assert any(p.requires_grad for _, p in body) and any(not p.requires_grad for _, p in body)
    layers = {layer.name for layer in model_walk.layers}  # what runs in the forward pass
    for name, param in body:
        owner, _, own = name.rpartition(".")
        assert param.requires_grad == (owner in layers and is_norm_or_bias(modules[owner], own)
                                       ), name
    assert all(p.requires_grad for p in model.head.parameters())
    assert frozen == []  # trained norms run in train mode: their statistics adapt too


def test_a_norms_final_counts_what_it_trains(image_folder, one_thread):
    bench = workbench_for(image_folder, FRACTIONS, final_epochs=1)
    outcome = bench.fit_final(None, recipe="norms")
    modules = dict(bench.model.body.named_modules())
    layers = {layer.name for layer in bench.walk.layers}
    expected = sum(p.numel() for n, p in bench.model.body.named_parameters()
                   if n.rpartition(".")[0] in layers
                   and is_norm_or_bias(modules[n.rpartition(".")[0]], n.rpartition(".")[2]))
    expected += sum(p.numel() for p in bench.model.head.parameters())
    assert outcome.result.trainable_params == expected
    assert outcome.result.trainable_params < bench.fit_final(None).result.trainable_params


# -- --test-data -------------------------------------------------------------------------------
def test_test_domain_classes_must_be_the_datas(image_folder, tmp_path):
    other = make_image_folder(tmp_path / "other", classes=("red", "purple"), per_class=2)
    with pytest.raises(BlocktuneError, match="has class 'purple'"):
        load_test_domains([other], ["blue", "green", "red"], 32)
    subset = make_image_folder(tmp_path / "subset", classes=("red", "blue"), per_class=2)
    domains, notes = load_test_domains([subset], ["blue", "green", "red"], 32)
    assert sorted(domains[0].labels.tolist()) == [0, 0, 2, 2]  # the training classes' ids
    assert "2 of the 3 classes" in notes[0]


def test_a_test_domain_folder_with_other_classes_is_one_line_exit_2(image_folder, tmp_path,
                                                                    capsys):
    other = make_image_folder(tmp_path / "other", classes=("mauve",), per_class=2)
    code = main(["run", "--data", str(image_folder), "--model", "test_efficientnet",
                 "--no-pretrained", "--image-size", "32", "--test-data", str(other),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "mauve" in err[0]


def test_relabelling_a_test_domain_changes_its_accuracies_and_no_choice(image_folder, tmp_path):
    domain = make_image_folder(tmp_path / "shifted", per_class=6, seed=9)
    swapped = tmp_path / "swapped"
    shutil.copytree(domain, swapped)
    (swapped / "red").rename(swapped / "tmp")  # red's images now say green, green's red
    (swapped / "green").rename(swapped / "red")
    (swapped / "tmp").rename(swapped / "green")
    runs = {}
    for name, folder in (("a", domain), ("b", swapped)):
        out = tmp_path / name
        run(tiny_config(image_folder, test_data=[str(folder)], methods=["norms"]), out)
        runs[name] = RunFolder(out).seed(0)
    a, b = runs["a"], runs["b"]
    untimed = lambda rows: [dataclasses.replace(r, seconds=0.0) for r in rows]  # noqa: E731
    assert untimed(a.read_candidates()) == untimed(b.read_candidates())
    assert json.loads(a.choices.read_text()) == json.loads(b.choices.read_text())
    fa, fb = a.read_finals(), b.read_finals()
    for x, y in zip(fa, fb, strict=True):
        assert (x.method, x.val_acc, x.test_acc, x.test_pred) == \
            (y.method, y.val_acc, y.test_acc, y.test_pred)
        # the same predictions, scored against other labels
        key_a, key_b = next(iter(x.domains)), next(iter(y.domains))
        assert sorted(x.domains[key_a]["pred"]) == sorted(y.domains[key_b]["pred"])
    assert [x.domains for x in fa] != [y.domains for y in fb]


# -- cross-validated choice ------------------------------------------------------------------
def test_cv_folds_partition_the_learning_images_stratified():
    split = stratified_split(LABELS, FRACTIONS, seed=1)
    folds = cv_folds(split, LABELS, 5, seed=1)
    pool = sorted(split["search"] + split["val"] + split["train"])
    assert sorted(i for f in folds.values() for i in f) == pool
    sizes = [len(f) for f in folds.values()]
    assert max(sizes) - min(sizes) <= 1
    for label in (0, 1, 2):
        counts = [sum(LABELS[i] == label for i in f) for f in folds.values()]
        assert max(counts) - min(counts) <= 1
    assert not set(split["test"]) & set(pool)


@pytest.mark.parametrize("text, folds", [("val", None), ("paired", None), ("lp-bw", None),
                                         ("baseline-II", None), ("cv5", 5), ("cv2", 2)])
def test_choose_by_names(text, folds):
    assert cv_folds_of(text) == folds


@pytest.mark.parametrize("text", ["cv1", "cv", "cross", "cv0", "val5", "block", "lp_bw"])
def test_choose_by_wrong_is_one_line(text):
    with pytest.raises(BlocktuneError, match="cvK with K at least 2"):
        cv_folds_of(text)


def test_a_fold_never_trains_on_an_image_it_scores(image_folder, tmp_path, monkeypatch):
    seen = []
    real = train_module.train_group

    def spy(model, model_walk, group, feed, config, train_split="search", val_split="val",
            **kwargs):
        # the very image indices this training learns from and is scored on
        splits = getattr(feed, "images", feed).splits
        names = [train_split] if isinstance(train_split, str) else list(train_split)
        scored = set(splits[val_split]) if val_split is not None else set()
        seen.append((val_split, {i for n in names for i in splits[n]}, scored))
        return real(model, model_walk, group, feed, config, train_split, val_split, **kwargs)

    monkeypatch.setattr("blocktune.training.workbench.train_group", spy)
    out = tmp_path / "run"
    run(tiny_config(image_folder, choose_by="cv3", methods=["lp-ft"]), out)
    fold_runs = [(trained, scored) for name, trained, scored in seen
                 if name is not None and name.startswith("cv")]
    assert fold_runs  # every method, every fold (LP-FT's probe stage included)
    for trained, scored in fold_runs:
        assert trained and scored and not trained & scored
        assert len(trained) + len(scored) == 48  # the other folds: the whole pool but this one
    seed = RunFolder(out).seed(0)
    cv = seed.read_cv()
    methods = {r.method for r in seed.read_finals()}
    assert {(r.method, r.fold) for r in cv} == {(m, k) for m in methods for k in range(3)}
    assert sum(r.fold_images for r in cv if r.method == "baseline-I") == 48  # the pool
    # the chosen method's final, and both baselines', train on all 48 learning images, with
    # nothing held out (LP-FT's probe stage and its second one alike)
    on_all = [trained for name, trained, _ in seen if name is None]
    chosen = seed.read_recommendation()["method"]
    wanted = {chosen, "baseline-I", "baseline-II"}
    assert len(on_all) == len(wanted) + (chosen == "lp-ft")
    pool = {i for n in ("search", "val", "train") for i in
            json.loads(seed.splits.read_text())["files"][n]}
    assert len(pool) == 48 and all(len(trained) == 48 for trained in on_all)
    learning = seed.read_learning_finals()
    assert {r.method for r in learning} == wanted
    assert all(r.trained_on == "learning" and r.epochs == 2 for r in learning)


def test_the_cv_choice_is_recorded_and_published(image_folder, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(image_folder, choose_by="cv3", methods=["norms"]), out)
    seed = RunFolder(out).seed(0)
    chosen = seed.read_recommendation()
    assert chosen["rule"] == "cv3" and chosen["images"] == 48
    assert chosen == recommend(seed.read_finals(), "cv3", seed.read_cv())
    model = json.loads((out / "model.json").read_text())
    assert model["method"] == chosen["method"] and model["choose_by"] == "cv3"
    assert model["trained_on"].startswith("every learning image")
    assert model["val_acc"] is None  # nothing held out; the file is strict JSON
    json.loads((out / "model.json").read_text(), parse_constant=lambda c: 1 / 0)
    # the model handed over is the chosen method trained on every learning image
    mine = load_file(str(seed.weights(chosen["method"], "learning")))
    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(mine[k], saved[k]) for k in mine)
    again = next(r for r in seed.read_learning_finals() if r.method == chosen["method"])
    assert model["test_acc"] == again.test_acc
    # a resume trains nothing more and chooses the same
    before = seed.cv.read_text(), seed.learning_finals.read_text()
    run(tiny_config(image_folder, choose_by="cv3", methods=["norms"]), out)
    assert (seed.cv.read_text(), seed.learning_finals.read_text()) == before
    assert seed.read_recommendation() == chosen
    # the report and the card say what was handed over, beside both baselines trained alike
    report = build_report(out).read_text()
    assert "Trained again on every learning image" in report
    card = (out / "README.md").read_text()
    assert "on every learning image (nothing held out)" in card and "cv3" in card
    # choosing by val instead is another answer: refused on this folder (a resume key)
    with pytest.raises(BlocktuneError, match="choose_by"):
        run(tiny_config(image_folder, choose_by="val", methods=["norms"]), out)


def final(method, val, params, test=0.5):
    return FinalRow(method, "", "", params, float("nan"), val, test, 1, 1.0, "ok",
                    val_pred=[0] * 10)


def cvrow(method, fold, acc, images=10):
    return CvRow(method, fold, "", 1, acc, images, 1, 1.0, "ok")


def test_recommend_ranks_as_the_product_ties_to_fewer_parameters():
    finals = [final("baseline-II", 0.8, 100), final("block", 0.8, 10), final("norms", 0.7, 5)]
    assert recommend(finals, "val")["method"] == "block"
    cv = [cvrow("baseline-II", k, 0.6) for k in range(2)] + \
        [cvrow("norms", k, 0.6) for k in range(2)] + [cvrow("block", 0, 0.9)]  # block: 1 fold
    chosen = recommend(finals, "cv2", cv)
    assert chosen["method"] == "norms" and chosen["images"] == 20 and chosen["candidates"] == 2
    assert recommend(finals, "cv2", cv, among={"baseline-II"})["method"] == "baseline-II"
    assert recommend([], "val") is None


def test_pooled_out_of_fold_accuracy_weighs_folds_by_their_images():
    finals = [final("a", 0.5, 1), final("b", 0.5, 1)]
    cv = [cvrow("a", 0, 1.0, 1), cvrow("a", 1, 0.5, 99), cvrow("b", 0, 0.6, 1),
          cvrow("b", 1, 0.6, 99)]
    assert recommend(finals, "cv2", cv)["method"] == "b"  # a: 50.5/100, b: 60/100
    assert np.isclose(recommend(finals, "cv2", cv)["score"], 0.6)


def test_status_counts_the_cross_validation_folds(image_folder, tmp_path):
    from blocktune.results.status import run_status

    out = tmp_path / "run"
    run(tiny_config(image_folder, choose_by="cv2", methods=[]), out)
    status = run_status(out)[1]
    assert "cv2 folds 6 of 6 done" in status  # 3 methods × 2 folds
    assert "trained again on every learning image: " in status
    again = {r.method for r in RunFolder(out).seed(0).read_learning_finals()}
    assert again >= {"baseline-I", "baseline-II"} and len(again) in (2, 3)


# -- the default (PROTOCOL-sizes.md: always LP-FT, beside both baselines, at every size) ------
def test_auto_keys_follow_the_protocols_answer_at_every_size(image_folder, monkeypatch):
    import blocktune.core.config as config_module
    from blocktune.core.config import RunConfig

    auto = RunConfig(data=str(image_folder))
    assert None is auto.methods is auto.pick_finals is auto.search_baseline_ii is auto.choose_by
    for images in (30, 1000, 10**6):  # one procedure at every size
        decided = auto.for_data(images, 5)
        assert (decided.methods, decided.choose_by, decided.pick_finals,
                decided.search_baseline_ii) == (["lp-ft"], "lp-ft", False, False)
        assert not search_settings(decided, 0).baseline_ii
    # a switch in images per class, when criterion 3 sets one
    monkeypatch.setattr(config_module, "SWITCH_PER_CLASS", 100.0)
    monkeypatch.setattr(config_module, "LARGER_METHOD", "baseline-II")
    assert auto.for_data(500, 5).choose_by == "lp-ft"  # 100 per class
    assert (auto.for_data(505, 5).methods, auto.for_data(505, 5).choose_by) == ([], "baseline-II")
    # what the user gave is kept, on either side
    given = RunConfig(data=str(image_folder), methods=["norms"], pick_finals=True,
                      search_baseline_ii=False, choose_by="val")
    assert given.for_data(10) == given.for_data(10**6) == given
    # --choose-by METHOD alone trains that method beside the baselines and hands it over;
    # --choose-by paired alone trains the prior it keeps (LP-BW)
    fixed = RunConfig(data=str(image_folder), choose_by="lp-bw").for_data(100, 5)
    assert (fixed.methods, fixed.choose_by, fixed.pick_finals) == (["lp-bw"], "lp-bw", False)
    paired = RunConfig(data=str(image_folder), choose_by="paired").for_data(100, 5)
    assert (paired.methods, paired.choose_by, paired.pick_finals) == (["lp-bw"], "paired", False)
    # without LP-FT among the finals the auto choice reads val, and each pick is a final
    other = RunConfig(data=str(image_folder), methods=["lp-bw"]).for_data(100, 5)
    assert (other.choose_by, other.pick_finals) == ("val", False)
    assert RunConfig(data=str(image_folder), methods=[]).for_data(100, 5).pick_finals
    # "auto" is the unset value, from a flag or a file
    assert RunConfig(data=str(image_folder), methods="auto", pick_finals="auto",
                     choose_by="auto") == auto
    assert RunConfig(data=str(image_folder), methods="").methods == []


def test_a_default_run_fine_tunes_the_baselines_and_lp_ft_hands_over_lp_ft_and_says_so(
        image_folder, tmp_path):
    from blocktune.core.callbacks import LambdaCallback
    from blocktune.results.status import run_status

    out, notices = tmp_path / "run", []
    config = tiny_config(image_folder, methods=None, pick_finals=None, search_baseline_ii=None,
                         choose_by=None, epochs=1, final_epochs=1)
    run(config, out, LambdaCallback(on_notice=notices.append))
    finals = RunFolder(out).seed(0).read_finals()
    assert [r.method for r in finals] == ["baseline-I", "baseline-II", "lp-ft"]
    # Baseline II is trained as a final only: no choice reads its search row
    searched = {r.strategy for r in RunFolder(out).seed(0).read_candidates()}
    assert "baseline-I" in searched and "baseline-II" not in searched
    assert math.isnan(finals[1].search_val_acc) and finals[1].status == "ok"
    assert json.loads((out / "model.json").read_text())["method"] == "lp-ft"
    chosen = RunFolder(out).seed(0).read_recommendation()
    assert chosen["rule"] == "lp-ft" and chosen["auto"] is True
    from blocktune.results.report import build_report

    report = build_report(out).read_text()
    assert "handed over by the default (`--choose-by auto`" in report
    assert "It has no final of its own: the run hands over a fixed method" in report
    assert "did not finish" not in report
    [said] = [n for n in notices if "images of 3 classes are learnt from" in n]
    assert "Baseline I, Baseline II, LP-FT" in said and "LP-FT is handed over" in said
    assert "--methods, --choose-by, --pick-finals and --search-baseline-ii override" in said
    # the folder keeps what was asked (auto), and a resume of the same command trains nothing
    assert "methods: auto" in (out / "config.yaml").read_text()
    assert "choose_by: auto" in (out / "config.yaml").read_text()
    assert any("finals 3 of 3 done" in line for line in run_status(out))
    run(config, out)
    assert RunFolder(out).seed(0).read_finals() == finals


def test_a_folder_started_with_an_explicit_value_resumes_with_it(image_folder, tmp_path):
    """A folder written before choose_by was automatic (it saved "val") resumes as it began
    when the flag is not given, instead of being refused for a changed default."""
    out = tmp_path / "run"
    old = tiny_config(image_folder, methods=["lp-bw"], pick_finals=True, epochs=1,
                      final_epochs=1, choose_by="val")
    run(old, out)
    chosen = RunFolder(out).seed(0).read_recommendation()
    run(dataclasses.replace(old, choose_by=None), out)  # the new default is auto
    assert RunFolder(out).seed(0).read_recommendation() == chosen
    assert "choose_by: val" in (out / "config.yaml").read_text()


def test_a_folder_written_before_pick_finals_keeps_every_pick_a_final(image_folder, tmp_path):
    import yaml

    out = tmp_path / "run"
    run(tiny_config(image_folder, epochs=1, final_epochs=1), out)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["pick_finals"] is True
    del saved["pick_finals"]  # as an older blocktune wrote it (no digest recorded then)
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    environment = json.loads((out / "environment.json").read_text())
    environment.pop("config_sha256", None)
    (out / "environment.json").write_text(json.dumps(environment))
    assert RunFolder(out).saved_config()["pick_finals"] is True


def test_the_paired_and_fixed_choices_hand_over_what_they_say(image_folder, tmp_path):
    """--choose-by paired keeps LP-BW unless val shows a challenger on the same images; a
    method's name hands that method over whatever val says; the report and card say how."""
    config = tiny_config(image_folder, methods=["lp-bw"], pick_finals=False, epochs=1,
                         final_epochs=1)
    out = tmp_path / "paired"
    run(dataclasses.replace(config, choose_by="paired"), out)
    seed = RunFolder(out).seed(0)
    finals = seed.read_finals()
    labels = [int(y) for y in json.loads(seed.splits.read_text())["labels"]["val"]]
    chosen = seed.read_recommendation()
    assert chosen["rule"] == "paired" and chosen["prior"] == "lp-bw"
    assert chosen == recommend(finals, "paired", val_labels=labels)
    model = json.loads((out / "model.json").read_text())
    assert model["method"] == chosen["method"] and model["choose_by"] == "paired"
    assert ("the prior, LP-BW, kept" in build_report(out).read_text()) == \
        (chosen["method"] == "lp-bw")
    # what the run cost, against its own Baseline II final (one full fine-tune of the split)
    from blocktune.results.assess import training_cost

    cost = training_cost(out, 0)
    searched = sum(r.seconds for r in seed.read_candidates() if not r.same_as)
    trained = sum(r.seconds for r in finals if not r.same_as)
    b2 = next(r for r in finals if r.method == "baseline-II").seconds
    assert cost["ratio"] == pytest.approx((searched + trained) / b2)
    assert set(cost["parts"]) == {"search", "finals"}
    # always Baseline II: handed over whatever the val accuracies, and said so
    fixed = tmp_path / "fixed"
    run(dataclasses.replace(config, choose_by="baseline-II"), fixed)
    assert json.loads((fixed / "model.json").read_text())["method"] == "baseline-II"
    assert "handed over by `--choose-by baseline-II`" in build_report(fixed).read_text()
    assert "not read: `--choose-by baseline-II` hands it over" in \
        (fixed / "README.md").read_text()


def test_a_fixed_choice_the_run_does_not_train_is_one_line(image_folder, tmp_path):
    with pytest.raises(BlocktuneError, match="choose_by = lp-ft hands over a final this run "
                                             "does not train"):
        run(tiny_config(image_folder, methods=["lp-bw"], choose_by="lp-ft"), tmp_path / "r")
    assert not (tmp_path / "r" / "model.json").exists()
