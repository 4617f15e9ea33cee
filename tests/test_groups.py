import pytest
import timm

from blocktune.core.errors import BlocktuneError
from blocktune.models.build import build_body
from blocktune.models.groups import StrategyOptions, candidates, describe, in_last_quarter
from blocktune.models.layers import walk


def groups_of(w, strategy, **options):
    return [c.layers for c in candidates(w, strategy, StrategyOptions(**options))]


@pytest.fixture
def vgg_walk(vgg_like):
    return walk(vgg_like, input_size=(3, 16, 16))


@pytest.fixture
def mobile_walk(mobilenet_like):
    return walk(mobilenet_like, input_size=(3, 16, 16))


@pytest.fixture
def res_walk(resnet_like):
    return walk(resnet_like, input_size=(3, 16, 16))


def test_vgg_like_every_strategy(vgg_walk):
    w = vgg_walk
    assert groups_of(w, "layer") == [(2,), (1,), (0,)]
    assert groups_of(w, "block") == [(2,), (1,), (0,)]
    assert groups_of(w, "block", delimiters=("pool",)) == [(2,), (0, 1)]
    assert groups_of(w, "window") == [(0, 1, 2)]
    assert groups_of(w, "window", window=2) == [(1, 2), (0, 1)]
    assert groups_of(w, "quarter", delimiters=("pool",)) == [(2,)]
    assert groups_of(w, "random", k=2, seed=0) == groups_of(w, "random", k=2, seed=0)
    assert groups_of(w, "ranked", k=2, layer_scores={0: 0.5, 1: 0.9, 2: 0.7}) == [(1, 2)]


def test_mobilenet_like_every_strategy(mobile_walk):
    w = mobile_walk
    assert groups_of(w, "layer") == [(i,) for i in range(7, -1, -1)]
    assert groups_of(w, "block") == [(6, 7), (4, 5), (2, 3), (0, 1)]
    assert groups_of(w, "block", delimiters=("residual",)) == [tuple(range(8))]
    assert groups_of(w, "window") == [(5, 6, 7), (4, 5, 6), (3, 4, 5), (2, 3, 4), (1, 2, 3),
                                      (0, 1, 2)]
    assert groups_of(w, "window", window=3, stride=2) == [(5, 6, 7), (4, 5, 6), (2, 3, 4),
                                                          (0, 1, 2)]
    assert groups_of(w, "block", quarter=True) == [(6, 7)]
    assert groups_of(w, "layer", quarter=True) == [(7,), (6,)]
    [drawn] = groups_of(w, "random", k=3, seed=1)
    assert len(drawn) == 3 and list(drawn) == sorted(drawn)


def test_resnet_like_every_strategy(res_walk):
    w = res_walk
    assert groups_of(w, "block") == [(3, 4), (1, 2), (0,)]
    assert groups_of(w, "block", delimiters=("pool",)) == [(1, 2, 3, 4), (0,)]
    assert groups_of(w, "window") == [(2, 3, 4), (1, 2, 3), (0, 1, 2)]
    assert groups_of(w, "layer") == [(4,), (3,), (2,), (1,), (0,)]


def test_ranked_ties_go_to_fewer_parameters(vgg_walk):
    # layers 0 and 2 tie; layer 0 has fewer parameters (112 vs 296)
    assert groups_of(vgg_walk, "ranked", k=1, layer_scores={0: 0.8, 1: 0.1, 2: 0.8}) == [(0,)]


def test_ranked_needs_a_layer_search(vgg_walk):
    with pytest.raises(BlocktuneError, match="finished 'layer' search"):
        candidates(vgg_walk, "ranked")


def test_random_depends_on_seed(mobile_walk):
    draws = {groups_of(mobile_walk, "random", k=3, seed=s)[0] for s in range(10)}
    assert len(draws) > 1


def test_native_needs_group_matcher(vgg_walk, vgg_like):
    with pytest.raises(BlocktuneError, match="group_matcher"):
        candidates(vgg_walk, "native", StrategyOptions(model=vgg_like))


def test_unknown_strategy_and_delimiter(vgg_walk):
    with pytest.raises(BlocktuneError, match="unknown strategy"):
        candidates(vgg_walk, "blocks")
    with pytest.raises(BlocktuneError, match="unknown delimiter"):
        StrategyOptions(delimiters=("pooling",))


def test_describe_compacts_runs(mobile_walk):
    assert describe(mobile_walk, (2, 3, 4)) == "block.conv_pw … block.conv_dw (3 layers)"
    assert describe(mobile_walk, (0, 7)) == "stem, block.bn3"


@pytest.fixture(scope="module")
def timm_walks():
    out = {}
    for name in ["vgg16", "mobilenetv2_100", "resnet50", "tf_efficientnet_lite0",
                 "mobilenetv3_small_100"]:
        body = build_body(timm.create_model(name), "linear")
        out[name] = (walk(body, input_size=(3, 64, 64)), body)
    return out


