"""Every selection rule on hand-made candidate tables (val only), and the registry."""

from dataclasses import replace

import numpy as np
import pytest

from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.records import CandidateRow
from blocktune.protocol.select import (
    RULES,
    SearchView,
    get_rule,
    pick,
    record_choice,
    within_one_se,
)


def row(index, first, last, acc, loss=1.0, params=100, val_pred=None):
    return CandidateRow(strategy="block", rung=4, index=index, layers=f"L{first}-{last}",
                        layer_indices=",".join(str(i) for i in range(first, last + 1)),
                        first=first, last=last, trained_params=params, val_acc=acc,
                        val_loss=loss, epochs=4, best_epoch=4, seconds=1.0, status="ok",
                        val_pred=val_pred)


def test_registry_has_the_required_rules_and_refuses_unknown_names():
    assert {"max-val", "val-loss", "last-quarter", "one-se", "smooth", "two-fold"} <= set(RULES)
    assert all(rule.help for rule in RULES.values())
    with pytest.raises(BlocktuneError, match="unknown selection rule 'best'"):
        get_rule("best")
    with pytest.raises(BlocktuneError, match="select = 'best' is not allowed: unknown 'best'"):
        RunConfig(select="best")


def test_max_val_breaks_ties_by_fewer_parameters_then_search_order():
    rows = [row(0, 18, 19, 0.80, params=500), row(1, 16, 17, 0.82, params=900),
            row(2, 14, 15, 0.82, params=300), row(3, 12, 13, 0.82, params=300)]
    assert pick("max-val", SearchView(rows)).index == 2
    assert pick("max-val", SearchView([])) is None


def test_val_loss_takes_the_lowest_loss_not_the_highest_accuracy():
    rows = [row(0, 18, 19, 0.85, loss=0.60), row(1, 16, 17, 0.82, loss=0.45),
            row(2, 14, 15, 0.84, loss=0.50)]
    assert pick("val-loss", SearchView(rows)).index == 1


def test_last_quarter_keeps_to_the_last_quarter_of_the_layers():
    rows = [row(0, 18, 19, 0.80), row(1, 15, 16, 0.83), row(2, 2, 3, 0.90)]
    # 20 layers: the last quarter starts at layer 15
    assert pick("last-quarter", SearchView(rows, num_layers=20)).index == 1
    early = [row(2, 2, 3, 0.90), row(3, 5, 6, 0.85)]
    assert pick("last-quarter", SearchView(early, num_layers=20)).index == 2  # fallback


def predictions(labels, wrong):
    out = labels.copy()
    out[list(wrong)] = (out[list(wrong)] + 1) % 3
    return out.tolist()


def test_one_se_is_paired_and_breaks_ties_by_val_loss():
    labels = np.arange(100) % 3
    best = row(0, 18, 19, 0.80, loss=0.70, val_pred=predictions(labels, range(20)))
    # misses the same images plus one: 1 point behind, within one paired standard error
    close = row(1, 16, 17, 0.79, loss=0.55, val_pred=predictions(labels, range(21)))
    # misses the same plus three more: unpaired (binomial SE 4 points) it would look like a
    # tie, paired (SE of the difference 1.7 points) it is 3 points behind: out
    behind = row(2, 14, 15, 0.77, loss=0.40, val_pred=predictions(labels, range(23)))
    view = SearchView([best, close, behind], val_labels=labels)
    assert [r.index for r in within_one_se(view)] == [0, 1]
    assert pick("one-se", view).index == 1  # the lower val loss of the two
    # without per-image predictions (an older run folder): the binomial SE, unpaired
    for r in (best, close, behind):
        r.val_pred = None
    assert [r.index for r in within_one_se(view)] == [0, 1, 2]


def test_smooth_prefers_a_good_neighbourhood_over_a_lone_peak():
    rows = [row(0, 18, 19, 0.80), row(1, 16, 17, 0.81), row(2, 14, 15, 0.80),
            row(3, 12, 13, 0.70), row(4, 10, 11, 0.84), row(5, 8, 9, 0.70)]
    assert pick("max-val", SearchView(rows)).index == 4
    assert pick("smooth", SearchView(rows)).index == 1


def test_two_fold_asks_for_the_top_five_and_ranks_by_both_folds():
    rows = [row(i, 30 - 2 * i, 31 - 2 * i, acc) for i, acc in
            enumerate([0.80, 0.84, 0.83, 0.79, 0.82, 0.81, 0.78])]
    view = SearchView(rows)
    asked = get_rule("two-fold").refits(view)
    assert asked == [rows[i].layer_indices for i in (1, 2, 4, 5, 0)]
    assert pick("two-fold", view).index == 1  # no refits yet: max-val
    refits = {rows[1].layer_indices: replace(rows[1], val_acc=0.70),
              rows[2].layer_indices: replace(rows[2], val_acc=0.82),
              rows[4].layer_indices: replace(rows[4], val_acc=0.80)}
    # means: #1 0.77, #2 0.825, #4 0.81
    assert pick("two-fold", SearchView(rows, refits=refits)).index == 2
    failed = {k: replace(v, status="failed") for k, v in refits.items()}
    assert pick("two-fold", SearchView(rows, refits=failed)).index == 1


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_returns_one_of_the_rows_and_never_reads_test(name):
    labels = np.arange(30) % 3
    rows = [row(i, 20 - 2 * i, 21 - 2 * i, 0.7 + 0.01 * (i % 4), loss=1 - 0.02 * i,
                val_pred=predictions(labels, range(i % 5))) for i in range(8)]
    # a row has no test accuracy at all: a rule cannot read one
    assert not any("test" in f for f in CandidateRow.__dataclass_fields__)
    refits = {r.layer_indices: replace(r, val_acc=0.75) for r in rows}
    chosen = pick(name, SearchView(rows, num_layers=24, val_labels=labels, refits=refits))
    assert chosen in rows


def test_the_recorded_choice_says_where_the_rule_looked_and_when_it_fell_back():
    late = [row(0, 90, 99, 0.70), row(1, 80, 89, 0.75), row(2, 70, 79, 0.90)]
    chosen, record = record_choice("last-quarter", SearchView(late, num_layers=100))
    assert chosen.index == 1 and record["layer_indices"] == late[1].layer_indices
    assert record["region"] == [75, 99] and record["fallback"] is None
    assert record["candidates"] == 3 and record["search_val_acc"] == 0.75
    early = late[2:]  # nothing in the last quarter: the rule falls back, and says so
    chosen, record = record_choice("last-quarter", SearchView(early, num_layers=100))
    assert chosen.index == 2 and "fell back to max-val" in record["fallback"]
    chosen, record = record_choice("max-val", SearchView([], num_layers=100))
    assert chosen is None and record["region"] is None and record["layer_indices"] is None
