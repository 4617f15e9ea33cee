"""The paired rule (blocktune.recommend) and PROTOCOL-sizes.md's decision code
(benchmarks/sizes_decide.py) on made-up results: the prior kept on a tie and on weak evidence,
left on paired evidence, the race's stop and cost, regret, the Holm family, the default with its
ties and fallback, and criterion 3's switch."""

import math
import sys
from pathlib import Path

import pytest

from blocktune.core.records import CandidateRow, FinalRow
from blocktune.core.stats import sign_test
from blocktune.protocol.recommend import paired_choice, recommend

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import sizes_decide  # noqa: E402 - benchmarks/sizes_decide.py, the protocol's decision code
from sizes_decide import FIXED, Run, decide_full, decide_size, report  # noqa: E402

PARAMS = {"baseline-I": 10, "baseline-II": 1000, "lp-ft": 1000, "block": 100, "lp-bw": 100}
SECONDS = {"baseline-I": 1.0, "baseline-II": 100.0, "lp-ft": 101.0, "block": 10.0,
           "lp-bw": 12.0}
LABELS = [0] * 50 + [1] * 50  # 100 val images


def predictions(right: int, offset: int = 0) -> list[int]:
    """Val predictions right on images offset … offset+right−1 (cyclically), wrong elsewhere."""
    pred = [1 - y for y in LABELS]
    for i in range(right):
        j = (offset + i) % len(LABELS)
        pred[j] = LABELS[j]
    return pred


def final(method, right, test, offset=0, curve=None, status="ok"):
    return FinalRow(method, "", "", PARAMS[method], math.nan, right / len(LABELS), test,
                    5, SECONDS[method], status, val_pred=predictions(right, offset),
                    val_curve=curve or [right / len(LABELS)] * 5)


def test_sign_test_is_one_sided_and_exact():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(1 / 32)
    assert sign_test(0, 5) == 1.0
    assert sign_test(3, 2) == pytest.approx(0.5)


def test_paired_keeps_the_prior_on_a_tie_even_when_fewer_parameters_would_win():
    rows = [final("baseline-I", 80, 0.7), final("lp-bw", 80, 0.8, offset=10)]
    chosen, p = paired_choice(rows, LABELS)
    assert chosen.method == "lp-bw"  # the val rule would take Baseline I (fewer parameters)
    assert recommend(rows, "val")["method"] == "baseline-I"
    assert p["baseline-I"] == pytest.approx(sign_test(10, 10))


def test_paired_needs_clear_paired_evidence_to_leave_the_prior():
    prior = final("lp-bw", 80, 0.8)
    # same images right plus 3 more: p = 1/8 > 0.10, stays
    assert paired_choice([prior, final("baseline-II", 83, 0.9)], LABELS)[0].method == "lp-bw"
    # 4 more: p = 1/16 <= 0.10, switches
    assert paired_choice([prior, final("baseline-II", 84, 0.9)], LABELS)[0].method == \
        "baseline-II"
    # the same accuracy gap on different images is weak evidence: 10 wins, 6 losses
    weak = final("baseline-II", 84, 0.9, offset=6)
    assert paired_choice([prior, weak], LABELS)[0].method == "lp-bw"


def test_paired_of_two_qualifying_challengers_takes_the_higher_val_accuracy():
    rows = [final("lp-bw", 70, 0.8), final("baseline-I", 80, 0.7),
            final("baseline-II", 85, 0.9)]
    chosen = recommend(rows, "paired", val_labels=LABELS)
    assert chosen["method"] == "baseline-II" and chosen["prior"] == "lp-bw"
    assert set(chosen["p"]) == {"baseline-I", "baseline-II"}


def test_paired_without_the_prior_falls_back_to_the_val_rule():
    rows = [final("baseline-I", 80, 0.7), final("baseline-II", 80, 0.9)]
    assert paired_choice(rows, LABELS)[0].method == "baseline-I"
    failed = final("lp-bw", 99, 0.9, status="failed")
    assert paired_choice([*rows, failed], LABELS)[0].method == "baseline-I"
    with pytest.raises(ValueError):
        recommend(rows, "paired")


def run(tests, rights=None, dataset="d", seed=0, model="m", full=False, b2_curve=None):
    rights = rights or {m: 80 for m in FIXED}
    finals = {m: final(m, rights[m], tests[m], curve=b2_curve if m == "baseline-II" else None)
              for m in FIXED}
    search = [CandidateRow("block", i, 0, "", str(i), None, None, 1, 0.5, 1.0, 5, 5, 2.0, "ok")
              for i in range(3)]
    return Run(model, dataset, seed, full, 10, {"search": 10, "val": 10, "train": 80},
               LABELS, [], finals, search)