@pytest.mark.parametrize("name, layers, blocks, native_fine, native_coarse", [
    ("vgg16", 13, 13, 13, 13),
    ("mobilenetv2_100", 104, 35, 18, 8),
    ("resnet50", 106, 49, 17, 5),
    ("tf_efficientnet_lite0", 98, 33, 17, 8),
    ("mobilenetv3_small_100", 86, 41, 13, 7),
])
def test_real_timm_groups(timm_walks, name, layers, blocks, native_fine, native_coarse):
    w, body = timm_walks[name]
    assert len(w.layers) == layers
    assert len(groups_of(w, "block")) == blocks
    windows = groups_of(w, "window")
    assert len(windows) == layers - 2
    assert set().union(*map(set, windows)) == set(range(layers))  # every layer in a window
    assert len(groups_of(w, "native", model=body)) == native_fine
    assert len(groups_of(w, "native", model=body, native="coarse")) == native_coarse
    for group in groups_of(w, "block", quarter=True):
        assert in_last_quarter(group, layers)


def test_vgg16_pool_blocks_are_the_five_conv_blocks(timm_walks):
    w, _ = timm_walks["vgg16"]
    blocks = [w.names(g) for g in groups_of(w, "block", delimiters=("pool",))][::-1]
    feature = [[int(n.split(".")[-1]) for n in names] for names in blocks]
    assert feature == [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet50", "mobilenetv3_small_100"])
@pytest.mark.parametrize("coarse", [False, True])
def test_native_groups_are_timms_group_with_matcher(timm_walks, name, coarse):
    """Each native group is exactly one of timm's groups (its parameters that the body runs);
    efficientnet's conv_head/bn2 carry MATCH_PREV_GROUP and join the last block."""
    from timm.models._manipulate import group_with_matcher

    w, body = timm_walks[name]
    model = body.model
    timm_groups = group_with_matcher(model.named_parameters(), model.group_matcher(coarse))
    walked = {n for layer in w.layers for n, _ in model.get_submodule(
        layer.name.removeprefix("model.")).named_parameters(prefix=layer.name.removeprefix(
            "model."))}
    expected = [set(names) & walked for names in timm_groups.values()]
    expected = [g for g in expected if g]
    ours = []
    for group in groups_of(w, "native", model=body, native="coarse" if coarse else "fine"):
        ours.append({n for i in group for n, _ in model.get_submodule(
            w.layers[i].name.removeprefix("model.")).named_parameters(
                prefix=w.layers[i].name.removeprefix("model."))})
    assert sorted(map(sorted, ours)) == sorted(map(sorted, expected))
    if name == "tf_efficientnet_lite0" and not coarse:
        last = max(groups_of(w, "native", model=body), key=max)
        assert {"model.conv_head", "model.bn2", "model.blocks.6.0.conv_pwl"} <= set(w.names(last))


def test_resnet50_native_coarse_is_stem_and_four_stages(timm_walks):
    w, body = timm_walks["resnet50"]
    groups = groups_of(w, "native", model=body, native="coarse")[::-1]
    assert w.names(groups[0]) == ["model.conv1", "model.bn1"]
    assert [w.names(g)[0].split(".")[1] for g in groups[1:]] == ["layer1", "layer2", "layer3",
                                                                 "layer4"]


def lite0_walk():
    from blocktune.models.build import build_model

    model, _ = build_model("tf_efficientnet_lite0", 5, "linear", 64, pretrained=False)
    return model, walk(model.body, input_size=(3, 64, 64))


def test_top_runs_from_each_timm_stage_to_the_output_on_lite0():
    # lite0's 98 layers: the stem (0-1), blocks.0 (2-5), blocks.1 (6-17), blocks.2 (18-29),
    # blocks.3 (30-47), blocks.4 (48-65), blocks.5 (66-89), blocks.6 and the head conv (90-97)
    model, w = lite0_walk()
    groups = groups_of(w, "top", model=model.body)
    assert [g[0] for g in groups] == [90, 66, 48, 30, 18, 6, 2]
    assert all(g == tuple(range(g[0], 98)) for g in groups)
    assert w.names([2])[0].startswith("model.blocks.0.") and w.names([90])[0].startswith("model.blocks.6.")
    assert w.names([89])[0].startswith("model.blocks.5.")
    # every stage start but the stem's: from the stem on is all layers, Baseline II
    assert groups_of(w, "top", model=model.body)[-1] != tuple(range(98))


def test_a_rule_that_picks_from_part_of_the_model_has_only_that_part_planned():
    from blocktune.models.groups import last_quarter_start

    model, w = lite0_walk()
    every = groups_of(w, "block")
    planned = groups_of(w, "block", picks_from=last_quarter_start)
    assert len(every) == 33 and len(planned) == 8
    assert planned == [g for g in every if in_last_quarter(g, len(w.layers))]
    assert min(min(g) for g in planned) >= 74
    # ranked and random are one group each, controls: the region does not touch them
    assert groups_of(w, "random", k=3, seed=1, picks_from=last_quarter_start) == \
        groups_of(w, "random", k=3, seed=1)
