"""The small-data protocol's decision code (benchmarks/protocol_small.py) on made-up results: regret,
cost accounting, the default under the cost bar with its ties, and the claim words."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from protocol_small import (  # noqa: E402 - benchmarks/protocol_small.py, the decision code
    METHODS,
    Configuration,
    RunRecord,
    choose_default,
    claim,
    configurations,
    score,
)

from blocktune.core.records import CandidateRow, CvRow, FinalRow

GROUPS = {"baseline-I": "", "baseline-II": "", "lp-ft": "", "norms": "", "quarter": "9",
          "block": "2", "lp-bw": "9"}
PARAMS = {"baseline-I": 10, "baseline-II": 1000, "lp-ft": 1000, "norms": 50, "quarter": 100,
          "block": 120, "lp-bw": 100}
SECONDS = {"baseline-I": 1.0, "baseline-II": 100.0, "lp-ft": 101.0, "norms": 60.0,
           "quarter": 10.0, "block": 30.0, "lp-bw": 11.0}


def final(method, val, test, same_as=""):
    return FinalRow(method, "", GROUPS[method], PARAMS[method], math.nan, val, test, 5,
                    0.0 if same_as else SECONDS[method], "ok", same_as=same_as,
                    val_pred=[0] * 100)


def candidate(strategy, indices, seconds, same_as=""):
    return CandidateRow(strategy, 5, 0, "", indices, None, None, 1, 0.5, 1.0, 5, 5, seconds,
                        "ok", same_as=same_as)


def record(tests, vals=None, cv=None, dataset="d", seed=0):
    vals = vals or {m: 0.5 for m in METHODS}
    finals = [final(m, vals[m], tests[m]) for m in METHODS]
    folds = [CvRow(m, k, "all" if m == "baseline-II" else GROUPS[m], PARAMS[m], acc, 100, 5,
                   2.0, "ok")
             for m, acc in (cv or {}).items() for k in range(5)]
    search = [candidate("baseline-I", "", 1.0), candidate("baseline-II", "all", 9.0),
              candidate("quarter", "9", 4.0), candidate("block", "9", 0.0, "quarter #0"),
              candidate("block", "2", 6.0)]
    return RunRecord(dataset, seed, finals, folds, search)


TESTS = {"baseline-I": 0.70, "baseline-II": 0.80, "lp-ft": 0.82, "norms": 0.75,
         "quarter": 0.78, "block": 0.76, "lp-bw": 0.79}


def test_regret_is_points_below_the_best_in_hindsight():
    run = record(TESTS)
    assert run.regret("lp-ft") == 0
    assert run.regret("baseline-II") == pytest.approx(2.0)
    assert run.regret("baseline-I") == pytest.approx(12.0)


def test_cost_counts_each_training_once_and_the_probe_with_baseline_I():
    run = record(TESTS, cv={m: 0.5 for m in METHODS})
    both = (("baseline-I", "baseline-II"))
    assert run.cost_ratio("val", both) == pytest.approx(101 / 100)
    # LP-FT's first stage is Baseline I's final: counted once
    assert run.cost_ratio("val", (*both, "lp-ft")) == pytest.approx((1 + 100 + 100) / 100)
    # quarter needs its search (4 s, the baselines' search rows are not needed)
    assert run.cost_ratio("val", (*both, "quarter")) == pytest.approx((101 + 10 + 4) / 100)
    # block needs its own candidates and the quarter's it copied
    assert run.cost_ratio("val", (*both, "block")) == pytest.approx((101 + 30 + 10) / 100)
    # cv5: 5 folds × 2 s per method
    assert run.cost_ratio("cv5", both) == pytest.approx((101 + 20) / 100)


def test_configurations_always_hold_both_baselines():
    configs = configurations()
    assert len(configs) == 2 * 2 ** 5
    assert all({"baseline-I", "baseline-II"} <= set(c.methods) for c in configs)
    assert Configuration("val", ("baseline-I", "baseline-II")) in configs


def test_the_pick_is_the_products_ranking_ties_to_fewer_parameters():
    vals = {m: 0.9 for m in METHODS}  # every val tied: the fewest trained parameters wins
    run = record(TESTS, vals)
    assert run.pick("val", METHODS) == "baseline-I"
    assert run.pick("val", ("baseline-II", "lp-ft", "quarter")) == "quarter"


def runs_where(val_best, test_best, n=5, datasets=("a", "b")):
    """Runs in which ``val_best`` has the best val and ``test_best`` the best test."""
    out = []
    for i in range(n):
        for d in datasets:
            tests = {m: 0.70 + 0.001 * i for m in METHODS}
            tests[test_best] = 0.80 + 0.002 * i
            tests["baseline-II"] = min(tests["baseline-II"], 0.75 + 0.003 * i) \
                if test_best != "baseline-II" else tests["baseline-II"]
            vals = {m: 0.5 for m in METHODS}
            vals[val_best] = 0.9
            out.append(record(tests, vals, dataset=d, seed=i))
    return out


def test_the_default_is_the_lowest_regret_under_the_cost_bar():
    runs = runs_where(val_best="quarter", test_best="quarter")
    scored = [score(runs, c) for c in configurations(procedures=("val",))]
    chosen = choose_default(scored)
    assert "quarter" in chosen.config.methods and chosen.mean_regret == 0
    # of the zero-regret sets the cheapest: the baselines and quarter, nothing else
    assert chosen.config.methods == ("baseline-I", "baseline-II", "quarter")
    # a bar nothing meets chooses nothing
    assert choose_default(scored, cost_bar=0.5) is None


def test_regrets_within_half_a_point_tie_and_go_to_the_cheaper():
    runs = runs_where(val_best="quarter", test_best="quarter")
    zero = score(runs, Configuration("val", ("baseline-I", "baseline-II", "quarter")))
    cheap = score(runs, Configuration("val", ("baseline-I", "baseline-II")))
    cheap.regrets = [0.4] * len(cheap.regrets)  # 0.4 points worse, and cheaper
    assert choose_default([zero, cheap]).config == cheap.config
    cheap.regrets = [0.6] * len(cheap.regrets)
    assert choose_default([zero, cheap]).config == zero.config


def test_the_choice_pays_only_with_a_regret_clearly_below_baseline_II():
    runs = runs_where(val_best="quarter", test_best="quarter")
    chosen = score(runs, Configuration("val", ("baseline-I", "baseline-II", "quarter")))
    verdict = claim(runs, chosen)
    assert verdict.pays and "The choice pays" in verdict.sentence()
    # a recommendation that picks what Baseline II would, the best: no gain over it, no claim
    runs = runs_where(val_best="baseline-II", test_best="baseline-II")
    chosen = score(runs, Configuration("val", ("baseline-I", "baseline-II", "quarter")))
    verdict = claim(runs, chosen)
    assert not verdict.pays and not verdict.worse_than
    assert "not shown to pay" in verdict.sentence() and verdict.advice == "baseline-II"
    # one that picks Baseline II where always-quarter was better: the README names quarter
    runs = runs_where(val_best="baseline-II", test_best="quarter")
    chosen = score(runs, Configuration("val", ("baseline-I", "baseline-II", "quarter")))
    verdict = claim(runs, chosen)
    assert not verdict.pays and verdict.worse_than == ["quarter"]
    assert "always Quarter has a lower regret" in verdict.sentence()


def test_a_fixed_recipe_clearly_better_is_named():
    runs = runs_where(val_best="baseline-I", test_best="lp-ft")
    chosen = score(runs, Configuration("val", ("baseline-I", "baseline-II", "lp-ft")))
    verdict = claim(runs, chosen)
    assert not verdict.pays and verdict.worse_than == ["lp-ft"]
    assert "does not pay: always LP-FT" in verdict.sentence()


def test_clearly_worse_than_baseline_II_on_one_dataset_blocks_the_claim():
    good = runs_where(val_best="quarter", test_best="quarter", datasets=("a",))
    bad = []
    for i in range(5):  # dataset b: the pick (quarter) is 3-4 points under Baseline II
        tests = {m: 0.70 for m in METHODS}
        tests["baseline-II"], tests["quarter"] = 0.80 + 0.001 * i, 0.765 + 0.002 * i
        vals = {m: 0.5 for m in METHODS}
        vals["quarter"] = 0.9
        bad.append(record(tests, vals, dataset="b", seed=i))
    runs = good * 3 + bad  # overall, quarter still wins on regret
    chosen = score(runs, Configuration("val", ("baseline-I", "baseline-II", "quarter")))
    verdict = claim(runs, chosen)
    assert verdict.per_dataset["b"].difference.high < 0
    assert not verdict.pays


def test_a_cross_validation_still_running_gives_no_cv_pick():
    # every method's folds but LP-BW's: the run has no cv5 pick yet, among any methods
    partial = record(TESTS, cv={m: 0.5 for m in METHODS if m != "lp-bw"})
    assert not partial.has_cv
    assert partial.pick("cv5", ("baseline-I", "baseline-II")) is None
    full = record(TESTS, cv={m: 0.5 + 0.01 * i for i, m in enumerate(METHODS)})
    assert full.has_cv and full.pick("cv5", METHODS) == "lp-bw"


def test_criterion_1_chooses_among_val_and_a_cheap_cv5_configuration_reopens_it():
    from protocol_small import cv_under_the_bar

    runs = runs_where(val_best="quarter", test_best="quarter")
    scored = [score(runs, c) for c in configurations()]
    # no run has cv5: only val configurations are eligible, and nothing reopens
    assert choose_default(scored).config.procedure == "val"
    assert cv_under_the_bar(runs) == []
    # folds of 2 s against a 100 s Baseline II: cv5 with the baselines costs 1.21×, under
    for run in runs:
        run.cv = record(TESTS, cv={m: 0.5 for m in METHODS}).cv
    cheap = cv_under_the_bar(runs)
    assert Configuration("cv5", ("baseline-I", "baseline-II")) in [s.config for s in cheap]
    # with folds as long as the finals (as measured), none is under the bar
    for run in runs:
        run.cv = [CvRow(r.method, r.fold, r.layer_indices, r.trained_params, r.fold_acc,
                        r.fold_images, r.epochs, SECONDS[r.method], "ok") for r in run.cv]
    assert cv_under_the_bar(runs) == []


def test_the_advice_names_the_most_images_per_class_where_the_choice_beat_baseline_II():
    from protocol_small import advice

    good = runs_where(val_best="quarter", test_best="quarter", datasets=("a", "b"))
    for run in good:
        run.per_class = {"a": 200.0, "b": 10.0}[run.dataset]
    tied = []
    for i in range(5):  # dataset c: the pick equals Baseline II's test
        tests = {m: 0.70 for m in METHODS}
        tests["baseline-II"] = tests["quarter"] = 0.80 + 0.001 * i
        vals = {m: 0.5 for m in METHODS}
        vals["quarter"] = 0.9
        tied.append(record(tests, vals, dataset="c", seed=i))
        tied[-1].per_class = 500.0
    runs = good + tied
    chosen = score(runs, Configuration("val", ("baseline-I", "baseline-II", "quarter")))
    text = advice(runs, chosen, claim(runs, chosen))
    assert text.startswith("With about 200 labelled images per class or fewer")
    assert "not shown to differ on c (500 per class)" in text
    # nowhere clearly better: the advice is to fine-tune every layer
    chosen = score(tied, Configuration("val", ("baseline-I", "baseline-II", "quarter")))
    assert "fine-tune every layer" in advice(tied, chosen, claim(tied, chosen))


def test_the_cost_as_the_product_runs_it_counts_what_the_protocol_leaves_out():
    run = record(TESTS)
    methods = ("baseline-I", "baseline-II", "lp-bw")
    # the protocol: quarter's search (4 s), the finals with LP-BW's probe once (1 + 100 + 10)
    assert run.cost_ratio("val", methods) == pytest.approx((4 + 1 + 100 + 10) / 100)
    # the product today: also Baseline I's search row (1 s; Baseline II's 9 s are skipped at
    # this size) and the probe again (+1)
    assert run.cost_as_run(methods) == pytest.approx((4 + 1 + 1 + 100 + 11) / 100)


def test_the_full_size_runs_are_printed_with_no_small_run_in():
    # a machine whose 1,000-image run folders were not carried over still prints them
    from protocol_small import Suite, report

    full = record(TESTS, dataset="tf_flowers")
    full.per_class, full.full = 587.2, True
    text = report(Suite([], [full], planned=25))
    assert "Provisional" in text and "## Full size" in text
    row = next(line for line in text.splitlines() if line.startswith("| tf_flowers"))
    assert row.split(" | ")[1:3] == ["587", "0.700"]
    # the pick by val among the seven (all vals tie at 0.5: fewest trained parameters)
    assert row.endswith("| Baseline I |")
