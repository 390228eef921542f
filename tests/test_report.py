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
from harness.report.stats import AT_LEAST, INCONCLUSIVE, NOT_REPRODUCED, NOT_WORSE, REPRODUCED, WORSE
from harness.report.verdict import terminal_lines, verdict_section
from harness.results.headline import MEMORY_FIGURES, TIME_FIGURES
from harness.results.units import GIB, MIB

FIXTURES = Path(__file__).parent / "fixtures" / "report"
COMPARE = FIXTURES / "compare"
SECTIONS = ["verdict", "arms", "accuracy", "figures", "at-scale", "health", "method"]
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


# ---------------------------------------------------------------- rendering the committed fixture

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The page and its figure files (the PDF, seconds of WeasyPrint, has its own fixture in the slow lane)."""
    out = tmp_path_factory.mktemp("reports")
    html_path, _ = build_report(COMPARE, out, pdf=False)
    return {"html_path": html_path, "html": html_path.read_text(), "verdict": verdict_section(load_comparison(COMPARE))}


@pytest.fixture(scope="module")
def pdf_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("pdf-reports")
    html_path, pdf_path = build_report(COMPARE, out)
    return {"html_path": html_path, "pdf_path": pdf_path, "verdict": verdict_section(load_comparison(COMPARE))}


def test_at_scale_section_renders_at_scale_json_and_says_why_when_there_is_none(report, tmp_path):
    from harness.report.at_scale import at_scale_section
    data = json.loads((COMPARE / "at_scale.json").read_text())
    (name, grid), = data["models"].items()
    low, high = grid["ratio_range"]
    assert f"{name}: GRPO/PPO from {low:.3f} to {high:.3f}" in plain(report["html"])
    assert plain(report["html"]).count("<tr>") >= 32  # a row per grid cell
    folder = copy_fixture(tmp_path)
    (folder / "at_scale.json").unlink()
    section = at_scale_section(folder)
    assert section["models"] == [] and section["why_not"].startswith("not estimated")


def test_report_files_are_named_after_the_comparison(report):
    assert report["html_path"].name == f"{COMPARE.name}.html"


@pytest.mark.slow  # PDF
def test_the_pdf_is_named_after_the_comparison(pdf_report):
    assert pdf_report["html_path"].name == f"{COMPARE.name}.html"
    assert pdf_report["pdf_path"] is not None and pdf_report["pdf_path"].name == f"{COMPARE.name}.pdf"
    assert pdf_report["pdf_path"].read_bytes()[:5] == b"%PDF-"


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
    # The fixture was recorded before plans were saved and before live-tensor peaks: no target, no regime, and its
    # at_scale.json holds this setup's own grid, not a recipe pair: neither compute nor memory can be read
    # (inconclusive), while quality (-2.0 pts [-4.2, +0.2]) is not worse at 5.
    assert v["reading"] == INCONCLUSIVE
    assert "-2.0 pts [-4.2, +0.2]" in v["sentence"] and "memory not read" in v["sentence"]
    assert "holds no recipe pair of published setups" in v["sentence"]
    assert f'<div class="reading">{v["reading"]}</div>' in html
    assert v["sentence"].split(":")[0].lower() == v["reading"]
    assert plain(v["sentence"]).replace("'", "&#39;") in plain(html)
    assert f"{len(plan['seeds'])} seeds" in html
    # every memory and time measure is kept apart, with GRPO/PPO ratios beside the claim
    for _, label, _ in MEMORY_FIGURES + TIME_FIGURES:
        assert label in html
    assert "sampled completions to reach" in html and "training time to reach" in html and "memory × time" in html
    assert "not measured: no NVIDIA GPU" in html  # the reason, from the summaries
    assert [p["name"] for p in v["primary"]] == ["quality", "samples", "compute", "mem × time", "arith", "at scale",
                                                 "machine"]
    assert [p["name"] for p in v["primary"] if p["verdict"]] == ["quality", "compute"]  # memory is not read here
    assert "log scale" in html and "geometric mean of the per-seed ratios" in html and "paired t over seeds" in html
    assert "No plan was saved with this comparison" in html  # made before plans: defaults, flagged
    assert "no interval method was named before the run" in html  # and so was its interval method
    assert "maj@8" in html and "pass@8" in html  # lm-eval scores, as the runner writes them


def test_method_section_marks_differing_config_fields(report):
    html = report["html"]
    assert html.count('<tr class="differs">') >= 2  # at least the algorithm and its options
    assert '<td class="cfg">algo</td>' in html
    for line in json.loads((COMPARE / "comparison.json").read_text())["fairness"]:
        assert line.replace("'", "&#39;") in html
    env = json.loads(next(COMPARE.glob("*/env.json")).read_text())
    assert env["torch"] in html and env["git_commit"] in html


@pytest.mark.slow  # PDF
def test_pdf_has_pages_and_the_verdict(pdf_report):
    if not shutil.which("pdfinfo") or not shutil.which("pdftotext"):
        pytest.skip("poppler-utils is not installed (apt-get install poppler-utils)")
    info = subprocess.run(["pdfinfo", str(pdf_report["pdf_path"])], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
    assert pages > 1
    text = subprocess.run(["pdftotext", str(pdf_report["pdf_path"]), "-"], capture_output=True, text=True, check=True).stdout
    assert pdf_report["verdict"]["reading"].upper() in text
    # the PDF breaks lines after a hyphen or a slash ("held-" / "out" joins to "heldout", "Qwen/" / "Qwen2.5"
    # gains a space): compare the letters alone, without hyphens or white space
    def letters(t: str) -> str:
        return re.sub(r"[\s-]", "", t)
    assert letters(pdf_report["verdict"]["sentence"]) in letters(text)


@pytest.mark.slow  # PDF
def test_pdftoppm_renders_the_first_page(pdf_report, tmp_path):
    if not shutil.which("pdftoppm"):
        pytest.skip("poppler-utils is not installed (apt-get install poppler-utils)")
    subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", str(pdf_report["pdf_path"]), str(tmp_path / "page")],
                   check=True, capture_output=True)
    (page,) = tmp_path.glob("page*.png")
    width, height = png_size(page.read_bytes())
    assert height > width > 200  # A4 portrait
    from PIL import Image
    pixels = Image.open(page).convert("L")
    assert pixels.getextrema()[0] < 100  # there is dark ink on the page, not a blank sheet


@pytest.mark.slow  # Chromium
def test_chromium_renders_the_page(report, tmp_path):
    from browser import find_chromium, inspect_page
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
    assert "Memory: peak of live tensors in each phase of a step, and measured peaks: not drawn: no arm recorded memory" in html

    single = copy_fixture(tmp_path)
    plan = json.loads((single / "comparison.json").read_text())
    plan.update(algos=["grpo"], arms=[a for a in plan["arms"] if a["algo"] == "grpo"])
    (single / "comparison.json").write_text(json.dumps(plan))
    html = render_html(single)
    assert "a verdict needs two algorithms; this comparison ran only grpo" in html
    assert "not drawn" not in html


def test_gpu_figures_when_present_and_the_allocator_peak_decides(tmp_path):
    folder = copy_fixture(tmp_path)

    def add_gpu(summary):
        scale = 1.0 if summary["algo"] == "grpo" else 2.0
        summary["mem"]["measured"] = {
            "rss_peak_net": 10 * MIB, "cuda_allocated_peak": {"generate": 3 * GIB * scale, "update": 5 * GIB * scale},
            "cuda_reserved_peak": {"update": 6 * GIB * scale},
            "nvml": {"used_peak": 7 * GIB * scale, "process_peak": 6.5 * GIB * scale, "util_mean": 0.8,
                     "power_mean_w": 400, "energy_j": 1e5}}
    edit_summaries(folder, add_gpu)
    v = verdict_section(load_comparison(folder))
    rows = {r["key"]: r for r in v["rows"]}
    # on a GPU this machine's peak is the allocator's, and the row says which
    assert rows["memory_machine"]["label"] == "this machine's peak, measured (CUDA allocator peak)"
    assert rows["memory_machine"]["ratio_est"].mean == pytest.approx(0.5)
    assert rows["mem_cuda_allocated"]["ratio_est"].mean == pytest.approx(0.5)
    assert rows["mem_nvml_used"]["ratio_est"].mean == pytest.approx(0.5)
    assert rows["mem_cuda_allocated"]["top"]["value"] == "5,120.0"  # MiB
    assert "CUDA allocator peak" in rows["to_target_memory"]["label"]


def test_lm_eval_results_render_when_present(tmp_path):
    folder = copy_fixture(tmp_path)

    def add_lm_eval(summary):  # the shape harness.train.lm_eval_bridge.score_policy writes
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


def with_plan(folder: Path, **verdict) -> None:
    """Save a plan in the comparison's comparison.json, as `harness compare` does before the run."""
    from harness.commands.plan import make_plan
    from harness.config.load import load_config
    config = load_config("smoke", overrides=[f"verdict.{k}={v}" for k, v in verdict.items()])
    comparison = json.loads((folder / "comparison.json").read_text())
    comparison["plan"] = make_plan(config, len(comparison["seeds"]))
    (folder / "comparison.json").write_text(json.dumps(comparison))


