import subprocess
import sys

import pytest
import torch

from blocktune.core.config import TrainConfig
from blocktune.data import decode_folder, scan_folder, stratified_split
from blocktune.models.build import BlockModel, LinearHead
from blocktune.models.layers import walk
from blocktune.training.cache import ImageFeed
from blocktune.training.train import freeze, set_train_mode, train_group


def bn_state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("group", [(2, 3), (6, 7), (), None])
def test_freezing_contract(mobilenet_like, group):
    """After a step: frozen params and frozen BN statistics bit-identical; trainable ones moved."""
    model = BlockModel(mobilenet_like, LinearHead(8, 3))
    w = walk(model.body, input_size=(3, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen_norms = freeze(model, w, group)
    set_train_mode(model, frozen_norms)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = model(torch.randn(4, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    after = model.state_dict()
    trained = set(range(len(w.layers))) if group is None else set(group)
    for index, layer in enumerate(w.layers):
        keys = [k for k in after if k.startswith(f"body.{layer.name}.")]
        changed = {k for k in keys if not torch.equal(before[k], after[k])}
        if index in trained:
            assert any(k.endswith("weight") for k in changed), layer.name
        else:
            assert not changed, f"frozen {layer.name} moved: {changed}"
    assert not torch.equal(before["head.fc.weight"], after["head.fc.weight"])


def test_frozen_norms_stay_in_eval_while_training(mobilenet_like):
    model = BlockModel(mobilenet_like, LinearHead(8, 3))
    w = walk(model.body, input_size=(3, 16, 16))
    frozen = freeze(model, w, (6, 7))
    set_train_mode(model, frozen)
    assert not model.body.bn.training and not model.body.block.bn1.training
    assert model.body.block.bn3.training  # in the trained group
    assert {id(m) for m in frozen} == {id(model.body.bn), id(model.body.block.bn1),
                                       id(model.body.block.bn2)}


@pytest.fixture
def tiny_setup(image_folder, mobilenet_like):
    decoded = decode_folder(scan_folder(image_folder), 16)
    split = stratified_split(decoded.labels.tolist(), seed=0)
    model = BlockModel(mobilenet_like, LinearHead(8, 3))
    w = walk(model.body, input_size=(3, 16, 16))
    feed = ImageFeed(model.body, w, decoded.pixels, decoded.labels, split, (0.5,) * 3, (0.5,) * 3)
    return model, w, feed


def test_train_group_learns_and_reports(tiny_setup):
    model, w, feed = tiny_setup
    torch.manual_seed(0)
    result, net, cut = train_group(model, w, (6, 7), feed, TrainConfig(epochs=4, lr=0.05),
                                   train_split=("search", "train"))
    assert result.status == "ok" and cut == 3
    assert result.epochs == len(result.val_curve) == len(result.loss_curve)
    assert result.best_val_acc == max(result.val_curve) > 0.5  # colour is easy
    assert result.trainable_params == sum(w.layers[i].num_params for i in (6, 7)) + 8 * 3 + 3
    assert result.loss_curve[-1] < result.loss_curve[0]


def test_training_is_seeded(tiny_setup):
    model, w, feed = tiny_setup
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    results = []
    for _ in range(2):
        model.load_state_dict(pristine)
        torch.manual_seed(0)
        results.append(train_group(model, w, None, feed, TrainConfig(epochs=2))[0])
    assert results[0].val_curve == results[1].val_curve
    assert results[0].loss_curve == results[1].loss_curve


def test_nan_loss_is_a_failed_result_not_a_crash(tiny_setup):
    model, w, feed = tiny_setup
    with torch.no_grad():
        model.head.fc.weight.fill_(float("nan"))
    result, _, _ = train_group(model, w, (), feed, TrainConfig(epochs=2))
    assert result.status == "failed" and "non-finite" in result.error


def test_early_stopping_and_best_weights(tiny_setup):
    model, w, feed = tiny_setup
    result, net, cut = train_group(model, w, (), feed, TrainConfig(epochs=30, lr=1e-6,
                                                                   patience=2))
    assert result.epochs < 30
    val_x, val_y = feed.inputs(cut, "val")
    from blocktune.training.train import evaluate

    acc, _, _ = evaluate(net, val_x, val_y, feed.prepare(cut, torch.device("cpu")))
    assert acc == result.best_val_acc  # the kept weights are the best epoch's


def test_with_nothing_held_out_every_epoch_runs_and_the_last_is_kept(tiny_setup):
    # the final of a cross-validated choice: no val to stop on, schedule by or keep the best of
    model, w, feed = tiny_setup
    head = model.head
    after = []
    config = TrainConfig(epochs=6, lr=1e-6, patience=2, plateau_patience=0)
    result, _, _ = train_group(model, w, (), feed, config, train_split=("search", "train"),
                               val_split=None, on_epoch=lambda *args: after.append(
                                   {k: v.clone() for k, v in head.state_dict().items()}))
    assert result.status == "ok" and result.epochs == 6 == result.best_epoch
    assert len(result.loss_curve) == 6 and result.val_curve == [] and result.val_pred == []
    assert result.best_val_acc != result.best_val_acc  # NaN: nothing was scored
    assert all(torch.equal(v, after[-1][k]) for k, v in head.state_dict().items())
    assert not all(torch.equal(v, after[0][k]) for k, v in head.state_dict().items())


def test_train_config_validates():
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)


def test_fit_uses_lower_lr_for_pretrained_layers(tiny_setup, monkeypatch):
    model, w, feed = tiny_setup
    seen = {}
    original = torch.optim.Adam

    def spy(groups, **kwargs):
        seen["lrs"] = sorted(g["lr"] for g in groups)
        return original(groups, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    train_group(model, w, (6, 7), feed, TrainConfig(epochs=1, lr=1e-2, body_lr_scale=0.1))
    assert seen["lrs"] == pytest.approx([1e-3, 1e-2])


@pytest.mark.parametrize("group", [(6, 7), (2, 3)])
def test_paused_and_continued_training_equals_uninterrupted(tiny_setup, group):
    """A rung of successive halving pauses training; continuing must change nothing."""
    import io

    model, w, feed = tiny_setup
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=4, lr=0.05, patience=4)
    torch.manual_seed(0)
    straight, _, _ = train_group(model, w, group, feed, config)
    straight_state = {k: v.clone() for k, v in model.state_dict().items()}

    model.load_state_dict(pristine)
    torch.manual_seed(0)
    first, _, _ = train_group(model, w, group, feed, config, stop_after=1)
    assert first.epochs == 1 and first.checkpoint is not None
    buffer = io.BytesIO()  # the checkpoint goes to disk between rungs
    torch.save(first.checkpoint, buffer)
    buffer.seek(0)
    model.load_state_dict(pristine)  # the next rung starts from a reset model
    torch.manual_seed(123)  # and whatever the global RNG did meanwhile
    second, _, _ = train_group(model, w, group, feed, config, stop_after=3,
                               checkpoint=torch.load(buffer, weights_only=True))
    third, _, _ = train_group(model, w, group, feed, config, checkpoint=second.checkpoint)
    assert third.checkpoint is None and third.epochs == 4
    for field in ("best_val_acc", "best_val_loss", "best_epoch", "val_curve", "loss_curve"):
        assert getattr(third, field) == getattr(straight, field), field
    for key, value in model.state_dict().items():
        assert torch.equal(value, straight_state[key]), key


_REALLOCATE = """
import resource, sys, torch
from blocktune.training.train import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
for step in range(12):  # 64 MB allocated, touched and freed, like a step's activations
    if step == 8:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_instead_of_faulting_in_new_pages():
    # Fresh processes: the setting is process-wide and one-way.
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _REALLOCATE, mode], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0], int(out[1])

    applied, kept = faults("keep")
    _, default = faults("default")
    assert applied == "True"
    assert default > 3000  # every 64 MB come fresh from the OS: thousands of pages zeroed
    assert kept < default / 2  # most of them reuse freed memory (in practice all)
