"""A candidate trained from the frozen-prefix cache equals the same candidate trained naively."""

import copy

import pytest
import torch

from blocktune.core.config import TrainConfig
from blocktune.core.errors import BlocktuneError
from blocktune.data import decode_folder, scan_folder, stratified_split
from blocktune.models.build import BlockModel, LinearHead, build_model, data_config
from blocktune.models.layers import walk
from blocktune.training.cache import ActivationCache, CachedFeed, ImageFeed
from blocktune.training.loading import subsample
from blocktune.training.train import train_group

LOSS_TOLERANCE = 2e-3  # fp16 storage of activations; fp32 storage is tighter (see below)


def feeds(model, w, decoded, split, mean, std, dtype="float16", **kwargs):
    images = ImageFeed(model.body, w, decoded.pixels, decoded.labels, split, mean, std, **kwargs)
    cache = ActivationCache(model.body, w, decoded.pixels, decoded.labels, split, mean, std,
                            cover=("search", "val"), dtype=dtype)
    return images, CachedFeed(images, cache), cache


def train_both(model, w, group, naive, cached, config):
    pristine = copy.deepcopy(model.state_dict())
    results = []
    for feed in (naive, cached):
        model.load_state_dict(pristine)
        torch.manual_seed(0)
        results.append(train_group(model, w, group, feed, config)[0])
    return results


@pytest.fixture
def tiny(image_folder, mobilenet_like):
    decoded = decode_folder(scan_folder(image_folder), 16)
    split = stratified_split(decoded.labels.tolist(), {"search": .4, "val": .3, "train": .1,
                                                       "test": .2}, seed=0)
    model = BlockModel(mobilenet_like, LinearHead(8, 3))
    return model, walk(model.body, input_size=(3, 16, 16)), decoded, split


@pytest.mark.parametrize("group", [(7,), (6, 7), (0, 1), ()])
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", LOSS_TOLERANCE)])
def test_tiny_model_cached_equals_naive(tiny, group, dtype, tolerance):
    model, w, decoded, split = tiny
    naive, cached, _ = feeds(model, w, decoded, split, (0.5,) * 3, (0.5,) * 3, dtype)
    a, b = train_both(model, w, group, naive, cached, TrainConfig(epochs=3, lr=0.02))
    assert a.val_curve == b.val_curve
    assert a.loss_curve == pytest.approx(b.loss_curve, abs=tolerance)


def test_one_pass_serves_many_cuts_and_matches_separate_passes(tiny):
    model, w, decoded, split = tiny
    _, _, together = feeds(model, w, decoded, split, (0.5,) * 3, (0.5,) * 3, "float32")
    together.prepare_cuts([1, 2, 3, 4])
    assert together.passes == 1 and sorted(together.store) == [1, 2, 3, 4]
    _, _, alone = feeds(model, w, decoded, split, (0.5,) * 3, (0.5,) * 3, "float32")
    assert torch.equal(alone.inputs(3, "val")[0], together.inputs(3, "val")[0])


def test_spills_to_disk_past_the_memory_cap(tiny, tmp_path, caplog):
    model, w, decoded, split = tiny
    cache = ActivationCache(model.body, w, decoded.pixels, decoded.labels, split, (0.5,) * 3,
                            (0.5,) * 3, cover=("search", "val"), max_bytes=0, spill_dir=tmp_path)
    x, _ = cache.inputs(3, "search")
    assert cache.on_disk == [3] and (tmp_path / "cut3.npy").exists()
    assert "over its memory cap, cut 3 goes to disk" in caplog.text
    in_memory = ActivationCache(model.body, w, decoded.pixels, decoded.labels, split, (0.5,) * 3,
                                (0.5,) * 3, cover=("search", "val"))
    assert torch.equal(x, in_memory.inputs(3, "search")[0])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_a_spilled_cut_holds_what_memory_would_and_travels_to_ray_intact(tiny, tmp_path, dtype):
    # a bf16 cut once went to disk as float16 while it said bfloat16: a Ray worker read its
    # bits as bfloat16 (1.5 arrived as 0.125), and locally --cache-max-gb changed results
    from blocktune.executors.ray import _from_numpy, _to_numpy

    model, w, decoded, split = tiny
    spilled = ActivationCache(model.body, w, decoded.pixels, decoded.labels, split, (0.5,) * 3,
                              (0.5,) * 3, cover=("search", "val"), dtype=dtype, max_bytes=0,
                              spill_dir=tmp_path)
    in_memory = ActivationCache(model.body, w, decoded.pixels, decoded.labels, split,
                                (0.5,) * 3, (0.5,) * 3, cover=("search", "val"), dtype=dtype)
    spilled.prepare_cuts([3])
    in_memory.prepare_cuts([3])
    assert spilled.on_disk == [3] and spilled.store[3].dtype == getattr(torch, dtype)
    assert torch.equal(spilled.store[3], in_memory.store[3])
    travelled = _from_numpy(_to_numpy(spilled.store[3]), spilled.dtype)
    assert travelled.dtype == spilled.dtype and torch.equal(travelled, in_memory.store[3])


