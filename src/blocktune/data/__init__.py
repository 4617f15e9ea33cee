"""The data: image folders and the named datasets with their downloads (:mod:`.datasets`), the
decoded-image store and test folders (:mod:`.store`), and the seeded splits with their
duplicate check (:mod:`.splits`); this package re-exports their public names as one."""

from blocktune.core.registry import DEFAULT_FRACTIONS
from blocktune.data.datasets import (
    IMAGE_SUFFIXES,
    NAMED_DATASETS,
    TF_FLOWERS_BYTES,
    TF_FLOWERS_SHA256,
    TF_FLOWERS_URL,
    TORCHVISION_FOLDERS,
    ImageFolder,
    cache_dir,
    caltech101,
    download,
    download_tf_flowers,
    eurosat,
    file_sha256,
    flowers102,
    open_data,
    resolve_data,
    scan_folder,
)
from blocktune.data.splits import (
    LEARNING_SPLITS,
    SPLITS,
    duplicates_across_splits,
    learning_images,
    load_or_make_split,
    official_split,
    read_splits,
    split_labels,
    stratified_split,
)
from blocktune.data.store import (
    DecodedImages,
    TestDomain,
    check_test_folder,
    decode_folder,
    decode_resized,
    domain_names,
    load_rgb,
    load_test_domains,
    normalize,
)

__all__ = [
    "IMAGE_SUFFIXES", "NAMED_DATASETS", "TF_FLOWERS_BYTES", "TF_FLOWERS_SHA256", "TF_FLOWERS_URL",
    "TORCHVISION_FOLDERS", "ImageFolder", "cache_dir", "caltech101", "download",
    "download_tf_flowers", "eurosat", "file_sha256", "flowers102", "open_data", "resolve_data",
    "scan_folder", "DEFAULT_FRACTIONS", "LEARNING_SPLITS", "SPLITS", "duplicates_across_splits",
    "learning_images", "load_or_make_split", "official_split", "read_splits", "split_labels",
    "stratified_split",
    "DecodedImages", "TestDomain", "check_test_folder", "decode_folder", "decode_resized",
    "domain_names", "load_rgb", "load_test_domains", "normalize"]
