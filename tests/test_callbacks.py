"""Callbacks: a user's own callback hears every recorded row and final, in order, and a resume
tells it what an earlier session recorded."""

import logging

import pytest

from blocktune import api
from blocktune.core.callbacks import Callback, CallbackList, LambdaCallback
from blocktune.core.records import read_candidates, read_finals

from .test_search import tiny_config


class Recorder(Callback):
    """Everything a run says, in order."""

    def __init__(self, stop_after: int | None = None):
        self.calls: list[tuple] = []
        self.rows, self.finals, self.recorded = [], [], []
        self.by_seed: dict[int, list] = {}
        self.stop_after = stop_after

    def on_seed_start(self, seed, folder):
        self.calls.append(("seed", seed, folder.name))
        self.by_seed[seed] = []

    def on_recorded(self, rows):
        self.recorded.extend(rows)

    def on_candidate_end(self, row, best):
        self.rows.append(row)
        list(self.by_seed.values())[-1].append(row)
        self.calls.append(("row", row.strategy, row.index))
        if self.stop_after is not None and len(self.rows) == self.stop_after:
            raise KeyboardInterrupt  # a callback that raises stops the run as Ctrl-C does

    def on_final_end(self, row):
        self.finals.append(row)
        self.calls.append(("final", row.method))


def test_a_callback_hears_every_row_and_final_as_recorded(image_folder, tmp_path):
    out = tmp_path / "run"
    recorder, phases = Recorder(), []
    api.run(tiny_config(image_folder, max_candidates=3, seeds=[0, 1]), out,
            callbacks=[recorder, LambdaCallback(on_phase=phases.append)])
    for seed in (0, 1):  # exactly the rows as recorded, in their order
        assert recorder.by_seed[seed] == read_candidates(out / f"seed_{seed}" / "candidates.csv")
    assert [r.method for r in recorder.finals] == \
        [r.method for s in (0, 1) for r in read_finals(out / f"seed_{s}" / "finals.csv")]
    assert recorder.finals[-1] == read_finals(out / "seed_1" / "finals.csv")[-1]
    # seed 0's rows and finals all come before seed 1 starts
    seed_1 = recorder.calls.index(("seed", 1, "seed_1"))
    assert recorder.calls[0] == ("seed", 0, "seed_0")
    assert {c[0] for c in recorder.calls[1:seed_1]} == {"row", "final"}
    assert recorder.recorded == []  # nothing was there before
    assert any(p.startswith("caching activations") for p in phases)


def test_a_callback_that_raises_stops_the_run_and_a_resume_tells_what_was_recorded(
        image_folder, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(image_folder, max_candidates=3)
    with pytest.raises(KeyboardInterrupt):
        api.run(config, out, callbacks=[Recorder(stop_after=3)])
    kept = read_candidates(out / "seed_0" / "candidates.csv")
    assert len(kept) == 3  # the row the callback stopped at was recorded first
    resumed = Recorder()
    api.run(config, out, callbacks=[resumed])
    assert resumed.recorded[:3] == kept
    assert kept + resumed.rows == read_candidates(out / "seed_0" / "candidates.csv")
    assert [r.method for r in resumed.finals] == \
        [r.method for r in read_finals(out / "seed_0" / "finals.csv")]


def test_notices_reach_logging_unless_a_callback_takes_them(caplog):
    with caplog.at_level(logging.WARNING, logger="blocktune.callbacks"):
        CallbackList([Recorder()]).on_notice("no candidate beat Baseline I on val")
    assert caplog.messages == ["no candidate beat Baseline I on val"]
    caplog.clear()
    heard = []
    with caplog.at_level(logging.WARNING, logger="blocktune.callbacks"):
        CallbackList([Recorder(), LambdaCallback(on_notice=heard.append)]).on_notice("x")
    assert caplog.messages == [] and heard == ["x"]


def test_a_wrong_callback_is_refused_with_what_to_do():
    with pytest.raises(TypeError, match="no such hook: on_row .*on_candidate_end"):
        LambdaCallback(on_row=print)
    with pytest.raises(TypeError, match="not a blocktune Callback: subclass"):
        CallbackList([print])
