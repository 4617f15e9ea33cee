"""``blocktune finetune``: one given set of layers (a baseline, or any group by name or
regex) fine-tuned on search+train with val for the schedule, tested once."""

from __future__ import annotations

import re
from pathlib import Path

from blocktune.core.callbacks import Callback, CallbackList
from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.io import atomic_save_safetensors, atomic_write_csv, atomic_write_json
from blocktune.data import learning_images
from blocktune.loggers.tensorboard import loggers
from blocktune.models.layers import ModelWalk
from blocktune.results.publish import model_record
from blocktune.results.runfolder import RunFolder, RunLock, SeedFolder
from blocktune.runner.context import prepare_split
from blocktune.training.loading import check_environment, environment, load_images
from blocktune.training.train import device_for
from blocktune.training.workbench import Workbench


def parse_train_spec(spec: str, walk_result: ModelWalk) -> tuple[int, ...] | None:
    """``head`` → (), ``all`` → None, else comma-separated layer names or one regex."""
    if not spec.strip():  # once read as no layer names: head only, which nobody meant
        raise BlocktuneError("--train '' names no layer: give head, all, comma-separated "
                             "layer names or a regex (see blocktune groups --strategy layer)")
    if spec == "head":
        return ()
    if spec == "all":
        return None
    names = [layer.name for layer in walk_result.layers]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if all(w in names for w in wanted):
        return tuple(sorted(names.index(w) for w in wanted))
    try:
        pattern = re.compile(spec)
    except re.error as error:
        raise BlocktuneError(f"--train {spec!r} is neither layer names nor a valid regex "
                             f"({error}): see the names with blocktune groups --strategy layer") from error
    group = tuple(i for i, n in enumerate(names) if pattern.search(n))
    if not group:
        raise BlocktuneError(f"--train {spec!r} matches no layer: see the names with "
                             "blocktune groups --model M --strategy layer")
    return group


def finetune(config: RunConfig, train_spec: str, folder: str | Path,
             callbacks: Callback | list[Callback] | None = None) -> dict:
    """Fine-tune one given set of layers (a baseline or any group) on search+train; test once.

    Writes config.yaml, splits.json, metrics.csv (one row per epoch), result.json and
    model.safetensors into ``folder``.
    """
    folder = Path(folder)
    ignored = [flag for flag, given in (("--test-data", config.test_data),
                                        ("--choose-by", config.choose_by),
                                        ("--choose-on", config.choose_on)) if given]
    if ignored:  # every option a command accepts does something, or is refused
        raise BlocktuneError(f"{', '.join(ignored)}: finetune trains one given group and "
                             "chooses nothing, so it would ignore them; use blocktune run")
    events = CallbackList(callbacks).extended(*loggers(config.log, folder))
    check_environment(config)
    files = RunFolder(folder)
    with RunLock(folder, "finetune"):
        if files.config.exists():  # unset auto keys resume as they began
            config = config.adopt(files.saved_config())
        files.check_resume(config, device_for(config.device).type)
        images, data_cfg = load_images(config)
        seed = config.seeds[0]
        events.on_seed_start(seed, folder)
        split = prepare_split(config, seed, SeedFolder(folder), images, events)
        decided = config.for_data(learning_images(split), len(images.classes))
        bench = Workbench(decided, seed, images, split, data_cfg,
                          spill_dir=SeedFolder(folder).cache)
        try:
            summary = _train_one(config, train_spec, bench, files, images, data_cfg, events)
        finally:
            bench.close()
    return summary



def _train_one(config: RunConfig, train_spec: str, bench: Workbench, files: RunFolder, images,
               data_cfg, events: CallbackList) -> dict:
    """The one fine-tune of ``finetune``: its epochs in metrics.csv, its model, result.json and
    model.json."""
    seed = config.seeds[0]
    files.write_config(config, {**environment(config), "preprocessing": data_cfg.source})
    group = parse_train_spec(train_spec, bench.walk)
    epochs: list[dict] = []

    def on_epoch(epoch, loss, acc, seconds):
        epochs.append({"epoch": epoch, "train_loss": f"{loss:.6f}", "val_acc": f"{acc:.6f}",
                       "seconds": f"{seconds:.2f}"})
        atomic_write_csv(files.metrics, epochs, list(epochs[0]))
        events.on_epoch(epoch, loss, acc, seconds)

    outcome = bench.fit_final(group, on_epoch, None)
    result, test_acc = outcome.result, outcome.test_acc
    if outcome.state is not None:
        atomic_save_safetensors(files.weights, outcome.state, {"model": config.model})
    if result.status != "ok":
        raise BlocktuneError(f"training failed ({result.error}): lower --lr or check the data")
    summary = {"train": train_spec, "layers": len(bench.walk.layers) if group is None
               else len(group), **result.to_dict(), "val_acc": result.best_val_acc,
               "test_acc": test_acc}
    atomic_write_json(files.result, summary)
    atomic_write_json(files.model_json, model_record(
        config, images, data_cfg, bench.weights_source, train_spec,
        {"seed": seed, "trained": train_spec, "trained_params": result.trainable_params,
         "val_acc": result.best_val_acc, "test_acc": test_acc}))
    return summary
