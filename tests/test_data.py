import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from blocktune.core.errors import BlocktuneError
from blocktune.data import (
    decode_folder,
    load_or_make_split,
    load_rgb,
    open_data,
    resolve_data,
    scan_folder,
    split_labels,
    stratified_split,
)

from .conftest import make_image_folder


def test_split_is_stratified_disjoint_covering_and_reproducible():
    labels = [0] * 100 + [1] * 50 + [2] * 30
    split = stratified_split(labels, seed=3)
    assert split == stratified_split(labels, seed=3)
    assert split != stratified_split(labels, seed=4)
    everything = [i for v in split.values() for i in v]
    assert sorted(everything) == list(range(len(labels)))  # disjoint and covering
    counts = {n: Counter(labels[i] for i in v) for n, v in split.items()}
    assert counts["search"] == {0: 10, 1: 5, 2: 3}
    assert counts["train"] == {0: 60, 1: 30, 2: 18}
    assert counts["test"] == {0: 20, 1: 10, 2: 6}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=4, max_value=60), min_size=2, max_size=6),
       st.integers(min_value=0, max_value=2**31 - 1))
def test_split_property(class_counts, seed):
    labels = [c for c, n in enumerate(class_counts) for _ in range(n)]
    split = stratified_split(labels, seed=seed)
    assert split == stratified_split(labels, seed=seed)
    flat = [i for v in split.values() for i in v]
    assert sorted(flat) == list(range(len(labels)))
    fractions = {"search": 0.1, "val": 0.1, "train": 0.6, "test": 0.2}
    for name, indices in split.items():
        per_class = Counter(labels[i] for i in indices)
        for c, n in enumerate(class_counts):
            assert per_class[c] >= 1  # every class in every split
            assert abs(per_class[c] - fractions[name] * n) <= 2


def test_split_rejects_a_class_too_small():
    with pytest.raises(BlocktuneError, match="class 'b' has 3 image"):
        stratified_split([0] * 10 + [1] * 3, classes=["a", "b"])


def test_split_fractions_must_sum_to_one():
    with pytest.raises(BlocktuneError, match="sum to 1"):
        stratified_split([0, 1] * 10, {"search": 0.5, "val": 0.6})


def test_split_file_is_written_and_reused(image_folder, tmp_path):
    decoded = decode_folder(scan_folder(image_folder), 16)
    path = tmp_path / "splits.json"
    first = load_or_make_split(path, decoded, {"search": .1, "val": .1, "train": .6, "test": .2}, 0)
    saved = json.loads(path.read_text())
    assert saved["counts"] == {k: len(v) for k, v in first.items()}
    again = load_or_make_split(path, decoded, {"search": .25, "val": .25, "train": .25,
                                               "test": .25}, 99)
    assert again == first  # the saved split wins over new fractions and seed


def test_missing_empty_and_one_class_folders(tmp_path):
    with pytest.raises(BlocktuneError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BlocktuneError, match="holds no images"):
        scan_folder(tmp_path / "empty")
    make_image_folder(tmp_path / "one", classes=("only",), per_class=5)
    with pytest.raises(BlocktuneError, match="only one class"):
        scan_folder(tmp_path / "one")
    make_image_folder(tmp_path / "three", classes=("a", "b"), per_class=3)
    (tmp_path / "three" / "c").mkdir()  # would be a class the model can predict, never seen
    with pytest.raises(BlocktuneError, match=r"class folder .*three/c holds no images"):
        scan_folder(tmp_path / "three")


