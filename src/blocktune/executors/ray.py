"""The Ray executor: every trial a Ray Tune trial, on a local Ray or a running cluster.

* One Tune trial per candidate (``tune.with_resources`` from ``--trial-resources``, e.g.
  ``cpu=1,gpu=0.25`` so that four candidates share a GPU), a ``tune.report`` per epoch, and
  Tune's experiment folders under ``RUN/seed_<s>/ray``.
* What every trial needs is put into Ray's object store once per run: the decoded images,
  the split, the run's config, and each cut of the frozen-prefix activation cache, computed
  once by the driver (zero-copy for workers on the same node; Ray moves it to other nodes).
  A later wave puts only the cuts it adds. A worker process builds the seed's model once and
  reuses it for every trial it runs; it copies cached cuts to its GPU only up to its share
  of ``--cache-max-gb`` (``gpu=0.25``: a quarter), and reads the rest from the object store.
* Ctrl-C, a disk error or any other failure on the driver stops the Tune run at once (a Tune
  ``Stopper``): trials still running are ended, none is started, finished rows are saved.
* A trial whose worker dies is retried (``FailureConfig``): training depends only on the
  group, the seed and the data, so the retried row equals the lost one.
* Results come back the moment each trial finishes (a Tune callback feeds the driver), so the
  driver appends rows to the CSVs as it does with the local executor, and a run resumes from
  them whichever executor wrote them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.methods import recipe_of
from blocktune.core.trials import FinalTrial, Trial
from blocktune.data import DecodedImages, TestDomain
from blocktune.training.train import TrainResult
from blocktune.training.workbench import FINAL_COVER, FinalOutcome, Workbench

INSTALL_HINT = "pip install 'blocktune[ray]'"
RESOURCE_KEYS = ("cpu", "gpu")
# a final's weights inside the Tune checkpoint it reports (not a run-folder file)
CHECKPOINT_WEIGHTS = "weights.safetensors"
# Fault injection for the test suite: a trial of this method and index SIGKILLs its own worker
# once, the first time it reaches its first epoch (the marker file remembers it happened).
FAULT_ENV = "BLOCKTUNE_FAULT_KILL_TRIAL"
# ... and this one makes every attempt of a trial raise: ``block#1`` (a search trial, its
# refit too), ``final:block`` (a final), so that it fails for good after Tune's retries.
RAISE_ENV = "BLOCKTUNE_FAULT_RAISE_TRIAL"
# ... and this one makes a trial wait forever at its first epoch (a trial that will not end
# by itself: what the driver's Ctrl-C must not wait for).
HANG_ENV = "BLOCKTUNE_FAULT_HANG_TRIAL"


def require_ray():
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise BlocktuneError(f"--executor ray needs Ray, which is not installed: "
                             f"{INSTALL_HINT}") from error
    return ray, tune


def parse_resources(text: str) -> dict[str, float]:
    """``cpu=1,gpu=0.25`` → ``{"cpu": 1.0, "gpu": 0.25}``; one-line errors for anything else."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, _, value = part.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if key not in RESOURCE_KEYS or amount < 0 or (key == "cpu" and amount == 0):
            raise BlocktuneError(f"--trial-resources {text!r}: give cpu=N (N > 0) and "
                                 "optionally gpu=F (F ≥ 0), e.g. cpu=1,gpu=0.25")
        out[key] = amount
    out.setdefault("cpu", 1.0)
    return out


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Refuse an unreachable ``--ray-address`` in one line, before any work."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as error:
        raise BlocktuneError(f"no Ray cluster answers at --ray-address {address} "
                             f"({type(error).__name__}): start one with `ray start --head` "
                             "or leave --ray-address out for a local Ray") from error


