"""The plan is pure: trials from (walk, config, finished rows), checked without training anything."""

import pytest
import timm

from blocktune.core.methods import BASELINE_I, BASELINE_II, indices_text, parse_indices
from blocktune.core.records import CandidateRow, FinalRow
from blocktune.core.trials import FinalTrial, Trial
from blocktune.models.groups import StrategyOptions
from blocktune.models.layers import walk
from blocktune.protocol.plan import SearchSettings, finals_plan, search_wave, strategy_candidates


@pytest.fixture(scope="module")
def model_walk():
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    return walk(model, input_size=(3, 32, 32))


def planner(model_walk, settings, **options):
    opts = StrategyOptions(**options)
    return lambda strategy, rows: strategy_candidates(model_walk, strategy, opts, rows, settings)


def finish(trials, accuracy=lambda t: 0.5, params=lambda t: 10):
    """The rows an executor would hand back for these trials (copies as the driver makes)."""
    return [CandidateRow(strategy=t.method, rung=t.epochs, index=t.index, layers="",
                         layer_indices=t.indices, first=None, last=None,
                         trained_params=params(t), val_acc=accuracy(t), val_loss=1.0,
                         epochs=t.epochs, best_epoch=t.epochs, seconds=1.0,
                         status="ok" if t.final else "rung",
                         same_as="" if t.copy_of is None else "copy") for t in trials]


def run_plan(settings, candidates_of, accuracy=lambda t: 0.5):
    rows, waves = [], []
    while wave := search_wave(settings, rows, candidates_of):
        waves.append(wave)
        rows += finish(wave, accuracy)
    return rows, waves


def test_baselines_first_then_each_strategy_in_order(model_walk):
    settings = SearchSettings(("layer", "block"), epochs=3, max_candidates=4)
    rows, waves = run_plan(settings, planner(model_walk, settings))
    assert [(t.method, t.group) for t in waves[0][:2]] == [(BASELINE_I, ()), (BASELINE_II, None)]
    assert [t.method for t in waves[0][2:]] == ["layer"] * 4
    assert [t.method for t in waves[1]] == ["block"] * 4
    assert len(waves) == 2 and all(t.epochs == 3 and t.final for w in waves for t in w)
    # a finished search plans nothing; the same rows resumed plan nothing either
    assert search_wave(settings, rows, planner(model_walk, settings)) == []


def test_resume_plans_only_what_is_missing(model_walk):
    settings = SearchSettings(("block",), epochs=2, baselines=False, max_candidates=5)
    first = search_wave(settings, [], planner(model_walk, settings))
    partial = finish(first[:3])
    rest = search_wave(settings, partial, planner(model_walk, settings))
    assert rest == first[3:]


def test_ranked_waits_for_the_layer_search_and_uses_its_scores(model_walk):
    settings = SearchSettings(("layer", "ranked"), epochs=1, baselines=False, max_candidates=6,
                              ranked_k=(2,))
    accuracy = {5: 0.9, 2: 0.8}
    rows, waves = run_plan(settings, planner(model_walk, settings),
                           accuracy=lambda t: accuracy.get(t.index, 0.1))
    assert [t.method for t in waves[0]] == ["layer"] * 6
    assert [t.method for t in waves[1]] == ["ranked-2"]
    layer_rows = {r.index: int(r.layer_indices) for r in rows if r.strategy == "layer"}
    assert waves[1][0].group == tuple(sorted((layer_rows[5], layer_rows[2])))


