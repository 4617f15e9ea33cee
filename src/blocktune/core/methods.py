"""The vocabulary of methods every layer names: the baselines, the recipes, their display
labels, how a group of layers is written in the records, and the names of the choice
procedures. Plain values and pure functions; nothing here trains or reads files."""

from __future__ import annotations

import re
from collections.abc import Sequence

from blocktune.core.errors import BlocktuneError
from blocktune.core.records import FinalRow

BASELINE_I, BASELINE_II = "baseline-I", "baseline-II"
BASELINES = (BASELINE_I, BASELINE_II)
# Recipes fine-tuned as finals beside the baselines and the strategies' picks (--methods): the
# method id is the recipe. LP-FT and LLRD train every layer; LP-BW the first strategy's pick;
# norms the normalisation parameters and biases of every layer (BitFit / TinyTL).
RECIPES = ("lp-ft", "llrd", "lp-bw", "norms")
WHOLE_MODEL = (BASELINE_II, "lp-ft", "llrd", "norms")  # finals whose group is every layer
NORMS_GROUP = "every norm layer's scale and shift, every bias"  # what `norms` trains
PROBED = ("lp-ft", "lp-bw")  # train the head alone first (exactly Baseline I's final)


def trained_recipes(recipes: list[str] | tuple[str, ...], has_pick: bool) -> list[str]:
    """The recipes of ``--methods`` that a seed fine-tunes: LP-BW needs a strategy's pick, the
    whole-model ones do not."""
    return [recipe for recipe in recipes if recipe in WHOLE_MODEL or has_pick]

# display names of the method ids; a method is always identified by its id
LABELS = {BASELINE_I: "Baseline I", BASELINE_II: "Baseline II", "layer": "LW", "block": "BW",
          "window": "BWSW", "ranked-3": "BWT3", "ranked-5": "BWT5", "native": "Native",
          "random": "Random", "quarter": "Quarter", "top": "Top", "lp-ft": "LP-FT",
          "llrd": "LLRD", "lp-bw": "LP-BW", "norms": "Norms"}


def label(method: str) -> str:
    if method.startswith("ranked-") and method not in LABELS:
        return f"BWT{method.split('-')[1]}"
    return LABELS.get(method, method)


def indices_text(group: Sequence[int] | None) -> str:
    """A group as CSV text: ``"3,4,5"``; the head alone ``""``; every layer ``"all"``."""
    return "all" if group is None else ",".join(str(i) for i in group)


def parse_indices(text: str) -> tuple[int, ...] | None:
    return None if text == "all" else tuple(int(i) for i in text.split(",") if i)


def recipe_of(method: str) -> str | None:
    """How a method's final trains beyond its group: a recipe, or None (plain)."""
    return method if method in RECIPES else None


def final_group(row: FinalRow) -> tuple[int, ...] | None:
    """The group of a ``finals.csv`` row, by its method id (Baseline II's row is written with
    no indices; its display text is no identity)."""
    return None if row.method in WHOLE_MODEL else parse_indices(row.layer_indices)


# how the recommendation is chosen among the finals (--choose-by): by val, by the paired rule
# (a prior kept unless val shows a challenger better on the same images), by cvK, or always one
# method (a fixed recipe: the finals' val accuracies do not choose)
PAIRED = "paired"
PAIRED_PRIOR = "lp-bw"  # the method `paired` keeps unless val says otherwise
PROCEDURES = ("val", PAIRED)  # besides cvK and a fixed method
FIXED_CHOICES = (*BASELINES, *RECIPES)


def cv_folds_of(choose_by: str) -> int | None:
    """``val``, ``paired`` and a fixed method → None (they read no folds); ``cvK`` → K (at
    least 2); anything else one line."""
    if choose_by in PROCEDURES or choose_by in FIXED_CHOICES:
        return None
    match = re.fullmatch(r"cv(\d+)", choose_by)
    if match is None or int(match.group(1)) < 2:
        raise BlocktuneError(f"choose_by = {choose_by!r} is not allowed: val, paired, cvK with "
                             "K at least 2 folds (e.g. cv5), or one method to hand over always ("
                             + ", ".join(FIXED_CHOICES) + ")")
    return int(match.group(1))
