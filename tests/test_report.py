"""The comparison report: statistics and the verdict rule by hand, rendering from committed result
files, a failed arm, a real browser (headless Chromium) and the PDF through poppler."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.report import build_report, content, render_html
from harness.report.data import load_comparison
from harness.report.stats import INCONCLUSIVE, NOT_WORSE, REPRODUCED, WORSE
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
    # The fixture's arms were recorded before live-tensor peaks: no memory ratio to set beside the claim,
    # so the verdict cannot read it (inconclusive), while quality (-2.0 pts [-4.2, +0.2]) is not worse at 5.
    assert v["reading"] == INCONCLUSIVE
    assert "no GRPO/PPO memory ratio" in v["sentence"] and "-2.0 pts [-4.2, +0.2]" in v["sentence"]
    assert f'<div class="reading">{v["reading"]}</div>' in html
    assert v["sentence"].split(":")[0].lower() == v["reading"]
    assert plain(v["sentence"]).replace("'", "&#39;") in plain(html)
    assert f"{len(plan['seeds'])} seeds" in html
    # every memory and time measure is kept apart, with GRPO/PPO ratios beside the claim
    for _, label, _ in MEMORY_FIGURES + TIME_FIGURES:
        assert label in html
    assert "sampled completions to reach" in html and "training time to reach" in html
    assert "not measured: no NVIDIA GPU" in html  # the reason, from the summaries
    assert [p["name"] for p in v["primary"]] == ["quality", "memory", "compute", "arith"]
    assert "log scale" in html and "delta method" in html and "paired t over seeds" in html  # methods stated
    assert "No plan was saved with this comparison" in html  # made before plans: defaults, flagged
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
    # pdftotext joins a word broken at its hyphen across lines ("held-" / "out" -> "heldout"): compare without them
    assert plain(pdf_report["verdict"]["sentence"]).replace("-", "") in plain(text).replace("-", "")


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
    assert v["memory"]["key"] == "mem_cuda_allocated"  # no live-tensor peak in these summaries: the allocator next
    rows = {r["key"]: r for r in v["rows"]}
    assert rows["mem_cuda_allocated"]["ratio_est"].mean == pytest.approx(0.5)
    assert rows["mem_nvml_used"]["ratio_est"].mean == pytest.approx(0.5)
    assert rows["mem_cuda_allocated"]["top"]["value"] == "5,120.0"  # MiB
    assert "CUDA allocator peak" in v["sentence"]


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


def test_identical_seed_differences_fall_back_to_the_bootstrap_by_hand(tmp_path):
    folder = copy_fixture(tmp_path)
    # every seed: GRPO misses prompts 98 and 99 that PPO solves. The paired t has no spread (no interval);
    # the bootstrap's rows are identical, so only the prompts vary: Var = P var_pop(c) / P^2 with c the
    # column means (two -1s in 200): 200 (0.01 - 0.0001) / 200^2 = 4.95e-5; x S/(S-1) = 1.5 -> 7.425e-5,
    # se 0.0086168, t(0.975, 2) 4.3027: half-width 0.037076 around -0.01
    set_finals(folder, {(a, s): 98 if a == "grpo" else 100 for a in ("grpo", "ppo") for s in range(3)})
    with_plan(folder, margin=0.05)
    quality = verdict_section(load_comparison(folder))["quality"]
    assert not quality["paired_t"].has_interval and "no spread" in quality["paired_t"].note
    e = quality["estimate"]
    assert e.method.startswith("two-way bootstrap over prompts × seeds (3 seeds × 200 prompts)")
    assert (e.lo, e.hi) == pytest.approx((-0.01 - 0.037076, -0.01 + 0.037076), abs=1e-5)
    assert quality["reading"] == NOT_WORSE  # -0.0471 > -0.05


def add_live_peaks(folder: Path) -> None:
    """What the live-tensor probe writes (summary.mem.live), GRPO about half of PPO, and the arithmetic
    model state (summary.mem.arithmetic): policy + reference for GRPO, + a same-size critic for PPO."""
    peaks = {("grpo", 0): 50, ("grpo", 1): 51, ("grpo", 2): 52, ("ppo", 0): 100, ("ppo", 1): 100, ("ppo", 2): 101}

    def edit(summary):
        phase = "policy_update" if summary["algo"] == "grpo" else "critic_update"
        summary["mem"]["live"] = {"peak": peaks[(summary["algo"], summary["seed"])] * MIB, "peak_phase": phase,
                                  "phases": {phase: {"total": 1, "categories": {}}}}
        state = (16 + 4 + (16 if summary["algo"] == "ppo" else 0)) * MIB  # 4 MiB of fp32 weights: 16 trained, 4 frozen
        summary["mem"]["arithmetic"] = {"models": {}, "model_state_total": state}
    edit_summaries(folder, edit)


def test_memory_reads_the_live_tensor_peak_with_the_arithmetic_ratio_beside_it(tmp_path):
    folder = copy_fixture(tmp_path)
    add_live_peaks(folder)
    with_plan(folder, band=0.05)
    v = verdict_section(load_comparison(folder))
    memory = v["memory"]
    assert memory["key"] == "mem_live_peak"
    assert memory["estimate"].mean == pytest.approx(51 / (301 / 3))
    assert 0.45 < memory["estimate"].lo < memory["estimate"].hi < 0.55 and memory["reading"] == REPRODUCED
    assert memory["phases"] == {"grpo": "policy_update", "ppo": "critic_update"}
    sentence = v["sentence"]
    assert "GRPO needed 0.51 of PPO's measured step peak of live tensors (95% interval" in sentence
    assert "the embedded tiny Qwen2 (hidden 128, 4 layers), float32 on cpu, 256 completions per step" in sentence
    assert "band 0.45–0.55" in sentence and "(arithmetic)" in sentence
    lines = "\n".join(terminal_lines(v))
    for name in ("quality", "memory", "compute", "arith"):
        assert f"  {name} " in lines
    assert "measured step peak of live tensors: 0.508 [" in lines


def test_a_deterministic_figure_gets_no_interval(tmp_path):
    folder = copy_fixture(tmp_path)
    add_live_peaks(folder)
    v = verdict_section(load_comparison(folder))
    row = {r["key"]: r for r in v["rows"]}["mem_model_state"]
    assert row["kind"] == "arithmetic" and row["reading"] == "—"  # shown, never read
    assert not row["top_est"].has_interval and not row["bottom_est"].has_interval and not row["ratio_est"].has_interval
    assert row["ratio_est"].mean == pytest.approx(20 / 36)
    assert row["ratio"]["interval"] == "arithmetic: follows from the model sizes"
    arith = next(p for p in v["primary"] if p["name"] == "arith")
    assert arith["value"] == "0.556" and arith["interval"] == "no interval" and arith["reading"] == "—"


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
    old = verdict_section(load_comparison(COMPARE))
    assert "periodic evaluations included: these arms recorded no time.train_s" in old["compute"]["row"]["note"]
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
    assert "periodic evaluations and live-tensor tracked steps left out" in v["compute"]["row"]["note"]


def test_the_plan_renders_in_the_report(tmp_path):
    folder = copy_fixture(tmp_path)
    with_plan(folder, margin=0.03)
    html = plain(render_html(folder))
    assert "The plan, fixed before the run" in html
    assert "Non-inferiority margin δ = <b>3.0 points</b>" in html
    assert "Minimum detectable difference" in html and "distinct test prompts" in html
