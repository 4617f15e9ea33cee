"""The protocol end to end on a tiny folder with timm's test_efficientnet (random weights)."""

import json
import os
import random
import re
import signal
import subprocess
import sys

import pytest

from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.io import atomic_copy, atomic_write_csv, read_csv
from blocktune.core.methods import BASELINE_I, BASELINE_II
from blocktune.core.records import read_candidates
from blocktune.protocol.select import choose
from blocktune.results.report import build_report
from blocktune.results.runfolder import RunLock
from blocktune.results.status import run_status
from blocktune.runner.search import run

from .conftest import make_image_folder

STABLE = ["strategy", "index", "layers", "layer_indices", "trained_params", "val_acc",
          "val_loss", "epochs", "best_epoch", "status"]


def tiny_config(data, **overrides) -> RunConfig:
    values = dict(model="test_efficientnet", data=str(data), pretrained=False, image_size=32,
                  strategies=["block"], epochs=2, final_epochs=2, batch_size=8, lr=0.01,
                  fractions={"search": 0.25, "val": 0.25, "train": 0.3, "test": 0.2},
                  select="max-val",  # the mechanics tests compare with choose(): max-val
                  methods=[],  # and count finals without the default recipe (test_recipes.py)
                  pick_finals=True,  # every strategy's pick a final, whatever the data's size
                  search_baseline_ii=True)  # and both baselines in the search
    values.update(overrides)
    return RunConfig(**values)


def stable(rows, fields=STABLE):
    return [{k: r[k] for k in fields} for r in rows]


def test_run_writes_every_artifact(image_folder, tmp_path):
    out = tmp_path / "run"
    summary = run(tiny_config(image_folder, strategies=["layer", "block", "ranked"],
                              max_candidates=4, ranked_k=[2]), out)
    rows = read_csv(out / "seed_0" / "candidates.csv")
    assert [r["strategy"] for r in rows] == \
        [BASELINE_I, BASELINE_II] + ["layer"] * 4 + ["ranked-2"] + ["block"] * 4
    # the baselines are searched like candidates: same epochs, scored on the same val images
    assert [(r["layers"], r["layer_indices"], r["epochs"]) for r in rows[:2]] == \
        [("head only", "", "2"), ("all layers", "all", "2")]
    assert len({len(r["val_pred"].split()) for r in rows}) == 1
    rows = rows[2:]
    assert [int(r["last"]) for r in rows[:4]] == [29, 28, 27, 26]  # from the output end
    finals = {r["method"]: r for r in read_csv(out / "seed_0" / "finals.csv")}
    assert set(finals) == {BASELINE_I, BASELINE_II, "layer", "block", "ranked-2"}
    assert finals[BASELINE_I]["group"] == "head only"
    typed = read_candidates(out / "seed_0" / "candidates.csv")
    assert finals["block"]["layer_indices"] == choose(typed, "block").layer_indices
    ranked = [int(i) for i in finals["ranked-2"]["layer_indices"].split(",")]
    top2 = sorted(rows[:4], key=lambda r: (-float(r["val_acc"]), int(r["trained_params"]),
                                           int(r["index"])))[:2]
    assert ranked == sorted(int(r["layer_indices"]) for r in top2)
    assert {r["method"] for r in summary} == set(finals)
    for name in ("config.yaml", "environment.json", "summary.csv", "model.safetensors",
                 "model.json", "seed_0/splits.json"):
        assert (out / name).exists(), name
    env = json.loads((out / "environment.json").read_text())
    assert {"blocktune", "torch", "timm", "python"} <= set(env)
    report = build_report(out)
    text = report.read_text()
    assert "Baseline I" in text and "BWT2" in text and "plots/test_accuracy.png" in text
    assert (out / "plots" / "candidates_block_seed0.png").stat().st_size > 1000
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_same_seed_same_answer(image_folder, tmp_path):
    config = tiny_config(image_folder, max_candidates=5, baselines=False)
    run(config, tmp_path / "a")
    run(config, tmp_path / "b")
    for name in ("candidates.csv", "finals.csv"):
        a = read_csv(tmp_path / "a" / "seed_0" / name)
        b = read_csv(tmp_path / "b" / "seed_0" / name)
        fields = STABLE if name == "candidates.csv" else ["method", "group", "val_acc", "test_acc"]
        assert stable(a, fields) == stable(b, fields)
    assert (tmp_path / "a/seed_0/splits.json").read_text() == \
        (tmp_path / "b/seed_0/splits.json").read_text()


