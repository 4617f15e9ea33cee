"""The plan: pure functions from (model walk, config, finished rows) to the trials still to run.

Nothing here trains, reads files or touches tensors, so the whole protocol's bookkeeping —
resume, ranked-after-layer, twins, ``--max-candidates``, ``--quarter``, the baselines in the
search, successive halving's rungs, the finals — is unit-tested without training anything.

The search is planned in *waves*: :func:`search_wave` returns the next set of trials whose
inputs are all known (every trial of a wave can run at the same time, on any executor); the
driver runs them, records their rows, and asks again until the wave is empty. A wave is the
missing baselines plus the current rung of the first strategy not finished, so rows arrive in
the same order as a one-by-one search: baselines, then each strategy in turn, rung by rung.
``ranked`` needs the finished ``layer`` rows, so it is planned only once they exist; a pruned
strategy's next rung needs the rows of the rung before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from blocktune.core.config import RunConfig
from blocktune.core.methods import (
    BASELINE_I,
    BASELINE_II,
    final_group,
    indices_text,
    recipe_of,
)
from blocktune.core.records import CandidateRow, FinalRow, rank_key
from blocktune.core.trials import PRUNE_ETA, FinalTrial, Trial, rungs
from blocktune.models.groups import Candidate, StrategyOptions, candidates
from blocktune.models.layers import ModelWalk
from blocktune.protocol.select import get_rule


def search_settings(config: RunConfig, seed: int) -> SearchSettings:
    """What the search plan reads of ``config``, for one seed."""
    return SearchSettings(tuple(config.strategies), config.search_training(seed).epochs,
                          baselines=config.baselines,
                          baseline_ii=config.search_baseline_ii is not False,
                          prune=config.prune, prune_grace=config.prune_grace,
                          max_candidates=config.max_candidates, ranked_k=tuple(config.ranked_k))


def strategy_options(config: RunConfig, seed: int, body) -> StrategyOptions:
    """What the grouping strategies read of ``config``, for one seed and model body."""
    return StrategyOptions(delimiters=tuple(config.delimiters), window=config.window,
                           stride=config.stride, k=config.random_k, seed=seed,
                           native=config.native, quarter=config.quarter, model=body,
                           picks_from=None if config.search_all
                           else get_rule(config.select).picks_from)


@dataclass(frozen=True)
class SearchSettings:
    """The part of the run's config the search plan depends on."""

    strategies: tuple[str, ...]
    epochs: int
    baselines: bool = True
    baseline_ii: bool = True  # Baseline II in the search too (a reference line; no rule reads it)
    prune: bool = False
    prune_grace: int = 1
    max_candidates: int | None = None
    ranked_k: tuple[int, ...] = (3, 5)

    @property
    def searched_baselines(self) -> tuple[tuple[str, tuple[int, ...] | None], ...]:
        """(method, group) of the baselines the search trains."""
        if not self.baselines:
            return ()
        return ((BASELINE_I, ()),) + (((BASELINE_II, None),) if self.baseline_ii else ())

    @property
    def ladder(self) -> list[int]:
        return rungs(self.epochs, grace=self.prune_grace) if self.prune else [self.epochs]


def strategy_candidates(walk: ModelWalk, strategy: str, options: StrategyOptions,
                        rows: Sequence[CandidateRow], settings: SearchSettings
                        ) -> list[tuple[str, Candidate]]:
    """(method, candidate) pairs of a strategy in search order; ``ranked`` expands to one
    method per k, from the finished ``layer`` rows; ``--max-candidates`` applied."""
    if strategy != "ranked":
        planned = [(strategy, c) for c in candidates(walk, strategy, options)]
    else:
        scores = {int(r.layer_indices): r.ranking_score for r in rows
                  if r.strategy == "layer" and r.status == "ok"}
        planned = []
        for k in settings.ranked_k:
            ranked_options = StrategyOptions(**{**options.__dict__, "layer_scores": scores,
                                                "k": k})
            for c in candidates(walk, "ranked", ranked_options):
                planned.append((f"ranked-{k}", Candidate(f"ranked-{k}", c.index, c.layers)))
    if settings.max_candidates is not None:
        planned = planned[:settings.max_candidates]
    return planned


def survivors(planned: list[tuple[str, Candidate]], rows: Sequence[CandidateRow], rung: int
              ) -> list[tuple[str, Candidate]]:
    """The best third (at least one) of a rung's candidates by the one ranking of
    :func:`blocktune.core.records.rank_key`; failed candidates never go on."""
    done = {r.key: r for r in rows}
    scored = [(done[(m, indices_text(c.layers), str(rung))], (m, c)) for m, c in planned
              if (m, indices_text(c.layers), str(rung)) in done]
    scored = [(r, mc) for r, mc in scored if r.status == "rung"]
    scored.sort(key=lambda item: rank_key(item[0]))
    return [mc for _, mc in scored[:max(1, math.ceil(len(scored) / PRUNE_ETA))]]