def check_devices(device: torch.device, resources: Mapping[str, float]) -> None:
    """Ray shows a trial only the GPUs it asks for: training on a GPU needs ``gpu=F``."""
    if device.type == "cuda" and resources.get("gpu", 0) <= 0:
        raise BlocktuneError(
            "this run trains on cuda, but --trial-resources gives its Ray trials no GPU (Ray "
            "hides the GPUs from them): add one, e.g. --trial-resources cpu=1,gpu=0.25, or "
            "train on the CPU with --device cpu")


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or at ``RAY_ADDRESS``, Ray's own variable), or start a
    local Ray sized to this machine."""
    ray, _ = require_ray()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


# Fault injection for the test suite: a node whose workers have this variable set behaves as a
# node that does not mount the driver's run folder (a cluster without shared storage).
BLIND_ENV = "BLOCKTUNE_FAULT_BLIND_NODE"


def _sees(path: str) -> tuple[str, bool]:
    """On one node: its IP, and whether the driver's marker file is visible there."""
    import ray

    visible = Path(path).is_file() and not os.environ.get(BLIND_ENV)
    return ray.util.get_node_ip_address(), visible


def check_shared_storage(folder: Path) -> None:
    """Trials write their checkpoints (a final's weights, a paused rung) under ``folder``, and
    the driver reads them there: every node that can run a trial must see that folder. Checked
    once per run with a marker file and a task pinned to each alive node; one line when a node
    cannot, before any trial starts."""
    ray, _ = require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    if len(nodes) < 2:
        return  # one machine: its own disk
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".shared-{os.getpid()}-{time.time_ns()}"
    marker.write_text("blocktune")
    try:
        sees = ray.remote(num_cpus=0)(_sees)
        answers = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(str(marker)) for node in nodes])
    finally:
        marker.unlink(missing_ok=True)
    blind = [ip for ip, visible in answers if not visible]
    if blind:
        raise BlocktuneError(
            f"{len(blind)} of the Ray cluster's {len(nodes)} nodes cannot see the run folder "
            f"{folder} (first: {blind[0]}): trials write their results there; put --out on "
            "storage every node mounts at the same path (e.g. NFS), or run on one node")


# -- what travels to the workers -------------------------------------------------------------
def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits travel as int16
        return tensor.view(torch.int16).numpy()
    return tensor.numpy()


