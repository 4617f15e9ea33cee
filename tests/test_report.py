"""The report a user opens: verdict first, intervals, baseline lines; rendered in a real browser."""

import shutil
import subprocess

import pytest

from blocktune.core.io import read_csv
from blocktune.core.methods import BASELINE_I, label
from blocktune.results.assess import assess
from blocktune.results.report import build_report
from blocktune.runner.search import run

from .test_search import tiny_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from .conftest import make_image_folder

    root = tmp_path_factory.mktemp("report")
    data = make_image_folder(root / "images", per_class=24)
    out = root / "run"
    run(tiny_config(data, strategies=["block"], max_candidates=5), out)
    build_report(out)
    return out


def test_assessment_pairs_every_method_with_each_baseline(finished_run):
    assessment = assess(finished_run)
    finals = {r["method"]: r for r in read_csv(finished_run / "seed_0" / "finals.csv")}
    best = max(finals.values(), key=lambda r: (float(r["val_acc"]), -int(r["trained_params"])))
    assert assessment.recommended == best["method"]
    pairs = {(c.a, c.b) for c in assessment.versus_baselines}
    assert {("BW", "Baseline I"), ("BW", "Baseline II"), ("Baseline II", "Baseline I")} <= pairs
    for comparison in assessment.versus_baselines:
        assert comparison.images == len(finals[BASELINE_I]["test_pred"].split())
        method = {label(m): m for m in finals}  # "BW" → block, "Baseline I" → baseline-I
        expected = float(finals[method[comparison.a]]["test_acc"]) - \
            float(finals[method[comparison.b]]["test_acc"])
        assert comparison.difference.value == pytest.approx(expected, abs=1e-6)
        assert comparison.difference.low <= comparison.difference.value <= \
            comparison.difference.high
    lines = assessment.lines()
    assert lines[0].startswith("**Recommended: ")
    # the recommendation's val was reused by its own early stopping: the gap to test is stated
    gap = (float(best["val_acc"]) - float(best["test_acc"])) * 100
    gap_text = f"{gap:+.1f}".replace("-", "\u2212")
    assert f"its val − test {gap_text} points: val also steered the finals'" in lines[0]
    # a report states what its own run measured: no benchmark's figure in a user's verdict
    assert "benchmark" not in lines[0] and "on average" not in lines[0]
    assert any(line.startswith("BW vs Baseline I: ") for line in lines)


def test_report_opens_with_the_verdict_and_intervals(finished_run):
    text = (finished_run / "report.md").read_text()
    assert text.index("## Verdict") < text.index("## Test accuracy")
    assert "95% interval" in text and "val [95%]" in text
    assert "BW vs Baseline I: " in text


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_html_renders_in_a_real_browser_with_the_verdict(finished_run, tmp_path):
    page = (finished_run / "report.html").as_uri()
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert '<ul class="verdict">' in dom and "Recommended: " in dom
    assert "BW vs Baseline I: " in dom
    assert dom.index("Verdict") < dom.index("Test accuracy")
    assert dom.count("data:image/png;base64,") >= 2  # the plots are inside the page
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1100,1400", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_report_says_which_rule_chose_and_where_it_looks(finished_run):
    from types import SimpleNamespace

    from blocktune.protocol.select import RULES
    from blocktune.results.report import _rule_region

    text = (finished_run / "report.md").read_text()
    assert f"by the `max-val` rule: {RULES['max-val'].help}." in text  # tiny_config's rule
    layers = [SimpleNamespace(last=i) for i in range(100)]  # candidates ending at 0 … 99
    assert _rule_region("last-quarter", layers) == (75, 99)
    assert _rule_region("last-quarter", layers[:3]) == (2, 2)  # a tiny model: its last layer
    assert _rule_region("max-val", layers) is None


def test_report_states_a_fallback_and_a_final_that_did_not_finish(finished_run, tmp_path):
    import json

    from blocktune.core.io import atomic_write_csv

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    seed = out / "seed_0"
    choices = json.loads((seed / "choices.json").read_text())
    assert choices["block"]["rule"] == "max-val" and choices["block"]["region"] is None
    choices["block"].update(rule="last-quarter", region=[20, 24],
                            fallback="no finished candidate lies in layers 20–24, where the "
                                     "`last-quarter` rule picks from: it fell back to max-val")
    (seed / "choices.json").write_text(json.dumps(choices))
    finals = read_csv(seed / "finals.csv")
    atomic_write_csv(seed / "finals.csv", [r for r in finals if r["method"] != "block"],
                     list(finals[0]))
    build_report(out)
    text = (out / "report.md").read_text()
    assert "by the `last-quarter` rule" in text and "(layers 20–24, shaded in the plot)" in text
    assert "candidates there were searched: the rule can pick no other" in text
    assert "Here no finished candidate lies in layers 20–24" in text
    assert "Its final fine-tune did not finish" in text
    # a run folder from before choices were recorded, stopped before its finals: the best
    # candidate so far is not called chosen
    (seed / "choices.json").unlink()
    build_report(out)
    text = (out / "report.md").read_text()
    assert "No choice recorded: the search ended before the finals" in text
    assert "Chosen: " not in text


def test_a_cv_choice_and_the_test_domains_are_reported(tmp_path):
    from .conftest import make_image_folder

    data = make_image_folder(tmp_path / "images", per_class=24)
    shifted = make_image_folder(tmp_path / "shifted", per_class=5, seed=4)
    out = tmp_path / "run"
    run(tiny_config(data, max_candidates=2, choose_by="cv2", test_data=[str(shifted)]), out)
    build_report(out)
    assessment = assess(out)
    assert assessment.recommendation["rule"] == "cv2"
    assert "pooled out-of-fold accuracy" in assessment.lines()[0]
    assert "(cv2)" in assessment.lines()[0]
    verdicts = assessment.domain_verdicts["shifted"]
    assert {(c.a, c.b) for c in verdicts} >= {("BW", "Baseline I"), ("BW", "Baseline II")}
    assert all(c.images == 15 for c in verdicts)  # paired on the folder's 15 images
    text = (out / "report.md").read_text()
    assert "## Test domains" in text and "| method | test | shifted |" in text


def test_a_pick_without_a_final_of_its_own_is_said_to_train_as_lp_bw(image_folder, tmp_path):
    # LP-BW without pick finals: the strategy's pick is LP-BW's second stage, not a missing final
    out = tmp_path / "run"
    run(tiny_config(image_folder, methods=["lp-bw"], pick_finals=None, epochs=1, final_epochs=1,
                    max_candidates=2), out)
    assert "block" not in {r["method"] for r in read_csv(out / "seed_0" / "finals.csv")}
    build_report(out)
    text = (out / "report.md").read_text()
    assert "It has no final of its own" in text and "LP-BW's second stage" in text
    assert "did not finish" not in text