def write_bad_images(folder):
    """Every bad and odd image kind the product must survive, in class 'red'."""
    red = folder / "red"
    (red / "zero.jpg").write_bytes(b"")
    good = (red / "000.jpg").read_bytes()
    (red / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (red / "notes.jpg").write_text("this is not an image")
    (red / "readme.txt").write_text("not an image either")
    rgb = np.full((20, 20, 3), 200, np.uint8)
    Image.fromarray(rgb[..., 0]).save(red / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 20), 128, np.uint8)])).save(red / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(red / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(red / "deep.png")
    Image.fromarray(rgb).convert("P").save(red / "palette.gif")


def test_bad_images_are_skipped_and_counted(image_folder, caplog):
    write_bad_images(image_folder)
    decoded = decode_folder(scan_folder(image_folder), 16)
    assert sorted(decoded.corrupt) == ["red/notes.jpg", "red/readme.txt", "red/truncated.jpg",
                                       "red/zero.jpg"]
    assert len(decoded.files) == 60 + 5  # gray, rgba, cmyk, 16-bit and palette were converted
    assert decoded.pixels.shape[1:] == (3, 16, 16)
    assert "4 file(s)" in caplog.text


def test_strict_refuses_bad_images(image_folder):
    write_bad_images(image_folder)
    with pytest.raises(BlocktuneError, match="drop --strict"):
        decode_folder(scan_folder(image_folder), 16, strict=True, use_cache=False)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(path)
    assert np.asarray(load_rgb(path))[0, 0].tolist() == [128, 128, 128]


def _counting(monkeypatch):
    """Count the images actually decoded (the store's reuse is what is tested)."""
    import blocktune.data.store as data_module

    calls = []
    real = data_module.decode_resized

    def counted(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data_module, "decode_resized", counted)
    return calls


def test_decoded_store_is_reused_when_nothing_changed(image_folder, monkeypatch):
    first = decode_folder(scan_folder(image_folder), 16)
    calls = _counting(monkeypatch)
    second = decode_folder(scan_folder(image_folder), 16)
    assert calls == [] and (first.pixels == second.pixels).all()
    assert first.digests == second.digests and len(set(first.digests)) == 60


def test_decoded_store_sees_every_change_and_decodes_only_it(image_folder, monkeypatch):
    decode_folder(scan_folder(image_folder), 16)
    red = sorted((image_folder / "red").iterdir())
    Image.new("RGB", (40, 40), (0, 0, 255)).save(red[0])       # replaced in place
    Image.new("RGB", (40, 40), (255, 0, 0)).save(image_folder / "red" / "new.jpg")  # added
    red[1].unlink()                                             # removed
    red[2].rename(image_folder / "red" / "renamed.jpg")         # renamed
    calls = _counting(monkeypatch)
    cached = decode_folder(scan_folder(image_folder), 16)
    assert len(calls) == 3  # the replaced, the added and the renamed file; nothing else
    fresh = decode_folder(scan_folder(image_folder), 16, use_cache=False)
    assert cached.files == fresh.files and (cached.pixels == fresh.pixels).all()
    assert cached.digests == fresh.digests
    assert cached.pixels[cached.files.index(f"red/{red[0].name}")][2].float().mean() > 200


def test_two_processes_decoding_one_folder_both_succeed(image_folder, tmp_path):
    script = ("import sys; from blocktune.data import decode_folder, scan_folder; "
              "d = decode_folder(scan_folder(sys.argv[1]), 24); print(int(d.pixels.sum()))")
    env = {**os.environ, "BLOCKTUNE_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(image_folder)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]


def test_a_kill_mid_decode_leaves_nothing_trusted(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=300, size=160)
    env = {**os.environ, "BLOCKTUNE_CACHE_DIR": str(tmp_path / "cache")}
    script = ("import sys; from blocktune.data import decode_folder, scan_folder; "
              "decode_folder(scan_folder(sys.argv[1]), 64, workers=1)")
    # killed at the 450th of 900 images, whatever the machine's speed
    killed = subprocess.run([sys.executable, "-c", script, str(folder)],
                            env={**env, "BLOCKTUNE_FAULT": "decode:450"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    store = tmp_path / "cache" / "decoded"
    assert list(store.glob("*/store.lock")), "the kill came before the store was started"
    assert not list(store.glob("*/meta.json")), "killed before the end, yet a store was kept"
    after = subprocess.run([sys.executable, "-c", script + "; print('ok')", str(folder)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0 and "ok" in after.stdout
    assert len(list(store.glob("*/pixels-*.npy"))) == 1 and not list(store.glob("*/.pixels*"))


def test_tf_flowers_resolves_to_the_local_copy(monkeypatch, tmp_path):
    make_image_folder(tmp_path / "flower_photos", per_class=4)
    monkeypatch.setenv("BLOCKTUNE_DATA_DIR", str(tmp_path))
    assert resolve_data("tf_flowers") == tmp_path / "flower_photos"


def test_tf_flowers_offline_without_a_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOCKTUNE_DATA_DIR", str(tmp_path))
    with pytest.raises(BlocktuneError, match="not available offline"):
        resolve_data("tf_flowers", download=False)


@pytest.fixture
def range_server(tmp_path):
    """A local HTTP server that honours Range requests (416 past the end) and records them."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    payload = bytes(range(256)) * 4000
    ranges = []

    class RangeHandler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            header = self.headers.get("Range")
            ranges.append(header)
            start = int(header[6:].rstrip("-")) if header else 0
            if start >= len(payload):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(payload) - start))
            self.end_headers()
            self.wfile.write(payload[start:])

    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/a.bin", payload, ranges
    server.shutdown()


def test_download_resumes_with_a_range_request_and_verifies(tmp_path, range_server):
    import hashlib

    from blocktune.data import download

    url, payload, ranges = range_server
    dest = tmp_path / "out" / "a.bin"
    dest.parent.mkdir()
    (dest.parent / "a.bin.part").write_bytes(payload[:1000])  # an interrupted earlier download
    digest = hashlib.sha256(payload).hexdigest()
    download(url, dest, expected_bytes=len(payload), sha256=digest)
    assert dest.read_bytes() == payload and ranges == ["bytes=1000-"]
    assert not (dest.parent / "a.bin.part").exists()
    with pytest.raises(BlocktuneError, match="does not match"):
        download(url, tmp_path / "out" / "b.bin", sha256="0" * 64)
    assert not (tmp_path / "out" / "b.bin").exists()


def test_a_complete_part_left_by_a_kill_is_finished_not_refetched(tmp_path, range_server):
    import hashlib

    from blocktune.data import download

    url, payload, ranges = range_server
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(payload)  # killed after the last byte, before rename
    digest = hashlib.sha256(payload).hexdigest()
    download(url, dest, expected_bytes=len(payload), sha256=digest)
    assert dest.read_bytes() == payload and ranges == []  # the size says it is complete
    # without a known size the server is asked, answers 416, and the part is verified
    (tmp_path / "c.bin.part").write_bytes(payload)
    download(url, tmp_path / "c.bin", sha256=digest)
    assert (tmp_path / "c.bin").read_bytes() == payload and ranges == [f"bytes={len(payload)}-"]


def test_tf_flowers_download_is_pinned_and_https():
    from blocktune.data import TF_FLOWERS_BYTES, TF_FLOWERS_SHA256, TF_FLOWERS_URL

    assert TF_FLOWERS_URL.startswith("https://")
    assert TF_FLOWERS_BYTES == 228_813_984
    assert TF_FLOWERS_SHA256 == "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"


def _caltech_stand_in(root: Path) -> None:
    """torchvision's Caltech-101 layout: 101_ObjectCategories/<class>/image_0001.jpg …"""
    categories = root / "caltech101" / "101_ObjectCategories"
    make_image_folder(categories, classes=("BACKGROUND_Google", "Faces", "accordion"),
                      per_class=3)
    for folder in categories.iterdir():  # torchvision's file names
        for i, path in enumerate(sorted(folder.iterdir()), 1):
            path.rename(folder / f"image_{i:04d}.jpg")


def _flowers102_stand_in(root: Path, monkeypatch) -> None:
    """torchvision's Flowers-102 layout: jpg/image_00001.jpg, imagelabels.mat, setid.mat."""
    from scipy.io import savemat

    base = root / "flowers-102"
    make_image_folder(base / "classes", classes=("a", "b", "c"), per_class=4)
    (base / "jpg").mkdir()
    labels = []
    for i, path in enumerate(sorted((base / "classes").rglob("*.jpg")), 1):
        path.rename(base / "jpg" / f"image_{i:05d}.jpg")
        labels.append(("a", "b", "c").index(path.parent.name) + 1)  # 1-based, as in the .mat
    savemat(base / "imagelabels.mat", {"labels": np.array(labels)})
    savemat(base / "setid.mat", {"trnid": np.arange(1, 13, 3), "valid": np.arange(2, 13, 3),
                                 "tstid": np.arange(3, 13, 3)})
    # the stand-in's .mat files cannot have the real ones' md5: check presence instead
    import torchvision.datasets.flowers102 as tv_flowers

    monkeypatch.setattr(tv_flowers, "check_integrity", lambda path, md5=None: Path(path).is_file())


def test_caltech101_resolves_on_a_stand_in_without_background(monkeypatch, tmp_path):
    _caltech_stand_in(tmp_path)
    monkeypatch.setenv("BLOCKTUNE_DATA_DIR", str(tmp_path))
    folder = open_data("caltech101", download=False)
    assert folder.classes == ["Faces", "accordion"]
    assert folder.files == [f"{c}/image_{i:04d}.jpg" for c in folder.classes for i in (1, 2, 3)]
    assert folder.labels == [0, 0, 0, 1, 1, 1]
    decoded = decode_folder(folder, 16, use_cache=False)
    assert decoded.pixels.shape == (6, 3, 16, 16)


def test_flowers102_pools_its_three_splits(monkeypatch, tmp_path):
    _flowers102_stand_in(tmp_path, monkeypatch)
    monkeypatch.setenv("BLOCKTUNE_DATA_DIR", str(tmp_path))
    folder = open_data("flowers102", download=False)
    assert folder.files == [f"image_{i:05d}.jpg" for i in range(1, 13)]
    assert folder.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert folder.classes[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    # files without class folders: the split file carries the labels
    decoded = decode_folder(folder, 16, use_cache=False)
    split = load_or_make_split(tmp_path / "splits.json", decoded,
                               {"search": 0.25, "val": 0.25, "train": 0.25, "test": 0.25}, 0)
    saved = split_labels(tmp_path / "splits.json")
    for name, indices in split.items():
        assert saved[name].tolist() == decoded.labels[indices].tolist()


def test_caltech101_without_its_background_folder_gives_one_line(monkeypatch, tmp_path):
    _caltech_stand_in(tmp_path)
    shutil.rmtree(tmp_path / "caltech101" / "101_ObjectCategories" / "BACKGROUND_Google")
    monkeypatch.setenv("BLOCKTUNE_DATA_DIR", str(tmp_path))
    with pytest.raises(BlocktuneError, match="^caltech101 under .* is incomplete or not in "
                       "torchvision's layout"):
        open_data("caltech101", download=False)


@pytest.mark.parametrize("name", ["caltech101", "flowers102"])
def test_named_dataset_offline_gives_one_line(name, monkeypatch, tmp_path):
    monkeypatch.setenv("BLOCKTUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BLOCKTUNE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(BlocktuneError, match=f"^{name} is not available offline: set "):
        open_data(name, download=False)


def test_caltech101_reads_the_real_dataset_offline(monkeypatch):
    """The real Caltech-101 under $BLOCKTUNE_DATA_DIR (CI sets it): 101 classes, 8,677 images,
    no BACKGROUND_Google, nothing downloaded."""
    root = os.environ.get("BLOCKTUNE_DATA_DIR")
    if not root or not (Path(root) / "caltech101").is_dir():
        pytest.skip("set BLOCKTUNE_DATA_DIR to the folder holding caltech101/ (CI does)")
    folder = open_data("caltech101", download=False)
    assert len(folder.classes) == 101 and "BACKGROUND_Google" not in folder.classes
    assert len(folder.files) == 8677 and len(set(folder.files)) == 8677
    assert not any(f.startswith("BACKGROUND_Google/") for f in folder.files)
    assert folder.classes[:3] == ["Faces", "Faces_easy", "Leopards"]
    assert sorted(set(folder.labels)) == list(range(101))
