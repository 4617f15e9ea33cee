"""Flowers-102 offline from BLOCKTUNE_DATA_DIR (torchvision's layout) and its official split
(``--split official``); one line for a folder not in that layout and for data without one."""

import os
import shutil
from pathlib import Path

import pytest

from blocktune.cli import main
from blocktune.data import official_split, open_data

from .conftest import make_image_folder


@pytest.fixture(scope="module")
def flowers102_folder():
    root = os.environ.get("BLOCKTUNE_DATA_DIR")
    if not root or not (Path(root) / "flowers-102" / "setid.mat").is_file():
        pytest.skip("set BLOCKTUNE_DATA_DIR to the folder holding flowers-102/ (CI does)")
    return open_data("flowers102", download=False)


def test_flowers102_reads_offline_with_its_102_classes(flowers102_folder):
    folder = flowers102_folder
    assert len(folder.classes) == 102 and len(folder.files) == 8189
    counts = folder.counts()
    assert min(counts.values()) == 40 and max(counts.values()) == 258


def test_the_official_split_has_its_sizes_and_no_image_twice(flowers102_folder):
    folder = flowers102_folder
    sizes = {name: len(files) for name, files in folder.official.items()}
    assert sizes == {"train": 1020, "val": 1020, "test": 6149}
    split = official_split(folder.files, folder.labels, folder.official,
                           {"search": 0.1, "val": 0.1, "train": 0.6, "test": 0.2}, seed=3)
    assert len(split["search"]) + len(split["train"]) == 1020
    assert (len(split["val"]), len(split["test"])) == (1020, 6149)
    every = [i for indices in split.values() for i in indices]
    assert sorted(every) == list(range(8189))  # each image in exactly one split
    search_classes = {folder.labels[i] for i in split["search"]}
    assert len(search_classes) == 102  # stratified: every class in the search split
    assert split == official_split(folder.files, folder.labels, folder.official,
                                   {"search": 0.1, "val": 0.1, "train": 0.6, "test": 0.2}, 3)
    official_test = {folder.files[i] for i in split["test"]}
    assert official_test == set(folder.official["test"])


def test_an_official_split_is_refused_for_data_without_one(tmp_path, capsys):
    data = make_image_folder(tmp_path / "images", per_class=12)
    code = main(["run", "--data", str(data), "--model", "test_efficientnet", "--no-pretrained",
                 "--image-size", "32", "--split", "official", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no official split" in err[0], err


@pytest.mark.parametrize("damage", ["mat", "layout"])
def test_a_flowers102_folder_not_in_torchvisions_layout_is_one_line(damage, tmp_path, capsys,
                                                                    monkeypatch):
    root = tmp_path / "data" / "flowers-102"
    (root / "jpg").mkdir(parents=True)
    if damage == "mat":
        (root / "imagelabels.mat").write_bytes(b"not a mat file")
        (root / "setid.mat").write_bytes(b"nor this")
    monkeypatch.setenv("BLOCKTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BLOCKTUNE_CACHE_DIR", str(tmp_path / "cache"))
    # torchvision finds no valid dataset there and tries a download, which fails offline as
    # it does on this machine; online it would fetch a fresh copy: either way one line
    code = main(["run", "--data", "flowers102", "--model", "test_efficientnet",
                 "--no-pretrained", "--image-size", "32", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "flowers102" in err[0], err
    shutil.rmtree(tmp_path / "data")
