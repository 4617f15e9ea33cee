"""``--executor ray``: the same tables as ``local`` on a local Ray (2 CPUs, no dashboard) and on a
two-node cluster; a worker killed mid-trial is retried; a SIGKILLed driver resumes, on either
executor; Ray's absence and an unreachable cluster are one line each."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from blocktune.core.errors import BlocktuneError
from blocktune.core.io import read_csv
from blocktune.executors.ray import (
    FAULT_ENV,
    HANG_ENV,
    RAISE_ENV,
    check_devices,
    check_reachable,
    connect,
    parse_resources,
)
from blocktune.runner.search import run

from .conftest import make_image_folder
from .test_search import killed_at, tiny_config

pytestmark = pytest.mark.slow  # make test-quick leaves these out

ray = pytest.importorskip("ray", reason="pip install 'blocktune[ray]' for the Ray tests")

FIELDS = ["strategy", "index", "layer_indices", "trained_params", "val_acc", "val_loss",
          "epochs", "best_epoch", "status", "val_pred"]
FINAL_FIELDS = ["method", "group", "layer_indices", "val_acc", "test_acc", "test_pred"]


def table(folder, name="candidates.csv", fields=FIELDS):
    """Rows as sets of fields, in a fixed order: Ray hands trials back as they finish."""
    rows = read_csv(folder / "seed_0" / name)
    return sorted(tuple(r[f] for f in fields) for r in rows)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("ray") / "images", per_class=16)


@pytest.fixture(scope="module")
def one_thread():
    # Ray trials get one CPU, so one thread each: the local reference runs alike, for
    # bit-identical sums.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_reference(data, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("local") / "run"
    run(tiny_config(data, max_candidates=3), out)
    return out


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    marker = tmp_path_factory.mktemp("fault") / "killed"
    ray.shutdown()
    # The worker that trains block #1 SIGKILLs itself once, at its first epoch.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {FAULT_ENV: f"block#1@{marker}"}})
    yield marker
    ray.shutdown()


def test_ray_gives_the_local_table_even_when_a_worker_dies(data, tmp_path, local_reference,
                                                          local_ray, one_thread):
    out = tmp_path / "ray"
    run(tiny_config(data, max_candidates=3, executor="ray"), out)
    assert local_ray.exists(), "the fault was not injected: no worker was killed"
    assert table(out) == table(local_reference)
    assert table(out, "finals.csv", FINAL_FIELDS) == \
        table(local_reference, "finals.csv", FINAL_FIELDS)
    assert (out / "seed_0" / "block.safetensors").exists()
    assert any((out / "seed_0" / "ray").iterdir())  # Tune's experiments inside the run folder


def test_a_pruned_search_on_ray_is_the_local_one(data, tmp_path, local_ray, one_thread):
    # successive halving's rungs are waves of the plan: survivors continue from rung states
    # that travel back from the workers as Tune checkpoints
    config = dict(max_candidates=6, prune=True, epochs=3, baselines=False)
    run(tiny_config(data, **config), tmp_path / "local")
    run(tiny_config(data, executor="ray", **config), tmp_path / "ray")
    fields = [*FIELDS, "rung"]
    assert table(tmp_path / "ray", fields=fields) == table(tmp_path / "local", fields=fields)
    assert {r["status"] for r in read_csv(tmp_path / "ray" / "seed_0" / "candidates.csv")} == \
        {"rung", "ok"}


def test_each_cached_cut_is_put_once_however_many_waves(data, tmp_path, local_ray, one_thread,
                                                       monkeypatch):
    # a pruned search hands Ray several waves; each once put the whole cache again
    import numpy as np

    puts = []
    real_put = ray.put

    def counting_put(value, *args, **kwargs):
        def halves(x):  # the cache's float16 arrays (pixels are uint8, labels int64)
            if isinstance(x, np.ndarray):
                return [x.nbytes] if x.dtype == np.float16 else []
            if isinstance(x, dict):
                return [n for v in x.values() for n in halves(v)]
            if isinstance(x, (list, tuple)):
                return [n for v in x for n in halves(v)]
            return []

        puts.extend(halves(value))
        return real_put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", counting_put)
    run(tiny_config(data, max_candidates=6, prune=True, epochs=3, baselines=False,
                    executor="ray"), tmp_path / "ray")
    rungs = {r["rung"] for r in read_csv(tmp_path / "ray" / "seed_0" / "candidates.csv")}
    assert len(rungs) > 1  # several waves
    cuts = {r["layer_indices"].split(";")[0] for r in
            read_csv(tmp_path / "ray" / "seed_0" / "candidates.csv")}
    assert 0 < len(puts) <= len(cuts) + 2  # the search's cuts, and the finals' (at most two)


def test_an_augmented_search_on_ray_is_the_local_one(data, tmp_path, local_ray, one_thread):
    # each trial draws its flips from the seed, whichever worker runs it after whichever trial
    config = dict(max_candidates=3, augment=True, baselines=False)
    run(tiny_config(data, **config), tmp_path / "local")
    run(tiny_config(data, executor="ray", **config), tmp_path / "ray")
    assert table(tmp_path / "ray") == table(tmp_path / "local")


def test_a_pooled_score_on_ray_is_the_local_one(data, tmp_path, local_ray, one_thread):
    # --score-on val+train: the workers' caches hold the train split too, and score on it
    config = dict(max_candidates=3, score_on="val+train", baselines=False)
    run(tiny_config(data, **config), tmp_path / "local")
    run(tiny_config(data, executor="ray", **config), tmp_path / "ray")
    fields = [*FIELDS, "score", "score_images"]
    assert table(tmp_path / "ray", fields=fields) == table(tmp_path / "local", fields=fields)
    rows = read_csv(tmp_path / "ray" / "seed_0" / "candidates.csv")
    assert all(int(r["score_images"]) > 12 for r in rows)  # more than val's images


def test_the_recipes_and_top_on_ray_are_the_local_ones(data, tmp_path, local_ray, one_thread):
    # LP-FT, LLRD and LP-BW finals as Ray trials: the worker trains the recipe its id names;
    # the top strategy's candidates (from a stage to the output) are trials like any other
    config = dict(max_candidates=2, methods=["lp-ft", "llrd", "lp-bw"],
                  strategies=["block", "top"], search_all=True)
    run(tiny_config(data, **config), tmp_path / "local")
    run(tiny_config(data, executor="ray", **config), tmp_path / "ray")
    fields = [*FINAL_FIELDS, "epochs"]
    assert table(tmp_path / "ray", "finals.csv", fields) == \
        table(tmp_path / "local", "finals.csv", fields)
    assert table(tmp_path / "ray") == table(tmp_path / "local")
    methods = {r["method"] for r in read_csv(tmp_path / "ray" / "seed_0" / "finals.csv")}
    assert {"lp-ft", "llrd", "lp-bw", "top"} <= methods


def test_ray_workers_never_look_for_the_drivers_data_or_weights(data, tmp_path, local_ray,
                                                              one_thread):
    # on a real cluster the data folder and --weights file exist on the driver only: the
    # workers once rebuilt the driver's config, checked both paths, and every trial failed
    import shutil

    import timm

    from blocktune.core.callbacks import LambdaCallback

    own = tmp_path / "driver-data"
    shutil.copytree(data, own)
    weights = tmp_path / "driver.pth"
    torch.manual_seed(3)
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    config = dict(max_candidates=2, baselines=False, weights=str(weights))
    run(tiny_config(own, **config), tmp_path / "local")

    def vanish(text):  # the images are decoded and the model built: only the driver has them
        shutil.rmtree(own, ignore_errors=True)
        weights.unlink(missing_ok=True)

    run(tiny_config(own, executor="ray", **config), tmp_path / "ray", LambdaCallback(on_phase=vanish))
    assert not own.exists() and not weights.exists()
    assert table(tmp_path / "ray") == table(tmp_path / "local")
    assert table(tmp_path / "ray", "finals.csv", FINAL_FIELDS) == \
        table(tmp_path / "local", "finals.csv", FINAL_FIELDS)


def test_a_search_resumes_across_executors(data, tmp_path, local_reference, local_ray,
                                           one_thread):
    # started locally with a smaller budget, finished on Ray, and the other way round
    for first, second in (("local", "ray"), ("ray", "local")):
        out = tmp_path / f"{first}-{second}"
        run(tiny_config(data, max_candidates=1, executor=first), out)
        run(tiny_config(data, max_candidates=3, executor=second), out)
        assert table(out) == table(local_reference)
        assert table(out, "finals.csv", FINAL_FIELDS) == \
            table(local_reference, "finals.csv", FINAL_FIELDS)


def test_a_sigkilled_ray_driver_resumes_to_the_same_table(data, tmp_path, local_reference):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "blocktune.cli", "run", "--model", "test_efficientnet",
               "--no-pretrained", "--data", str(data), "--image-size", "32", "--epochs", "2",
               "--final-epochs", "2", "--batch-size", "8", "--lr", "0.01", "--max-candidates",
               "3", "--methods", "", "--search-baseline-ii",  # tiny_config's search
               "--out", str(out)]  # and finals
    # tiny_config's split fractions, through a config file
    (tmp_path / "split.yaml").write_text(
        "fractions: {search: 0.25, val: 0.25, train: 0.3, test: 0.2}\n")
    command += ["--config", str(tmp_path / "split.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)  # an earlier test's cluster: this driver starts its own
    # the driver is killed just after it records its third row
    assert killed_at([*command, "--executor", "ray", "--trial-resources", "cpu=1"],
                     "candidate:3", env), "the driver finished before it was killed"
    rows_at_kill = len(read_csv(out / "seed_0" / "candidates.csv"))
    assert 3 <= rows_at_kill < 5
    subprocess.run([*command, "--executor", "ray"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert table(out) == table(local_reference)
    assert table(out, "finals.csv", FINAL_FIELDS) == \
        table(local_reference, "finals.csv", FINAL_FIELDS)


def test_two_node_cluster_gives_the_local_table(data, tmp_path, local_reference, one_thread):
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        out = tmp_path / "cluster"
        run(tiny_config(data, max_candidates=3, executor="ray", ray_address=cluster.address),
            out)
        assert len(ray.nodes()) == 2
        assert table(out) == table(local_reference)
        assert table(out, "finals.csv", FINAL_FIELDS) == \
            table(local_reference, "finals.csv", FINAL_FIELDS)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_resources_unreachable_cluster_and_missing_ray_are_one_line(tmp_path, capsys,
                                                                    monkeypatch):
    from blocktune.cli import main

    ray.shutdown()  # a Ray already running in this process would be joined, not looked for
    assert parse_resources("cpu=1,gpu=0.25") == {"cpu": 1.0, "gpu": 0.25}
    assert parse_resources("gpu=0.5") == {"gpu": 0.5, "cpu": 1.0}
    for bad in ("cpu=0", "tpu=1", "cpu=one", "gpu=-1"):
        with pytest.raises(BlocktuneError, match="--trial-resources"):
            parse_resources(bad)
    with pytest.raises(BlocktuneError, match="no Ray cluster answers at --ray-address"):
        check_reachable("127.0.0.1:1")
    # Ray's own RAY_ADDRESS names the cluster to join when --ray-address is not given (it
    # once started a local Ray with num_cpus and ended in Ray's ValueError)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(BlocktuneError, match="no Ray cluster answers at --ray-address 127.0.0.1:1"):
        connect(None)
    monkeypatch.delenv("RAY_ADDRESS")
    data = make_image_folder(tmp_path / "images", per_class=8)
    base = ["run", "--model", "test_efficientnet", "--no-pretrained", "--data", str(data),
            "--out", str(tmp_path / "out"), "--executor", "ray"]
    for extra, words in ((["--ray-address", "127.0.0.1:1"], "no Ray cluster answers"),
                         (["--trial-resources", "cpu=0"], "--trial-resources")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("blocktune: error: ") and words in err and "\n" not in err
    assert not (tmp_path / "out" / "seed_0").exists()  # refused before any work
    # a run on a GPU whose trials ask for none would train on the CPU (Ray hides the GPUs)
    with pytest.raises(BlocktuneError, match="gives its Ray trials no GPU"):
        check_devices(torch.device("cuda"), parse_resources("cpu=1"))
    check_devices(torch.device("cuda"), parse_resources("cpu=1,gpu=0.5"))
    check_devices(torch.device("cpu"), parse_resources("cpu=1"))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(base) == 2
    assert "pip install 'blocktune[ray]'" in capsys.readouterr().err


@pytest.mark.parametrize("trial, kind", [("block#1", "search"), ("final:block", "finals")],
                         ids=["search-trial", "final"])
def test_a_trial_that_fails_for_good_is_recorded_as_locally_and_the_rest_finishes(
        data, tmp_path, one_thread, trial, kind):
    # Tune reports a trial that exhausted its retries in the ResultGrid and does not raise: it
    # once vanished (exit 0 without it), then stopped the run with exit 2. A failed trial is
    # a failed row, as the local executor records one; the rest finishes; the command exits 1
    from blocktune.results.status import failures

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {RAISE_ENV: trial}})
    try:
        out = tmp_path / "run"
        run(tiny_config(data, max_candidates=3, executor="ray"), out)
        rows = read_csv(out / "seed_0" / "candidates.csv")
        finals = read_csv(out / "seed_0" / "finals.csv")
        failed = [r for r in (rows if kind == "search" else finals) if r["status"] == "failed"]
        assert len(failed) == 1 and "failed on Ray after 3 attempts" in failed[0]["error"]
        assert "injected failure" in failed[0]["error"]
        assert len(rows) == 5  # both baselines and the three candidates, one of them failed
        assert {r["method"] for r in finals if r["status"] == "ok"} >= {"baseline-I",
                                                                      "baseline-II"}
        assert (out / "model.safetensors").exists()  # the recommendation among the rest
        assert "failed" in failures(out, [0]) and "run the same command to retry" in \
            failures(out, [0])
        # the cause gone (a node back), the same command retries the lost trial, on Ray too
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        run(tiny_config(data, max_candidates=3, executor="ray"), out)
        again = read_csv(out / "seed_0" / ("candidates.csv" if kind == "search"
                                           else "finals.csv"))
        assert all(r["status"] == "ok" for r in again) and failures(out, [0]) is None
    finally:
        ray.shutdown()


@pytest.mark.parametrize("action, status, words", [
    ("int", 130, "interrupted; finished work is saved"),
    ("enospc", 2, "No space left on device"),
], ids=["ctrl-c", "disk-full"])
def test_the_driver_stops_at_once_when_it_stops_listening(data, tmp_path, action, status, words):
    # block #2 never ends by itself; the driver gets Ctrl-C (or a full disk) as it records its
    # first row. It once joined Tune's thread and waited for the whole wave: forever, here.
    out = tmp_path / "run"
    command = [sys.executable, "-m", "blocktune.cli", "run", "--model", "test_efficientnet",
               "--no-pretrained", "--data", str(data), "--image-size", "32", "--epochs", "2",
               "--final-epochs", "2", "--batch-size", "8", "--max-candidates", "3",
               "--executor", "ray", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", HANG_ENV: "block#2",
           "BLOCKTUNE_FAULT": f"candidate:1:{action}"}
    env.pop("RAY_ADDRESS", None)  # an earlier test's cluster: this driver starts its own
    # Ctrl-C as in a terminal: a shell's background job (CI's, or `make test &`) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == status, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("blocktune: ")]
    assert len(lines) == 1 and words in lines[0], done.stderr[-2000:]  # one line, no traceback
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(read_csv(out / "seed_0" / "candidates.csv")) >= 1  # the finished row is kept


def test_the_small_data_options_on_ray_are_the_local_ones(data, tmp_path, local_ray, one_thread):
    # --learn-images, --test-data, the norms recipe and the cross-validated choice: the folds
    # and the test folders travel to the workers; the rows are the local ones
    shifted = make_image_folder(tmp_path / "shifted", per_class=4, seed=3)
    config = dict(max_candidates=2, methods=["norms"], learn_images=30, choose_by="cv2",
                  test_data=[str(shifted)])
    run(tiny_config(data, **config), tmp_path / "local")
    run(tiny_config(data, executor="ray", **config), tmp_path / "ray")
    fields = [*FINAL_FIELDS, "epochs", "trained_params", "domains"]
    assert table(tmp_path / "ray", "finals.csv", fields) == \
        table(tmp_path / "local", "finals.csv", fields)
    cv_fields = ["method", "fold", "layer_indices", "fold_acc", "fold_images", "fold_pred",
                 "same_as"]
    assert table(tmp_path / "ray", "cv.csv", cv_fields) == \
        table(tmp_path / "local", "cv.csv", cv_fields)
    # the chosen method and both baselines trained again on every learning image
    assert table(tmp_path / "ray", "learning_finals.csv", [*fields, "trained_on"]) == \
        table(tmp_path / "local", "learning_finals.csv", [*fields, "trained_on"])
    assert len(read_csv(tmp_path / "ray" / "seed_0" / "learning_finals.csv")) >= 2
    local = json.loads((tmp_path / "local" / "seed_0" / "choices.json").read_text())
    remote = json.loads((tmp_path / "ray" / "seed_0" / "choices.json").read_text())
    for chosen in (local, remote):
        chosen["recommendation"].pop("seconds")
    assert remote == local


def test_a_spent_time_budget_stops_the_same_trials_as_locally(data, tmp_path, monkeypatch,
                                                             one_thread):
    # --time-budget was asked once per wave on Ray (every trial of the wave then ran) and
    # before each trial locally. The budget is spent where the first search row is recorded
    # (a fault point, not a clock): no trial starts after it, on either executor. One trial
    # at a time on Ray (cpu=2 of 2) so that "started before" is the same set.
    from blocktune.core import faults

    monkeypatch.setenv("BLOCKTUNE_FAULT", "candidate:1:spend")
    tables = {}
    for executor in ("local", "ray"):
        faults._hits.clear()
        faults._spent.clear()
        out = tmp_path / executor
        run(tiny_config(data, max_candidates=3, time_budget=10**6, executor=executor,
                        trial_resources="cpu=2"), out)
        tables[executor] = [(r["strategy"], r["layer_indices"], r["status"])
                            for r in read_csv(out / "seed_0" / "candidates.csv")]
        assert not (out / "seed_0" / "finals.csv").exists()  # the finals wait for a resume
    faults._spent.clear()
    assert tables["local"] == tables["ray"] == [("baseline-I", "", "ok")]
    ray.shutdown()


def test_a_node_that_cannot_see_the_run_folder_is_refused_before_any_trial(data, tmp_path,
                                                                           one_thread):
    # item 11: trials write final weights and rung states under the run folder and the driver
    # reads them there; on a cluster without shared storage they were on another machine. A
    # node whose workers cannot see the folder (a fault variable stands in for another
    # machine's disk) is one line before any trial.
    from ray.cluster_utils import Cluster

    from blocktune.executors.ray import BLIND_ENV

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, env_vars={BLIND_ENV: "1"})
    try:
        cluster.wait_for_nodes()
        out = tmp_path / "cluster"
        with pytest.raises(BlocktuneError, match=r"^1 of the Ray cluster's 2 nodes cannot see "
                                                 r"the run folder"):
            run(tiny_config(data, max_candidates=3, executor="ray",
                            ray_address=cluster.address), out)
        assert not (out / "seed_0" / "candidates.csv").exists()  # no trial ran
    finally:
        ray.shutdown()
        cluster.shutdown()
