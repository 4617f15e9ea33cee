"""How sure a number is: intervals for accuracies, paired comparisons on the same images, verdicts.

Everything here is a pure function of per-image outcomes (``True`` where a method's prediction
was right), so a report can be rebuilt from the files a run writes:

* an accuracy's 95% interval is Wilson's score interval (sound near 0 and 1, unlike the
  normal approximation);
* two methods scored on the same images are compared *paired*: the difference of their
  accuracies with a paired bootstrap 95% interval (images resampled together), and McNemar's
  exact test on the images where exactly one of them is right;
* over several seeds, the mean of the per-seed differences with a Student-t 95% interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval; ``nan`` bounds where none can be given."""

    value: float
    low: float
    high: float

    def points(self) -> str:
        """``+1.2 points [-0.4, +2.9]``, for differences of accuracies."""
        if math.isnan(self.low):
            return f"{100 * self.value:+.1f} points"
        return f"{100 * self.value:+.1f} points [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"

    def fraction(self) -> str:
        """``0.873 [0.847, 0.896]``, for accuracies."""
        if math.isnan(self.low):
            return f"{self.value:.3f}"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def accuracy_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> Interval:
    """Accuracy ``correct / total`` with Wilson's score interval."""
    if total <= 0:
        return Interval(math.nan, math.nan, math.nan)
    ci = scipy_stats.binomtest(int(correct), int(total)).proportion_ci(
        confidence_level=confidence, method="wilson")
    return Interval(correct / total, float(ci.low), float(ci.high))


def standard_error(accuracy: float, total: int) -> float:
    """One binomial standard error of an accuracy measured on ``total`` images."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / total) if total else math.nan


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value: of the images exactly one method gets right, is the
    split between the two further from even than chance allows? 1.0 when they never disagree."""
    a, b = _as_bool(correct_a), _as_bool(correct_b)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap(correct_a: Sequence[bool], correct_b: Sequence[bool],
                     resamples: int = 10_000, seed: int = 0,
                     confidence: float = CONFIDENCE) -> Interval:
    """Accuracy of A minus accuracy of B on the same images, with a percentile interval from
    resampling the images (both methods' outcomes on an image travel together)."""
    a, b = _as_bool(correct_a), _as_bool(correct_b)
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    if len(a) == 0:
        return Interval(math.nan, math.nan, math.nan)
    diff = a.astype(np.int8) - b.astype(np.int8)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(diff), size=(resamples, len(diff)), dtype=np.int32)
    means = diff[draws].mean(axis=1, dtype=np.float64)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(diff.mean()), float(low), float(high))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean with a Student-t interval (over seeds); no interval from a single value."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan)
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1)
                 / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    """Method A against method B on the same test images (A − B)."""

    a: str
    b: str
    difference: Interval
    p_value: float  # McNemar's exact test; nan over seeds
    images: int
    seeds: int = 1

    @property
    def word(self) -> str:
        """better / worse when the whole interval lies on one side of zero, else a tie."""
        if math.isnan(self.difference.low):
            return "no interval (no per-image predictions saved)" if self.images == 0 \
                else "no interval"
        if self.difference.low > 0:
            return "better"
        if self.difference.high < 0:
            return "worse"
        return "no clear difference"

    def sentence(self) -> str:
        """``BW vs Baseline I: −2.9 points [−5.0, −0.8], worse (McNemar p = 0.008)``."""
        detail = f"McNemar p = {self.p_value:.3g}" if not math.isnan(self.p_value) else \
            f"mean over {self.seeds} seeds"
        text = self.difference.points().replace("-", "\u2212")
        return f"{self.a} vs {self.b}: {text}, {self.word} ({detail})"


def compare(a: str, b: str, correct_a: Sequence[bool], correct_b: Sequence[bool],
            seed: int = 0) -> Comparison:
    """A paired comparison of two methods' per-image outcomes on the same images."""
    return Comparison(a, b, paired_bootstrap(correct_a, correct_b, seed=seed),
                      mcnemar_exact(correct_a, correct_b), len(correct_a))


def compare_over_seeds(a: str, b: str, differences: Sequence[float], images: int) -> Comparison:
    """Per-seed paired differences (A − B), summarised as their mean with a t interval."""
    return Comparison(a, b, mean_interval(differences), math.nan, images, len(differences))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties averaged); nan when either side is constant."""
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(scipy_stats.spearmanr(x, y).statistic)


def _as_bool(values: Sequence[bool]) -> np.ndarray:
    return np.asarray(values, dtype=bool)
