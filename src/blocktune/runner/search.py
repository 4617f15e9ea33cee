"""The driver of the protocol (docs/method.md): check the inputs, decode the data once, then
each seed — search, fine-tune, choose, test once — through the steps of
:mod:`blocktune.runner.seedrun`, and publish the recommendation.

Everything a run finishes is on disk the moment it finishes, written atomically into the run
folder (:mod:`blocktune.results.runfolder` owns its layout). Running the same command on the same
folder skips what is finished and gives the same tables.
"""

from __future__ import annotations

from pathlib import Path

from blocktune.core.callbacks import Callback, CallbackList
from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.data.store import copies_of, load_test_domains
from blocktune.data.target import changed_files, load_target
from blocktune.loggers.tensorboard import loggers
from blocktune.results.publish import publish_model
from blocktune.results.runfolder import RunFolder, RunLock, summarize
from blocktune.runner.context import check_executor, open_seed
from blocktune.runner.seedrun import run_seed
from blocktune.training.loading import check_environment, environment, load_images
from blocktune.training.train import device_for

__all__ = ["check_executor", "run"]


def run(config: RunConfig, folder: str | Path,
        callbacks: Callback | list[Callback] | None = None, force_new: bool = False
        ) -> list[dict]:
    """The whole protocol for every seed; resumable. Returns the summary rows.

    ``callbacks`` (:class:`blocktune.core.callbacks.Callback`) hear every phase, row and final as
    it is recorded."""
    folder = Path(folder)
    files = RunFolder(folder)
    check_environment(config)
    callbacks = CallbackList(callbacks).extended(*loggers(config.log, folder))
    with RunLock(folder, "run"):
        if files.config.exists() and not force_new:  # unset auto keys resume as they began
            config = config.adopt(files.saved_config())
        files.check_resume(config, device_for(config.device).type, force_new)
        check_executor(config)
        images, data_cfg = load_images(config)
        domains, domain_notes = load_test_domains(
            config.test_data, images.classes, config.image_size, data_cfg.interpolation,
            config.strict)
        if force_new:
            files.clear_results()
        if config.choose_on:
            parts, notes, record = load_target(config.choose_on, images.classes,
                                               config.image_size, data_cfg.interpolation,
                                               config.strict, config.seeds[0])
            saved = files.read_choose_on()
            if saved is not None and (changed := changed_files(saved, record)):
                raise BlocktuneError(
                    f"the --choose-on folder {config.choose_on} changed since this run chose on "
                    f"it ({len(changed)} file(s) added, removed, moved or edited, e.g. "
                    f"{changed[0]}): restore it, use another --out, or --force-new")
            files.write_choose_on(record)
            domains, domain_notes = [*domains, *parts], [*domain_notes, *notes]
        for domain in domains:  # a test folder holding the data's own images is no other domain
            if copies := copies_of(domain, images):
                message = (f"{len(copies)} of the {len(domain.files)} images of test folder "
                           f"{domain.name} are exact copies of --data images (e.g. {copies[0][0]} "
                           f"= {copies[0][1]}): scored there, they say how the model does on "
                           "what it may have learnt from, not on another domain")
                if config.strict:
                    raise BlocktuneError(f"{message}: remove them, or drop --strict")
                domain_notes = [*domain_notes, message + "; --strict refuses them"]
        if domains and (changed := files.changed_test_domains(domains)):
            raise BlocktuneError(
                f"test folder {changed[0]} changed since this run scored it (files added, "
                "removed, moved between classes or edited): its recorded predictions no longer "
                "match its labels; restore it, use another --out, or --force-new")
        if domains:
            files.write_test_domains(domains)
        for seed in config.seeds:
            seed_run = open_seed(config, seed, files.seed(seed).root, images, data_cfg, callbacks,
                               domains=domains)
            if seed == config.seeds[0]:
                for note in domain_notes:
                    seed_run.events.on_notice(note)
            if seed == config.seeds[0]:
                files.write_config(config, {**environment(config),
                                            "preprocessing": data_cfg.source})
            try:  # the executor and the spilled cache go with the seed, however it ends
                done = run_seed(seed_run)
            finally:
                seed_run.close()
            if done is not None and seed == config.seeds[0]:
                best, weights = done
                publish_model(folder, seed_run.config, seed, best, weights, images, data_cfg,
                              seed_run.bench.weights_source)
        summary = summarize(folder, config.seeds)
    return summary