def test_time_budget_defers_finals_to_a_resume(image_folder, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(image_folder, time_budget=0.0), out)
    assert read_csv(out / "seed_0" / "candidates.csv") == []  # nothing started in no time
    assert not (out / "seed_0" / "finals.csv").exists()
    run(tiny_config(image_folder, time_budget=None), out)
    assert len(read_csv(out / "seed_0" / "candidates.csv")) == 2 + 13  # baselines, candidates
    assert (out / "seed_0" / "finals.csv").exists()


def test_status_and_a_resume_say_what_is_done_and_left(image_folder, tmp_path, capsys):
    from blocktune.cli import main
    from blocktune.core.callbacks import LambdaCallback

    out = tmp_path / "run"
    recipe = {"methods": ["lp-ft"]}  # a recipe is counted among the finals
    config = tiny_config(image_folder, max_candidates=4, **recipe)
    run(tiny_config(image_folder, max_candidates=4, time_budget=0.0, **recipe), out)
    assert main(["status", str(out)]) == 0
    assert ("seed 0: search 0 of 2 baselines; 0 of 4 BW; finals 0 of 4 done (left: "
            "Baseline I, Baseline II, BW, LP-FT)") in capsys.readouterr().out
    rows = read_csv(out / "seed_0" / "candidates.csv")
    assert rows == []
    run(tiny_config(image_folder, max_candidates=2, **recipe), out)  # a budget of two
    phases = []
    run(config, out, LambdaCallback(on_phase=phases.append))
    assert "resuming seed 0: 2 of 2 baselines done, 2 of 4 BW candidates done" in phases
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seed 0: search 2 of 2 baselines; 4 of 4 BW; finals 4 of 4 done\n" in printed
    assert "model.safetensors: saved" in printed


def test_resume_with_another_config_is_refused(image_folder, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(image_folder, max_candidates=1, baselines=False), out)
    with pytest.raises(BlocktuneError, match="different strategies, window"):
        run(tiny_config(image_folder, strategies=["window"], window=2, max_candidates=1,
                        baselines=False), out)
    run(tiny_config(image_folder, strategies=["window"], window=2, max_candidates=1,
                    baselines=False), out, force_new=True)
    assert {r["strategy"] for r in read_csv(out / "seed_0" / "candidates.csv")} == {"window"}


def test_several_seeds_give_mean_and_std(image_folder, tmp_path):
    summary = run(tiny_config(image_folder, seeds=[0, 1], max_candidates=2), tmp_path / "r")
    assert all(int(r["seeds"]) == 2 for r in summary)
    assert (tmp_path / "r" / "seed_1" / "finals.csv").exists()


def test_lock_refuses_a_second_live_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from blocktune.results.runfolder import RunLock\n"
         f"with RunLock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BlocktuneError, match=f"being written by process {holder.pid}"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the kernel released the killed holder's lock
        assert (tmp_path / "run.pid").read_text().strip() == str(os.getpid())


def cli_run(data, out, *extra):
    return [sys.executable, "-m", "blocktune.cli", "run", "--model", "test_efficientnet",
            "--no-pretrained", "--data", str(data), "--image-size", "32", "--epochs", "2",
            "--final-epochs", "2", "--batch-size", "8", "--lr", "0.01", "--strategy",
            "layer,block", "--search-all", "--out", str(out), *extra]  # every candidate


