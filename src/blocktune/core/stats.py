"""How sure a number is: intervals for accuracies, paired comparisons on the same images, verdicts.

Everything here is a pure function of per-image outcomes (``True`` where a method's prediction
was right), so a report can be rebuilt from the files a run writes:

* an accuracy's 95% interval is Wilson's score interval (sound near 0 and 1, unlike the
  normal approximation);
* two methods scored on the same images are compared *paired*: the difference of their
  accuracies with a paired bootstrap 95% interval (images resampled together), and McNemar's
  exact test on the images where exactly one of them is right;
* over several seeds, the mean of the per-seed differences with a Student-t 95% interval and
  the matching one-sample t-test;
* a difference is *better* or *worse* only when its interval excludes zero **and** its test,
  Holm-adjusted over the comparisons of one verdict block, is below 0.05: the word never
  contradicts the p-value printed beside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


def with_minus(text: str) -> str:
    """``-2.9`` → ``−2.9``: the minus sign the reports print, not a hyphen."""
    return text.replace("-", "\u2212")


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


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(Binomial(wins + losses, 1/2) ≥ wins); 1.0 with no
    discordant image."""
    if wins + losses == 0:
        return 1.0
    return float(scipy_stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


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
    # A resample of the images is fully described by how many of its draws fall on images
    # where A alone, B alone, or both or neither are right: multinomial counts, O(resamples)
    # memory however many images there are (drawing every index costs resamples × n).
    n = len(diff)
    kinds = np.array([np.sum(diff == 1), np.sum(diff == -1), np.sum(diff == 0)]) / n
    counts = np.random.default_rng(seed).multinomial(n, kinds, size=resamples)
    means = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(diff.mean()), float(low), float(high))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of several p-values (family-wise error ≤ alpha); ``nan``
    entries are not tests and stay ``nan``."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


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
    p_value: float  # McNemar's exact test on one seed, the t-test over seeds
    images: int
    seeds: int = 1
    # Holm-adjusted over the comparisons of one verdict block (``adjust``); p_value alone
    family: int = 1
    p_adjusted: float | None = None

    @property
    def p_decisive(self) -> float:
        return self.p_value if self.p_adjusted is None else self.p_adjusted

    @property
    def word(self) -> str:
        """better / worse when the whole interval lies on one side of zero and the (adjusted)
        test agrees; else a tie."""
        if math.isnan(self.difference.low):
            if self.seeds > 1:
                return (f"no interval: {self.seeds} seeds are too few for one within the "
                        "±100 points an accuracy difference can take")
            return "no interval (no per-image predictions saved)" if self.images == 0 \
                else "no interval"
        if self.seeds > 1 and math.isnan(self.p_value):
            return ("no claim: the seeds' differences are all equal, nothing to test their "
                    "spread against")
        significant = not math.isnan(self.p_decisive) and self.p_decisive < ALPHA
        if self.difference.low > 0 and significant:
            return "better"
        if self.difference.high < 0 and significant:
            return "worse"
        return "no clear difference"

    def sentence(self) -> str:
        """``BW vs Baseline I: −2.9 points [−5.0, −0.8], worse (McNemar p = 0.008, Holm over
        3 comparisons 0.024)``."""
        if self.seeds == 1:
            detail = f"McNemar p = {self.p_value:.3g}"
        else:
            detail = f"mean over {self.seeds} seeds" + (
                f", t-test p = {self.p_value:.3g}" if not math.isnan(self.p_value) else "")
        if self.p_adjusted is not None and self.family > 1 and not math.isnan(self.p_value):
            detail += f", Holm over {self.family} comparisons {self.p_adjusted:.3g}"
        text = with_minus(self.difference.points())
        return f"{self.a} vs {self.b}: {text}, {self.word} ({detail})"


def adjust(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons of one verdict block with their p-values Holm-adjusted together."""
    adjusted = holm([c.p_value for c in comparisons])
    family = sum(not math.isnan(c.p_value) for c in comparisons)
    return [dataclasses.replace(c, p_adjusted=p, family=family)
            for c, p in zip(comparisons, adjusted, strict=True)]


def compare(a: str, b: str, correct_a: Sequence[bool], correct_b: Sequence[bool],
            seed: int = 0) -> Comparison:
    """A paired comparison of two methods' per-image outcomes on the same images."""
    return Comparison(a, b, paired_bootstrap(correct_a, correct_b, seed=seed),
                      mcnemar_exact(correct_a, correct_b), len(correct_a))


def compare_over_seeds(a: str, b: str, differences: Sequence[float], images: int,
                       bound: float | None = 1.0) -> Comparison:
    """Per-seed paired differences (A − B), summarised as their mean with a t interval and the
    one-sample t-test that the interval inverts. ``bound``: the largest magnitude a difference
    can take (1 for accuracies); an interval reaching past it is not given."""
    x = np.asarray([d for d in differences if not math.isnan(d)], dtype=np.float64)
    p_value = math.nan
    # equal non-zero differences on every seed have no spread to test against: no claim
    # (two seeds of +2 points are not certainty); all zero is no difference (p = 1); fewer than
    # two seeds give no test
    if len(x) >= 2:
        p_value = (1.0 if x[0] == 0 else math.nan) if np.all(x == x[0]) else \
            float(scipy_stats.ttest_1samp(x, 0.0).pvalue)
    interval = mean_interval(differences)
    if bound is not None and not math.isnan(interval.low) and (interval.low < -bound
                                                                or interval.high > bound):
        # an accuracy difference lies within ±100 points: an interval wider than that says
        # only that these seeds are too few to give one
        interval = Interval(interval.value, math.nan, math.nan)
    return Comparison(a, b, interval, p_value, images, len(differences))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties averaged); nan when either side is constant."""
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(scipy_stats.spearmanr(x, y).statistic)


def _as_bool(values: Sequence[bool]) -> np.ndarray:
    return np.asarray(values, dtype=bool)
