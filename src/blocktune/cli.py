"""``blocktune``: thin commands over the library. Errors print one line and exit with 2; a run
whose trials failed finishes what it can and exits with 1."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import sys
import time
from pathlib import Path

from blocktune.core.errors import BlocktuneError

# The embedded default: Google's packaged ImageNet weights on all 3,670 flower photos, the
# block strategy, sized for about 7 minutes on 2 CPU cores (see docs/results.md).
DEMO = {"model": "tf_efficientnet_lite0", "data": "tf_flowers", "strategies": ["block"],
        "image_size": 128, "epochs": 4, "final_epochs": 3}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"blocktune: error: {message} (see {self.prog} --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_fields(parser: argparse.ArgumentParser, names=None, defaults: dict | None = None,
                aliases: dict | None = None) -> None:
    """One flag per RunConfig field: its help from the field, its value checked by RunConfig
    (text in, one line out when wrong). Booleans get --x / --no-x."""
    from blocktune.core.config import RunConfig, field_help

    for f in dataclasses.fields(RunConfig):
        if names is not None and f.name not in names:
            continue
        flags = [_flag(f.name), *(aliases or {}).get(f.name, [])]
        help_text = field_help(f)
        if defaults and f.name in defaults:
            help_text += f" (here {defaults[f.name]})"
        if f.type in (bool, "bool", "bool | None"):
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(*flags, dest=f.name, metavar=f.name.upper(), default=None,
                                help=help_text)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of run settings (flags override it)")
    _add_fields(parser, aliases={"strategies": ["--strategy"]})
    parser.add_argument("--out", required=True, help="run folder (created, or resumed)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="per-epoch lines")


def _config(args: argparse.Namespace, extra: dict | None = None, base: dict | None = None):
    """Defaults (``base``), then the ``--config`` file, then the flags given."""
    from blocktune.core.config import RunConfig, read_yaml

    names = {f.name for f in dataclasses.fields(RunConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names and v is not None}
    flags.update(extra or {})
    from_file = read_yaml(args.config) if getattr(args, "config", None) else {}
    return RunConfig.from_dict({**(base or {}), **from_file, **flags})


def _print_config(config) -> int:
    import yaml

    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def cmd_groups(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from blocktune.api import model_groups
    from blocktune.core.config import RunConfig
    from blocktune.models.build import check_model_name

    given = {k: v for k, v in vars(args).items() if v is not None and k in
             {f.name for f in dataclasses.fields(RunConfig)}}
    config = RunConfig.from_dict({"image_size": 224, **given, "seeds": args.seed})
    check_model_name(config.model)
    result = model_groups(config.model, args.strategy, image_size=config.image_size,
                          head=config.head, delimiters=config.delimiters, window=config.window,
                          stride=config.stride, k=config.random_k, seed=config.seeds[0],
                          native=config.native, quarter=config.quarter, plot=args.plot)
    table = Table(title=f"{config.model}: {args.strategy} — {len(result['rows'])} candidates, "
                        f"{result['num_layers']} layers, {result['total_params']:,} parameters")
    for column in ("#", "layers", "params", "share"):
        table.add_column(column, justify="right" if column != "layers" else "left")
    for row in result["rows"]:
        table.add_row(str(row["index"]), row["layers"], f"{row['params']:,}",
                      f"{row['share']:.1%}")
    Console().print(table)
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


def cmd_run(args) -> int:
    from blocktune.loggers.progress import ProgressDisplay
    from blocktune.results.assess import assess, training_cost
    from blocktune.results.report import build_report
    from blocktune.results.runfolder import RunFolder
    from blocktune.results.status import failures
    from blocktune.runner.search import run

    config = _config(args, base=getattr(args, "defaults", None))
    if args.print_config:
        return _print_config(config)
    progress = ProgressDisplay(args.verbose)
    started = time.perf_counter()
    with progress.bar:
        summary = run(config, args.out, [progress], force_new=args.force_new)
    wall = time.perf_counter() - started
    report = build_report(args.out)
    _print_assessment(assess(args.out), summary)
    cost = training_cost(args.out, config.seeds[0])
    if cost is not None:  # what choosing cost, against one full fine-tune of the same split
        where = ", ".join(f"{k} {v:.0f} s" for k, v in cost["parts"].items())
        print(f"cost: this command took {wall:.0f} s of wall time; seed {config.seeds[0]} "
              f"trained for {cost['seconds']:.0f} s ({where}), {cost['ratio']:.2f}× its own "
              f"Baseline II final ({cost['baseline_ii']:.0f} s, one full fine-tune of this "
              "split, what `blocktune finetune --train all` trains)")
    print(f"report: {report}")
    waiting = [s for s in config.seeds if not RunFolder(args.out).seed(s).finals.exists()]
    if waiting:  # the only normal early stop: a spent --time-budget
        print(f"--time-budget spent: the search of seed(s) {', '.join(map(str, waiting))} is "
              "not finished and their final fine-tunes wait; run the same command to resume",
              file=sys.stderr)
    failed = failures(args.out, config.seeds)
    if failed:
        print(f"blocktune: error: {failed}", file=sys.stderr)
        return 1
    return 0


def _print_assessment(assessment, summary) -> None:
    """The recommendation and the verdicts first, then every method with its intervals."""
    from rich.console import Console
    from rich.table import Table

    from blocktune.core.methods import label

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for the intervals
        console = Console(width=140)
    seed = assessment.seeds[0]
    results = assessment.per_seed[seed]
    several = len(assessment.seeds) > 1
    table = Table(title="final fine-tunes: accuracy with 95% intervals"
                        + (f" (val: seed {seed}; test: mean over seeds)" if several else ""))
    for column in ("method", "group", "trained params", "val", "test"):
        table.add_column(column, justify="left" if column in ("method", "group") else "right")
    for row in summary:
        method = row["method"]
        if method not in results:
            continue
        mark = " (recommended)" if method == assessment.recommended else ""
        table.add_row(label(method) + mark, results[method].group,
                      f"{results[method].trained_params:,}", results[method].val.fraction(),
                      assessment.test_over_seeds[method].fraction())
    console.print(table)
    for line in assessment.lines():
        console.print(line.replace("**", ""), highlight=False, markup=False)


def cmd_finetune(args) -> int:
    from blocktune.loggers.progress import ProgressDisplay
    from blocktune.runner.finetune import finetune

    config = _config(args)
    if args.print_config:
        return _print_config(config)
    progress = ProgressDisplay(True)
    result = finetune(config, args.train, args.out, [progress])
    print(f"trained {args.train}: {result['trainable_params']:,} parameters, "
          f"val {result['val_acc']:.4f}, test {result['test_acc']:.4f} "
          f"({result['seconds']:.0f}s) -> {args.out}")
    return 0


def cmd_report(args) -> int:
    from blocktune.results.report import build_report

    print(f"report: {build_report(args.run)}")
    return 0


def cmd_predict(args) -> int:
    import csv

    from blocktune.api import predict

    # tab-separated, quoted as the csv module quotes: a path holding a TAB, a newline or a
    # quote stays one field of one line
    out = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    for path, (name, probability) in zip(args.images, predict(args.run, args.images),
                                         strict=True):
        out.writerow([path, name, f"{probability:.4f}"])
    return 0


def cmd_status(args) -> int:
    from blocktune.results.runfolder import RunFolder, owner
    from blocktune.results.status import failures, run_status

    print("\n".join(run_status(args.run)))
    files = RunFolder(args.run)
    if owner(args.run) != "finetune":  # failed trials: said, exit 1, as the run itself does
        failed = failures(args.run, files.saved_config().get("seeds") or [])
        if failed:
            print(f"blocktune: error: {failed}", file=sys.stderr)
            return 1
    return 0


def cmd_export(args) -> int:
    from blocktune.results.export import export

    done = export(args.run, args.format, args.out)
    print(f"exported to {done.path}: checked on {done.images} test images of the run, largest "
          f"logit difference from the run's model {done.max_difference:.2g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from blocktune.core import __version__
    from blocktune.models.groups import STRATEGIES

    parser = _Parser(prog="blocktune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"blocktune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    groups = sub.add_parser("groups", help="show the candidate groups of a model")
    groups.add_argument("--strategy", default="block", choices=sorted(STRATEGIES))
    _add_fields(groups, ["model", "image_size", "head", "delimiters", "window", "stride",
                         "random_k", "native", "quarter"], defaults={"image_size": 224},
                aliases={"random_k": ["--k"]})
    groups.add_argument("--seed", default="0", help="seed of the random strategy")
    groups.add_argument("--plot", help="save Fig. 2 (parameters per layer, groups) as PNG")
    groups.set_defaults(func=cmd_groups)

    run = sub.add_parser("run", help="the whole protocol: search, fine-tune, test, report")
    _add_common(run)
    run.add_argument("--force-new", action="store_true",
                     help="start the run folder over even if its config differs")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="the whole protocol on the embedded default, CPU-sized")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(func=cmd_demo)

    finetune = sub.add_parser("finetune", help="fine-tune given layers; baselines: head | all")
    _add_common(finetune)
    finetune.add_argument("--train", required=True,
                          help="head | all | comma-separated layer names | a regex")
    finetune.set_defaults(func=cmd_finetune)

    report = sub.add_parser("report", help="rebuild a run's report from its files")
    report.add_argument("run")
    report.set_defaults(func=cmd_report)

    status = sub.add_parser("status", help="what a run folder has done and what is left")
    status.add_argument("run")
    status.set_defaults(func=cmd_status)

    export = sub.add_parser("export", help="hand the saved model to plain timm or ONNX")
    export.add_argument("run", help="a run folder holding model.safetensors")
    export.add_argument("--format", required=True, choices=["timm", "onnx"])
    export.add_argument("--out", help="folder to write (default RUN/export/FORMAT)")
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser("predict", help="classify images with a saved run")
    predict.add_argument("--run", required=True)
    predict.add_argument("images", nargs="+")
    predict.set_defaults(func=cmd_predict)
    return parser


def cmd_demo(args) -> int:
    run_args = build_parser().parse_args(["run", "--out", args.out])
    run_args.defaults = DEMO
    run_args.verbose = args.verbose
    return cmd_run(run_args)


# where each command writes, for the advice on a path the system refused
ELSEWHERE = {"groups": "or give --plot another file", "report": "(the report is written into "
             "the run folder)"}


def _os_advice(error: OSError, command: str = "run") -> str | None:
    """One line for what the system refused, by kind, naming the option of ``command`` that
    says where it writes; None for an error that is no path's or disk's (a bug: its traceback
    is wanted)."""
    where = f" {error.filename}" if error.filename else ""
    elsewhere = ELSEWHERE.get(command, "or choose another --out")
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        writing = f" writing {error.filename}" if error.filename else ""
        return (f"{error.strerror}{writing}: free space or fix permissions, then run the same "
                "command to resume (finished work is saved)")
    if error.errno == errno.EISDIR:
        return (f"{error.filename} is a folder where blocktune writes a file: move it away "
                f"{elsewhere}")
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return (f"a file stands where blocktune makes a folder ({error.filename}): move it "
                f"away {elsewhere}")
    if error.errno == errno.ENOENT and error.filename and not Path(error.filename).exists():
        return (f"{error.strerror}:{where}: the system can neither find nor make it there "
                f"(a folder that cannot hold one, or a file moved away mid-run); check the "
                f"path {elsewhere}")
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad command line (one line, exit 2)
        return done.code if isinstance(done.code, int) else 2
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except BlocktuneError as error:
        print(f"blocktune: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the disk or the paths, not blocktune
        advice = _os_advice(error, getattr(args, "command", None) or "run")
        if advice is None:
            raise
        print(f"blocktune: error: {advice}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blocktune: interrupted; finished work is saved, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