def test_regret_is_against_the_best_of_the_five_fixed_recipes():
    r = run({"baseline-I": 0.70, "baseline-II": 0.85, "lp-ft": 0.90, "block": 0.8, "lp-bw": 0.8})
    assert r.regret("lp-ft") == 0
    assert r.regret("lp-bw") == pytest.approx(10)
    assert r.pick("val") == "baseline-I"  # all tie on val: fewest parameters
    assert r.pick("paired") == "lp-bw"


def test_race_stops_baseline_ii_behind_lp_bw_and_costs_less():
    tests = {m: 0.8 for m in FIXED}
    behind = run(tests, {**{m: 80 for m in FIXED}, "baseline-II": 90},
                 b2_curve=[0.5, 0.7, 0.85, 0.9, 0.9])
    assert behind.race_stopped()
    assert behind.pick("paired") == "baseline-II" and behind.pick("race") == "lp-bw"
    full_cost = (6.0 + 1.0 + 12.0 + 100.0) / 100.0
    assert behind.cost("paired") == pytest.approx(full_cost)
    assert behind.cost("race") == pytest.approx((6.0 + 1.0 + 12.0 + 40.0) / 100.0)
    ahead = run(tests, b2_curve=[0.5, 0.81, 0.85, 0.9, 0.9])
    assert not ahead.race_stopped() and ahead.cost("race") == pytest.approx(full_cost)


def runs_where_paired_wins(n=24):
    """LP-BW right on val and test on most runs; on every other Baseline II is clearly better
    on both, which only the val rule's tie-break and the fixed recipes miss."""
    out = []
    for i in range(n):
        dataset = f"d{i % 3}"
        if i % 2 == 0:
            tests = {"baseline-I": 0.70, "baseline-II": 0.90, "lp-ft": 0.85, "block": 0.78,
                     "lp-bw": 0.80}
            rights = {"baseline-I": 80, "baseline-II": 90, "lp-ft": 85, "block": 80,
                      "lp-bw": 80}
        else:
            tests = {"baseline-I": 0.78 - 0.002 * i, "baseline-II": 0.76, "lp-ft": 0.77,
                     "block": 0.79, "lp-bw": 0.82 + 0.001 * i}
            rights = {m: 80 for m in FIXED}
        out.append(run(tests, rights, dataset=dataset, seed=i))
    return out


def test_the_default_is_a_procedure_that_beats_every_fixed_recipe_under_holm(monkeypatch):
    monkeypatch.setitem(sizes_decide.SIZES, "1000", 24)
    answer = decide_size(runs_where_paired_wins(), "1000")
    assert len(answer.comparisons) == 15
    assert all(c.family == 15 for c in answer.comparisons.values())
    assert "paired" in answer.qualified and "val" not in answer.qualified
    assert answer.default == "paired" and not answer.provisional
    text = report(runs_where_paired_wins())
    assert "Default at this size (criterion 2): paired" in text


def test_without_a_qualifying_procedure_the_best_fixed_recipe_is_the_default():
    runs = [run({"baseline-I": 0.7, "baseline-II": 0.75, "lp-ft": 0.76, "block": 0.8,
                 "lp-bw": 0.82 + 0.001 * i}, seed=i) for i in range(6)]
    answer = decide_size(runs, "1000")
    assert answer.qualified == [] and answer.default == "lp-bw"  # paired = always LP-BW here
    assert answer.provisional
    assert "No procedure beats every fixed recipe" in report(runs)


def test_a_dataset_where_the_pick_is_clearly_below_baseline_ii_disqualifies():
    runs = runs_where_paired_wins()
    # on dataset d1 Baseline II is 5 points above LP-BW on every run, and the val evidence
    # never says so
    for r in runs:
        if r.dataset == "d1":
            r.finals["baseline-II"].test_acc = r.test("lp-bw") + 0.05 + 0.001 * r.seed
    answer = decide_size(runs, "1000")
    assert "d1" in answer.worse_than_b2["paired"] and "paired" not in answer.qualified


def test_criterion_3_carries_the_default_unless_a_recipe_beats_it_at_full_size():
    small = decide_size(runs_where_paired_wins(), "1000")
    same = [run({"baseline-I": 0.7, "baseline-II": 0.8, "lp-ft": 0.8, "block": 0.8,
                 "lp-bw": 0.8}, full=True, seed=i) for i in range(6)]
    assert decide_full(small, decide_size(same, "full")).default == "paired"
    better = [run({"baseline-I": 0.7, "baseline-II": 0.9 + 0.002 * i, "lp-ft": 0.85,
                   "block": 0.8, "lp-bw": 0.8}, full=True, seed=i) for i in range(6)]
    for r in better:
        r.sizes = {"search": 100, "val": 100, "train": 800}
    answer = decide_full(small, decide_size(better, "full"))
    assert answer.default == "baseline-II" and "baseline-II" in answer.beaten_by
    assert answer.switch_per_class == pytest.approx(math.sqrt(10 * 100))
