"""The statistics on known cases: hand-computed values and a seeded coverage simulation."""

import math
import re

import numpy as np
import pytest

from blocktune.core.stats import (
    Comparison,
    Interval,
    accuracy_interval,
    adjust,
    compare,
    compare_over_seeds,
    holm,
    mcnemar_exact,
    mean_interval,
    paired_bootstrap,
    spearman,
)


def outcomes(only_a: int, only_b: int, both: int, neither: int):
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


def test_mcnemar_exact_on_a_hand_made_table():
    # 10 images only A gets right, 2 only B: two-sided binomial tail of 2 of 12 at p = 1/2,
    # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2**12 = 2 * 79 / 4096
    a, b = outcomes(10, 2, 50, 8)
    assert mcnemar_exact(a, b) == pytest.approx(158 / 4096)
    assert mcnemar_exact(b, a) == pytest.approx(158 / 4096)  # symmetric
    # concordant images do not matter
    assert mcnemar_exact(*outcomes(10, 2, 500, 80)) == pytest.approx(158 / 4096)
    assert mcnemar_exact(*outcomes(0, 0, 5, 5)) == 1.0
    assert mcnemar_exact(*outcomes(6, 6, 0, 0)) == pytest.approx(1.0)


def test_wilson_interval_known_value():
    interval = accuracy_interval(8, 10)
    assert interval.value == 0.8
    assert interval.low == pytest.approx(0.4902, abs=1e-4)
    assert interval.high == pytest.approx(0.9433, abs=1e-4)
    perfect = accuracy_interval(20, 20)
    assert perfect.high == pytest.approx(1.0) and perfect.low < 1.0  # never a zero-width 1.0
    assert math.isnan(accuracy_interval(0, 0).value)


def test_student_t_interval_over_seeds():
    interval = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert interval.value == 2.0
    assert (interval.low, interval.high) == pytest.approx((2 - half, 2 + half))
    assert math.isnan(mean_interval([0.5]).low)  # one seed: no interval


def test_paired_bootstrap_is_the_paired_difference():
    a, b = outcomes(30, 10, 200, 60)
    interval = paired_bootstrap(a, b)
    assert interval.value == pytest.approx(20 / 300)
    assert interval.low < interval.value < interval.high
    # identical outcomes: no uncertainty at all
    same = paired_bootstrap(a, a)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])


def test_paired_bootstrap_covers_the_true_difference_about_95_percent():
    """Seeded simulation: two correlated classifiers with true accuracies 0.80 and 0.77."""
    rng = np.random.default_rng(0)
    joint = [0.72, 0.08, 0.05, 0.15]  # both right, only A, only B, neither
    true_difference = (0.72 + 0.08) - (0.72 + 0.05)
    trials, covered = 300, 0
    for trial in range(trials):
        kind = rng.choice(4, size=400, p=joint)
        a = (kind == 0) | (kind == 1)
        b = (kind == 0) | (kind == 2)
        interval = paired_bootstrap(a, b, resamples=2000, seed=trial)
        covered += interval.low <= true_difference <= interval.high
    coverage = covered / trials
    assert 0.91 <= coverage <= 0.985, coverage  # 95% ± 2.5 binomial standard errors


def test_paired_is_tighter_than_unpaired_for_correlated_methods():
    a, b = outcomes(12, 4, 250, 34)  # they agree on 284 of 300 images
    paired = paired_bootstrap(a, b)
    unpaired_half = 1.96 * math.sqrt(2 * 0.8 * 0.2 / 300)
    assert (paired.high - paired.low) / 2 < unpaired_half / 2


def test_verdict_words_and_sentence():
    better = compare("BW", "Baseline I", *outcomes(40, 5, 200, 55))
    assert better.word == "better" and better.difference.low > 0
    worse = compare("BW", "Baseline I", *outcomes(5, 40, 200, 55))
    assert worse.word == "worse"
    tie = compare("BW", "Baseline I", *outcomes(6, 5, 200, 89))
    assert tie.word == "no clear difference"
    sentence = worse.sentence()
    assert re.fullmatch(r"BW vs Baseline I: −\d+\.\d points \[−\d+\.\d, −\d+\.\d\], worse "
                        r"\(McNemar p = [\d.e-]+\)", sentence), sentence
    over = compare_over_seeds("BW", "Baseline II", [0.02, 0.03, 0.025], images=900)
    assert over.word == "better" and "mean over 3 seeds" in over.sentence()
    unknown = Comparison("BW", "Baseline I", Interval(0.01, math.nan, math.nan), math.nan, 0)
    assert unknown.word.startswith("no interval")


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_the_word_never_contradicts_the_test_beside_it():
    # as seen in a run: the bootstrap interval excludes zero, McNemar does not (p = 0.052)
    a, b = outcomes(16, 6, 100, 50)
    alone = compare("BW", "Baseline II", a, b)
    assert alone.difference.low > 0 and alone.p_value > 0.05
    assert alone.word == "no clear difference"
    # 4 discordant images of 4: the exact test cannot reach 0.05 (p = 0.125)
    few = compare("BW", "Baseline I", *outcomes(4, 0, 100, 50))
    assert few.difference.low > 0
    assert few.p_value == pytest.approx(0.125) and few.word == "no clear difference"


def test_holm_adjusts_a_verdict_block_together():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan],
                                                                nan_ok=True)
    strong = compare("BW", "Baseline I", *outcomes(30, 10, 200, 60))  # p ≈ 0.002
    weak = compare("BW", "Baseline II", *outcomes(23, 10, 200, 67))  # p ≈ 0.035: × 2 > 0.05
    tie = compare("Baseline II", "Baseline I", *outcomes(5, 5, 200, 90))
    block = adjust([strong, weak, tie])
    assert [c.family for c in block] == [3, 3, 3]
    assert block[0].word == "better" and block[0].p_adjusted == pytest.approx(3 * strong.p_value)
    assert weak.p_value < 0.05 and block[1].word == "no clear difference"
    assert "Holm over 3 comparisons" in block[1].sentence()


def test_over_seeds_the_t_test_is_the_interval_inverted():
    for diffs in ([0.02, 0.03, 0.025], [0.01, -0.002, 0.03], [-0.03, -0.01, -0.02, -0.015]):
        c = compare_over_seeds("BW", "Baseline II", diffs, images=900)
        assert (c.difference.low > 0 or c.difference.high < 0) == (c.p_value < 0.05)


def test_bootstrap_by_counts_needs_no_memory_per_image():
    # 10,000 resamples of a million images: drawing every index would take 40 GB
    a = np.zeros(1_000_000, dtype=bool)
    a[:600_000] = True
    b = np.roll(a, 1000)
    interval = paired_bootstrap(a, b)
    assert interval.value == 0 and interval.low < 0 < interval.high
    assert interval.high - interval.low < 0.001