def test_max_candidates_and_quarter_restrict_the_plan(model_walk):
    settings = SearchSettings(("block",), epochs=1, baselines=False, max_candidates=3)
    wave = search_wave(settings, [], planner(model_walk, settings))
    assert len(wave) == 3
    everything = SearchSettings(("block",), epochs=1, baselines=False)
    quarter = search_wave(everything, [], planner(model_walk, everything, quarter=True))
    n = len(model_walk.layers)
    assert quarter and all(min(t.group) >= n - n // 4 for t in quarter)


def test_a_group_two_strategies_share_is_trained_once_then_copied(model_walk):
    settings = SearchSettings(("block", "quarter"), epochs=2, baselines=False)
    rows, waves = run_plan(settings, planner(model_walk, settings))
    block = {t.indices for t in waves[0]}
    quarter = waves[1]
    assert quarter and all(t.copy_of is not None for t in quarter)
    assert all(t.copy_of[0] == "block" and t.copy_of[1] in block for t in quarter)


def test_successive_halving_is_rungs_of_the_plan(model_walk):
    settings = SearchSettings(("block",), epochs=5, baselines=False, prune=True,
                              max_candidates=9)
    rows, waves = run_plan(settings, planner(model_walk, settings),
                           accuracy=lambda t: 0.1 * t.index)  # later candidates score higher
    assert [len(w) for w in waves] == [9, 3, 1]
    assert [w[0].epochs for w in waves] == [1, 3, 5]
    assert [t.index for t in waves[1]] == [8, 7, 6]  # the best third goes on, best first
    assert all(t.resume_rung == 1 and not t.final for t in waves[1])
    assert waves[2][0].index == 8 and waves[2][0].final and waves[2][0].resume_rung == 3


def test_finals_plan_trains_each_group_once_and_redoes_changed_choices():
    methods = [(BASELINE_I, (), 0.8), (BASELINE_II, None, 0.7), ("block", (5, 6), 0.82),
               ("quarter", (5, 6), 0.82), ("layer", (9,), 0.81)]
    plan = finals_plan(methods, [])
    assert [(t.method, t.copy_of) for t in plan] == [
        (BASELINE_I, None), (BASELINE_II, None), ("block", None), ("quarter", "block"),
        ("layer", None)]
    def final(method, group, indices):
        return FinalRow(method, group, indices, trained_params=1, search_val_acc=0.8,
                        val_acc=0.8, test_acc=0.8, epochs=1, seconds=1.0, status="ok")

    finished = [final(BASELINE_I, "head only", ""), final(BASELINE_II, "all layers", ""),
                final("block", "b", "5,6"), final("layer", "l", "8")]  # layer: an old choice
    plan = finals_plan(methods, finished)
    assert plan == [FinalTrial("quarter", (5, 6), 0.82, copy_of="block"),
                    FinalTrial("layer", (9,), 0.81)]
    # Baseline II is known by its method id, whatever its display text says
    renamed = [final(BASELINE_I, "head only", ""), final(BASELINE_II, "every layer", ""),
               final("block", "b", "5,6"), final("quarter", "b", "5,6"), final("layer", "l", "9")]
    assert finals_plan(methods, renamed) == []


def test_group_text_round_trips():
    for group in [None, (), (3,), (1, 2, 3)]:
        assert parse_indices(indices_text(group)) == group
    assert Trial("block", 0, (1, 2), 4).key == ("block", "1,2", "4")


def test_a_fresh_row_equals_the_same_row_read_back():
    """Resume must rank exactly as an uninterrupted run: a row is what its CSV holds."""
    import math

    fresh = CandidateRow(strategy="layer", rung=2, index=3, layers="a", layer_indices="7",
                         first=7, last=7, trained_params=10, val_acc=2 / 3, val_loss=math.inf,
                         epochs=2, best_epoch=1, seconds=1.234, status="ok",
                         val_curve=[1 / 3, 2 / 3], val_pred=[0, 1]).recorded()
    assert CandidateRow.from_csv(fresh.to_csv()) == fresh
    assert fresh.val_acc == float(f"{2 / 3:.6f}")  # not 2/3: the CSV's value
    final = FinalRow("block", "g", "1,2", 5, math.nan, 2 / 3, 0.5, 3, 1.0, "ok",
                     test_pred=[1, 2]).recorded()
    assert FinalRow.from_csv(final.to_csv()).to_csv() == final.to_csv()
