"""Tables, plots and the run's report, rebuilt from the run folder's files alone."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from blocktune.errors import BlocktuneError  # noqa: E402
from blocktune.io import atomic_write_bytes, atomic_write_text, read_csv  # noqa: E402
from blocktune.layers import ModelWalk  # noqa: E402
from blocktune.search import BASELINE_I, BASELINE_II, choose, label, summarize  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    """Write a figure atomically, like every other file of a run."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def plot_layer_params(walk: ModelWalk, groups: Sequence[Sequence[int]], path: str | Path,
                      title: str = "") -> Path:
    """The paper's Fig. 2: parameters per layer in execution order, group boundaries drawn."""
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot([layer.num_params for layer in walk.layers], marker=".", lw=1)
    for group in groups:
        ax.axvspan(min(group) - 0.5, max(group) + 0.5, alpha=0.08, color="C1")
        ax.axvline(min(group) - 0.5, color="C1", lw=0.6)
    ax.set(xlabel="layer (execution order)", ylabel="parameters", title=title, yscale="symlog")
    fig.tight_layout()
    return _save(fig, path)


def _candidate_plot(rows: list[dict], method: str, path: Path, title: str) -> Path:
    """Figs. 4–6: val accuracy per candidate in model order, the chosen one marked."""
    def at(status: str, rung: str | None = None) -> list[dict]:
        return sorted((r for r in rows if r["strategy"] == method and r["status"] == status
                       and (rung is None or str(r.get("rung", "")) == rung)),
                      key=lambda r: (int(r["first"]), int(r["last"])))

    def x(r: dict) -> float:
        return (int(r["first"]) + int(r["last"])) / 2

    mine = at("ok")
    fig, ax = plt.subplots(figsize=(9, 3.2))
    first_rung = at("rung", min((str(r["rung"]) for r in rows if r["status"] == "rung"),
                                key=int, default=None))
    if first_rung:  # a pruned search: every candidate's score at the first rung, for context
        ax.plot([x(r) for r in first_rung], [float(r["val_acc"]) for r in first_rung],
                marker=".", ms=3, lw=0.8, color="0.6",
                label=f"after {first_rung[0]['rung']} epoch(s), all candidates")
    ax.plot([x(r) for r in mine], [float(r["val_acc"]) for r in mine], marker="o", ms=3, lw=1,
            label="trained to the end" if first_rung else None)
    best = choose(rows, method)
    if best is not None:
        ax.scatter([(int(best["first"]) + int(best["last"])) / 2], [float(best["val_acc"])],
                   s=120, facecolors="none", edgecolors="C3", lw=2, label="chosen", zorder=3)
        ax.legend(loc="lower left")
    ax.set(xlabel="layer index of the candidate (input → output)", ylabel="val accuracy",
           title=title)
    fig.tight_layout()
    return _save(fig, path)