def test_target_accuracy_is_the_plans_and_time_leaves_evaluations_out(tmp_path):
    folder = copy_fixture(tmp_path)
    # every arm: base 10%, then 30% at its second logged step, 50% at the end; 2 s of evaluation per eval row
    for arm_dir in folder.glob("*__*__s*"):
        summary = json.loads((arm_dir / "summary.json").read_text())
        summary["eval"]["base"]["accuracy"], summary["eval"]["final"]["accuracy"] = 0.1, 0.5
        (arm_dir / "summary.json").write_text(json.dumps(summary))
        rows = [json.loads(line) for line in (arm_dir / "steps.jsonl").read_text().splitlines()]
        for row in rows:
            row.pop("eval/accuracy", None)
        rows[1]["eval/accuracy"] = 0.3
        rows[0]["time/eval"], rows[1]["time/eval"] = 2.0, 2.0
        (arm_dir / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with_plan(folder, target_gain=0.2)  # fixed before the run: the start (10%) + 20 points
    cmp = load_comparison(folder)
    v = verdict_section(cmp)
    assert v["target"]["value"] == pytest.approx(0.3) and "fixed in the plan before the run" in v["target"]["source"]
    rows = {r["key"]: r for r in v["rows"]}
    grpo = [a.steps.iloc[1] for a in cmp.arms if a.algo == "grpo"]
    assert rows["to_target_completions"]["top_est"].mean == pytest.approx(sum(r["completions"] for r in grpo) / len(grpo))
    # training time to the target: the wall clock at that row less the 2 + 2 s of evaluations before it
    assert rows["to_target_train"]["top_est"].mean == pytest.approx(sum(r["wall"] - 4.0 for r in grpo) / len(grpo))
    assert rows["to_target_completions"]["ratio_est"].mean == pytest.approx(1.0)  # same completions per step
    with_plan(folder, target_accuracy=0.5)
    assert verdict_section(load_comparison(folder))["target"]["value"] == 0.5
    after = verdict_section(load_comparison(folder), target=0.3)
    assert after["target"]["value"] == 0.3 and "after the run" in after["target"]["source"]


def set_curves(folder: Path, reached: dict[tuple[str, int], int | None]) -> None:
    """Every arm: base 10%, held-out accuracy 30% (the target) first at its step `reached[(algo, seed)]`
    (None: never, 20% to the end), 1 s of training per step, 128 completions per step."""
    for arm_dir in folder.glob("*__*__s*"):
        summary = json.loads((arm_dir / "summary.json").read_text())
        at = reached[(summary["algo"], summary["seed"])]
        rows = [json.loads(line) for line in (arm_dir / "steps.jsonl").read_text().splitlines()]
        steps = [{"step": s, "completions": 128 * s, "wall": float(s), "train_s": float(s),
                  "eval/accuracy": 0.3 if at is not None and s >= at else 0.2} for s in range(1, 11)]
        (arm_dir / "steps.jsonl").write_text("".join(json.dumps({**rows[0], **r}) + "\n" for r in steps))
        summary["eval"]["base"]["accuracy"] = 0.1
        summary["eval"]["final"]["accuracy"] = 0.3 if at is not None else 0.2
        summary["budget"]["used"]["completions"], summary["wall_s"] = 1280, 10.0
        summary["time"]["train_s"], summary["time"]["eval_s"] = 10.0, 0.0
        (arm_dir / "summary.json").write_text(json.dumps(summary))


def test_resources_to_the_target_count_a_seed_that_never_reaches_it_at_its_budget(tmp_path):
    folder = copy_fixture(tmp_path)
    # GRPO reaches 30% at steps 2 and 4 and never in seed 2 (10 steps of budget); PPO at step 4 in every seed
    set_curves(folder, {("grpo", 0): 2, ("grpo", 1): 4, ("grpo", 2): None, ("ppo", 0): 4, ("ppo", 1): 4,
                        ("ppo", 2): 4})
    add_live_peaks(folder, peaks={(a, s): 1.0 if a == "grpo" else 2.0 for a in ("grpo", "ppo") for s in range(3)})
    with_plan(folder, target_gain=0.2)  # the start (10%) + 20 points
    v = verdict_section(load_comparison(folder))
    rows = {r["key"]: r for r in v["rows"]}
    # per seed: completions 256/512, 512/512 and at least 1280/512 (seed 2 counted at its whole budget, not dropped)
    completions = rows["to_target_completions"]
    expected = math.exp((math.log(0.5) + math.log(1.0) + math.log(2.5)) / 3)  # 1.0772
    assert completions["ratio_est"].mean == pytest.approx(expected) and completions["ratio_est"].bound == AT_LEAST
    assert completions["ratio"]["value"] == f"≥ {expected:.3f}"
    assert "per seed: s0 0.50, s1 1.00, s2 ≥ 2.50" in completions["note"]
    assert "never reached the target in seed 2, counted at its budget" in completions["ratio_est"].note
    assert completions["top"] == {"value": "≥ 683",  # (256 + 512 + 1,280) / 3
            "interval": "2 of 3 seeds reached it; the others at their budget"}
    assert completions["band"] == [0.8, 1.2] and completions["reading"] == INCONCLUSIVE  # a lower bound, read one-sided
    # training time (1 s a step): the same ratios; memory x time: x the peak ratio 1/2 in every seed (deterministic)
    assert rows["to_target_train"]["ratio_est"].mean == pytest.approx(expected)
    assert rows["to_target_memory"]["ratio_est"].deterministic and rows["to_target_memory"]["ratio_est"].mean == 0.5
    assert rows["to_target_memory_time"]["ratio_est"].mean == pytest.approx(expected / 2)
    assert rows["to_target_memory_time"]["ratio_est"].bound == AT_LEAST
    assert v["compute"]["row"] is rows["to_target_train"] and v["compute"]["reading"] == INCONCLUSIVE
    assert "GRPO needed at least 1.08 of PPO's training time to reach 30.0%" in v["sentence"]
    # every seed of GRPO short of the target, PPO at step 4: at least 10/4 in each: no spread, no interval
    set_curves(folder, {("grpo", s): None for s in range(3)} | {("ppo", s): 4 for s in range(3)})
    rows = {r["key"]: r for r in verdict_section(load_comparison(folder))["rows"]}
    assert rows["to_target_train"]["ratio"]["value"] == "≥ 2.500" and rows["to_target_train"]["reading"] == INCONCLUSIVE
    # neither arm reached it in any seed: no ratio, said why
    set_curves(folder, {(a, s): None for a in ("grpo", "ppo") for s in range(3)})
    row = {r["key"]: r for r in verdict_section(load_comparison(folder))["rows"]}["to_target_train"]
    assert row["ratio_est"].mean is None and "neither arm reached the target in seeds 0, 1, 2" in row["ratio_est"].note


def test_a_plan_saved_before_plans_named_their_interval_still_renders_flagged(tmp_path):
    folder = copy_fixture(tmp_path)
    with_plan(folder)
    comparison = json.loads((folder / "comparison.json").read_text())
    for key in ("interval", "completions_band", "censoring", "verdict_rule"):  # what a version-1 plan lacked
        comparison["plan"].pop(key)
    comparison["plan"]["version"] = 1
    (folder / "comparison.json").write_text(json.dumps(comparison))
    v = verdict_section(load_comparison(folder))
    assert v["plan"]["interval"] == "paired_t" and v["plan"]["completions_band"] == [0.8, 1.2]
    assert "no interval method was named before the run (a plan saved before plans named one)" in v["plan"]["interval_flag"]
    assert "(not named in the plan)" in terminal_lines(v)[0]
    html = plain(render_html(folder))
    assert "Quality interval: no interval method was named before the run" in html


def test_without_a_plan_no_target_is_picked_from_the_results():
    v = verdict_section(load_comparison(COMPARE))
    assert v["target"]["value"] is None and "no target was fixed before this run" in v["target"]["source"]
    rows = {r["key"]: r for r in v["rows"]}
    assert rows["to_target_completions"]["ratio_est"].mean is None


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


# ---------------------------------------------------------------- the verdict's figures, from hand-built summaries


def solved_first(k: int, prompts: int = 200) -> list[int]:
    """Per-prompt results of an arm that solved the first k of `prompts` prompts."""
    return [1] * k + [0] * (prompts - k)


def set_finals(folder: Path, solved: dict[tuple[str, int], int]) -> None:
    def edit(summary):
        k = solved[(summary["algo"], summary["seed"])]
        summary["eval"]["final"].update(accuracy=k / 200, n=200, per_prompt=solved_first(k))
    edit_summaries(folder, edit)


def test_quality_is_a_paired_non_inferiority_test_at_the_plans_margin(tmp_path):
    folder = copy_fixture(tmp_path)
    # PPO solves 100 of 200 prompts in every seed, GRPO 98, 96, 97: d = -0.010, -0.020, -0.015
    set_finals(folder, {("ppo", s): 100 for s in range(3)} | {("grpo", 0): 98, ("grpo", 1): 96, ("grpo", 2): 97})
    # mean -0.015, sd 0.005, se 0.005 / sqrt(3) = 0.0028868, t(0.975, 2) = 4.3027: half-width 0.012421
    for margin, reading in [(0.05, NOT_WORSE), (0.01, INCONCLUSIVE), (0.002, WORSE)]:
        with_plan(folder, margin=margin)
        quality = verdict_section(load_comparison(folder))["quality"]
        assert quality["reading"] == reading, margin
        e = quality["estimate"]
        assert (e.mean, e.lo, e.hi) == pytest.approx((-0.015, -0.015 - 0.012421, -0.015 + 0.012421), abs=1e-5)
        assert "paired t over seeds (3 seeds, 2 df)" in e.method
        # the bootstrap over prompts x seeds adds the prompts' uncertainty: never narrower than the paired t
        boot = quality["bootstrap"]
        assert boot.has_interval and boot.hi - boot.lo >= e.hi - e.lo
    assert "the interval is 2.5 points wide" in verdict_section(load_comparison(folder))["quality"]["width"]


def test_the_interval_is_the_one_the_plan_named_never_a_fallback(tmp_path):
    folder = copy_fixture(tmp_path)
    # every seed: GRPO misses prompts 98 and 99 that PPO solves. The paired t has no spread (no interval), and the
    # plan named it: quality is inconclusive, with no switch to the other interval after the fact
    set_finals(folder, {(a, s): 98 if a == "grpo" else 100 for a in ("grpo", "ppo") for s in range(3)})
    with_plan(folder, margin=0.05)
    quality = verdict_section(load_comparison(folder))["quality"]
    assert not quality["estimate"].has_interval and "no spread" in quality["estimate"].note
    assert quality["reading"] == INCONCLUSIVE and quality["method"] == "paired t over seeds"
    # named before the run, the bootstrap: its rows are identical, so only the prompts vary: Var = P var_pop(c) / P^2
    # with c the column means (two -1s in 200): 200 (0.01 - 0.0001) / 200^2 = 4.95e-5; x S/(S-1) = 1.5 -> 7.425e-5,
    # se 0.0086168, t(0.975, 2) 4.3027: half-width 0.037076 around -0.01
    with_plan(folder, margin=0.05, interval="bootstrap")
    assert json.loads((folder / "comparison.json").read_text())["plan"]["interval"] == "bootstrap"
    quality = verdict_section(load_comparison(folder))["quality"]
    e = quality["estimate"]
    assert e.method.startswith("two-way bootstrap over prompts × seeds (3 seeds × 200 prompts)")
    assert (e.lo, e.hi) == pytest.approx((-0.01 - 0.037076, -0.01 + 0.037076), abs=1e-5)
    assert quality["reading"] == NOT_WORSE  # -0.0471 > -0.05
    html = plain(render_html(folder))
    assert "Quality interval: <b>two-way bootstrap over prompts × seeds</b> (verdict.interval), named before the run" in html


def add_live_peaks(folder: Path, activations: float = 0.7, peaks: dict | None = None) -> None:
    """What the live-tensor probe writes (summary.mem.live), GRPO about half of PPO, with `activations` of each
    peak phase's bytes in activations and the rest in model state, and the arithmetic model state
    (summary.mem.arithmetic): policy + reference for GRPO, + a same-size critic for PPO."""
    peaks = peaks or {("grpo", 0): 50, ("grpo", 1): 51, ("grpo", 2): 52, ("ppo", 0): 100, ("ppo", 1): 100,
                      ("ppo", 2): 101}

    def edit(summary):
        phase = "policy_update" if summary["algo"] == "grpo" else "critic_update"
        peak = round(peaks[(summary["algo"], summary["seed"])] * MIB)
        state = round(peak * (1 - activations))
        categories = {"total": peak, "activations": peak - state, "params": state // 4, "grads": state // 4,
                      "optimizer": state - 2 * (state // 4)}
        summary["mem"]["live"] = {"peak": peak, "peak_phase": phase, "phases": {phase: categories}}
        state = (16 + 4 + (16 if summary["algo"] == "ppo" else 0)) * MIB  # 4 MiB of fp32 weights: 16 trained, 4 frozen
        summary["mem"]["arithmetic"] = {"models": {}, "model_state_total": state}
    edit_summaries(folder, edit)


def test_memory_is_read_by_regime_in_three_labelled_rows(tmp_path):
    folder = copy_fixture(tmp_path)
    add_live_peaks(folder, activations=0.7)
    with_plan(folder, band=0.05)
    v = verdict_section(load_comparison(folder))
    rows = {r["key"]: r for r in v["rows"]}
    memory = [r for r in v["rows"] if r["group"] == "Memory, read by regime"]
    assert [r["regime"] for r in memory] == ["model state", "at scale", "this machine"]
    assert [r["kind"] for r in memory] == ["arithmetic", "estimated", "measured"]
    # per-seed ratios 50/100, 51/100, 52/101: their geometric mean, paired by seed
    machine = rows["memory_machine"]
    expected = math.exp((math.log(0.50) + math.log(0.51) + math.log(52 / 101)) / 3)
    assert machine["ratio_est"].mean == pytest.approx(expected)
    assert machine["label"] == "this machine's peak, measured (live-tensor step peak)"
    # 70% of each peak phase is activations: activation-bound, so this machine's ratio is shown and never read
    assert v["memory"]["regime"]["bound"] == "activation-bound"
    assert machine["note"].startswith("activation-bound: activations 70% of GRPO's peak (policy_update), 70% of "
                                      "PPO's peak (critic_update)")
    assert machine["reading"] == "—" and rows["to_target_memory_time"]["reading"] == "—"
    assert 0.45 < machine["ratio_est"].lo < machine["ratio_est"].hi < 0.55  # inside the band, still not read
    assert v["memory"]["row"] is None and "memory not read" in v["sentence"]  # and no recipe pair to read instead
    assert rows["memory_model_state"]["ratio_est"].mean == pytest.approx(20 / 36)
    assert not rows["memory_model_state"]["ratio_est"].has_interval and rows["memory_model_state"]["reading"] == "—"
    assert "at_scale.json holds no recipe pair of published setups (Qwen/Qwen2.5-7B: 0.720–0.820 for this " \
           "comparison's own setup" in rows["memory_at_scale"]["note"]
    lines = "\n".join(terminal_lines(v))
    assert "  machine    GRPO/PPO this machine's peak, measured (live-tensor step peak): 0.508 [" in lines
    # 70% model state: model-state-bound, the claim's regime: the measured peak is read, and the verdict rests on it
    add_live_peaks(folder, activations=0.3)
    v = verdict_section(load_comparison(folder))
    machine = {r["key"]: r for r in v["rows"]}["memory_machine"]
    assert v["memory"]["regime"]["text"].startswith("model-state-bound: model state 70% of GRPO's peak")
    assert machine["reading"] == REPRODUCED and v["memory"]["row"] is machine and v["memory"]["reading"] == REPRODUCED
    assert "on this machine GRPO needed 0.51 of PPO's measured peak (95% interval" in v["sentence"]
    assert "the embedded tiny Qwen2 (hidden 128, 4 layers), float32 on cpu, 256 completions per step" in v["sentence"]
    assert " *machine " in "\n".join(terminal_lines(v))  # marked as a reading the verdict rests on


def test_a_deterministic_figure_gets_no_interval(tmp_path):
    folder = copy_fixture(tmp_path)
    # fixed-shape tracked steps: the same live-tensor peak on every seed (1.9 and 2.3 MiB)
    add_live_peaks(folder, peaks={(a, s): 1.9 if a == "grpo" else 2.3 for a in ("grpo", "ppo") for s in range(3)})
    v = verdict_section(load_comparison(folder))
    rows = {r["key"]: r for r in v["rows"]}
    for key in ("mem_live_peak", "memory_machine"):
        row = rows[key]
        assert row["ratio_est"].deterministic and not row["ratio_est"].has_interval, key
        assert row["ratio_est"].mean == pytest.approx(round(1.9 * MIB) / round(2.3 * MIB))
        assert row["ratio"]["interval"] == "deterministic: the same on every seed, no interval"
        assert not row["top_est"].has_interval and row["top_est"].deterministic
    row = rows["mem_model_state"]
    assert row["kind"] == "arithmetic" and row["reading"] == "—"  # shown, never read
    assert not row["top_est"].has_interval and not row["bottom_est"].has_interval and not row["ratio_est"].has_interval
    assert row["ratio_est"].mean == pytest.approx(20 / 36)
    assert row["ratio"]["interval"] == "arithmetic: follows from the model sizes"
    arith = next(p for p in v["primary"] if p["name"] == "arith")
    assert arith["value"] == "0.556" and arith["interval"] == "arithmetic: follows from the model sizes"
    assert arith["reading"] == "—"
    # one seed's peak differs (an older run without fixed shapes): measured, with an interval
    add_live_peaks(folder, peaks={("grpo", 0): 1.9, ("grpo", 1): 2.0, ("grpo", 2): 1.9, ("ppo", 0): 2.3,
                                  ("ppo", 1): 2.3, ("ppo", 2): 2.3})
    assert {r["key"]: r for r in verdict_section(load_comparison(folder))["rows"]}["memory_machine"]["ratio_est"] \
        .has_interval


def write_recipe_pair(folder: Path, ratio: float = 0.55, words: str = "") -> None:
    """at_scale.json with a recipe pair, as `harness estimate --recipe A,B` reports one (`words`: how
    harness.estimate.at_scale.recipe_estimate records the comparison's adapters over it)."""
    data = json.loads((folder / "at_scale.json").read_text())
    recipe = {"name": "verl-qwen2-7b-gsm8k"}  # by name, as harness.estimate.at_scale.write_at_scale writes them
    data["recipes"] = {"verl-qwen2-7b-gsm8k": {
        "ratio": {"peak": {"value": ratio, "numerator": "grpo", "denominator": "ppo"}},
        "arms": {"grpo": {"peak": 40 * 2 ** 30, "recipe": recipe}, "ppo": {"peak": 40 / ratio * 2 ** 30, "recipe": recipe}},
        "setup": {"world_size": 8}, "recipe": {**recipe, **({"words": words} if words else {})}}}
    (folder / "at_scale.json").write_text(json.dumps(data))


def test_the_named_at_scale_pair_is_read_when_this_machine_is_activation_bound(tmp_path):
    folder = copy_fixture(tmp_path)
    add_live_peaks(folder, activations=0.7)
    write_recipe_pair(folder, 0.55)
    with_plan(folder)
    v = verdict_section(load_comparison(folder))
    scale = {r["key"]: r for r in v["rows"]}["memory_at_scale"]
    assert scale["label"] == ("per-GPU step peak at scale (estimated, verl-qwen2-7b-gsm8k, "
                              "per GPU of 8 (harness estimate on fake tensors))")
    assert scale["ratio_est"].mean == 0.55 and not scale["ratio_est"].has_interval and scale["reading"] == REPRODUCED
    assert scale["top"]["value"] == "40.0" and scale["unit"] == "GiB"
    assert v["memory"]["row"] is scale and v["memory"]["reading"] == REPRODUCED
    assert "at scale, GRPO needs 0.55 of PPO's per-GPU step peak (estimated, verl-qwen2-7b-gsm8k" in v["sentence"]
    html = plain(render_html(folder))
    assert "per-GPU step peak at scale (estimated, verl-qwen2-7b-gsm8k" in html
    write_recipe_pair(folder, 0.82)
    assert verdict_section(load_comparison(folder))["memory"]["reading"] == NOT_REPRODUCED
    # a LoRA comparison's recipe, estimated with its adapters: the row says so
    write_recipe_pair(folder, 0.82, words="with this comparison's LoRA (rank 8, alpha 16.0) in place of its full "
                                          "fine-tuning")
    scale = {r["key"]: r for r in verdict_section(load_comparison(folder))["rows"]}["memory_at_scale"]
    assert scale["label"] == ("per-GPU step peak at scale (estimated, verl-qwen2-7b-gsm8k with this comparison's "
                              "LoRA (rank 8, alpha 16.0) in place of its full fine-tuning, per GPU of 8 (harness "
                              "estimate on fake tensors))")


def test_no_positive_figure_gets_a_negative_bound(tmp_path):
    folder = copy_fixture(tmp_path)
    spread = {0: 1.0, 1: 30.0, 2: 900.0}  # seeds far apart: a linear t-interval would reach far below zero

    def edit(summary):
        summary["tput"]["samples_per_s"] = 10 * spread[summary["seed"]]
        summary["time"]["train_s"] = 5 * spread[summary["seed"]]
        summary["time"]["per_step_s"] = 0.1 * spread[summary["seed"]]
        summary["mem"]["measured"]["rss_peak_net"] = int(MIB * spread[summary["seed"]])
    edit_summaries(folder, edit)
    add_live_peaks(folder)
    with_plan(folder, target_accuracy=0.35)
    v = verdict_section(load_comparison(folder))
    checked = 0
    for row in v["rows"]:
        for est in (row["top_est"], row["bottom_est"], row["ratio_est"]):
            if est.has_interval and row["unit"] in ("MiB", "s", "count", "1/s"):
                assert est.lo >= 0, (row["key"], est)
                checked += 1
    assert checked > 20
    assert {r["key"]: r for r in v["rows"]}["wall"]["top_est"].lo > 0


def test_time_figures_leave_the_periodic_evaluations_out(tmp_path):
    # the fixture's summaries predate time.train_s: the time rows say evaluations are included
    old = {r["key"]: r for r in verdict_section(load_comparison(COMPARE))["rows"]}
    assert "periodic evaluations included: these arms recorded no time.train_s" in old["time_per_step"]["note"]
    folder = copy_fixture(tmp_path)

    def edit(summary):  # what the runner writes now: evaluation time kept apart
        summary["time"]["eval_s"] = 10.0
        summary["time"]["train_s"] = summary["wall_s"] - 10.0
    edit_summaries(folder, edit)
    cmp = load_comparison(folder)
    v = verdict_section(cmp)
    arm = cmp.arms[0]
    assert arm.row["wall"] == pytest.approx(arm.summary.wall_s - 10.0) and arm.row["time_basis"] == "train_s"
    rows = {r["key"]: r for r in v["rows"]}
    assert rows["wall"]["note"] == "training time for the whole budget; periodic evaluations left out"
    assert "periodic evaluations and live-tensor tracked steps left out" in rows["time_per_step"]["note"]


def test_the_plan_renders_in_the_report(tmp_path):
    folder = copy_fixture(tmp_path)
    with_plan(folder, margin=0.03)
    html = plain(render_html(folder))
    assert "The plan, fixed before the run" in html
    assert "Non-inferiority margin δ = <b>3.0 points</b>" in html
    assert "Minimum detectable difference" in html and "distinct test prompts" in html