def _from_numpy(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


_RELAYS: dict[str, queue.Queue] = {}  # driver side: Tune's callbacks → the driver's generator
_STOPS: dict[str, threading.Event] = {}  # driver side: set when the driver stops a Tune run
# driver side: whether a trial may still start (--time-budget, asked as each trial starts, as
# the local executor asks before each), and the trials that started too late: stopped at
# their first report, never relayed, left for a resume
_GATES: dict[str, Callable[[], bool]] = {}
_LATE: dict[str, set] = {}
_BENCHES: dict[str, Workbench] = {}  # per worker process: the seed's model, built once


def _worker_bench(spec: dict, cache: dict | None) -> Workbench:
    key = spec["key"]
    if key not in _BENCHES:
        _BENCHES.clear()
        torch.set_num_threads(max(1, int(spec["threads"])))
        images = DecodedImages(torch.from_numpy(spec["pixels"]), spec["files"],
                               torch.from_numpy(spec["labels"]), spec["classes"], [])
        # The driver's config as a plain value: its data folder and --weights file are the
        # driver's, never looked for here (the images and weights travel in the spec)
        domains = [TestDomain(name, torch.from_numpy(pixels), torch.from_numpy(labels))
                   for name, pixels, labels in spec["domains"]]
        _BENCHES[key] = Workbench(RunConfig(**spec["config"]), spec["seed"], images,
                                  spec["split"], spec["data_cfg"],
                                  weights_file_state=spec["weights_file_state"],
                                  domains=domains)
    bench = _BENCHES[key]
    if cache is not None:
        import ray

        mine = bench.cache(tuple(cache["cover"]))
        missing = {int(cut): ref for cut, ref in cache["store"].items()
                   if int(cut) not in mine.store}
        if missing:
            dtype = getattr(torch, cache["dtype"])
            arrays = ray.get(list(missing.values()))
            mine.adopt({cut: _from_numpy(array, dtype)
                        for cut, array in zip(missing, arrays, strict=True)},
                       max_bytes=int(cache["device_bytes"]))
    return bench


def _trial_of(config: dict) -> Trial:
    fields = dict(config["trial"])
    fields["group"] = None if fields["group"] is None else tuple(fields["group"])
    fields["copy_of"] = None
    return Trial(**fields)


def _maybe_fault(name: str) -> None:
    """Test-suite faults for the trial ``name`` (``block#1``, ``final:block``)."""
    if os.environ.get(RAISE_ENV) == name:
        raise RuntimeError(f"injected failure of trial {name}")
    if os.environ.get(HANG_ENV) == name:
        threading.Event().wait()
    target = os.environ.get(FAULT_ENV)
    if not target:
        return
    wanted, _, marker = target.partition("@")
    if wanted == name and not Path(marker).exists():
        Path(marker).write_text("killed once\n")
        os.kill(os.getpid(), signal.SIGKILL)


def _search_trainable(config: dict, spec=None, cache=None, checkpoints=None) -> None:
    from ray import tune

    bench = _worker_bench(spec, cache)
    trial = _trial_of(config)

    def on_epoch(epoch, loss, acc, seconds):
        _maybe_fault(f"{trial.method}#{trial.index}")
        tune.report({"epoch": epoch, "train_loss": loss, "val_acc": acc, "seconds": seconds})

    result = bench.train(trial, (checkpoints or {}).get(trial.key), on_epoch,
                         config["train_split"], config["val_split"])
    # report() copies the checkpoint into the experiment's storage before it returns: the
    # temporary folder goes with the context
    with tempfile.TemporaryDirectory(prefix="blocktune-rung-") as folder:
        saved = None
        if result.checkpoint is not None:
            torch.save(result.checkpoint, Path(folder) / "rung.pt")
            saved = tune.Checkpoint.from_directory(folder)
        tune.report({"blocktune_result": json.dumps(result.to_dict())}, checkpoint=saved)


def _final_trainable(config: dict, spec=None, cache=None) -> None:
    from ray import tune
    from safetensors.torch import save_file

    bench = _worker_bench(spec, cache)
    group = config["final"]["group"]
    group = None if group is None else tuple(group)
    _maybe_fault(f"final:{config['final']['method']}")
    outcome = bench.fit_final(group, lambda e, loss, acc, s: tune.report(
        {"epoch": e, "train_loss": loss, "val_acc": acc, "seconds": s}),
        recipe_of(config["final"]["method"]), config["final"].get("fold"),
        bool(config["final"].get("all_learning")))
    with tempfile.TemporaryDirectory(prefix="blocktune-final-") as folder:
        saved = None
        if outcome.state is not None:
            save_file({k: v.contiguous() for k, v in outcome.state.items()},
                      str(Path(folder) / CHECKPOINT_WEIGHTS))
            saved = tune.Checkpoint.from_directory(folder)
        tune.report({"blocktune_result": json.dumps(outcome.result.to_dict()),
                     "test_acc": outcome.test_acc, "test_pred": json.dumps(outcome.test_pred),
                     "domains": json.dumps(outcome.domains)},
                    checkpoint=saved)


def _relay_epoch(on_epoch: Callable | None, result: dict) -> None:
    """A trial's per-epoch report, shown as the local executor shows it."""
    if on_epoch is not None:
        on_epoch(int(result["epoch"]), float(result["train_loss"]), float(result["val_acc"]),
                 float(result.get("seconds", 0.0)))


class RayExecutor:
    """Trials as Ray Tune trials; results handed back as each one finishes."""

    name = "ray"

    def __init__(self, bench: Workbench, folder: Path, resources: Mapping[str, float],
                 address: str | None = None, max_failures: int = 2):
        self.bench, self.folder = bench, Path(folder).resolve()
        self.resources = dict(resources)
        self.max_failures = max_failures
        check_devices(bench.device, self.resources)
        connect(address)
        check_shared_storage(self.folder / "ray")
        ray, _ = require_ray()
        self._cuts: dict[tuple, object] = {}  # (cover, cut) -> its ObjectRef, put once
        images = bench.images
        self.spec = ray.put({
            "key": f"{os.getpid()}-{id(bench)}-{time.time()}", "seed": bench.seed,
            "config": dataclasses.asdict(bench.config), "pixels": images.pixels.numpy(),
            "labels": images.labels.numpy(), "files": images.files, "classes": images.classes,
            "split": {k: list(v) for k, v in bench.split.items()}, "data_cfg": bench.data_cfg,
            "weights_file_state": ({k: v.cpu() for k, v in bench.pristine.items()},
                                   bench.weights_source) if bench.config.weights else None,
            "threads": self.resources.get("cpu", 1),
            "domains": [(d.name, d.pixels.numpy(), d.labels.numpy()) for d in bench.domains]})
        self._experiments = 0

    def _cache_payload(self, cover: tuple[str, ...]) -> dict | None:
        """The activation cache as one ObjectRef per cut: each cut is put once per run."""
        if not self.bench.config.cache or self.bench.config.augment:
            return None
        ray, _ = require_ray()
        cache = self.bench.cache(cover)
        for cut, tensor in cache.store.items():
            if (cover, cut) not in self._cuts:
                self._cuts[cover, cut] = ray.put(_to_numpy(tensor.cpu()))
        share = min(1.0, self.resources.get("gpu", 0.0))  # of the GPU, and of its cache room
        return {"cover": cover, "dtype": str(cache.dtype).removeprefix("torch."),
                "store": {cut: self._cuts[cover, cut] for cut in cache.store},
                "device_bytes": cache.max_bytes * share}

    def search(self, trials: Sequence[Trial], checkpoints: Mapping[tuple, dict],
               keep_going: Callable[[], bool], on_start: Callable[[Trial, int, int], None],
               on_epoch: Callable | None = None, train_split: str = "search",
               val_split: str = "val") -> Iterator[tuple[Trial, TrainResult]]:
        if not trials or not keep_going():
            return
        _, tune = require_ray()
        self.bench.prepare_cuts([t.group for t in trials], self.bench.search_cover)
        by_key = {t.key: t for t in trials}
        trainable = tune.with_parameters(
            _search_trainable, spec=self.spec, cache=self._cache_payload(self.bench.search_cover),
            checkpoints=dict(checkpoints))
        space = {"trial": tune.grid_search([dataclasses.asdict(t) for t in trials]),
                 "train_split": train_split, "val_split": val_split}
        position = 0
        for kind, config, result, checkpoint in self._fit(trainable, space, "search",
                                                          keep_going):
            trial = by_key[_trial_of(config).key]
            if kind == "start":
                on_start(trial, position, len(trials))
                position += 1
                continue
            if kind == "epoch":
                _relay_epoch(on_epoch, result)
                continue
            if kind == "failed":
                yield trial, TrainResult(status="failed", error=result)
                continue
            outcome = TrainResult(**json.loads(result["blocktune_result"]))
            if checkpoint is not None:
                outcome.checkpoint = torch.load(checkpoint / "rung.pt",
                                                map_location=self.bench.device,
                                                weights_only=True)
            yield trial, outcome

    def finals(self, trials: Sequence[FinalTrial], on_start: Callable[[FinalTrial], None],
               on_epoch: Callable | None = None) -> Iterator[tuple[FinalTrial, FinalOutcome]]:
        if not trials:
            return
        _, tune = require_ray()
        from safetensors.torch import load_file

        self.bench.prepare_finals(trials)
        by_key = {(t.method, t.fold, t.all_learning): t for t in trials}
        trainable = tune.with_parameters(_final_trainable, spec=self.spec,
                                         cache=self._cache_payload(FINAL_COVER))
        space = {"final": tune.grid_search([{"method": t.method, "group": t.group,
                                             "fold": t.fold, "all_learning": t.all_learning}
                                            for t in trials])}
        for kind, config, result, checkpoint in self._fit(trainable, space, "finals"):
            final = config["final"]
            trial = by_key[final["method"], final.get("fold"), bool(final.get("all_learning"))]
            if kind == "start":
                on_start(trial)
                continue
            if kind == "epoch":
                _relay_epoch(on_epoch, result)
                continue
            if kind == "failed":
                yield trial, FinalOutcome(TrainResult(status="failed", error=result), math.nan,
                                          [], None)
                continue
            state = load_file(str(checkpoint / CHECKPOINT_WEIGHTS)) \
                if checkpoint is not None else None
            yield trial, FinalOutcome(TrainResult(**json.loads(result["blocktune_result"])),
                                      float(result["test_acc"]), json.loads(result["test_pred"]),
                                      state, json.loads(result.get("domains") or "{}"))

    def _fit(self, trainable, space: dict, kind: str,
             keep_going: Callable[[], bool] = lambda: True):
        """Run a Tuner in a thread; yield ("start"|"epoch"|"done", config, result, checkpoint)
        events as Tune reports them, so the driver records each result the moment it exists,
        then ("failed", config, why, None) for each trial that failed for good."""
        _, tune = require_ray()
        events: queue.Queue = queue.Queue()
        token = f"{id(self)}-{self._experiments}"
        _RELAYS[token] = events
        _STOPS[token] = threading.Event()
        _GATES[token], _LATE[token] = keep_going, set()

        class Stop(tune.Stopper):
            # asked by Tune's loop in this process: the driver has stopped listening
            def __init__(self, token: str):
                self.token = token

            def __call__(self, trial_id, result) -> bool:
                from blocktune.executors.ray import _LATE

                return trial_id in _LATE[self.token]

            def stop_all(self) -> bool:
                from blocktune.executors.ray import _STOPS

                return _STOPS[self.token].is_set()

        class Relay(tune.Callback):
            # Tune pickles its callbacks with the experiment: they hold a name, not the queue
            def __init__(self, token: str):
                self.token = token

            def on_trial_start(self, iteration, trials, trial, **info):
                from blocktune.executors.ray import _GATES, _LATE, _RELAYS  # by name

                if not _GATES[self.token]():
                    _LATE[self.token].add(trial.trial_id)
                    return
                _RELAYS[self.token].put(("start", trial.config, None, None))

            def on_trial_result(self, iteration, trials, trial, result, **info):
                from blocktune.executors.ray import _LATE, _RELAYS

                if trial.trial_id in _LATE[self.token]:
                    return
                if "blocktune_result" in result:
                    # the checkpoint reported with the result, in the trial's folder
                    name = result.get("checkpoint_dir_name")
                    saved = Path(trial.path) / name if name else None
                    _RELAYS[self.token].put(("done", trial.config, result, saved))
                elif "epoch" in result:
                    _RELAYS[self.token].put(("epoch", trial.config, result, None))

        self._experiments += 1
        tuner = tune.Tuner(
            tune.with_resources(trainable, self.resources), param_space=space,
            tune_config=tune.TuneConfig(reuse_actors=True),  # the model is built once a worker
            run_config=tune.RunConfig(
                name=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{self._experiments}",
                storage_path=str(self.folder / "ray"), callbacks=[Relay(token)], verbose=0,
                stop=Stop(token),
                failure_config=tune.FailureConfig(max_failures=self.max_failures)))
        failure: list[BaseException] = []
        grids: list = []

        def work():
            try:
                grids.append(tuner.fit())
            except BaseException as error:  # noqa: BLE001 - handed to the driver thread
                failure.append(error)
            finally:
                events.put(None)

        thread = threading.Thread(target=work, name="blocktune-tune", daemon=True)
        thread.start()
        try:
            while (event := events.get()) is not None:
                yield event
        finally:
            # reached early only when the driver stopped listening (Ctrl-C, a disk error, a
            # closed generator): end the Tune run now rather than wait for its wave
            _STOPS[token].set()
            thread.join()
            _RELAYS.pop(token, None)
            _STOPS.pop(token, None)
            _GATES.pop(token, None)
            _LATE.pop(token, None)
        if failure:
            raise BlocktuneError(f"the Ray Tune run failed ({type(failure[0]).__name__}: "
                                 f"{failure[0]}): finished trials are saved, run the same "
                                 "command to resume") from failure[0]
        # Tune does not raise for trials that failed for good (after max_failures retries):
        # it lists them in the ResultGrid, which must be read or they vanish. Each is handed
        # back as a failed result, as the local executor hands back a trial that fails: the
        # driver records it, finishes the rest, and the command exits 1.
        for grid_result in (r for r in (grids[0] if grids else []) if r.error is not None):
            cause = str(grid_result.error).strip().splitlines()
            text = (f"failed on Ray after {self.max_failures + 1} attempts: "
                    f"{cause[-1] if cause else type(grid_result.error).__name__}")
            yield "failed", grid_result.config, text[:200], None

    def close(self) -> None:
        pass
