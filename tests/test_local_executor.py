"""executors/local.py: trials in order, in this process; each result is the workbench's own;
a spent budget stops before the next trial."""

import pytest

from blocktune.core.trials import FinalTrial, Trial
from blocktune.executors.local import LocalExecutor

from .test_workbench import bench  # noqa: F401 - the workbench fixture


def test_trials_run_in_order_and_each_result_is_the_workbenchs(bench):  # noqa: F811
    last = len(bench.walk.layers) - 1
    trials = [Trial("block", i, (last - i,), 2) for i in range(3)]
    started, epochs = [], []
    done = list(LocalExecutor(bench).search(
        trials, {}, lambda: True, lambda t, i, n: started.append((t.index, i, n)),
        lambda *e: epochs.append(e)))
    assert [t for t, _ in done] == trials
    assert started == [(0, 0, 3), (1, 1, 3), (2, 2, 3)]
    assert len(epochs) == 3 * 2
    direct = bench.train(trials[1])
    assert (done[1][1].val_pred, done[1][1].val_curve) == (direct.val_pred, direct.val_curve)


def test_a_spent_budget_stops_before_the_next_trial(bench):  # noqa: F811
    trials = [Trial("block", i, (len(bench.walk.layers) - 1 - i,), 1) for i in range(3)]
    asked = []

    def keep_going():
        asked.append(True)
        return len(asked) <= 2

    done = list(LocalExecutor(bench).search(trials, {}, keep_going, lambda *a: None))
    assert [t.index for t, _ in done] == [0, 1]


def test_finals_run_in_order_with_their_recipe(bench):  # noqa: F811
    trials = [FinalTrial("baseline-I", (), float("nan")),
              FinalTrial("lp-bw", (len(bench.walk.layers) - 1,), 0.5)]
    names = []
    done = list(LocalExecutor(bench).finals(trials, lambda t: names.append(t.method)))
    assert names == ["baseline-I", "lp-bw"] and [t for t, _ in done] == trials
    head, probed = (outcome.result for _, outcome in done)
    # LP-BW's record holds both stages: the probe (Baseline I's final) and then the group
    assert probed.epochs > head.epochs
    assert probed.val_curve[:head.epochs] == pytest.approx(head.val_curve)
