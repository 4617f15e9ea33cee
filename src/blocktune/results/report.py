"""Rendering: tables, plots, the run's report (markdown and a self-contained HTML page) and the
model card, rebuilt from the run folder's files alone. What they say is computed in
:mod:`blocktune.results.assess`."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from blocktune.core import faults  # noqa: E402
from blocktune.core.errors import BlocktuneError  # noqa: E402
from blocktune.core.io import atomic_write_bytes, atomic_write_text
from blocktune.core.methods import BASELINE_I, BASELINE_II, BASELINES, FIXED_CHOICES, label  # noqa: E402
from blocktune.core.stats import Interval, accuracy_interval
from blocktune.data import split_labels  # noqa: E402
from blocktune.models.layers import ModelWalk  # noqa: E402
from blocktune.protocol.select import RULES, choose, searched_strategies  # noqa: E402
from blocktune.results.assess import Assessment, assess  # noqa: E402
from blocktune.results.runfolder import RECOMMENDATION, RunFolder, owner, summarize


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


def _candidate_plot(rows: list[dict], method: str, path: Path, title: str,
                    chosen: dict | None = None, val_images: int = 0,
                    region: tuple[int, int] | None = None) -> Path:
    """Figs. 4–6: val accuracy per candidate in model order, the chosen one marked, the
    baselines' search scores as reference lines and the best candidate's 95% interval as the
    search's noise band: candidates inside it are not told apart by this val split.
    ``region``: the first and last layer of the part of the model the selection rule picks
    from, shaded. With ``--score-on val+train`` the candidates' pooled scores are drawn (what
    ranked them), the band on as many images as they were scored on."""
    def at(status: str, rung: str | None = None) -> list[dict]:
        return sorted((r for r in rows if r.strategy == method and r.status == status
                       and (rung is None or r.rung == rung)), key=lambda r: (r.first, r.last))

    def x(r: dict) -> float:
        return (r.first + r.last) / 2

    mine = at("ok")
    pooled = any(not math.isnan(r.score) and r.score_images > val_images for r in mine)

    def y(r) -> float:
        return r.ranking_score if pooled else r.val_acc

    fig, ax = plt.subplots(figsize=(9, 3.2))
    first_rung = at("rung", min((r.rung for r in rows if r.status == "rung"), default=None))
    if first_rung:  # a pruned search: every candidate's score at the first rung, for context
        ax.plot([x(r) for r in first_rung], [y(r) for r in first_rung],
                marker=".", ms=3, lw=0.8, color="0.6",
                label=f"after {first_rung[0].rung} epoch(s), all candidates")
    ax.plot([x(r) for r in mine], [y(r) for r in mine], marker="o", ms=3, lw=1,
            label="trained to the end" if first_rung else None)
    top = choose(rows, method)
    images = top.score_images if top is not None and pooled else val_images
    if top is not None and images:
        band = accuracy_interval(round(y(top) * images), images)
        ax.axhspan(band.low, band.high, color="C0", alpha=0.12,
                   label=f"best candidate's 95% interval ({images} "
                         f"{'val + train' if pooled else 'val'} images)")
    for baseline, style in ((BASELINE_I, "--"), (BASELINE_II, ":")):
        searched = next((r for r in rows if r.strategy == baseline and r.status == "ok"),
                        None)
        if searched is not None:
            ax.axhline(y(searched), color="0.3", ls=style, lw=1.2,
                       label=f"{label(baseline)} {y(searched):.3f}")
    if region is not None:
        ax.axvspan(region[0] - 0.5, region[1] + 0.5, color="C2", alpha=0.1,
                   label="the rule picks from here")
    best = chosen or top
    if best is not None:
        ax.scatter([x(best)], [y(best)], s=120, facecolors="none", edgecolors="C3", lw=2,
                   label="chosen" if chosen else "best by search val (no choice yet)",
                   zorder=3)
    ax.legend(loc="best", fontsize=7, ncol=2)
    ax.set(xlabel="layer index of the candidate (input → output)",
           ylabel="score: accuracy on val + train" if pooled else "val accuracy",
           title=title)
    fig.tight_layout()
    return _save(fig, path)


def _rule_region(rule: str, rows: list) -> tuple[int, int] | None:
    """For a run folder without ``choices.json``: the part of the model ``rule`` picks from,
    when it picks from part only, with the last searched layer standing for the model's."""
    picks_from = RULES[rule].picks_from if rule in RULES else None
    if picks_from is None or not rows:
        return None
    last = max(r.last for r in rows)
    return picks_from(last + 1), last


