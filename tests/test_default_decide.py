"""PROTOCOL-default.md's decision code (benchmarks/default_decide.py) on made-up results: the
two procedures' picks (the product's ranking, ties included), regret in the domain and on the
corrupted copies, non-inferiority by a one-point margin in both, provisional until every run."""

import sys
from pathlib import Path

import pytest

from .test_sizes_decide import FIXED, run

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from default_decide import Run, decide, report  # noqa: E402 - benchmarks/default_decide.py

SHIFT = [0] * 10 + [1] * 10  # one corrupted copy of 20 images


def with_shift(base, right: dict[str, int]) -> Run:
    """``base`` with one corrupted copy on which each final is right on its first ``right``
    images."""
    for method, row in base.finals.items():
        pred = [y if i < right[method] else 1 - y for i, y in enumerate(SHIFT)]
        row.domains = {"noise": {"acc": 0.0, "pred": pred}}
    return Run(base, {"noise": list(SHIFT)})


def make(seed: int, val3_test: float, lp_ft_test: float, val3_shift: int = 18,
         lp_ft_shift: int = 18) -> Run:
    """LP-BW wins val among the three; its test and shift accuracies against LP-FT's."""
    tests = {m: 0.7 for m in FIXED} | {"lp-bw": val3_test, "lp-ft": lp_ft_test}
    rights = {m: 80 for m in FIXED} | {"lp-bw": 90}
    shift = {m: 10 for m in FIXED} | {"lp-bw": val3_shift, "lp-ft": lp_ft_shift}
    return with_shift(run(tests, rights, seed=seed), shift)


def test_picks_rank_as_the_product_and_regret_reads_both_families():
    r = make(0, 0.80, 0.85, val3_shift=19, lp_ft_shift=12)
    assert r.pick("val3") == "lp-bw" and r.pick("lp-ft") == "lp-ft"
    assert r.regret("lp-bw", "in the domain") == pytest.approx(5.0)
    assert r.regret("lp-ft", "under shift") == pytest.approx(100 * 7 / 20)
    # a tie on val among the three goes to the fewest trained parameters (Baseline I)
    tied = with_shift(run({m: 0.7 for m in FIXED}), {m: 10 for m in FIXED})
    assert tied.pick("val3") == "baseline-I"


def test_non_inferior_in_both_families_makes_val3_the_default():
    runs = [make(s, 0.80 + 0.001 * (s % 3), 0.80, val3_shift=18, lp_ft_shift=14)
            for s in range(24)]
    answer = decide(runs, planned=24)
    assert answer.non_inferior("in the domain") and answer.non_inferior("under shift")
    assert answer.default == "val3"
    assert "**Default: val3**" in report(runs, planned=24)


def test_worse_by_more_than_the_margin_in_one_family_keeps_lp_ft():
    # two points worse in the domain on every run, better under shift: not non-inferior
    runs = [make(s, 0.78 - 0.001 * (s % 3), 0.80, val3_shift=19, lp_ft_shift=10)
            for s in range(24)]
    answer = decide(runs, planned=24)
    assert not answer.non_inferior("in the domain") and answer.non_inferior("under shift")
    assert answer.default == "lp-ft"


def test_nothing_is_decided_until_every_run_is_in():
    runs = [make(s, 0.80, 0.80) for s in range(23)]
    answer = decide(runs, planned=24)
    assert answer.provisional and answer.default is None
    text = report(runs, planned=24)
    assert "provisional" in text and "Default:" not in text
