"""The comparison report: statistics and the verdict rule by hand, rendering from committed result
files, a failed arm, a real browser (headless Chromium) and the PDF through poppler."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.report import build_report, content, render_html
from harness.report.data import load_comparison
from harness.report.stats import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Estimate, difference_ci, mean_ci,
                                  quality_reading, ratio_ci, ratio_reading, t_quantile, verdict)
from harness.report.verdict import verdict_section

FIXTURES = Path(__file__).parent / "fixtures" / "report"
COMPARE = FIXTURES / "compare"
SECTIONS = ["verdict", "arms", "accuracy", "figures", "health", "method"]
FIGURES = ["learning", "memory", "phases", "throughput", "health"]


@pytest.fixture(autouse=True, scope="module")
def strict_templates():
    """A template that names a missing field fails here (in use it renders as a gap)."""
    import harness.report
    saved, harness.report.UNDEFINED = harness.report.UNDEFINED, "StrictUndefined"
    yield
    harness.report.UNDEFINED = saved


def copy_fixture(tmp_path: Path) -> Path:
    return Path(shutil.copytree(COMPARE, tmp_path / "compare"))


def edit_summaries(folder: Path, edit) -> None:
    for path in folder.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        edit(summary)
        path.write_text(json.dumps(summary))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def plain(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------- statistics, by hand

def test_t_quantiles_match_the_table_and_the_normal_limit():
    assert t_quantile(1) == pytest.approx(12.706)
    assert t_quantile(2) == pytest.approx(4.303)
    assert t_quantile(60) == pytest.approx(2.000, abs=2e-3)
    assert t_quantile(1e6) == pytest.approx(1.960, abs=1e-3)
    assert t_quantile(2) > t_quantile(2.5) > t_quantile(3)  # Welch's fractional df lie between


def test_mean_interval_by_hand():
    # [1, 2, 3]: mean 2, sd 1, half-width t(2) / sqrt(3) = 4.303 / 1.732 = 2.484
    e = mean_ci([1, 2, 3])
    assert (e.mean, e.n) == (2, 3)
    assert (e.lo, e.hi) == pytest.approx((2 - 2.4844, 2 + 2.4844), abs=1e-3)
    one = mean_ci([5.0])
    assert one.mean == 5.0 and not one.has_interval and "2" in one.note
    assert mean_ci([]).mean is None
    exact = mean_ci([7.0], exact=True)
    assert (exact.lo, exact.hi) == (7.0, 7.0)


def test_ratio_interval_by_hand():
    # equal values in each arm: the ratio is a point
    e = ratio_ci([1.0, 1.0], [2.0, 2.0])
    assert (e.mean, e.lo, e.hi) == (0.5, 0.5, 0.5)
    # top [0.9, 1.1], bottom [1.8, 2.2]: R = 0.5; se(log R)^2 = 0.02/(2*1) + 0.08/(2*4) = 0.02, df = 2
    e = ratio_ci([0.9, 1.1], [1.8, 2.2])
    half = t_quantile(2) * math.sqrt(0.02)
    assert e.mean == pytest.approx(0.5)
    assert (e.lo, e.hi) == pytest.approx((0.5 * math.exp(-half), 0.5 * math.exp(half)))
    assert e.lo > 0  # a log-ratio interval never crosses zero
    assert not ratio_ci([1.0], [2.0]).has_interval
    assert ratio_ci([1.0], [0.0]).mean is None


def test_difference_interval_by_hand():
    # a = [0.5, 0.7], b = [0.4, 0.4]: d = 0.2, se = sqrt(0.02/2 + 0) = 0.1, Welch df = 1
    e = difference_ci([0.5, 0.7], [0.4, 0.4])
    assert e.mean == pytest.approx(0.2)
    assert (e.lo, e.hi) == pytest.approx((0.2 - 12.706 * 0.1, 0.2 + 12.706 * 0.1))


@pytest.mark.parametrize("memory, difference, expected", [
    (Estimate(0.5, 0.45, 0.55), Estimate(0.01, -0.02, 0.04), REPRODUCED),
    (Estimate(0.5, 0.40, 0.60), Estimate(0.0, 0.0, 0.0), REPRODUCED),  # the band's edges count as inside
    (Estimate(0.9, 0.85, 0.95), Estimate(0.01, -0.02, 0.04), NOT_REPRODUCED),  # wholly above the band
    (Estimate(0.3, 0.25, 0.35), Estimate(0.01, -0.02, 0.04), NOT_REPRODUCED),  # wholly below the band
    (Estimate(0.5, 0.45, 0.55), Estimate(-0.1, -0.15, -0.05), NOT_REPRODUCED),  # half the memory, worse accuracy
    (Estimate(0.5, 0.35, 0.65), Estimate(0.01, -0.02, 0.04), INCONCLUSIVE),  # interval straddles the band
    (Estimate(0.62, 0.55, 0.70), Estimate(0.01, -0.02, 0.04), INCONCLUSIVE),  # overlaps the band's edge
    (Estimate(0.5, 0.45, 0.55), Estimate(0.01, note="one seed"), INCONCLUSIVE),  # quality unknown
    (Estimate(0.5, note="one seed"), Estimate(0.01, -0.02, 0.04), INCONCLUSIVE),  # memory without interval
    (Estimate(None), Estimate(None), INCONCLUSIVE),
])
def test_verdict_rule(memory, difference, expected):
    assert verdict(memory, difference) == expected


def test_ratio_and_quality_readings():
    assert ratio_reading(Estimate(0.5, 0.41, 0.59)) == REPRODUCED
    assert ratio_reading(Estimate(0.7, 0.61, 0.8)) == NOT_REPRODUCED
    assert quality_reading(Estimate(-0.05, -0.1, 0.0)) == "not worse"
    assert quality_reading(Estimate(-0.05, -0.1, -0.01)) == "worse"
    assert quality_reading(Estimate(None)) == "unknown"


# ---------------------------------------------------------------- rendering the committed fixture

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    html_path, pdf_path = build_report(COMPARE, out)
    return {"html_path": html_path, "pdf_path": pdf_path, "html": html_path.read_text(),
            "verdict": verdict_section(load_comparison(COMPARE))}


def test_report_files_are_named_after_the_comparison(report):
    assert report["html_path"].name == f"{COMPARE.name}.html"
    assert report["pdf_path"] is not None and report["pdf_path"].name == f"{COMPARE.name}.pdf"
    assert report["pdf_path"].read_bytes()[:5] == b"%PDF-"


def test_html_has_every_section_and_figure(report):
    html = report["html"]
    for section in SECTIONS:
        assert f'<section id="{section}"' in html
    for name in FIGURES:
        match = re.search(rf'<figure id="figure-{name}">\s*<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
        assert match, f"figure {name} is missing: " + (re.findall(r'missing-figure">([^<]*)', html) or [""])[0]
        width, height = png_size(base64.b64decode(match.group(1)))
        assert width > 300 and height > 100
    assert "not drawn" not in html


def test_each_figure_is_also_a_png_and_an_svg_file_beside_the_report(report):
    folder = report["html_path"].parent / f"{COMPARE.name}-figures"
    for name in FIGURES:
        png = (folder / f"{name}.png").read_bytes()
        # the file is the very image the page embeds
        embedded = re.search(rf'<figure id="figure-{name}">\s*<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
                             report["html"]).group(1)
        assert png == base64.b64decode(embedded)
        svg = (folder / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_by_default_the_report_goes_into_the_comparison_folder(tmp_path):
    from harness.report import report_files
    folder = copy_fixture(tmp_path)
    html_path, pdf_path = build_report(folder, pdf=False)
    assert html_path == folder / "report.html" and pdf_path is None
    assert report_files(folder) == [folder / "report.html"] + [folder / "figures" / f"{n}.png" for n in sorted(FIGURES)] \
        + [folder / "figures" / f"{n}.svg" for n in sorted(FIGURES)]


def test_html_is_self_contained(report):
    html = report["html"]
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "url(http" not in html and "<link" not in html and "<script" not in html


def test_verdict_and_headline_figures(report):
    html, v = report["html"], report["verdict"]
    plan = json.loads((COMPARE / "comparison.json").read_text())
    assert v["reading"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    assert f'<div class="reading">{v["reading"]}</div>' in html
    assert v["sentence"].split(":")[0].lower() == v["reading"]
    assert plain(v["sentence"]).replace("'", "&#39;") in plain(html)
    assert f"{len(plan['seeds'])} seeds" in html
    # every memory measure is kept apart, with GRPO/PPO ratios beside the claim
    for label in ("exact total", "exact model state", "exact saved activations", "measured RSS peak",
                  "measured CUDA allocated peak", "measured NVML device memory peak", "time per step",
                  "sampled completions to reach", "wall time to reach"):
        assert label in html
    assert "not measured: no NVIDIA GPU" in html  # the reason, from the summaries
    primary = v["primary"]
    assert primary["key"] == "mem_exact_total" and primary["ratio_est"].mean < 1  # GRPO drops the critic
    assert "Student-t" in html and "delta method" in html  # the interval methods are stated
    assert "maj@8" in html and "pass@8" in html  # lm-eval scores, as the runner writes them


def test_method_section_marks_differing_config_fields(report):
    html = report["html"]
    assert html.count('<tr class="differs">') >= 2  # at least the algorithm and its options
    assert '<td class="cfg">algo</td>' in html
    for line in json.loads((COMPARE / "comparison.json").read_text())["fairness"]:
        assert line.replace("'", "&#39;") in html
    env = json.loads(next(COMPARE.glob("*/env.json")).read_text())
    assert env["torch"] in html and env["git_commit"] in html


def test_pdf_has_pages_and_the_verdict(report):
    if not shutil.which("pdfinfo") or not shutil.which("pdftotext"):
        pytest.skip("poppler-utils is not installed (apt-get install poppler-utils)")
    info = subprocess.run(["pdfinfo", str(report["pdf_path"])], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
    assert pages > 1
    text = subprocess.run(["pdftotext", str(report["pdf_path"]), "-"], capture_output=True, text=True, check=True).stdout
    assert report["verdict"]["reading"].upper() in text
    assert plain(report["verdict"]["sentence"]) in plain(text)


def test_pdftoppm_renders_the_first_page(report, tmp_path):
    if not shutil.which("pdftoppm"):
        pytest.skip("poppler-utils is not installed (apt-get install poppler-utils)")
    subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", str(report["pdf_path"]), str(tmp_path / "page")],
                   check=True, capture_output=True)
    (page,) = tmp_path.glob("page*.png")
    width, height = png_size(page.read_bytes())
    assert height > width > 200  # A4 portrait
    from PIL import Image
    pixels = Image.open(page).convert("L")
    assert pixels.getextrema()[0] < 100  # there is dark ink on the page, not a blank sheet


def test_chromium_renders_the_page(report, tmp_path):
    from harness.report.browser import find_chromium, inspect_page
    if find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    shot = tmp_path / "report.png"
    page = inspect_page(report["html_path"], screenshot=shot)
    assert page["errors"] == []
    assert page["sections"] == SECTIONS
    assert page["verdict"].lower() == report["verdict"]["reading"]
    assert len(page["images"]) == len(FIGURES)
    for image in page["images"]:
        assert image["complete"] and image["naturalWidth"] > 0
        assert image["width"] > 300 and image["height"] > 100, image
    outside = [u for u in page["requests"] if not u.startswith(("data:", report["html_path"].resolve().as_uri()))]
    assert outside == []  # nothing fetched from the network or other files
    from PIL import Image, ImageStat
    screenshot = Image.open(shot).convert("L")
    assert screenshot.size[1] > 2000  # the whole page, not one screen
    assert ImageStat.Stat(screenshot).stddev[0] > 10  # not blank


# ---------------------------------------------------------------- gaps and failures

def test_a_failed_arm_still_renders_and_says_why(tmp_path):
    folder = copy_fixture(tmp_path)
    failed = json.loads((FIXTURES / "failed_arm_summary.json").read_text())
    arm_dir = folder / f"chain_sum__{failed['algo']}__s{failed['seed']}"
    (arm_dir / "summary.json").write_text(json.dumps(failed))
    rows = (arm_dir / "steps.jsonl").read_text().splitlines()
    (arm_dir / "steps.jsonl").write_text("\n".join(rows[:2]) + "\n")
    (arm_dir / "env.json").unlink()
    html_path, _ = build_report(folder, tmp_path / "out", pdf=False)
    html = html_path.read_text()
    assert "did not finish" in html
    assert failed["error"] in html
    assert '<span class="tag oom">oom</span>' in html
    assert "drawn dashed" in html
    assert "not drawn" not in html
    cmp = load_comparison(folder)
    v = verdict_section(cmp)
    assert v["seeds"]["ppo"] == len(cmp.seeds) - 1  # ratios use the finished arms only


def test_an_algorithm_with_no_finished_arm_is_inconclusive_with_the_reason(tmp_path):
    folder = copy_fixture(tmp_path)
    for arm_dir in folder.glob("*__ppo__*"):
        (arm_dir / "summary.json").write_text(json.dumps({"algo": "ppo", "status": "failed",
                                                          "error": "arm process exited with status -9"}))
    shutil.rmtree(next(folder.glob("*__ppo__s0")))  # one never even started
    html = render_html(folder)
    cmp = load_comparison(folder)
    v = verdict_section(cmp)
    assert v["reading"] == INCONCLUSIVE
    assert "arm process exited with status -9" in v["sentence"]
    assert "not started" in html
    assert "no finished arm" in html


def test_a_bare_plan_and_a_single_algorithm_still_render(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "comparison.json").write_text(json.dumps({"algos": ["grpo", "ppo"], "seeds": [0], "arms": [
        {"algo": "grpo", "seed": 0, "dir": "g"}, {"algo": "ppo", "seed": 0, "dir": "p"}]}))
    html = render_html(bare)
    assert '<div class="reading">inconclusive</div>' in html and "not started: no summary.json" in html
    assert "Memory: exact accounting by model and category, and measured peaks: not drawn: no arm recorded memory" in html

    single = copy_fixture(tmp_path)
    plan = json.loads((single / "comparison.json").read_text())
    plan.update(algos=["grpo"], arms=[a for a in plan["arms"] if a["algo"] == "grpo"])
    (single / "comparison.json").write_text(json.dumps(plan))
    html = render_html(single)
    assert "a verdict needs two algorithms; this comparison ran only grpo" in html
    assert "not drawn" not in html


def test_gpu_figures_when_present_and_the_allocator_peak_decides(tmp_path):
    folder = copy_fixture(tmp_path)
    gib = 1024 ** 3

    def add_gpu(summary):
        scale = 1.0 if summary["algo"] == "grpo" else 2.0
        summary["mem"]["measured"] = {
            "rss_peak_net": 10 * 1024 ** 2, "cuda_allocated_peak": {"generate": 3 * gib * scale, "update": 5 * gib * scale},
            "cuda_reserved_peak": {"update": 6 * gib * scale},
            "nvml": {"used_peak": 7 * gib * scale, "process_peak": 6.5 * gib * scale, "util_mean": 0.8,
                     "power_mean_w": 400, "energy_j": 1e5}}
    edit_summaries(folder, add_gpu)
    v = verdict_section(load_comparison(folder))
    assert v["primary"]["key"] == "mem_cuda_allocated"
    rows = {r["key"]: r for r in v["rows"]}
    assert rows["mem_cuda_allocated"]["ratio_est"].mean == pytest.approx(0.5)
    assert rows["mem_nvml_used"]["ratio_est"].mean == pytest.approx(0.5)
    assert rows["mem_cuda_allocated"]["top"]["value"] == "5,120.0"  # MiB
    assert "CUDA allocator peak" in v["sentence"]


def test_lm_eval_results_render_when_present(tmp_path):
    folder = copy_fixture(tmp_path)

    def add_lm_eval(summary):  # the shape harness.evaluate.score_policy writes
        gsm8k = {"gsm8k": {"results": {"gsm8k": {"exact_match,strict-match": 0.1}}, "seconds": 3.0}}
        summary["eval"]["lm_eval"] = {
            "base": {"pass@1": 0.2, "maj@k": 0.25, "pass@k": 0.4, "k": 8, "n": 200, "extra": gsm8k},
            "final": {"pass@1": 0.3, "maj@k": 0.35, "pass@k": 0.5, "k": 8, "n": 200,
                      "extra": {"mmlu": "not available: no connection to the Hub"}}}
    edit_summaries(folder, add_lm_eval)
    accuracy = content.accuracy_section(load_comparison(folder))
    assert accuracy["lm_eval"] is not None and accuracy["lm_metrics"] == ["pass@1", "maj@8", "pass@8"]
    first = accuracy["lm_eval"][0]
    assert first["when"] == "before"
    assert [c["value"] for c in first["metrics"]] == ["20.0%", "25.0%", "40.0%"]
    extra = {t["name"]: t for t in accuracy["lm_extra"]}
    assert extra["gsm8k"]["metrics"] == ["exact_match,strict-match"] and len(extra["gsm8k"]["rows"]) == 2
    assert extra["mmlu"]["why_not"] == "not available: no connection to the Hub"
    html = render_html(folder)
    assert "maj@8" in html and "lm-eval benchmark: gsm8k" in html and "recorded no lm-eval results" not in html


def test_target_accuracy_and_time_to_reach_it(tmp_path):
    folder = copy_fixture(tmp_path)
    # every arm: base 10%, then 30% at its second logged step, 50% at the end
    for arm_dir in folder.glob("*__*__s*"):
        summary = json.loads((arm_dir / "summary.json").read_text())
        summary["eval"]["base"]["accuracy"], summary["eval"]["final"]["accuracy"] = 0.1, 0.5
        (arm_dir / "summary.json").write_text(json.dumps(summary))
        rows = [json.loads(line) for line in (arm_dir / "steps.jsonl").read_text().splitlines()]
        for row in rows:
            row.pop("eval/accuracy", None)
        rows[1]["eval/accuracy"] = 0.3
        (arm_dir / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmp = load_comparison(folder)
    v = verdict_section(cmp, target=0.3)
    rows = {r["key"]: r for r in v["rows"]}
    grpo = [a.steps.iloc[1] for a in cmp.arms if a.algo == "grpo"]
    assert rows["to_target_completions"]["top_est"].mean == pytest.approx(sum(v["completions"] for v in grpo) / len(grpo))
    assert rows["to_target_wall"]["top_est"].mean == pytest.approx(sum(v["wall"] for v in grpo) / len(grpo))
    assert rows["to_target_completions"]["ratio_est"].mean == pytest.approx(1.0)  # same completions per step
    assert v["target"]["source"] == "set with --target"
    default = verdict_section(cmp)
    assert default["target"]["value"] == 0.5 and "lowest final" in default["target"]["source"]


def test_missing_keys_say_not_measured(tmp_path):
    folder = copy_fixture(tmp_path)

    def strip(summary):
        summary.pop("tput", None)
        summary["eval"].pop("lm_eval", None)
        summary["mem"]["measured"] = {}
        summary["time"].pop("phases_per_step_s", None)
    edit_summaries(folder, strip)
    for steps in folder.glob("*/steps.jsonl"):
        rows = [json.loads(line) for line in steps.read_text().splitlines()]
        steps.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("loss/")}) + "\n" for r in rows))
    html = render_html(folder)
    v = verdict_section(load_comparison(folder))
    rows = {r["key"]: r for r in v["rows"]}
    assert rows["samples_per_s"]["top"]["value"] == "—" and rows["samples_per_s"]["top"]["interval"] == "not measured"
    assert "Time per step by phase: not drawn: no finished arm recorded phase times" in html
    assert "Throughput: not drawn" in html
    assert "not measured: these arms recorded no lm-eval results" in html


# ---------------------------------------------------------------- the command

def test_cli_report_prints_the_path_and_rejects_a_bad_folder(tmp_path, capsys):
    from harness.cli import main
    code = main(["report", str(COMPARE), "--out", str(tmp_path), "--no-pdf"])
    assert code == 0
    assert f"report: {tmp_path / (COMPARE.name + '.html')}" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a comparison folder" in err
