"""PROTOCOL-choose-on.md's decision code (benchmarks/choose_on_decide.py) on made-up results:
the 50-image draw, the split and the choice made as --choose-on makes them, regret read on the
test part only, the Holm family and the decisions, provisional until every run is in."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from blocktune.core.records import FinalRow
from blocktune.data.store import load_test_domains
from blocktune.data.target import load_target, split_target

from .conftest import make_image_folder

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import choose_on_decide  # noqa: E402 - benchmarks/choose_on_decide.py, the decision code
from choose_on_decide import FIXED, Run, decide, report, stratified_draw  # noqa: E402

PARAMS = {"baseline-I": 10, "baseline-II": 1000, "lp-ft": 1000, "block": 100, "lp-bw": 100}
DOMAIN = [0] * 20 + [1] * 20  # 40 target images, two classes


def row(method: str, val_acc: float, right: set[int], domain: str = "noise") -> FinalRow:
    """A final right on the target images ``right`` and wrong on every other."""
    pred = [y if i in right else 1 - y for i, y in enumerate(DOMAIN)]
    return FinalRow(method, "", "", PARAMS[method], math.nan, val_acc, 0.8, 5, 10.0, "ok",
                    val_pred=[0] * 10, domains={domain: {"acc": 0.0, "pred": pred}})


def make_run(seed: int = 0, lp_bw_gap: int = 0, domain: str = "noise") -> Run:
    """Val prefers Baseline I; on the target, LP-BW is right everywhere but on ``lp_bw_gap``
    images and every other final on three quarters."""
    every = set(range(len(DOMAIN)))
    finals = {m: row(m, 0.9 if m == "baseline-I" else 0.8,
                     every - set(range(lp_bw_gap)) if m == "lp-bw" else set(range(30)),
                     domain) for m in FIXED}
    return Run("eurosat", seed, [0] * 10, finals, {domain: list(DOMAIN)},
               {"images": 400, "scoring_seconds": 1.0, "training_seconds": 100.0})


def test_the_draw_is_proportional_seeded_and_covers_every_class_it_can():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    pool = list(range(0, 100, 1))
    draw = stratified_draw(labels, pool, 50, np.random.default_rng(1))
    counts = np.bincount([labels[i] for i in draw], minlength=3)
    assert len(draw) == len(set(draw)) == 50 and set(draw) <= set(pool)
    assert counts.tolist() == [30, 15, 5]
    assert draw == stratified_draw(labels, pool, 50, np.random.default_rng(1))
    assert draw != stratified_draw(labels, pool, 50, np.random.default_rng(2))
    # a class too small for its share still gets one; the total stays the count
    skewed = [0] * 98 + [1, 2]
    counts = np.bincount([skewed[i] for i in stratified_draw(
        skewed, range(100), 10, np.random.default_rng(0))], minlength=3)
    assert counts.tolist() == [8, 1, 1]
    # more classes than the count: at most one each
    many = list(range(80)) * 2
    draw = stratified_draw(many, range(160), 50, np.random.default_rng(0))
    assert len(draw) == 50 and len({many[i] for i in draw}) == 50
    # a pool no larger than the count is taken whole
    assert stratified_draw(labels, [3, 1, 2], 50, np.random.default_rng(0)) == [1, 2, 3]


def test_the_benchmark_splits_a_folder_as_choose_on_does(tmp_path):
    """The decision code splits the --test-data labels (in the order the predictions are saved)
    with split_target; --choose-on's load_target gives exactly those two parts."""
    folder = make_image_folder(tmp_path / "target", per_class=7, seed=3)
    classes = ["blue", "green", "red"]
    [domain], _ = load_test_domains([folder], classes, 32)
    choosing, testing = split_target(domain.labels.tolist(), 44)
    parts, _, _ = load_target(folder, classes, 32, "bilinear", False, 44)
    assert list(parts[0].files) == [domain.files[i] for i in choosing]
    assert list(parts[1].files) == [domain.files[i] for i in testing]


def test_the_choice_on_target_images_reads_the_choosing_part_and_regret_the_test_part():
    run = make_run(lp_bw_gap=0)
    assert run.picks("val", "noise") == ["baseline-I"]
    assert run.picks("default", "noise") == ["lp-ft"]
    assert run.picks("on-all", "noise") == ["lp-bw"]
    assert run.procedure_regret("on-all", "noise") == 0.0
    _, testing = run.parts("noise")
    wrong = sum(1 for i in testing if i >= 30)  # Baseline I is wrong on images 30-39
    assert run.regret("baseline-I", "noise") == pytest.approx(100 * wrong / len(testing))
    # predictions changed on choosing images only: the test part's accuracy stays
    choosing, _ = run.parts("noise")
    before = {m: run.part_acc(m, "noise") for m in FIXED}
    for r in run.finals.values():
        for i in choosing:
            r.domains["noise"]["pred"][i] = 1 - DOMAIN[i]
    assert {m: run.part_acc(m, "noise") for m in FIXED} == before
    # … and every final is now wrong on every choosing image: a tie on the target, broken as
    # the product breaks it (fewer trained parameters)
    assert run.picks("on-all", "noise") == ["baseline-I"]


def test_on_50_averages_its_draws():
    run = make_run(lp_bw_gap=0)
    picks = run.picks("on-50", "noise")
    assert len(picks) == choose_on_decide.DRAWS
    assert run.procedure_regret("on-50", "noise") == pytest.approx(
        float(np.mean([run.regret(m, "noise") for m in picks])))


def test_the_decision_needs_every_run_and_holm_over_eight():
    corrupted = [make_run(seed, lp_bw_gap=seed % 2) for seed in range(20)]
    real = [make_run(seed, lp_bw_gap=seed % 3, domain="flowers102_photos")
            for seed in range(20, 30)]
    answer = decide(corrupted + real, planned=30)
    assert len(answer.comparisons) == 8
    assert {c.family for c in answer.comparisons.values()} == {8}
    assert answer.recommended("on-all", "corruptions")
    assert answer.recommended("on-all", "real shifts")
    assert len(answer.units["corruptions"]["val"]) == 20
    assert len(answer.units["real shifts"]["val"]) == 10
    # one run short: the same numbers, no decision
    short = decide(corrupted + real[:-1], planned=30)
    assert short.provisional and not short.recommended("on-all", "corruptions")
    text = report(corrupted + real[:-1], planned=30)
    assert "provisional" in text and "recommended" not in text
    assert "recommended" in report(corrupted + real, planned=30)


def test_no_difference_is_not_a_recommendation():
    # the target agrees with val: every procedure picks the same final
    runs = []
    for seed in range(20):
        run = make_run(seed)
        run.finals["baseline-I"] = row("baseline-I", 0.9, set(range(40)))
        runs.append(run)
    answer = decide(runs, planned=20)
    assert not answer.recommended("on-all", "corruptions")
    assert all(v == 0 for v in answer.units["corruptions"]["on-all"])