def killed_at(command, fault, env) -> bool:
    """Run ``command`` with ``BLOCKTUNE_FAULT=fault``; True when the fault's SIGKILL ended it
    (the same point of the run on any machine, however fast)."""
    done = subprocess.run(command, env={**env, "BLOCKTUNE_FAULT": fault},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return done.returncode == -signal.SIGKILL


@pytest.fixture
def flower_like(tmp_path):
    return make_image_folder(tmp_path / "kill-images", per_class=16)


@pytest.mark.slow
@pytest.mark.parametrize("extra, rows_range, epochs_per_row, default_points", [
    ((), (1, 40), 2, 3),
    # pruned: layer's first rung is rows 1-30 (one per layer, one epoch each); rows 31-40 are
    # its second rung, where the survivors continue from rung states saved on disk
    (("--prune",), (31, 40), 1, 2),
], ids=["full", "pruned"])
def test_sigkill_at_random_points_then_resume_gives_the_same_table(
        flower_like, tmp_path, extra, rows_range, epochs_per_row, default_points):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("BLOCKTUNE_FAULT", None)
    reference = tmp_path / "reference"
    subprocess.run(cli_run(flower_like, reference, *extra), env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fields = STABLE + ["rung"]
    expected = stable(read_csv(reference / "seed_0" / "candidates.csv"), fields)
    expected_finals = stable(read_csv(reference / "seed_0" / "finals.csv"),
                             ["method", "group", "val_acc", "test_acc"])
    rng = random.Random(7)
    # more for a thorough check
    count = int(os.environ.get("BLOCKTUNE_KILL_POINTS", str(default_points)))
    # alternately just after a row is recorded and inside a candidate's training (an epoch
    # of about that row has ended); the first point is always after a row
    points = []
    for number in range(count):
        rows = rng.randint(*rows_range)
        points.append(f"candidate:{rows}" if number % 2 == 0
                      else f"epoch:{max(1, rows * epochs_per_row - 1)}")
    states_at_kill = []
    for number, fault in enumerate(points):
        out = tmp_path / f"killed{number}"
        assert killed_at(cli_run(flower_like, out, *extra), fault, env), \
            f"the run ended before the kill at {fault}: nothing was tested"
        states_at_kill.append(len(list((out / "seed_0" / "rungs").glob("*.pt"))))
        if (out / "config.yaml").exists():
            build_report(out)  # a killed folder is readable as it stands
        subprocess.run(cli_run(flower_like, out, *extra), env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert stable(read_csv(out / "seed_0" / "candidates.csv"), fields) == expected, fault
        assert stable(read_csv(out / "seed_0" / "finals.csv"),
                      ["method", "group", "val_acc", "test_acc"]) == expected_finals
    if extra:  # the resumes really continued from saved rung states
        assert any(states_at_kill), states_at_kill


def test_failed_candidate_is_recorded_and_search_goes_on(image_folder, tmp_path, monkeypatch):
    import torch

    import blocktune.training.train as train

    real = train.fit
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second candidate runs out of memory inside training
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "fit", flaky)  # train_group's own handler must catch it
    run(tiny_config(image_folder, max_candidates=3, baselines=False), tmp_path / "r")
    rows = read_csv(tmp_path / "r" / "seed_0" / "candidates.csv")
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["error"].startswith("out of memory: CUDA out of memory")
    assert choose(read_candidates(tmp_path / "r" / "seed_0" / "candidates.csv"),
                  "block").status == "ok"


def test_rungs():
    from blocktune.core.trials import rungs

    assert rungs(9) == [1, 3, 9] and rungs(5) == [1, 3, 5] and rungs(3) == [1, 3]
    assert rungs(1) == [1] and rungs(2) == [1, 2] and rungs(10) == [1, 3, 9, 10]
    assert rungs(5, grace=2) == [2, 5] and rungs(9, grace=3) == [3, 9]
    assert rungs(2, grace=4) == [2]


def run_rows(config, folder):
    run(config, folder)
    return read_csv(folder / "seed_0" / "candidates.csv")


def test_pruned_search_keeps_the_best_third_and_resumes_mid_rung(image_folder, tmp_path):
    from blocktune.core.io import atomic_write_csv
    from blocktune.core.records import CANDIDATE_FIELDS

    config = tiny_config(image_folder, epochs=3, prune=True, baselines=False)
    run(config, tmp_path / "a")
    rows = read_csv(tmp_path / "a" / "seed_0" / "candidates.csv")
    first = [r for r in rows if r["rung"] == "1"]
    second = [r for r in rows if r["rung"] == "3"]
    assert len(first) == 13 and all(r["status"] == "rung" for r in first)
    assert len(second) == 5 and all(r["status"] == "ok" for r in second)
    ranked = sorted(first, key=lambda r: (-float(r["val_acc"]), int(r["trained_params"])))
    assert {r["layer_indices"] for r in second} == {r["layer_indices"] for r in ranked[:5]}
    typed = read_candidates(tmp_path / "a" / "seed_0" / "candidates.csv")
    assert choose(typed, "block").layer_indices in {r["layer_indices"] for r in second}
    # survivors continued from their rung state: their rows are the unpruned search's rows
    unpruned = run_rows(tiny_config(image_folder, epochs=3, baselines=False), tmp_path / "u")
    by_group = {r["layer_indices"]: r for r in unpruned}
    for row in second:
        assert stable([row]) == stable([by_group[row["layer_indices"]]])
    assert not (tmp_path / "a" / "seed_0" / "rungs").exists()  # pruned states cleared
    text = build_report(tmp_path / "a").read_text()
    assert "### BW: 13 candidates, 5 trained to the end (successive halving)" in text

    (tmp_path / "b").mkdir()
    for name in ("config.yaml", "seed_0"):
        src = tmp_path / "a" / name
        if src.is_dir():
            import shutil

            shutil.copytree(src, tmp_path / "b" / name)
        else:
            (tmp_path / "b" / name).write_text(src.read_text())
    atomic_write_csv(tmp_path / "b" / "seed_0" / "candidates.csv", rows[:15], CANDIDATE_FIELDS)
    (tmp_path / "b" / "seed_0" / "finals.csv").unlink()
    run(config, tmp_path / "b")
    assert stable(read_csv(tmp_path / "b" / "seed_0" / "candidates.csv"), STABLE + ["rung"]) == \
        stable(rows, STABLE + ["rung"])


def test_resume_with_a_larger_budget_refits_a_changed_choice(image_folder, tmp_path):
    from blocktune.core.io import atomic_write_csv
    from blocktune.core.records import FINAL_FIELDS

    out = tmp_path / "r"
    run(tiny_config(image_folder, max_candidates=2, baselines=False), out)
    finals = read_csv(out / "seed_0" / "finals.csv")
    rows = read_candidates(out / "seed_0" / "candidates.csv")
    assert finals[0]["layer_indices"] == choose(rows, "block").layer_indices
    run(tiny_config(image_folder, max_candidates=5, baselines=False), out)
    rows = read_candidates(out / "seed_0" / "candidates.csv")
    assert len(rows) == 5
    finals = read_csv(out / "seed_0" / "finals.csv")
    assert [r["layer_indices"] for r in finals] == [choose(rows, "block").layer_indices]
    # a final of a group that is no longer the choice is fitted again, not reported
    stale = [{**finals[0], "layer_indices": "0"}]
    atomic_write_csv(out / "seed_0" / "finals.csv", stale, FINAL_FIELDS)
    run(tiny_config(image_folder, max_candidates=5, baselines=False), out)
    refit = read_csv(out / "seed_0" / "finals.csv")
    assert len(refit) == 1 and stable(refit, ["layer_indices", "test_acc"]) == \
        stable(finals, ["layer_indices", "test_acc"])


@pytest.mark.parametrize("prune", [False, True])
def test_a_group_another_strategy_trained_is_reused_with_the_same_result(image_folder, tmp_path,
                                                                         monkeypatch, prune):
    import blocktune.training.workbench as search_module

    searched = []
    real_train_group = search_module.train_group

    def counting(model, walk_result, group, *args, **kwargs):
        if "stop_after" in kwargs:  # the search's calls; final fine-tunes pass none
            searched.append(tuple(group))
        return real_train_group(model, walk_result, group, *args, **kwargs)

    monkeypatch.setattr(search_module, "train_group", counting)
    run(tiny_config(image_folder, strategies=["block", "quarter"], baselines=False,
                    prune=prune, epochs=3), tmp_path / "both")
    rows = read_csv(tmp_path / "both" / "seed_0" / "candidates.csv")
    block = [r for r in rows if r["strategy"] == "block"]
    quarter = [r for r in rows if r["strategy"] == "quarter"]
    first = [r for r in quarter if r["rung"] == "1"] if prune else quarter
    assert first and all(r["same_as"].startswith("block #") for r in first)
    assert all(r["seconds"] == "0.00" for r in first)
    if not prune:
        assert len(searched) == len(set(searched)) == len(block)  # each group trained once
    else:  # a later rung is trained again only where the block twin was pruned there
        block_rungs = {(r["layer_indices"], r["rung"]) for r in block}
        assert all(bool(r["same_as"]) == ((r["layer_indices"], r["rung"]) in block_rungs)
                   for r in quarter)

    run(tiny_config(image_folder, strategies=["quarter"], baselines=False, prune=prune,
                    epochs=3), tmp_path / "alone")
    computed = read_csv(tmp_path / "alone" / "seed_0" / "candidates.csv")
    fields = ["index", "rung", "layer_indices", "status", "val_acc", "val_loss", "best_epoch",
              "val_curve"]
    assert stable(quarter, fields) == stable(computed, fields)
    assert all(not r["same_as"] for r in computed)


def test_a_final_of_a_group_another_method_chose_is_reused(image_folder, tmp_path, monkeypatch):
    import blocktune.training.workbench as search_module

    finals = []
    real_train_group = search_module.train_group

    def counting(model, walk_result, group, *args, **kwargs):
        if kwargs.get("train_split") == ("search", "train"):
            finals.append(group)
        return real_train_group(model, walk_result, group, *args, **kwargs)

    monkeypatch.setattr(search_module, "train_group", counting)
    # quarter=True restricts block to the last quarter too: both strategies choose alike.
    run(tiny_config(image_folder, strategies=["block", "quarter"], quarter=True), tmp_path / "r")
    rows = {r["method"]: r for r in read_csv(tmp_path / "r" / "seed_0" / "finals.csv")}
    block, quarter = rows["block"], rows["quarter"]
    assert quarter["same_as"] == "block" and quarter["seconds"] == "0.00"
    fields = ["group", "layer_indices", "val_acc", "test_acc", "epochs", "status"]
    assert {k: quarter[k] for k in fields} == {k: block[k] for k in fields}
    assert rows[BASELINE_II]["same_as"] == "" and rows[BASELINE_I]["same_as"] == ""
    assert len(finals) == 3  # Baseline I, Baseline II, one fine-tune for both strategies
    folder = tmp_path / "r" / "seed_0"
    assert (folder / "quarter.safetensors").read_bytes() == \
        (folder / "block.safetensors").read_bytes()


def test_atomic_copy_replaces_the_target_whole_and_leaves_no_temp_file(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(bytes(range(256)) * 4096)
    target = tmp_path / "out" / "b.bin"
    target.parent.mkdir()
    target.write_bytes(b"old")
    atomic_copy(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing.bin", target)
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]


def test_two_fold_rule_refits_the_top_candidates_on_the_swapped_fold(image_folder, tmp_path,
                                                                     monkeypatch):
    import blocktune.training.workbench as search_module

    splits = []
    real_train_group = search_module.train_group

    def spying(model, walk_result, group, feed, config, train_split="search", val_split="val",
               **kwargs):
        splits.append((train_split, val_split))
        return real_train_group(model, walk_result, group, feed, config, train_split, val_split,
                                **kwargs)

    monkeypatch.setattr(search_module, "train_group", spying)
    out = tmp_path / "run"
    run(tiny_config(image_folder, select="two-fold", max_candidates=7), out)
    rows = [r for r in read_csv(out / "seed_0" / "candidates.csv") if r["strategy"] == "block"]
    refits = read_csv(out / "seed_0" / "refits.csv")
    top5 = sorted(rows, key=lambda r: (-float(r["val_acc"]), int(r["trained_params"]),
                                       int(r["index"])))[:5]
    assert [r["layer_indices"] for r in refits] == [r["layer_indices"] for r in top5]
    assert splits.count(("val", "search")) == 5  # trained on val, scored on search
    final = next(r for r in read_csv(out / "seed_0" / "finals.csv") if r["method"] == "block")
    assert final["select"] == "two-fold"
    by_group = {r["layer_indices"]: r for r in rows}
    means = {i: (float(by_group[i]["val_acc"]) + float(r["val_acc"])) / 2
             for i, r in ((r["layer_indices"], r) for r in refits)}
    assert means[final["layer_indices"]] == max(means.values())
    # resumed: nothing is trained again
    splits.clear()
    run(tiny_config(image_folder, select="two-fold", max_candidates=7), out)
    assert splits == []


def test_another_selection_rule_on_resume_refits_only_the_changed_choice(image_folder, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(image_folder, max_candidates=8, baselines=False, select="max-val")
    run(config, out)
    before = {r["method"]: r for r in read_csv(out / "seed_0" / "finals.csv")}
    rows = read_csv(out / "seed_0" / "candidates.csv")
    by_loss = min((r for r in rows if r["status"] == "ok"),
                  key=lambda r: (float(r["val_loss"]), -float(r["val_acc"]),
                                 int(r["trained_params"]), int(r["index"])))
    run(tiny_config(image_folder, max_candidates=8, baselines=False, select="val-loss"), out)
    after = {r["method"]: r for r in read_csv(out / "seed_0" / "finals.csv")}
    assert after["block"]["layer_indices"] == by_loss["layer_indices"]
    assert after["block"]["select"] == "val-loss"
    assert read_csv(out / "seed_0" / "candidates.csv") == rows  # the search is not redone
    if by_loss["layer_indices"] == before["block"]["layer_indices"]:
        assert after["block"] == {**before["block"], "select": "val-loss"}


def test_a_kept_final_is_recorded_as_the_current_rules_choice(image_folder, tmp_path):
    """A resume whose rule picks the group already fine-tuned keeps the final, untrained, and
    says that this rule chose it (as a run under this rule from the start would)."""
    out = tmp_path / "run"
    config = tiny_config(image_folder, max_candidates=4, baselines=False, select="max-val")
    run(config, out)
    path = out / "seed_0" / "finals.csv"
    before = read_csv(path)
    weights = (out / "seed_0" / "block.safetensors").stat().st_mtime_ns
    atomic_write_csv(path, [{**r, "select": "val-loss"} for r in before], list(before[0]))
    assert run_status(out)[1] == ("seed 0: search 4 of 4 BW; finals 0 of 1 done (left: BW "
                                  "(its final is `val-loss`'s pick))")
    run(config, out)
    assert run_status(out)[1] == "seed 0: search 4 of 4 BW; finals 1 of 1 done"
    assert read_csv(path) == before  # same row, same seconds: nothing re-trained
    assert (out / "seed_0" / "block.safetensors").stat().st_mtime_ns == weights


def test_seeds_vary_the_batch_order(image_folder, tmp_path, monkeypatch):
    import blocktune.training.workbench as search_module

    seen = []
    real_train_group = search_module.train_group

    def spying(model, walk_result, group, feed, config, *args, **kwargs):
        seen.append(config.seed)
        return real_train_group(model, walk_result, group, feed, config, *args, **kwargs)

    monkeypatch.setattr(search_module, "train_group", spying)
    run(tiny_config(image_folder, seeds=[3, 7], max_candidates=1, baselines=False),
        tmp_path / "r")
    assert sorted(set(seen)) == [3, 7]


def test_a_run_folder_from_before_baselines_and_predictions_resumes_and_reports(image_folder,
                                                                               tmp_path):
    """Written before this version: no baseline rows in the search, no per-image predictions,
    no select column. It resumes (the baselines' search rows are added) and reports."""
    out = tmp_path / "run"
    config = tiny_config(image_folder, max_candidates=3)
    run(config, out)
    old_candidates = ["strategy", "rung", "index", "layers", "layer_indices", "first", "last",
                      "trained_params", "val_acc", "val_loss", "epochs", "best_epoch",
                      "seconds", "status", "error", "val_curve", "same_as"]
    old_finals = ["method", "group", "layer_indices", "trained_params", "search_val_acc",
                  "val_acc", "test_acc", "epochs", "seconds", "status", "same_as"]
    seed_dir = out / "seed_0"
    rows = [r for r in read_csv(seed_dir / "candidates.csv")
            if r["strategy"] not in (BASELINE_I, BASELINE_II)]
    finals = read_csv(seed_dir / "finals.csv")
    atomic_write_csv(seed_dir / "candidates.csv", rows, old_candidates)
    atomic_write_csv(seed_dir / "finals.csv", finals, old_finals)
    (seed_dir / "refits.csv").unlink(missing_ok=True)

    run(config, out)
    resumed = read_csv(seed_dir / "candidates.csv")
    assert [r["strategy"] for r in resumed] == ["block"] * 3 + [BASELINE_I, BASELINE_II]
    assert stable(resumed[:3]) == stable(rows)
    assert [stable([r], ["method", "val_acc", "test_acc"]) for r in read_csv(seed_dir /
            "finals.csv")] == [stable([r], ["method", "val_acc", "test_acc"]) for r in finals]
    text = build_report(out).read_text()
    assert "## Verdict" in text and "no interval (no per-image predictions saved)" in text


def test_force_new_never_leaves_the_old_model_to_predict(image_folder, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(image_folder, max_candidates=2), out)
    assert (out / "model.safetensors").exists() and (out / "seed_0" / "block.safetensors").exists()
    # started over, and stopped before any final: nothing of the old run may be served
    run(tiny_config(image_folder, max_candidates=2, time_budget=0.0), out, force_new=True)
    assert not (out / "model.safetensors").exists() and not (out / "model.json").exists()
    assert not list((out / "seed_0").glob("*.safetensors"))


def test_duplicates_across_splits_are_reported_and_strict_refuses_them(image_folder, tmp_path):
    import shutil

    from blocktune.core.callbacks import LambdaCallback

    for i in range(6):  # six copies of one photo: some land in other splits than the original
        shutil.copy(image_folder / "red" / "000.jpg", image_folder / "red" / f"copy{i}.jpg")
    notices = []
    run(tiny_config(image_folder, max_candidates=1, baselines=False), tmp_path / "a",
        LambdaCallback(on_notice=notices.append))
    [notice] = [n for n in notices if "exact-duplicate image(s) lie in two splits of seed 0" in n]
    # the count of each pair of splits, and they add up to the total
    count = int(notice.split()[0])
    pairs = re.findall(r"(search|val|train|test)–(search|val|train|test) (\d+)", notice)
    assert pairs and sum(int(n) for *_, n in pairs) == count
    with pytest.raises(BlocktuneError, match="exact-duplicate .* drop --strict$"):
        run(tiny_config(image_folder, max_candidates=1, baselines=False, strict=True),
            tmp_path / "b")


def test_result_files_take_the_process_umask(tmp_path):
    from blocktune.core.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
        os.umask(0o027)
        atomic_write_text(tmp_path / "b.csv", "x\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.csv").stat().st_mode & 0o777 == 0o640


def test_augmented_candidates_do_not_depend_on_what_trained_before(image_folder, tmp_path):
    # --augment's flips are drawn per trial from the seed (and paused with a rung's state):
    # they once came from one generator per process, so a candidate's flips depended on what
    # trained before it, and a resume, a pruned survivor or a Ray worker gave other rows
    config = dict(augment=True, baselines=False, epochs=3)
    whole = run_rows(tiny_config(image_folder, max_candidates=4, **config), tmp_path / "whole")
    out = tmp_path / "resumed"
    run(tiny_config(image_folder, max_candidates=1, **config), out)
    resumed = run_rows(tiny_config(image_folder, max_candidates=4, **config), out)
    fields = STABLE + ["val_pred"]
    assert stable(resumed, fields) == stable(whole, fields)
    # successive halving: a survivor continues from its rung state, flips included, to the
    # row the unpruned search gives it
    pruned = run_rows(tiny_config(image_folder, max_candidates=4, prune=True, **config),
                      tmp_path / "pruned")
    survivors = [r for r in pruned if r["status"] == "ok"]
    by_group = {r["layer_indices"]: r for r in whole}
    assert survivors and all(stable([r], fields) == stable([by_group[r["layer_indices"]]], fields)
                             for r in survivors)


def test_a_resume_with_more_candidates_drops_the_stale_ranked_group(image_folder, tmp_path):
    config = dict(strategies=["layer", "ranked"], ranked_k=[2], baselines=False)
    whole = tmp_path / "whole"
    run(tiny_config(image_folder, max_candidates=6, **config), whole)
    out = tmp_path / "resumed"
    run(tiny_config(image_folder, max_candidates=2, **config), out)
    rows = read_csv(out / "seed_0" / "candidates.csv")
    stale = {r["layer_indices"] for r in rows if r["strategy"] == "ranked-2"}
    import json

    from blocktune.core.records import predictions_text

    val = json.loads((out / "seed_0" / "splits.json").read_text())["labels"]["val"]
    for row in rows:  # the stale group scored best: it must still not be picked
        if row["strategy"] == "ranked-2":  # right on every val image, as its row says
            row["val_acc"], row["val_pred"] = "1.000000", predictions_text(val)
    atomic_write_csv(out / "seed_0" / "candidates.csv", rows, list(rows[0]))
    run(tiny_config(image_folder, max_candidates=6, **config), out)

    def final(folder):
        return next(r for r in read_csv(folder / "seed_0" / "finals.csv")
                    if r["method"] == "ranked-2")["layer_indices"]

    assert final(out) == final(whole) and final(whole) not in stale
    # the ranked-2 group of the first two layers is still recorded, but no longer a candidate
    ranked = {r["layer_indices"] for r in read_csv(out / "seed_0" / "candidates.csv")
              if r["strategy"] == "ranked-2"}
    assert stale <= ranked