def test_augmentation_bypasses_the_cache(tiny, caplog):
    model, w, decoded, split = tiny
    _, cached, _ = feeds(model, w, decoded, split, (0.5,) * 3, (0.5,) * 3, augment=True)
    assert cached.cache is None
    assert "activation cache bypassed" in caplog.text


@pytest.mark.slow
def test_lite0_cached_equals_naive(flowers, lite0):
    """Real weights, real photos: a mid-network candidate, fp16 cache vs naive."""
    model, _ = build_model("tf_efficientnet_lite0", 5, "linear", image_size=96)
    cfg = data_config(model.body.model)
    decoded = subsample(decode_folder(scan_folder(flowers), 96, cfg.interpolation), 30, seed=0)
    split = stratified_split(decoded.labels.tolist(), seed=0)
    w = walk(model.body, input_size=(3, 96, 96))
    naive, cached, _ = feeds(model, w, decoded, split, cfg.mean, cfg.std)
    group = (w.index_of("model.blocks.5.3.conv_pwl"), w.index_of("model.blocks.5.3.bn3"))
    a, b = train_both(model, w, group, naive, cached, TrainConfig(epochs=2, batch_size=8))
    assert a.val_curve == b.val_curve
    assert a.loss_curve == pytest.approx(b.loss_curve, abs=LOSS_TOLERANCE)


def test_a_cache_that_cannot_fit_is_refused_with_its_estimate(image_folder, tmp_path, capsys,
                                                               monkeypatch):
    import blocktune.core.resources as resources
    from blocktune.cli import main

    argv = ["run", "--model", "test_efficientnet", "--no-pretrained", "--data",
            str(image_folder), "--image-size", "32", "--epochs", "1", "--final-epochs", "1",
            "--max-candidates", "2", "--cache-max-gb", "0", "--out", str(tmp_path / "run")]
    assert main([*argv, "--time-budget", "0"]) == 0  # images decoded, nothing trained
    monkeypatch.setattr(resources, "free_disk", lambda path: 1000)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("blocktune: error: the activation cache (")
    assert "needs 0.00 GiB of memory and " in err and "0.00 GiB free in " in err
    assert err.endswith("lower --cache-max-gb, use a smaller --image-size, or --no-cache")


def test_an_image_store_that_cannot_fit_is_refused_with_its_estimate(image_folder, monkeypatch):
    import blocktune.core.resources as resources

    monkeypatch.setattr(resources, "available_memory", lambda: 10_000)
    with pytest.raises(BlocktuneError, match=r"^decoding 60 images at 64×64 needs 0\.00 GiB of "
                                             r"memory .* use a smaller --image-size"):
        decode_folder(scan_folder(image_folder), 64)


def test_adopted_cuts_count_against_the_room_given(tiny):
    # what a Ray worker does with the driver's cuts: copied to its device while they fit,
    # used where they are beyond (on a GPU: tests/test_device.py)
    model, w, decoded, split = tiny
    _, _, source = feeds(model, w, decoded, split, (0.5,) * 3, (0.5,) * 3, "float32")
    source.prepare_cuts([1, 2, 3])
    sizes = {c: t.numel() * t.element_size() for c, t in source.store.items()}
    _, _, worker = feeds(model, w, decoded, split, (0.5,) * 3, (0.5,) * 3, "float32")
    worker.adopt(dict(source.store), max_bytes=sizes[1] + sizes[2])
    assert worker.bytes_in_memory == sizes[1] + sizes[2]
    assert worker.store[3].data_ptr() == source.store[3].data_ptr()  # not copied
    for cut in (1, 2, 3):
        assert torch.equal(worker.inputs(cut, "val")[0], source.inputs(cut, "val")[0])
