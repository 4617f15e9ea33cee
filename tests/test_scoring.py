"""--score-on val+train: a searched candidate's kept weights are scored on the train split too
(images the search never trains on), and the rules rank by that pooled score."""

import json

import pytest
import torch

from blocktune.core.records import read_candidates
from blocktune.core.trials import Trial
from blocktune.runner.search import run
from blocktune.training.cache import ImageFeed
from blocktune.training.train import evaluate

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
    from blocktune.core.records import CandidateRow, rank_key

    row = CandidateRow(strategy="block", rung=2, index=0, layers="a", layer_indices="1",
                       first=1, last=1, trained_params=5, val_acc=0.5, val_loss=1.0, epochs=2,
                       best_epoch=2, seconds=1.0, status="ok")
    old = {k: v for k, v in row.to_csv().items() if not k.startswith("score")}
    read = CandidateRow.from_csv(old)
    assert torch.isnan(torch.tensor(read.score)) and rank_key(read)[0] == -0.5


def _pooled_rows():
    """Candidates whose pooled score orders them otherwise than their val accuracy."""
    import random

    from blocktune.core.records import CandidateRow

    rng = random.Random(7)
    rows = []
    for i in range(12):
        first = 2 * i
        rows.append(CandidateRow(
            strategy="block", rung=2, index=i, layers=f"L{first}", layer_indices=f"{first},{first + 1}",
            first=first, last=first + 1, trained_params=100 + i, val_acc=rng.choice([0.5, 0.6, 0.7]),
            val_loss=1.0 + rng.random(), epochs=2, best_epoch=2, seconds=1.0, status="ok",
            score=rng.choice([0.55, 0.65, 0.75, 0.8]), score_images=200))
    return rows


def _as_val_only(row):
    """The same candidate in a val-only run whose val accuracy is the pooled score."""
    import dataclasses
    import math

    return dataclasses.replace(row, val_acc=row.score, score=math.nan, score_images=0)


def _rules_reading_one_score():
    from blocktune.protocol.select import RULES

    return [name for name, rule in RULES.items() if not rule.reads_loss]


@pytest.mark.parametrize("rule", _rules_reading_one_score())
def test_every_rule_reads_the_pooled_score_as_it_reads_val(rule):
    from blocktune.protocol.select import SearchView, get_rule

    rows = _pooled_rows()
    refits = {r.layer_indices: r for r in _pooled_rows()[::-1]}  # any refits, same both ways
    refits = {k: _as_val_only(v) for k, v in refits.items()}
    pooled = SearchView(rows, num_layers=24, refits=refits)
    plain = SearchView([_as_val_only(r) for r in rows], num_layers=24, refits=refits)
    assert get_rule(rule).pick(pooled).layer_indices == get_rule(rule).pick(plain).layer_indices
    assert get_rule(rule).refits(pooled) == get_rule(rule).refits(plain)


@pytest.mark.parametrize("rule", ["val-loss", "one-se"])
def test_a_rule_reading_the_val_loss_refuses_a_pooled_score(rule, data):
    from blocktune.core.config import RunConfig
    from blocktune.core.errors import BlocktuneError
    from blocktune.protocol.select import RULES

    assert RULES[rule].reads_loss
    with pytest.raises(BlocktuneError, match=f"select = {rule} reads the val loss"):
        RunConfig(data=str(data), select=rule, score_on="val+train")
    RunConfig(data=str(data), select=rule)  # val alone: fine


def test_ranked_layers_are_ranked_by_the_pooled_score():
    from blocktune.core.records import CandidateRow
    from blocktune.models.build import build_model
    from blocktune.models.groups import StrategyOptions
    from blocktune.models.layers import walk
    from blocktune.protocol.plan import SearchSettings, strategy_candidates

    model, _ = build_model("test_efficientnet", 3, "linear", 32, pretrained=False)
    model_walk = walk(model.body, input_size=(3, 32, 32))
    layers = []
    for i in range(len(model_walk.layers)):  # val accuracy falls with i; the pooled score rises
        layers.append(CandidateRow(
            strategy="layer", rung=2, index=i, layers=f"L{i}", layer_indices=str(i), first=i,
            last=i, trained_params=10, val_acc=0.9 - 0.01 * i, val_loss=1.0, epochs=2,
            best_epoch=2, seconds=1.0, status="ok", score=0.1 + 0.01 * i, score_images=50))
    settings = SearchSettings(strategies=("layer", "ranked"), epochs=2, ranked_k=(3,))
    pooled = strategy_candidates(model_walk, "ranked", StrategyOptions(), layers, settings)
    plain = strategy_candidates(model_walk, "ranked", StrategyOptions(),
                                [_as_val_only(r) for r in layers], settings)
    assert [c.layers for _, c in pooled] == [c.layers for _, c in plain]
    top = set(range(len(model_walk.layers) - 3, len(model_walk.layers)))
    assert set(pooled[0][1].layers) == top  # the three best pooled scores: the last three