def _choice_of(method: str, mine: list, config: dict, recorded: dict | None,
               final, lp_bw=None, fixed: bool = False
               ) -> tuple[object, tuple[int, int] | None, str]:
    """The candidate the run's rule chose for ``method`` (its recorded choice; for older run
    folders, the group its final trained), the region the rule picks from, and the sentence
    that says so — including what the rule could not do and a final that is missing."""
    ok = [r for r in mine if r.status == "ok"]
    if recorded is not None:
        rule = recorded["rule"]
        chosen = next((r for r in ok if r.layer_indices == recorded.get("layer_indices")),
                      None)
        region = tuple(recorded["region"]) if recorded.get("region") else None
        fallback = recorded.get("fallback")
    else:
        rule = config.get("select", "max-val")
        chosen = next((r for r in ok if final is not None
                       and r.layer_indices == final.layer_indices), None)
        region, fallback = _rule_region(rule, ok), None
    help_text = RULES[rule].help if rule in RULES else "a rule this version does not know"
    if chosen is None:
        best = choose(ok, method)
        return None, region, (
            "No choice recorded: the search ended before the finals"
            + (f"; the best by search val so far is **{best.layers}** ({best.val_acc:.3f})"
               if best is not None else "") + ".")
    pooled = config.get("score_on", "val") != "val"
    score = (f"search score {chosen.ranking_score:.3f} ± {chosen.score_se:.3f} (standard "
             f"error, {chosen.score_images} {'val + train' if pooled else 'val'} images)"
             if chosen.score_images else f"search val {chosen.val_acc:.3f}")
    sentence = (f"Chosen: **{chosen.layers}** ({score}, "
                f"{chosen.trained_params:,} trained parameters) by the `{rule}` rule: "
                f"{help_text}"
                + (f" (layers {region[0]}–{region[1]}, shaded in the plot)" if region else "")
                + ".")
    if recorded is not None and region and not config.get("search_all", False):
        count = recorded.get("candidates", "?")
        sentence += (" Only the candidate there was searched" if count == 1 else
                     f" Only the {count} candidates there were searched") + (
            ": the rule can pick no other (`--search-all` trains all).")
    if fallback:
        sentence += f" Here {fallback}."
    if final is None and lp_bw is not None and lp_bw.layer_indices == chosen.layer_indices:
        sentence += (" It has no final of its own (`--pick-finals` off): it is fine-tuned as "
                     "LP-BW's second stage, after the head.")
    elif final is None and (fixed or config.get("pick_finals") is False):
        sentence += (" It has no final of its own: the run hands over a fixed method, so the "
                     "pick is not fine-tuned (`--pick-finals` does, `--choose-by val` then "
                     "weighs it).")
    elif final is None:
        sentence += (" Its final fine-tune did not finish (failed, or the run stopped before "
                     "it): no test accuracy for it.")
    return chosen, region, sentence


