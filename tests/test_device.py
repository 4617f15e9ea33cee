"""The run's device: chosen once, refused with one line when absent, and — on a machine with a
GPU — the whole protocol on CUDA (bf16 autocast, the activation cache in GPU memory).

The CUDA tests are skipped on a CPU-only machine (CI's); run them where a GPU is present:
``pytest tests/test_device.py``.
"""

import json

import pytest
import torch

from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.io import read_csv
from blocktune.core.records import read_candidates
from blocktune.models.layers import device_of
from blocktune.protocol.select import choose
from blocktune.runner.search import run
from blocktune.training.cache import ActivationCache
from blocktune.training.loading import check_environment
from blocktune.training.train import device_for

from .test_search import tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_is_cuda_when_present_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device_for("auto").type == expected
    assert device_for("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, words", [
    ("cuda:7", "not available on this machine"),
    ("tpu", "unknown device 'tpu'"),
    ("meta", "not supported"),
])
def test_an_absent_or_unknown_device_is_refused_before_any_work(name, words):
    if name == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(BlocktuneError, match=words):
        check_environment(RunConfig(device=name))  # a name torch does not know: at once


def test_a_run_trains_where_its_config_says(image_folder, tmp_path, monkeypatch):
    from blocktune.training import train

    seen = []
    real = train.fit

    def spy(net, *args, **kwargs):
        seen.append((device_of(net), kwargs["device"]))
        return real(net, *args, **kwargs)

    monkeypatch.setattr(train, "fit", spy)
    run(tiny_config(image_folder, device="cpu", max_candidates=2), tmp_path / "run")
    assert seen and all(a == b == torch.device("cpu") for a, b in seen)


def _search(image_folder, folder, **overrides):
    config = tiny_config(image_folder, strategies=["layer", "block"], max_candidates=4,
                         **overrides)
    run(config, folder)
    return read_csv(folder / "seed_0" / "candidates.csv"), \
        read_csv(folder / "seed_0" / "finals.csv")


@cuda
def test_the_protocol_runs_on_cuda_like_on_the_cpu(image_folder, tmp_path):
    cpu_rows, cpu_finals = _search(image_folder, tmp_path / "cpu", device="cpu")
    rows, finals = _search(image_folder, tmp_path / "cuda", device="cuda")
    naive_rows, _ = _search(image_folder, tmp_path / "naive", device="cuda", cache=False)
    assert [r["status"] for r in rows] == ["ok"] * len(cpu_rows)
    assert [r["layer_indices"] for r in rows] == [r["layer_indices"] for r in cpu_rows]
    assert {r["method"] for r in finals} == {r["method"] for r in cpu_finals}
    assert all(r["status"] == "ok" for r in finals)
    # bf16 autocast on CUDA: close to the CPU's fp32 numbers, and the cache matches naive there
    split = json.loads((tmp_path / "cuda" / "seed_0" / "splits.json").read_text())
    one_image = 1.0 / split["counts"]["val"]
    for a, b, c in zip(rows, cpu_rows, naive_rows, strict=True):
        assert abs(float(a["val_loss"]) - float(b["val_loss"])) < 0.1
        assert abs(float(a["val_acc"]) - float(c["val_acc"])) <= 2 * one_image + 1e-9
    assert choose(read_candidates(tmp_path / "cuda" / "seed_0" / "candidates.csv"),
                  "block") is not None
    # the saved model loads on the CPU
    from blocktune.api import predict

    images = sorted((image_folder / "red").iterdir())[:2]
    assert len(predict(tmp_path / "cuda", images)) == 2


@cuda
def test_the_activation_cache_lives_in_gpu_memory_on_cuda(image_folder, tmp_path):
    from blocktune.data import decode_folder, scan_folder
    from blocktune.models.build import build_model
    from blocktune.models.layers import walk

    decoded = decode_folder(scan_folder(image_folder), 32, "bilinear")
    model, _ = build_model("test_efficientnet", 3, "linear", 32, pretrained=False)
    w = walk(model.body, input_size=(3, 32, 32))
    model.cuda()
    split = {"search": list(range(0, 60, 2)), "val": list(range(1, 60, 2))}
    cache = ActivationCache(model.body, w, decoded.pixels, decoded.labels, split, (0.5,) * 3,
                            (0.5,) * 3, cover=("search", "val"))
    cut = len(w.segments) // 2
    x, y = cache.inputs(cut, "search")
    assert x.device.type == "cuda" and len(x) == len(y) == 30


@cuda
def test_a_pruned_search_on_cuda_resumes_its_survivors(image_folder, tmp_path):
    config = tiny_config(image_folder, epochs=3, prune=True, baselines=False, device="cuda")
    run(config, tmp_path / "pruned")
    rows = read_csv(tmp_path / "pruned" / "seed_0" / "candidates.csv")
    unpruned = {r["layer_indices"]: r for r in read_csv_of(
        tiny_config(image_folder, epochs=3, baselines=False, device="cuda"), tmp_path / "full")}
    for row in (r for r in rows if r["rung"] == "3"):
        other = unpruned[row["layer_indices"]]
        assert row["epochs"] == other["epochs"] and row["status"] == "ok"
        # cuDNN's backward is not bit-deterministic: a survivor matches to rounding
        assert abs(float(row["val_loss"]) - float(other["val_loss"])) < 1e-2


def read_csv_of(config, folder):
    run(config, folder)
    return read_csv(folder / "seed_0" / "candidates.csv")


@cuda
def test_adopted_cuts_fill_the_gpu_only_up_to_the_room_given(image_folder):
    # a Ray worker with gpu=0.25 gets a quarter of --cache-max-gb on the GPU; the rest of the
    # driver's cache is read from where it lies (the object store)
    from blocktune.data import decode_folder, scan_folder
    from blocktune.models.build import build_model
    from blocktune.models.layers import walk

    decoded = decode_folder(scan_folder(image_folder), 32, "bilinear")
    model, _ = build_model("test_efficientnet", 3, "linear", 32, pretrained=False)
    w = walk(model.body, input_size=(3, 32, 32))
    split = {"search": list(range(0, 60, 2)), "val": list(range(1, 60, 2))}
    source = ActivationCache(model.body, w, decoded.pixels, decoded.labels, split, (0.5,) * 3,
                             (0.5,) * 3, cover=("search", "val"))
    source.prepare_cuts([1, 2])
    first = source.store[1].numel() * source.store[1].element_size()
    model.cuda()
    worker = ActivationCache(model.body, w, decoded.pixels, decoded.labels, split, (0.5,) * 3,
                             (0.5,) * 3, cover=("search", "val"))
    worker.adopt(dict(source.store), max_bytes=first)
    assert worker.store[1].device.type == "cuda" and worker.store[2].device.type == "cpu"
    for cut in (1, 2):
        assert torch.equal(worker.inputs(cut, "val")[0].cpu(), source.inputs(cut, "val")[0])
