"""workbench.py: a trial trains its group and the head only, from the pretrained weights every
time; a rung continues exactly; a final is tested once, on every test image."""

import pytest
import torch

from blocktune.core.trials import Trial

from .conftest import make_image_folder, workbench_for

FRACTIONS = {"search": 0.25, "val": 0.25, "train": 0.3, "test": 0.2}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    data = make_image_folder(tmp_path_factory.mktemp("bench") / "images", per_class=12, size=32)
    return workbench_for(data, FRACTIONS, epochs=3, final_epochs=2, cache_dtype="float32")


def changed(bench) -> set[str]:
    state = bench.model.state_dict()
    return {k for k, v in state.items() if not torch.equal(v, bench.pristine[k])}


def test_a_trial_trains_its_group_and_the_head_and_starts_from_the_pretrained_weights(bench):
    last = len(bench.walk.layers) - 1
    group = (last - 1, last)
    first = bench.train(Trial("block", 0, group, 3))
    moved = changed(bench)
    names = {bench.walk.layers[i].name.removeprefix("model.") for i in group}
    assert moved and all(k.startswith("head.") or any(
        k.removeprefix("body.").removeprefix("model.").startswith(n + ".") for n in names)
        for k in moved), moved
    assert any(k.startswith("head.") for k in moved), moved
    bench.train(Trial("block", 1, (0,), 3))  # another trial in between
    again = bench.train(Trial("block", 0, group, 3))
    assert (again.val_pred, again.val_curve, again.loss_curve) == \
        (first.val_pred, first.val_curve, first.loss_curve)
    bench.reset()
    assert changed(bench) == set()


def test_a_rung_continues_exactly_where_it_paused(bench):
    group = (len(bench.walk.layers) - 1,)
    straight = bench.train(Trial("block", 0, group, 3))
    paused = bench.train(Trial("block", 0, group, 1, final=False))
    assert paused.checkpoint is not None and paused.epochs == 1
    resumed = bench.train(Trial("block", 0, group, 3), checkpoint=paused.checkpoint)
    assert resumed.checkpoint is None
    assert (resumed.val_pred, resumed.val_curve) == (straight.val_pred, straight.val_curve)
    assert resumed.loss_curve == pytest.approx(straight.loss_curve, abs=1e-6)


def test_a_final_is_scored_once_on_every_test_image_and_hands_back_its_weights(bench):
    outcome = bench.fit_final(())  # Baseline I: the head alone
    assert outcome.result.status == "ok"
    assert len(outcome.test_pred) == len(bench.split["test"])
    labels = bench.images.labels[list(bench.split["test"])].tolist()
    assert outcome.test_acc == pytest.approx(
        sum(p == y for p, y in zip(outcome.test_pred, labels, strict=True)) / len(labels))
    assert {k for k, v in outcome.state.items() if not torch.equal(v, bench.pristine[k])} \
        <= {k for k in outcome.state if k.startswith("head.")}
    assert len(outcome.result.val_pred) == len(bench.split["val"])