def _comparison_plot(tests: dict[str, Interval], path: Path, title: str) -> Path:
    """Fig. 7: test accuracy of every method side by side with its 95% interval (one seed:
    Wilson's on the test images; several: Student's t over the seeds' accuracies)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(tests)), 3.5))
    means = [t.value for t in tests.values()]
    errors = [[0 if math.isnan(t.low) else t.value - t.low for t in tests.values()],
              [0 if math.isnan(t.high) else t.high - t.value for t in tests.values()]]
    colors = ["0.6" if m in BASELINES else "C0" for m in tests]
    ax.bar([label(m) for m in tests], means, yerr=errors, color=colors, capsize=4)
    for i, m in enumerate(means):
        ax.text(i + 0.08, m + 0.003, f"{m:.3f}", ha="left", va="bottom", fontsize=8)
    low = min((t.low if not math.isnan(t.low) else t.value for t in tests.values()), default=0)
    ax.set(ylabel="test accuracy (95% interval)", title=title,
           ylim=(max(0, low - 0.05), 1.0))
    fig.tight_layout()
    return _save(fig, path)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(folder: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` from the files of a run folder."""
    folder = Path(folder)
    files = RunFolder(folder)
    if not files.is_run():
        raise BlocktuneError(f"{folder} is not a run folder (no {files.config.name}): pass the "
                             "--out folder of a blocktune run")
    if owner(folder) == "finetune":  # its own files are its record; a report would be a stranger
        raise BlocktuneError(f"{folder} is a finetune folder: its result is in "
                             f"{files.result.name}, its epochs in {files.metrics.name} and its "
                             f"model's record in {files.model_json.name}; report reads the "
                             "folder of a blocktune run")
    config = files.saved_config()
    seeds = [int(s) for s in config["seeds"]]
    summary = summarize(folder, seeds)
    plots = files.plots
    plots.mkdir(exist_ok=True)
    order = [BASELINE_I, BASELINE_II] + [m for m in _methods(files, seeds)
                                         if m not in (BASELINE_I, BASELINE_II)]
    summary.sort(key=lambda r: order.index(r["method"]) if r["method"] in order else 99)

    assessment = assess(folder)
    parts = [f"# blocktune report: {config['model']} on {Path(str(config['data'])).name}", ""]
    parts += ["## Verdict", ""]
    verdict = assessment.lines()
    parts += [f"- {line}" for line in verdict] or ["- No final fine-tune has finished yet."]
    parts += ["", "Intervals are 95%. A difference is better or worse only when its whole "
              "interval lies on one side of zero and its test agrees: paired on the same test "
              "images (bootstrap interval, McNemar's exact test) for one seed, the mean of the "
              "seeds' differences (Student's t interval and t-test) for several. The p-values "
              "of the comparisons above are Holm-adjusted together (the several comparisons "
              "of one verdict), and the adjusted p must be below 0.05.", ""]
    parts.append(f"Head `{config['head']}`, image size {config['image_size']}, "
                 f"{config['epochs']} search epochs, {config['final_epochs']} final epochs, "
                 f"seeds {', '.join(map(str, seeds))}, selection rule "
                 f"`{config.get('select', 'max-val')}`. Search on the search split; "
                 f"{_chose_on(assessment.recommendation or {})}; test accuracy measured once "
                 "at the end.")
    parts += ["", "## Test accuracy (Table I layout)", ""]
    if summary:
        tests = {r["method"]: assessment.test_over_seeds[r["method"]] for r in summary}
        header = ["model"] + [r["label"] for r in summary]
        table = [[config["model"]] + [f"{float(r['test_acc_mean']):.3f}" for r in summary],
                 ["95% interval"] + [_interval_text(tests[r["method"]]) for r in summary]]
        if len(seeds) > 1:  # the paper's reliability: spread over seeds
            table += [["std over seeds"] + [f"{float(r['test_acc_std']):.3f}" for r in summary],
                      ["variance"] + [f"{float(r['test_acc_var']):.4f}" for r in summary]]
        parts.append(_md_table(header, table))
        parts += ["", f"![test accuracy]({plots.name}/test_accuracy.png)", ""]
        _comparison_plot(tests, plots / "test_accuracy.png", f"{config['model']}: test accuracy")
    else:
        parts.append("No final fine-tune has finished yet.")

    if assessment.domain_verdicts:
        parts += _domain_section(assessment, summary)
    for seed in seeds:
        seed_files = files.seed(seed)
        rows = seed_files.read_candidates()
        finals = seed_files.read_finals()
        parts += ["", f"## Seed {seed}", ""]
        results = assessment.per_seed[seed]
        if finals:
            parts.append(_md_table(
                ["method", "group", "trained params", "search val", "val [95%]", "test [95%]"],
                [[label(r.method), r.group, f"{r.trained_params:,}",
                  format_float(r.search_val_acc),
                  results[r.method].val.fraction() if r.method in results else "–",
                  results[r.method].test.fraction() if r.method in results else "failed"]
                 for r in finals]))
        val_images = len(split_labels(seed_files.splits)["val"]) \
            if seed_files.splits.exists() else 0
        final_of = {r.method: r for r in finals if r.status == "ok"}
        choices = seed_files.read_choices()
        for method in searched_strategies(rows):
            mine = [r for r in rows if r.strategy == method]
            groups = {r.layer_indices for r in mine}
            failed = sum(r.status == "failed" for r in mine)
            finished = sum(r.status == "ok" for r in mine)
            pruned = any(r.status == "rung" for r in mine)
            parts += ["", f"### {label(method)}: {len(groups)} candidate"
                      + ("" if len(groups) == 1 else "s")
                      + (f", {finished} trained to the end (successive halving)" if pruned
                         else "") + (f", {failed} failed" if failed else ""), ""]
            handed = (choices.get(RECOMMENDATION) or {}).get("rule")
            chosen, region, sentence = _choice_of(method, mine, config, choices.get(method),
                                                  final_of.get(method), final_of.get("lp-bw"),
                                                  handed in FIXED_CHOICES)
            parts.append(sentence)
            if len(groups) > 1:  # ranked and random are one group each: nothing to plot
                name = f"candidates_{method}_seed{seed}.png"
                _candidate_plot(rows, method, plots / name,
                                f"{label(method)} ({method}), seed {seed}", chosen, val_images,
                                region)
                parts += ["", f"![{method}]({plots.name}/{name})"]
    markdown = "\n".join(parts) + "\n"
    faults.point("report")
    atomic_write_text(files.report_md, markdown)
    atomic_write_text(files.report_html, _to_html(markdown, folder))
    if files.model_json.exists():
        atomic_write_text(files.card, model_card_text(files, config, assessment))
    return files.report_md