def _trained_twin(rows: Sequence[CandidateRow], indices: str, rung_epochs: int
                  ) -> CandidateRow | None:
    """A row that trained this group for this many epochs and did not fail (not a copy)."""
    for row in rows:
        if row.layer_indices == indices and row.rung == rung_epochs \
                and row.status in ("ok", "rung") and not row.same_as:
            return row
    return None


CandidatesOf = Callable[[str, Sequence[CandidateRow]], list[tuple[str, Candidate]]]


def search_wave(settings: SearchSettings, rows: Sequence[CandidateRow], candidates_of: CandidatesOf
                ) -> list[Trial]:
    """The next trials of the search, given the rows finished so far; [] when it is done.

    Args:
        candidates_of: (strategy, rows) → the strategy's (method, candidate) pairs in search
            order; :func:`strategy_candidates` over the model's walk.
    """
    done = {r.key for r in rows}
    wave: list[Trial] = []
    wave += [Trial(method, 0, group, settings.epochs)
             for method, group in settings.searched_baselines
             if (method, indices_text(group), str(settings.epochs)) not in done]
    ladder = settings.ladder
    for strategy in settings.strategies:
        planned = candidates_of(strategy, rows)
        for rung_index, rung in enumerate(ladder):
            final = rung_index == len(ladder) - 1
            todo = [(m, c) for m, c in planned if (m, indices_text(c.layers), str(rung))
                    not in done]
            if todo:
                return wave + _with_twins(todo, rows, rung, final,
                                          ladder[rung_index - 1] if rung_index else 0)
            if not final:
                planned = survivors(planned, rows, rung)
    return wave


def _with_twins(todo: list[tuple[str, Candidate]], rows: Sequence[CandidateRow], rung: int,
                final: bool,
                previous_rung: int) -> list[Trial]:
    """Trials of one rung; a group already trained this long becomes a copy, and a group two
    methods of this wave share is trained once: the second waits for the next wave."""
    out, training = [], set()
    for method, cand in todo:
        indices = indices_text(cand.layers)
        twin = _trained_twin(rows, indices, rung)
        if twin is not None:
            out.append(Trial(method, cand.index, cand.layers, rung, final, copy_of=twin.key))
        elif indices not in training:
            training.add(indices)
            out.append(Trial(method, cand.index, cand.layers, rung, final, previous_rung))
    return out


# -- the finals ------------------------------------------------------------------------------
def finals_plan(methods: Sequence[tuple[str, tuple[int, ...] | None, float]],
                finished: Sequence[FinalRow]) -> list[FinalTrial]:
    """The finals still to run, given ``(method, chosen group, search val)`` per method and the
    ``finals.csv`` rows. A method whose row trained another group (its choice changed on a
    resume) is run again; a group another method's final already trained is copied from it
    (the driver trains it instead when that final's weights are gone)."""
    out: list[FinalTrial] = []
    # the same group trained the same way is one fine-tune: keyed by group and recipe
    trained = {(indices_text(final_group(r)), recipe_of(r.method)): r.method for r in finished
               if r.status == "ok" and not r.same_as}
    for method, group, search_acc in methods:
        if any(r.method == method and final_group(r) == group for r in finished):
            continue
        key = (indices_text(group), recipe_of(method))
        source = trained.get(key) or next((t.method for t in out if (t.indices, t.recipe) == key
                                           and t.copy_of is None), None)
        out.append(FinalTrial(method, group, search_acc, copy_of=source))
    return out


def progress(settings: SearchSettings, rows: Sequence[CandidateRow], candidates_of: CandidatesOf
             ) -> list[tuple[str, int, int]]:
    """(method, finished, planned) for the baselines and every strategy's method, in search
    order. A candidate is finished when it has its final row, or, in a pruned search, when the
    method has gone on past the rung where it stopped."""
    out: list[tuple[str, int, int]] = []
    if settings.baselines:
        planned = {method for method, _ in settings.searched_baselines}
        done = {r.strategy for r in rows if r.strategy in planned and r.rung == settings.epochs}
        out += [("baselines", len(done), len(planned))]
    final = {(r.strategy, r.layer_indices) for r in rows if r.status != "rung"}
    reached: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r.strategy, r.layer_indices)
        reached[key] = max(reached.get(key, 0), r.rung)
    for strategy in settings.strategies:
        planned = candidates_of(strategy, rows)
        methods = list(dict.fromkeys(m for m, _ in planned)) or [strategy]
        for method in methods:
            mine = [indices_text(c.layers) for m, c in planned if m == method]
            top = max((reached[k] for k in reached if k[0] == method), default=0)
            finished = sum((method, i) in final or 0 < reached.get((method, i), 0) < top
                           for i in mine)
            out.append((method, finished, len(mine)))
    return out
