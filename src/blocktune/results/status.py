"""``blocktune status`` and the run's failure line: what a run folder has done and what is
left, read from its files alone."""

from __future__ import annotations

import functools
from pathlib import Path

from blocktune.core.config import RunConfig
from blocktune.core.errors import BlocktuneError
from blocktune.core.methods import (
    BASELINE_I,
    BASELINE_II,
    FIXED_CHOICES,
    WHOLE_MODEL,
    cv_folds_of,
    final_group,
    indices_text,
    label,
    trained_recipes,
)
from blocktune.core.records import CandidateRow
from blocktune.data import learning_images, read_splits
from blocktune.models.build import packaged_source
from blocktune.models.groups import Candidate, StrategyOptions
from blocktune.models.layers import ModelWalk
from blocktune.protocol.plan import (
    SearchSettings,
    progress,
    search_settings,
    strategy_candidates,
    strategy_options,
)
from blocktune.results.runfolder import RunFolder, owner


def failures(folder: str | Path, seeds: list[int]) -> str | None:
    """One line on the search candidates and finals of a run that failed, or None."""
    failed: list[tuple[int, str, str]] = []
    for seed in seeds:
        seed_files = RunFolder(folder).seed(seed)
        failed += [(seed, f"{label(r.strategy)} #{r.index}", r.error)
                   for r in seed_files.read_candidates() if r.status == "failed"]
        failed += [(seed, f"the {label(r.method)} final", r.error)
                   for r in seed_files.read_finals() if r.status != "ok"]
        failed += [(seed, f"the {label(r.method)} final on every learning image", r.error)
                   for r in seed_files.read_learning_finals() if r.status != "ok"]
        failed += [(seed, f"{label(r.method)}'s fold {r.fold}", r.error)
                   for r in seed_files.read_cv() if r.status != "ok"]
    if not failed:
        return None
    seed, what, error = failed[0]
    error = error or "no error recorded"
    return (f"{len(failed)} trial(s) failed (first: seed {seed}, {what}: {error}); the rest "
            "of the run is saved: run the same command to retry them (finished work is kept); "
            "if they fail again, see the status and error columns of "
            f"{RunFolder(folder).seed(seed).root}'s CSVs: a cause in the settings (e.g. too high "
            "an --lr) needs a run with other settings, in another --out")




def _planned(model_walk: ModelWalk, options: StrategyOptions, settings: SearchSettings,
             strategy: str, rows: list[CandidateRow]) -> list[tuple[str, Candidate]]:
    return strategy_candidates(model_walk, strategy, options, rows, settings)


def _chooser(config: RunConfig) -> str:
    """How the run's recommendation is chosen, as its config says (before any choice)."""
    if config.choose_on:
        return (f"`{config.choose_by or 'auto'}` on the deployment domain {config.choose_on} "
                "(--choose-on)")
    if config.choose_by is None:
        return "`auto` (the protocol's method, LP-FT, when it is a final; else val)"
    if cv_folds_of(config.choose_by) is not None:
        return f"`{config.choose_by}` on the learning images' folds"
    if config.choose_by in FIXED_CHOICES:
        return f"`{config.choose_by}` (always that method)"
    return f"`{config.choose_by}` on val"


