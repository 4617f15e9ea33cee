"""--score-on val+train: a searched candidate's kept weights are scored on the train split too
(images the search never trains on), and the rules rank by that pooled score."""

import json

import pytest
import torch

from blocktune.cache import ImageFeed
from blocktune.plan import Trial
from blocktune.records import read_candidates
from blocktune.search import run
from blocktune.train import evaluate

from .conftest import make_image_folder, workbench_for
from .test_search import tiny_config

FRACTIONS = {"search": 0.25, "val": 0.25, "train": 0.3, "test": 0.2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("scoring") / "images", per_class=20)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_the_pooled_score_is_the_kept_weights_accuracy_on_val_and_train(data, cache):
    bench = workbench_for(data, FRACTIONS, score_on="val+train", cache=cache,
                          cache_dtype="float32")
    group = (len(bench.walk.layers) - 2, len(bench.walk.layers) - 1)
    result = bench.train(Trial("block", 0, group, bench.config.epochs))
    assert result.status == "ok" and result.pool_images == len(bench.split["train"])
    # the model holds the kept weights: score it on train from raw pixels, the whole network
    images = bench.images
    feed = ImageFeed(bench.model.body, bench.walk, images.pixels, images.labels, bench.split,
                     bench.data_cfg.mean, bench.data_cfg.std)
    x, y = feed.inputs(0, "train")
    accuracy, _, _ = evaluate(bench.model, x, y, feed.prepare(0, bench.device))
    assert abs(result.pool_correct - accuracy * len(y)) <= 1  # float rounding of one image


def test_a_pooled_run_keeps_val_as_it_was_and_ranks_by_the_pooled_score(data, tmp_path):
    plain = tmp_path / "val"
    pooled = tmp_path / "pooled"
    run(tiny_config(data, max_candidates=4), plain)
    run(tiny_config(data, max_candidates=4, score_on="val+train"), pooled)
    before = read_candidates(plain / "seed_0" / "candidates.csv")
    after = read_candidates(pooled / "seed_0" / "candidates.csv")
    # pooling only adds forward passes: training, val and its predictions are unchanged
    assert [(r.layer_indices, r.val_acc, r.val_pred) for r in before] == \
        [(r.layer_indices, r.val_acc, r.val_pred) for r in after]
    splits = json.loads((pooled / "seed_0" / "splits.json").read_text())["counts"]
    for row in before:
        assert row.score == row.val_acc and row.score_images == splits["val"]
    for row in after:
        assert row.score_images == splits["val"] + splits["train"]
        assert row.score * row.score_images == pytest.approx(round(row.score * row.score_images),
                                                             abs=1e-3)
    blocks = [r for r in after if r.strategy == "block"]
    best = max(blocks, key=lambda r: (r.score, -r.trained_params, -r.index))
    choice = json.loads((pooled / "seed_0" / "choices.json").read_text())["block"]
    assert choice["layer_indices"] == best.layer_indices  # max-val ranks by the score


def test_rows_written_before_scores_were_recorded_rank_by_val(tmp_path):
    from blocktune.records import CandidateRow, rank_key

    row = CandidateRow(strategy="block", rung=2, index=0, layers="a", layer_indices="1",
                       first=1, last=1, trained_params=5, val_acc=0.5, val_loss=1.0, epochs=2,
                       best_epoch=2, seconds=1.0, status="ok")
    old = {k: v for k, v in row.to_csv().items() if not k.startswith("score")}
    read = CandidateRow.from_csv(old)
    assert torch.isnan(torch.tensor(read.score)) and rank_key(read)[0] == -0.5
