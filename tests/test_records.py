"""records.py: rows round-trip through their CSVs exactly, old files read with defaults, the one
ranking, and a damaged cell is one line naming the file."""

import math

import pytest

from blocktune.core.errors import BlocktuneError
from blocktune.core.io import atomic_write_csv
from blocktune.core.records import (
    CandidateRow,
    FinalRow,
    rank_key,
    read_candidates,
    read_finals,
    write_candidates,
    write_finals,
)


def candidate(**overrides) -> CandidateRow:
    values = dict(strategy="block", rung=4, index=3, layers="a … b (4 layers)",
                  layer_indices="10,11,12,13", first=10, last=13, trained_params=1234,
                  val_acc=0.8125, val_loss=0.51234567, epochs=4, best_epoch=3, seconds=12.345,
                  status="ok", val_curve=[0.5, 0.75, 0.8125, 0.8], val_pred=[0, 2, 1, 1],
                  loss_curve=[1.2, 0.9, 0.7, 0.6], val_loss_curve=[1.0, 0.8, 0.5, 0.52],
                  score=0.79, score_images=96, score_seconds=1.5)
    return CandidateRow(**{**values, **overrides})


def final(**overrides) -> FinalRow:
    values = dict(method="block", group="a … b (4 layers)", layer_indices="10,11,12,13",
                  trained_params=1234, search_val_acc=0.8125, val_acc=0.85, test_acc=0.84,
                  epochs=3, seconds=30.0, status="ok", select="last-quarter",
                  val_pred=[0, 1], test_pred=[2, 1, 0], val_curve=[0.8, 0.85, 0.84],
                  loss_curve=[0.9, 0.7, 0.6], val_loss_curve=[0.6, 0.5, 0.55])
    return FinalRow(**{**values, **overrides})


def test_rows_read_back_exactly_as_recorded(tmp_path):
    rows = [candidate(), candidate(strategy="baseline-I", index=0, layer_indices="", first=None,
                                   last=None, score=math.nan, val_pred=None, same_as="")]
    write_candidates(tmp_path / "c.csv", [r.recorded() for r in rows])
    back = read_candidates(tmp_path / "c.csv")
    assert back[0] == rows[0].recorded() and back[1].first is None
    assert math.isnan(back[1].score) and back[1].ranking_score == back[1].val_acc
    assert back[0].val_loss == 0.512346 and back[0].seconds == 12.35  # as written: 6 and 2 places
    finals = [final(), final(method="baseline-II", layer_indices="", search_val_acc=math.nan)]
    write_finals(tmp_path / "f.csv", finals)
    [a, b] = read_finals(tmp_path / "f.csv")
    assert a == final().recorded() and math.isnan(b.search_val_acc)


def test_an_older_file_with_fewer_columns_reads_with_defaults(tmp_path):
    old = {k: v for k, v in candidate().to_csv().items()
           if k not in ("score", "score_images", "score_seconds", "loss_curve", "val_loss_curve",
                        "val_pred", "same_as")}
    atomic_write_csv(tmp_path / "c.csv", [old], list(old))
    [row] = read_candidates(tmp_path / "c.csv")
    assert math.isnan(row.score) and row.score_images == 0 and row.val_pred is None
    assert row.loss_curve == [] and row.ranking_score == row.val_acc == 0.8125


def test_the_one_ranking_score_then_fewer_parameters_then_searched_first():
    rows = [candidate(index=0, score=0.7, val_acc=0.9),  # its pooled score ranks it, not val
            candidate(index=1, score=0.8, trained_params=2000),
            candidate(index=2, score=0.8, trained_params=1000),
            candidate(index=3, score=0.8, trained_params=1000),
            candidate(index=4, score=math.nan, val_acc=0.75)]
    assert [r.index for r in sorted(rows, key=rank_key)] == [2, 3, 1, 4, 0]
    finals = [final(method="a", val_acc=0.8, test_acc=0.99), final(method="b", val_acc=0.85,
                                                                   test_acc=0.5)]
    assert min(finals, key=rank_key).method == "b"  # finals rank on val: test is never used


def test_a_damaged_cell_is_one_line_naming_the_file(tmp_path):
    bad = {**candidate().to_csv(), "rung": "four"}
    atomic_write_csv(tmp_path / "candidates.csv", [bad], list(bad))
    with pytest.raises(BlocktuneError, match="candidates.csv") as error:
        read_candidates(tmp_path / "candidates.csv")
    assert "\n" not in str(error.value)
    missing = {k: v for k, v in final().to_csv().items() if k != "test_acc"}
    atomic_write_csv(tmp_path / "finals.csv", [missing], list(missing))
    with pytest.raises(BlocktuneError, match="finals.csv"):
        read_finals(tmp_path / "finals.csv")


def test_a_score_carries_its_standard_error_on_the_images_it_was_measured_on():
    row = candidate(score=0.8, score_images=400)
    assert row.score_se == pytest.approx(0.02)
    assert candidate(score=math.nan, val_acc=0.5, score_images=100).score_se == \
        pytest.approx(0.05)  # an older row: its val accuracy is its score
    assert math.isnan(candidate(score_images=0).score_se)
