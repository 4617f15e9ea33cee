"""api.py: the functions the CLI is a layer over, on a timm name and on any module."""

import pytest

from blocktune import api
from blocktune.core.errors import BlocktuneError


def test_every_public_name_resolves():
    assert all(hasattr(api, name) for name in api.__all__)


def test_model_groups_on_any_module_gives_the_strategys_groups(vgg_like, tmp_path):
    result = api.model_groups(vgg_like, "block", image_size=16, delimiters="pool",
                              plot=str(tmp_path / "groups.png"))
    assert [c.layers for c in result["candidates"]] == [(2,), (0, 1)]
    assert result["num_layers"] == 3
    assert [r["index"] for r in result["rows"]] == [0, 1]
    assert sum(r["params"] for r in result["rows"]) == result["total_params"]
    assert (tmp_path / "groups.png").stat().st_size > 0


def test_model_groups_on_a_timm_name_walks_its_layers():
    result = api.model_groups("test_efficientnet", "top", image_size=32)
    tops = [c.layers for c in result["candidates"]]
    last = result["num_layers"] - 1
    assert all(t[-1] == last and t == tuple(range(t[0], last + 1)) for t in tops)
    # from each of timm's stages to the output; the stem's group would be Baseline II
    assert [t[0] for t in tops] == [20, 12, 8, 4, 2]
    assert [result["walk"].layers[t[0]].name for t in tops][-1] == "model.blocks.0.0.conv"


def test_ranked_groups_need_a_layer_search_and_say_how():
    with pytest.raises(BlocktuneError, match="blocktune run --strategy layer,ranked"):
        api.model_groups("test_efficientnet", "ranked")
