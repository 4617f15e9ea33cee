"""The recipes beside the baselines (--methods): LP-FT, layer-wise learning-rate decay, LP then
BW. Their trainable parameters and learning rates per group on timm models, their endpoints
equal to the baselines where they should be, and a run that fine-tunes all three."""

import pytest
import torch

from blocktune.core.io import read_csv
from blocktune.runner.search import run

from .conftest import make_image_folder, workbench_for
from .test_search import tiny_config

FRACTIONS = {"search": 0.25, "val": 0.25, "train": 0.3, "test": 0.2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("recipes") / "images", per_class=16)


def bench_for(data, **overrides):
    return workbench_for(data, FRACTIONS, **overrides)


def test_layer_decay_scales_fall_block_by_block_towards_the_input(data):
    # timm's fine group_matcher on lite0: the stem, each of its 16 blocks, then the head conv
    bench = bench_for(data, model="tf_efficientnet_lite0")  # random weights: shapes only
    scales = bench.layer_decay_scales(0.5)
    by_block = {}
    for name, p in bench.model.body.named_parameters():
        block = ".".join(name.split(".")[:4]) if ".blocks." in f".{name}" else "outside"
        by_block.setdefault(block, set()).add(scales[id(p)])
    blocks = [by_block.pop(k) for k in sorted(k for k in by_block if k != "outside")]
    assert all(len(v) == 1 for v in blocks) and len(blocks) == 16  # one rate per block
    rates = [v.pop() for v in blocks]
    assert rates == sorted(rates)  # the input end learns slowest
    assert all(b / a == pytest.approx(2.0) for a, b in zip(rates, rates[1:], strict=False))
    walk_order = [scales[id(p)] for p in bench.model.body.parameters()]
    assert walk_order[0] == min(walk_order)  # the stem
    assert set(bench.layer_decay_scales(1.0).values()) == {1.0}


def test_the_optimizer_gets_one_rate_per_decayed_group(data, monkeypatch):
    bench = bench_for(data, model="tf_efficientnet_lite0", lr=0.01, body_lr_scale=0.1,
                      final_epochs=1, layer_decay=0.5)
    made = []
    real = torch.optim.Adam

    def recording(groups, **kwargs):
        made.append([(g["lr"], len(g["params"])) for g in groups])
        return real(groups, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", recording)
    bench.fit_final(None, recipe="llrd")
    (groups,) = made
    head = sum(p.numel() > 0 for p in bench.model.head.parameters())
    assert groups[0] == (0.01, head)  # the new head at lr
    body_rates = [lr for lr, _ in groups[1:]]
    assert body_rates == sorted(body_rates, reverse=True) and max(body_rates) <= 0.001
    # every parameter trained (timm's unused classifier stays out, as in Baseline II)
    trained = sum(1 for n, p in bench.model.named_parameters() if "classifier" not in n)
    assert sum(n for _, n in groups) == trained


def test_llrd_with_decay_one_is_baseline_two_and_lp_ft_starts_as_baseline_one(data, one_thread):
    bench = bench_for(data, layer_decay=1.0, final_epochs=2)
    everything = bench.fit_final(None)
    baseline_two = {n for n, p in bench.model.named_parameters() if p.requires_grad}
    decayed = bench.fit_final(None, recipe="llrd")
    assert decayed.result.val_curve == everything.result.val_curve
    assert decayed.test_pred == everything.test_pred
    head = bench.fit_final(())
    lp_ft = bench.fit_final(None, recipe="lp-ft")
    probe_epochs = head.result.epochs
    assert lp_ft.result.val_curve[:probe_epochs] == head.result.val_curve  # the probe
    assert lp_ft.result.epochs == probe_epochs + everything.result.epochs
    trainable_after = {n for n, p in bench.model.named_parameters() if p.requires_grad}
    assert trainable_after == baseline_two  # then every layer, as Baseline II


def test_a_run_fine_tunes_every_recipe_beside_the_baselines(data, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(data, max_candidates=2, methods=["lp-ft", "llrd", "lp-bw"]), out)
    finals = {r["method"]: r for r in read_csv(out / "seed_0" / "finals.csv")}
    assert set(finals) == {"baseline-I", "baseline-II", "block", "lp-ft", "llrd", "lp-bw"}
    assert finals["lp-bw"]["layer_indices"] == finals["block"]["layer_indices"]
    for recipe in ("lp-ft", "llrd", "lp-bw"):  # trained, never copied from a baseline
        assert finals[recipe]["same_as"] == "" and finals[recipe]["status"] == "ok"
    report = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    from blocktune.results.report import build_report

    report = build_report(out).read_text()
    assert "LP-FT vs Baseline I" in report or "Baseline I vs LP-FT" in report


@pytest.mark.parametrize(("flags", "finals"), [
    ([], {"baseline-I", "baseline-II", "lp-ft"}),  # PROTOCOL-sizes.md's: always LP-FT
    (["--methods", ""], {"baseline-I", "baseline-II", "block"}),  # nothing trains the pick
    (["--methods", "lp-ft,lp-bw", "--pick-finals"],  # the first protocol's, given
     {"baseline-I", "baseline-II", "block", "lp-ft", "lp-bw"}),
], ids=["auto", "methods-none", "given"])
def test_the_default_finals_and_what_the_flags_give(data, tmp_path, flags, finals):
    """At every size the default finals are the baselines and LP-FT, which is handed over
    (benchmarks/PROTOCOL-sizes.md); ``--methods ""`` leaves the baselines and the pick, a final
    of its own since nothing else trains it; the flags give any other set."""
    from blocktune.cli import main

    from .test_cli import TINY

    out = tmp_path / "run"
    argv = ["run", *TINY, "--data", str(data), "--max-candidates", "1", "--out", str(out)]
    assert main(argv + flags) == 0
    assert {r["method"] for r in read_csv(out / "seed_0" / "finals.csv")} == finals


def test_the_finals_cache_is_one_pass_and_trains_as_one_computed_per_final(data):
    # the finals' cuts (LP-BW's probe at the head, its block, Baseline I's head) in one pass
    # over the images, not one per final; every final trains exactly as when each computed its
    # own cut on demand
    import math

    from blocktune.core.trials import FinalTrial
    from blocktune.models.groups import StrategyOptions, candidates
    from blocktune.training.workbench import FINAL_COVER

    bench = bench_for(data, final_epochs=1)
    block = candidates(bench.walk, "block", StrategyOptions())[1].layers
    trials = [FinalTrial("baseline-I", (), math.nan), FinalTrial("lp-bw", block, math.nan),
              FinalTrial("baseline-II", None, math.nan)]
    bench.prepare_finals(trials)
    cache = bench.cache(FINAL_COVER)
    assert cache.passes == 1
    together = [bench.fit_final(t.group, recipe=t.recipe) for t in trials]
    assert cache.passes == 1  # nothing computed again
    alone = bench_for(data, final_epochs=1)
    for trial, outcome in zip(trials, together, strict=True):
        mine = alone.fit_final(trial.group, recipe=trial.recipe)
        assert mine.test_pred == outcome.test_pred and mine.result.val_curve == \
            outcome.result.val_curve and mine.result.loss_curve == outcome.result.loss_curve
    assert alone.cache(FINAL_COVER).passes == 2  # the head, then LP-BW's block
