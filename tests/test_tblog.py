"""--log tensorboard: one TensorBoard run per candidate and per final, curves and HParams."""

import pytest

from blocktune.core.records import read_candidates, read_finals
from blocktune.runner.search import run

from .test_search import tiny_config

pytest.importorskip("tensorboard")


def _events(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    return events


def test_one_tensorboard_run_per_candidate_and_final(image_folder, tmp_path):
    """Logging turned on at a resume: the runs of rows recorded before are written too."""
    out = tmp_path / "run"
    run(tiny_config(image_folder, max_candidates=2), out)  # logging off
    assert not (out / "tensorboard").exists()
    run(tiny_config(image_folder, max_candidates=3, log=["tensorboard"]), out)
    assert not list((out / "tensorboard").rglob("*.writing"))
    rows = read_candidates(out / "seed_0" / "candidates.csv")
    finals = read_finals(out / "seed_0" / "finals.csv")
    search_runs = sorted((out / "tensorboard" / "seed_0" / "search").iterdir())
    final_runs = sorted((out / "tensorboard" / "seed_0" / "final").iterdir())
    assert len(search_runs) == len(rows) == 2 + 3
    assert [p.name for p in final_runs] == sorted(r.method for r in finals)
    for row in rows:
        events = _events(out / "tensorboard" / "seed_0" / "search" / (
            f"{row.strategy}-{row.index:03d}-"
            f"{'head' if row.first is None else f'{row.first:03d}'}-r{row.rung}"))
        accuracy = [e.value for e in events.Scalars("val/accuracy")]
        assert accuracy == pytest.approx(row.val_curve, abs=1e-6)
        assert len(events.Scalars("val/loss")) == len(events.Scalars("train/loss")) == row.epochs
        assert events.Scalars("hparam/val_accuracy")[0].value == pytest.approx(row.val_acc)
        plugins = events.PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(plugins)
    # learning curves are in the CSVs too, finals included
    assert all(len(f.val_loss_curve) == len(f.loss_curve) == f.epochs for f in finals)
