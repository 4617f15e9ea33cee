"""benchmarks/paper_table.py's table and claims, on made-up per-seed results whose answers are
known: means that tie across models, models run without ``max-val`` (``--no-max-val``), and
the keep-pretrained head paired with the linear one."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import paper_table  # noqa: E402 - benchmarks/paper_table.py

from blocktune.core.methods import BASELINE_I, BASELINE_II  # noqa: E402
from blocktune.core.stats import compare_over_seeds, mean_interval  # noqa: E402

IMAGES = 734


def measured(b1, b2, bw, quarters=(4, 4, 4)) -> dict:
    """What ``measure`` returns for one folder: per-seed test accuracies of the three methods."""
    per_seed = {BASELINE_I: list(b1), BASELINE_II: list(b2), "block": list(bw)}
    return {"tests": {m: mean_interval(v) for m, v in per_seed.items()},
            "versus": {label: compare_over_seeds(
                "BW", label, [a - b for a, b in zip(bw, base, strict=True)], IMAGES)
                       for label, base in (("Baseline I", b1), ("Baseline II", b2))},
            "per_seed": per_seed, "quarters": list(quarters), "seconds": 60.0,
            "bw_finals": [("1,2", 1.0)] * len(bw)}


ARGS = argparse.Namespace(split="random", image_size=96, epochs=4, final_epochs=3,
                          data="tf_flowers", max_images_per_class=None)


def test_claims_survive_tied_means_and_models_without_max_val():
    results = {
        # Baseline II's means tie across the two models: a zero variance across models
        "a (linear)": {"last-quarter": measured([0.80, 0.81, 0.82], [0.85, 0.86, 0.87],
                                                [0.86, 0.875, 0.88]),
                       "max-val": measured([0.80, 0.81, 0.82], [0.85, 0.86, 0.87],
                                           [0.85, 0.86, 0.875], quarters=(2, 4, 3))},
        "b (linear)": {"last-quarter": measured([0.70, 0.72, 0.74], [0.84, 0.86, 0.88],
                                                [0.80, 0.81, 0.82])},  # --no-max-val
    }
    markdown, rows = paper_table.tables(results, "last-quarter", [0, 1, 2], ARGS)
    assert "the lowest is Baseline II, zero: its means tie across models" in markdown
    # only the model that ran max-val says where its picks lie; last-quarter's own Q4s do not
    assert [r["max_val_quarters"] for r in rows] == ["Q2/Q4/Q3", "–"]
    assert "1 of 3 groups that `max-val` chose" in markdown
    # model a only: (1.0 + 1.5 + 0.5) / 3 points
    assert "paired over every model and seed: +1.0 points" in markdown
    assert "On 1 of 2 model(s) BW is better than both" in markdown


def test_keep_pretrained_is_paired_with_the_linear_head_per_model_and_seed():
    linear = measured([0.80, 0.82, 0.84], [0.85, 0.86, 0.87], [0.83, 0.85, 0.87])
    keep = measured([0.78, 0.805, 0.82], [0.85, 0.86, 0.87], [0.83, 0.85, 0.87])
    results = {"a (linear)": {"last-quarter": linear},
               "a (keep-pretrained)": {"last-quarter": keep}}
    markdown, _ = paper_table.tables(results, "last-quarter", [0, 1, 2], ARGS)
    claim = next(line for line in markdown.splitlines() if "keeping the pretrained" in line)
    assert "1 model(s) × 3 seed(s)" in claim
    assert "Baseline I -1.8 points" in claim and "(worse)" in claim
    assert "Baseline II +0.0 points" in claim