def run_status(folder: str | Path) -> list[str]:
    """What a run folder has done and what is left, per seed, from its files (the model is
    built with random weights only to list the planned candidates)."""

    from blocktune.models.build import build_model
    from blocktune.models.layers import walk

    folder = Path(folder)
    files = RunFolder(folder)
    if files.is_run() and owner(folder) == "finetune":
        return _finetune_status(folder, files)
    if not files.is_run():
        raise BlocktuneError(f"{folder} is not a run folder (no {files.config.name}): pass the "
                             "--out folder of a blocktune run")
    saved = files.saved_config()
    given = RunConfig.from_dict(saved)  # its data and weights need not exist here
    chooser = _chooser(given)
    config = given
    lines = [f"{folder}: {config.model}, strategies {', '.join(config.strategies)}, seeds "
             f"{', '.join(map(str, config.seeds))}; the recommendation chosen by {chooser}"]
    model = None
    for seed in config.seeds:
        seed_files = files.seed(seed)
        if not seed_files.splits.exists():
            lines.append(f"seed {seed}: not started")
            continue
        saved_split = read_splits(seed_files.splits)
        # the auto keys as the run decided them, from the same split
        # (each seed's from the config as given: seeds of other sizes decide differently)
        config = given.for_data(learning_images(saved_split["files"]),
                                len(saved_split["classes"]))
        if model is None:
            classes = saved_split["classes"]
            packaged = packaged_source(config.model)
            model, _ = build_model(config.model, len(classes), config.head, config.image_size,
                                   pretrained=False,
                                   model_args=packaged.model_kwargs if packaged else None)
            model_walk = walk(model.body, input_size=(3, config.image_size, config.image_size))
        rows = seed_files.read_candidates()
        settings = search_settings(config, seed)
        planned = functools.partial(_planned, model_walk, strategy_options(config, 
            seed, model.body), settings)
        parts = [f"{done} of {total} {method if method == 'baselines' else label(method)}"
                 for method, done, total in progress(settings, rows, planned)]
        finals = [r for r in seed_files.read_finals() if r.status == "ok"]
        picks = list(dict.fromkeys(
            m for strategy in config.strategies for m, _ in planned(strategy, rows)))
        methods = ([BASELINE_I, BASELINE_II] if config.baselines else []) \
            + (picks if config.pick_finals else []) + trained_recipes(config.methods, bool(picks))
        # a pick's final made under another rule (--select changed on resume) is redone or
        # relabelled once the search is finished: not done yet
        other_rule = {r.method: r.select for r in finals if r.select
                      and r.select != config.select and r.method not in WHOLE_MODEL}
        finals = [r for r in finals if r.method not in other_rule]
        left = [label(m) + (f" (its final is `{other_rule[m]}`'s pick)" if m in other_rule
                            else "")
                for m in methods if m not in {r.method for r in finals}]
        folds = cv_folds_of(config.choose_by)
        cv = ""
        if folds is not None:  # the cross-validated choice: one row per method and fold
            # rows of a group a method no longer has (its pick changed) are no folds of it
            groups = {r.method: indices_text(final_group(r)) for r in finals}
            done = {(r.method, r.fold) for r in seed_files.read_cv() if r.status == "ok"
                    and groups.get(r.method) == r.layer_indices} \
                if seed_files.cv.exists() else set()
            again = [label(r.method) for r in seed_files.read_learning_finals()
                     if r.status == "ok"]
            cv = (f"; {config.choose_by} folds {len(done)} of {len(methods) * folds} done; "
                  f"trained again on every learning image: {', '.join(again) or 'none yet'}")
        lines.append(f"seed {seed}: search {'; '.join(parts)}; finals {len(finals)} of "
                     f"{len(methods)} done" + (f" (left: {', '.join(left)})" if left else "")
                     + cv)
    lines.append(f"{files.weights.name}: "
                 + ("saved" if files.weights.exists() else "not yet saved"))
    return lines


def _finetune_status(folder: Path, files: RunFolder) -> list[str]:
    """A ``finetune`` folder: what it trained and how far it got."""
    from blocktune.core.io import read_csv, read_json

    config = files.saved_config()
    lines = [f"{folder}: a finetune of {config['model']}"]
    if files.result.exists():
        result = read_json(files.result)
        lines.append(f"trained {result.get('train')}: val {float(result['val_acc']):.3f}, "
                     f"test {float(result['test_acc']):.3f}, {result.get('epochs')} epochs")
    else:
        epochs = len(read_csv(files.metrics))
        lines.append(f"not finished: {epochs} epoch(s) recorded; the same command resumes")
    lines.append(f"{files.weights.name}: " + ("saved" if files.weights.exists()
                                             else "not yet saved"))
    return lines