def _chose_on(chosen: dict) -> str:
    """What the recommendation read, in a few words."""
    rule = chosen.get("rule", "val")
    if chosen.get("on"):
        return f"the recommendation chosen on `{chosen['on']}` (`--choose-on`)"
    if rule in FIXED_CHOICES:
        return f"the recommendation a fixed method ({label(rule)}), not chosen on val"
    if rule.startswith("cv"):
        return f"the recommendation chosen by {rule} on the learning images"
    return f"the recommendation chosen on val (`{rule}`)"


def _domain_section(assessment: Assessment, summary: list[dict]) -> list[str]:
    """``--test-data``: every final on every extra folder (first seed, with 95% intervals),
    and each method against each baseline there, paired on the folder's images."""
    first = assessment.per_seed[assessment.seeds[0]]
    names = list(assessment.domain_verdicts)
    methods = [r["method"] for r in summary if r["method"] in first]
    on = (assessment.recommendation or {}).get("on")
    chose = (f" Except `{on}`: the deployment domain's choosing part (`--choose-on`), which "
             "chose the recommendation, so the recommendation's accuracy there is optimistic; "
             "its test part is the figure to expect." if on else "")
    # a cross-validated choice hands over its method trained on every learning image: those
    # models' rows too, the handed-over one marked (the other finals trained on search + train)
    again = assessment.learning.get(assessment.seeds[0], {})
    retrained = (" Rows marked *every learning image* are the models the cross-validated "
                 "choice trained again on every learning image; the one handed over says so."
                 if again else "")
    parts = ["", "## Test domains", "", "Scored once by every final, like test, and read by no "
             f"choice.{chose}{retrained} Accuracy with its 95% interval"
             + (f" (seed {assessment.seeds[0]})" if len(assessment.seeds) > 1 else "") + ":", ""]
    rows = [(label(m), first[m]) for m in methods] + [
        (f"{label(m)}, every learning image"
         + (" (handed over)" if m == assessment.recommended else ""), result)
        for m, result in again.items()]
    parts.append(_md_table(["method", "test", *names], [
        [name, result.test.fraction(),
         *[result.domains[n].fraction() if n in result.domains else "–" for n in names]]
        for name, result in rows]))
    for name in names:
        if assessment.domain_verdicts[name]:
            parts += ["", f"On `{name}` (Holm over its {len(assessment.domain_verdicts[name])} "
                      "comparisons):", ""]
            parts += [f"- {c.sentence()}" for c in assessment.domain_verdicts[name]]
    return parts


