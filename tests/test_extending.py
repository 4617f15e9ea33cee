"""What docs/extending.md shows: a strategy, a selection rule and an executor, each one
registered class or function through the public API, and a run that uses all three."""

import pytest

from blocktune import api
from blocktune.core.io import read_csv
from blocktune.executors.local import LocalExecutor
from blocktune.results.runfolder import RunFolder

from .conftest import make_image_folder
from .test_search import tiny_config


@pytest.fixture
def toys():
    """A toy of each kind, registered for one test and removed after it."""
    seen = {"trials": 0, "closed": 0}

    @api.register_strategy("pairs")
    def pairs(walk, options):
        """Consecutive pairs of layers from the output end."""
        last = len(walk.layers) - 1
        return [(i - 1, i) for i in range(last, 0, -2)]

    @api.register_rule("fewest-params", "the candidate with the fewest trained parameters")
    def fewest(view):
        return min(view.rows, key=lambda r: (r.trained_params, r.index), default=None)

    class Counting(LocalExecutor):
        name = "counting"

        def search(self, trials, *args, **kwargs):
            seen["trials"] += len(trials)
            yield from super().search(trials, *args, **kwargs)

        def close(self):
            seen["closed"] += 1

    api.register_executor("counting", "the local executor, counting its trials",
                          lambda config, bench, folder: Counting(bench))
    yield seen
    for registry, name in ((api.STRATEGIES, "pairs"), (api.RULES, "fewest-params"),
                           (api.EXECUTORS, "counting")):
        registry.pop(name)


def test_a_toy_strategy_rule_and_executor_run_the_whole_protocol(toys, tmp_path):
    data = make_image_folder(tmp_path / "images", per_class=12)
    out = tmp_path / "run"
    api.run(tiny_config(data, strategies=["pairs"], select="fewest-params", executor="counting",
                        max_candidates=3), out)
    rows = read_csv(out / "seed_0" / "candidates.csv")
    pairs = [r for r in rows if r["strategy"] == "pairs"]
    assert len(pairs) == 3 and all(len(r["layer_indices"].split(",")) == 2 for r in pairs)
    assert toys["trials"] == len(rows) and toys["closed"] == 1  # every trial, closed once
    choice = RunFolder(out).seed(0).read_choices()["pairs"]
    fewest = min(pairs, key=lambda r: (int(r["trained_params"]), int(r["index"])))
    assert choice["rule"] == "fewest-params" and choice["layer_indices"] == fewest["layer_indices"]
    finals = {r["method"]: r for r in read_csv(out / "seed_0" / "finals.csv")}
    assert finals["pairs"]["layer_indices"] == fewest["layer_indices"]