def _comparison_plot(summary: list[dict], path: Path, title: str) -> Path:
    """Fig. 7: test accuracy of every method side by side (mean ± std over seeds)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(summary)), 3.5))
    means = [float(r["test_acc_mean"]) for r in summary]
    stds = [float(r["test_acc_std"]) for r in summary]
    colors = ["0.6" if r["method"] in (BASELINE_I, BASELINE_II) else "C0" for r in summary]
    ax.bar([r["label"] for r in summary], means, yerr=stds, color=colors, capsize=4)
    for i, m in enumerate(means):
        ax.text(i, m + 0.005, f"{m:.3f}", ha="center", va="bottom", fontsize=8)
    low = min(means) if means else 0
    ax.set(ylabel="test accuracy", title=title, ylim=(max(0, low - 0.1), 1.0))
    fig.tight_layout()
    return _save(fig, path)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(folder: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` from the files of a run folder."""
    folder = Path(folder)
    if not (folder / "config.yaml").exists():
        raise BlocktuneError(f"{folder} is not a run folder (no config.yaml): pass the --out "
                             "folder of a blocktune run")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    seeds = [int(s) for s in config["seeds"]]
    summary = summarize(folder, seeds)
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    order = [BASELINE_I, BASELINE_II] + [m for m in _methods(folder, seeds)
                                         if m not in (BASELINE_I, BASELINE_II)]
    summary.sort(key=lambda r: order.index(r["method"]) if r["method"] in order else 99)

    parts = [f"# blocktune report: {config['model']} on {Path(str(config['data'])).name}", ""]
    parts.append(f"Head `{config['head']}`, image size {config['image_size']}, "
                 f"{config['epochs']} search epochs, {config['final_epochs']} final epochs, "
                 f"seeds {', '.join(map(str, seeds))}. Search on the search split, choice on "
                 "val, test accuracy measured once at the end.")
    parts += ["", "## Test accuracy (Table I layout)", ""]
    if summary:
        header = ["model"] + [r["label"] for r in summary]
        parts.append(_md_table(header, [
            [config["model"]] + [f"{float(r['test_acc_mean']):.3f}" for r in summary],
            ["std over seeds"] + [f"{float(r['test_acc_std']):.3f}" for r in summary],
            ["variance"] + [f"{float(r['test_acc_var']):.4f}" for r in summary]]))
        parts += ["", "![test accuracy](plots/test_accuracy.png)", ""]
        _comparison_plot(summary, plots / "test_accuracy.png", f"{config['model']}: test accuracy")
    else:
        parts.append("No final fine-tune has finished yet.")

    for seed in seeds:
        seed_dir = folder / f"seed_{seed}"
        rows = read_csv(seed_dir / "candidates.csv")
        finals = read_csv(seed_dir / "finals.csv")
        parts += ["", f"## Seed {seed}", ""]
        if finals:
            parts.append(_md_table(
                ["method", "group", "trained params", "search val", "val", "test"],
                [[label(r["method"]), r["group"], f"{int(r['trained_params']):,}",
                  r["search_val_acc"][:5] or "–", r["val_acc"][:5], r["test_acc"][:5]]
                 for r in finals]))
        for method in dict.fromkeys(r["strategy"] for r in rows):
            mine = [r for r in rows if r["strategy"] == method]
            chosen = choose(rows, method)
            groups = {r["layer_indices"] for r in mine}
            failed = sum(r["status"] == "failed" for r in mine)
            finished = sum(r["status"] == "ok" for r in mine)
            pruned = any(r["status"] == "rung" for r in mine)
            parts += ["", f"### {label(method)}: {len(groups)} candidates"
                      + (f", {finished} trained to the end (successive halving)" if pruned
                         else "") + (f", {failed} failed" if failed else ""), ""]
            if chosen is not None:
                parts.append(f"Chosen: **{chosen['layers']}** (val {float(chosen['val_acc']):.3f}, "
                             f"{int(chosen['trained_params']):,} trained parameters).")
            if len(groups) > 1:  # ranked and random are one group each: nothing to plot
                name = f"candidates_{method}_seed{seed}.png"
                _candidate_plot(rows, method, plots / name,
                                f"{label(method)} ({method}), seed {seed}")
                parts += ["", f"![{method}](plots/{name})"]
    markdown = "\n".join(parts) + "\n"
    atomic_write_text(folder / "report.md", markdown)
    atomic_write_text(folder / "report.html", _to_html(markdown, folder))
    return folder / "report.md"


def _methods(folder: Path, seeds: list[int]) -> list[str]:
    seen: dict[str, None] = {}
    for seed in seeds:
        for row in read_csv(folder / f"seed_{seed}" / "finals.csv"):
            seen.setdefault(row["method"])
    return list(seen)


def _to_html(markdown: str, folder: Path) -> str:
    """A self-contained page: the same content, images inlined as base64."""
    body, table = [], []

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
                   + "</tr>"]
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                    for row in cells[1:]]
            body.append("\n".join(out + ["</table>"]))
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("!["):
            src = line[line.index("(") + 1:line.rindex(")")]
            data = base64.b64encode((folder / src).read_bytes()).decode()
            body.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(src)}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>blocktune report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    escaped = html.escape(text)
    while "**" in escaped:
        escaped = escaped.replace("**", "<b>", 1).replace("**", "</b>", 1)
    while escaped.count("`") >= 2:
        escaped = escaped.replace("`", "<code>", 1).replace("`", "</code>", 1)
    return escaped


def format_float(value: str | float) -> str:
    number = float(value)
    return "–" if math.isnan(number) else f"{number:.3f}"