def model_card_text(files: RunFolder, config: dict, assessment: Assessment) -> str:
    """The saved model's card (``README.md`` beside ``model.safetensors``): what it is, how well
    it does with intervals, against both baselines, from which data, weights and versions."""
    folder = files.root
    card = files.model_card()
    versions = card.get("versions") or files.versions()
    method = card["method"]
    seed = card.get("seed", assessment.seeds[0])
    on_all = method in assessment.learning.get(seed, {})  # cvK: trained on every learning image
    mine = (assessment.learning if on_all else assessment.per_seed).get(seed, {}).get(method)
    lines = [f"# {card['model']} fine-tuned by blocktune on {Path(str(config['data'])).name}", "",
             f"- **Method**: {label(method)}" + (f", chosen by the `{card['select']}` rule"
                                                  if card.get("select") else ""),
             f"- **New head**: `{card['head']}`"]
    chosen = assessment.recommendation or {}
    if mine is not None and on_all:
        score = accuracy_interval(round(chosen["score"] * chosen["images"]), chosen["images"])
        lines += [f"- **Trained layers**: {mine.group} ({mine.trained_params:,} parameters), "
                  "on every learning image (nothing held out)",
                  f"- **Chosen by** `{chosen['rule']}`: pooled out-of-fold accuracy "
                  f"{score.fraction()}",
                  f"- **Test accuracy**: {mine.test.fraction()} (seed {seed}, measured once)"]
    elif mine is not None and chosen.get("on"):
        on = chosen["on"]
        lines += [f"- **Trained layers**: {mine.group} ({mine.trained_params:,} parameters)",
                  f"- **Chosen on** `{on}` ({chosen['images']} labelled images of the "
                  f"deployment domain, `--choose-on`, by `{chosen['rule']}`): "
                  f"{mine.domains[on].fraction() if on in mine.domains else '–'}",
                  f"- **Test accuracy**: {mine.test.fraction()} (seed {seed}, measured once)"]
        target = on.replace("(choosing part)", "(test part)")
        if target in mine.domains:
            lines.append(f"- **On the deployment domain's test part** `{target}`: "
                         f"{mine.domains[target].fraction()}")
    elif mine is not None:
        lines += [f"- **Trained layers**: {mine.group} ({mine.trained_params:,} parameters)",
                  f"- **Val accuracy**: {mine.val.fraction()} " + (
                      f"(not read: `--choose-by {'auto' if chosen.get('auto') else chosen['rule']}`"
                      " hands it over)"
                      if chosen.get("rule") in FIXED_CHOICES else
                      f"(used to choose it, by `{chosen.get('rule', 'val')}`)"),
                  f"- **Test accuracy**: {mine.test.fraction()} (seed {seed}, measured once)"]
    baselines = {label(b) for b in BASELINES}
    against = (assessment.versus_learning if on_all else
               [c for c in assessment.versus_recommended if c.b in baselines])
    if against:
        lines.append("- **Against the baselines** (paired, same test images): "
                     + "; ".join(c.sentence() for c in against))
    lines += [f"- **Seeds of the run**: {', '.join(map(str, assessment.seeds))}",
              f"- **Classes** ({len(card['classes'])}): {', '.join(card['classes'])}",
              f"- **Input**: {card['image_size']}×{card['image_size']} RGB, resized with "
              f"{card['interpolation']} interpolation, mean {card['mean']}, std {card['std']}",
              f"- **Pretrained weights**: {card['weights_source']}"
              + (f", {card['weights_origin']}" if card.get("weights_origin") else "")
              + (f" (licence: {card['weights_licence']})" if card.get("weights_licence") else ""),
              "- **Versions**: " + ", ".join(f"{k} {versions[k]}" for k in
                                             ("blocktune", "torch", "timm") if k in versions),
              "", "## Use", "", "```bash",
              f"blocktune predict --run {folder} photo.jpg",
              f"blocktune export {folder} --format timm   # plain timm: "
              "timm.create_model('local-dir:FOLDER', pretrained=True)",
              f"blocktune export {folder} --format onnx", "```", "",
              "The full report, with every candidate and its interval: `report.md`."]
    return "\n".join(lines) + "\n"


def _interval_text(interval: Interval) -> str:
    return "–" if math.isnan(interval.low) else f"[{interval.low:.3f}, {interval.high:.3f}]"


def _methods(files: RunFolder, seeds: list[int]) -> list[str]:
    seen: dict[str, None] = {}
    for seed in seeds:
        for row in files.seed(seed).read_finals():
            seen.setdefault(row.method)
    return list(seen)


def _to_html(markdown: str, folder: Path) -> str:
    """A self-contained page of the same markdown (CommonMark and tables, by markdown-it-py):
    images inlined as base64, the verdict lists styled, each verdict's word coloured."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(renderer, tokens, index, options, env):
        src = tokens[index].attrGet("src")
        data = base64.b64encode((folder / src).read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(src)}">'

    md.add_render_rule("image", image)
    md.add_render_rule("bullet_list_open", lambda *args: '<ul class="verdict">\n')
    body = md.render(markdown)
    for word, css in (("better", "better"), ("worse", "worse"),
                      ("no clear difference", "tie")):
        body = body.replace(f", {word} (", f', <span class="{css}">{word}</span> (')
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}"
             "ul.verdict{background:#f5f7fa;border-left:4px solid #4a6fa5;padding:.6em 1em .6em 2em}"
             "ul.verdict li{margin:.25em 0}.better{color:#1a7f37;font-weight:bold}"
             ".worse{color:#b42318;font-weight:bold}.tie{color:#555;font-weight:bold}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>blocktune report</title>"
            f"<style>{style}</style></head><body>\n" + body + "\n</body></html>\n")


def format_float(value: str | float) -> str:
    number = float(value)
    return "–" if math.isnan(number) else f"{number:.3f}"
