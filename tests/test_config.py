"""The one typed config: every key of the wrong type or out of range, by flag and by YAML, gives
exit 2 and one line naming the key; flags, help and resume keys come from the fields."""

import dataclasses
import typing

import pytest
import yaml

from blocktune.cli import build_parser, main
from blocktune.core.config import RunConfig, differing_keys, resume_keys
from blocktune.core.errors import BlocktuneError

FIELDS = dataclasses.fields(RunConfig)
HINTS = typing.get_type_hints(RunConfig)

# Text keys whose wrong values are not a matter of type or choices: what each must refuse.
BAD_TEXT = {"model": "not_a_model_xyz", "data": "/no/such/folder", "weights": "/no/such.pth",
            "trial_resources": "many", "ray_address": "not an address", "device": "tpu",
            "choose_by": "cv1", "executor": "nonsense", "choose_on": "/no/such/target"}


def _base(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, type(int | None)) else hint


def wrong_type(f, by_flag: bool):
    """A value of the wrong type for ``f``, as a flag's text or a YAML value."""
    hint = _base(HINTS[f.name])
    origin = typing.get_origin(hint)
    if origin is dict:
        return "search" if by_flag else ["search"]
    if origin is list:
        inner = typing.get_args(hint)[0]
        if inner is int:
            return "one,two" if by_flag else ["one"]
        return "nonsense" if by_flag else {"a": 1}  # names: unknown by flag, a mapping by YAML
    if hint is bool:
        return "maybe"
    if hint is int:
        return "five"
    if hint is float:
        return "fast"
    if f.metadata["choices"]:
        return "nonsense" if by_flag else [1, 2]
    return BAD_TEXT[f.name] if by_flag else [1, 2]


def shaped(f, value):
    """``value`` in the shape of ``f``: the search fraction of a split, a one-item list, or
    as it is."""
    hint = _base(HINTS[f.name])
    if typing.get_origin(hint) is dict:
        return {"search": value, "val": 0.1, "train": 0.6, "test": 0.2}
    if typing.get_origin(hint) is list:
        return [value]
    return value


def out_of_range(f):
    low, above = f.metadata["low"], f.metadata["above"]
    if low is None and above is None:
        return None
    return shaped(f, (low - 1) if low is not None else above)


def one_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert err.startswith("blocktune: error: ") and "\n" not in err and "Traceback" not in err
    return err


def as_flag_value(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_every_key_of_the_wrong_type_gives_one_line(f, tmp_path, capsys):
    flag = "--" + f.name.replace("_", "-")
    value = wrong_type(f, by_flag=True)
    argv = ["run", "--out", str(tmp_path / "o"), f"{flag}={value}"]
    err = one_line(capsys, argv)
    assert f.name in err or flag in err or value in err, err
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({f.name: wrong_type(f, by_flag=False)}))
    err = one_line(capsys, ["run", "--out", str(tmp_path / "o"), "--config",
                            str(tmp_path / "c.yaml")])
    assert f.name in err or "does not exist" in err or "model" in err, err


@pytest.mark.parametrize("f", [f for f in FIELDS if out_of_range(f) is not None],
                         ids=[f.name for f in FIELDS if out_of_range(f) is not None])
def test_every_key_out_of_range_gives_one_line(f, tmp_path, capsys):
    value = out_of_range(f)
    flag = "--" + f.name.replace("_", "-")
    err = one_line(capsys, ["run", "--out", str(tmp_path / "o"), flag, as_flag_value(value)])
    assert f"{f.name} = " in err and "is out of range" in err, err
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({f.name: value}))
    err = one_line(capsys, ["run", "--out", str(tmp_path / "o"), "--config",
                            str(tmp_path / "c.yaml")])
    assert f"{f.name} = " in err and "is out of range" in err, err


def _holds_floats(f) -> bool:
    hint = _base(HINTS[f.name])
    return hint is float or float in typing.get_args(hint)


FLOAT_FIELDS = [f for f in FIELDS if _holds_floats(f)]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("f", FLOAT_FIELDS, ids=[f.name for f in FLOAT_FIELDS])
def test_every_float_key_refuses_nan_and_infinity(f, text, tmp_path, capsys):
    # NaN passes `v < low` checks: --lr nan once trained NaN weights and exited 0
    flag = "--" + f.name.replace("_", "-")
    err = one_line(capsys, ["run", "--out", str(tmp_path / "o"),
                            f"{flag}={as_flag_value(shaped(f, text))}"])
    assert f"{f.name} = " in err and "finite" in err, err
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({f.name: shaped(f, float(text))}))
    err = one_line(capsys, ["run", "--out", str(tmp_path / "o"), "--config",
                            str(tmp_path / "c.yaml")])
    assert f"{f.name} = " in err and "finite" in err, err


@pytest.mark.parametrize("values, message", [
    (dict(seeds=[0, 0]), "seed 0 is given twice"),
    (dict(fractions={"search": 0.2, "val": 0.0, "train": 0.6, "test": 0.2}), "val"),
    (dict(batch_size=1), "batch_size = 1 is out of range"),
], ids=["repeated-seed", "empty-split", "batch-of-one"])
def test_values_that_would_mean_something_else_are_refused(values, message):
    with pytest.raises(BlocktuneError, match=message):
        RunConfig(**values)


def test_every_key_has_a_flag_with_its_help():
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.values()
               if a.prog.endswith(" run"))
    by_dest = {a.dest: a for a in run._actions}
    for f in FIELDS:
        assert f.name in by_dest, f.name
        assert f.metadata["help"] and by_dest[f.name].help.startswith(f.metadata["help"])


def test_flags_and_yaml_are_converted_alike(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("seeds: 3\nimage_size: '64'\nfractions: {search: 0.2, "
                                     "val: 0.1, train: 0.5, test: 0.2}\n")
    assert main(["run", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "c.yaml"),
                 "--strategy", "block,window", "--no-cache", "--lr", "2e-3",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seeds"] == [3] and printed["image_size"] == 64
    assert printed["strategies"] == ["block", "window"] and printed["cache"] is False
    assert printed["lr"] == 0.002 and printed["fractions"]["search"] == 0.2
    assert RunConfig(**printed) == RunConfig.from_dict(printed)  # what it prints loads back


def test_resume_keys_come_from_the_fields():
    keys = resume_keys()
    assert {"model", "epochs", "lr", "fold_norms", "paper_settings"} <= set(keys)
    assert not {"select", "seeds", "executor", "time_budget", "cache_max_gb"} & set(keys)
    saved = RunConfig().to_dict()
    assert differing_keys(saved, RunConfig(epochs=7, select="two-fold")) == ["epochs"]


def test_paper_settings_records_the_values_used():
    config = RunConfig(paper_settings=True)
    assert (config.epochs, config.final_epochs, config.batch_size, config.lr) == (50, 50, 4, 1e-4)
    assert config.search_training().epochs == 50 and config.final_training().batch_size == 4
    with pytest.raises(BlocktuneError, match="^epochs = 7 conflicts with paper_settings"):
        RunConfig(paper_settings=True, epochs=7)


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("blocktune 0.")
