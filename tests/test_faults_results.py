"""The fault matrix (see fault_helpers.py): the memory gate, damaged result files and baselines, steps.jsonl."""

from __future__ import annotations

import json

import pytest
import yaml

from fault_helpers import BASELINE, GRPO, PPO, assert_one_line, run_main, snapshot, summary


# ---------------------------------------------------------------- 4. the memory gate

@pytest.mark.slow
def test_4_a_summary_without_its_memory_figures_is_an_error_not_an_improvement(finished, smoke_baseline, capsys):
    data = summary(finished / PPO)
    del data["mem"]
    (finished / PPO / "summary.json").write_text(json.dumps(data))
    code, out, err = run_main(capsys, "check", finished, "--baseline", smoke_baseline)
    assert_one_line(code, err, f"{finished / PPO / 'summary.json'} has no measured: step peak of live tensors")
    assert "gated figures are missing; the run lost its memory data" in err and "improved" not in out


@pytest.mark.slow
def test_4_a_phase_that_lost_its_figure_is_an_error(finished, smoke_baseline, capsys):
    data = summary(finished / PPO)
    data["mem"]["live"]["phases"]["policy_update"].pop("total")
    (finished / PPO / "summary.json").write_text(json.dumps(data))
    code, _, err = run_main(capsys, "check", finished, "--baseline", smoke_baseline)
    assert_one_line(code, err, "has no live tensors: policy_update for ppo s0: a gated figure is missing")


@pytest.mark.slow
def test_4_a_phase_dropped_under_the_baselines_own_config_is_an_error(finished, smoke_baseline, capsys):
    data = summary(finished / PPO)
    del data["mem"]["live"]["phases"]["critic_update"]
    (finished / PPO / "summary.json").write_text(json.dumps(data))
    code, out, err = run_main(capsys, "check", finished, "--baseline", smoke_baseline)
    assert_one_line(code, err, "has no live tensors: critic_update for ppo s0, which the baseline measured with "
                               "the same config: the run lost memory data")


@pytest.mark.slow
def test_4_baseline_refuses_a_run_without_memory_figures(finished, smoke_baseline, tmp_path, capsys):
    data = summary(finished / GRPO)
    del data["mem"]["live"]
    (finished / GRPO / "summary.json").write_text(json.dumps(data))
    code, _, err = run_main(capsys, "baseline", finished, "--out", tmp_path / "b.json")
    assert_one_line(code, err, "has no measured: step peak of live tensors (max over phases) for grpo s0")
    assert "a baseline without it would gate nothing" in err and not (tmp_path / "b.json").exists()


@pytest.mark.slow
def test_4_a_baseline_that_lost_a_gated_figure_is_an_error(finished, smoke_baseline, tmp_path, capsys):
    data = json.loads(smoke_baseline.read_text())
    data["arms"][1]["mem"]["arithmetic"].pop("model_state_total")
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    code, _, err = run_main(capsys, "check", finished, "--baseline", edited)
    assert_one_line(code, err, f"baseline {edited} has no arithmetic: model state (params + grads + optimizer) "
                               f"for ppo s0")


DAMAGED = [b"{\"status\": \"ok\", \"mem\": {", b"\xff\xfe not text", b"[1, 2, 3]"]
DAMAGED_FILES = ["comparison.json", f"{GRPO}/summary.json", f"{PPO}/env.json"]


# --resume does not read env.json: each arm writes it anew
DAMAGED_READS = [(command, name) for command in ("check", "baseline", "report", "resume") for name in DAMAGED_FILES
                 if not (command == "resume" and name.endswith("env.json"))]


@pytest.mark.slow
@pytest.mark.parametrize("command, name", DAMAGED_READS)
def test_8_a_damaged_result_file_is_named_in_one_line(finished, tmp_path, capsys, command, name):
    for content in DAMAGED:
        (finished / name).write_bytes(content)
        before = snapshot(finished)
        args = {"check": ("check", finished, "--baseline", BASELINE),
                "baseline": ("baseline", finished, "--out", tmp_path / "b.json"),
                "report": ("report", finished, "--out", tmp_path / "r", "--no-pdf"),
                "resume": ("compare", "--resume", finished, "--no-report")}[command]
        code, _, err = run_main(capsys, *args)
        assert_one_line(code, err, f"{finished / name} is damaged: ")
        assert snapshot(finished) == before
        assert not (tmp_path / "b.json").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("arms"), "is damaged: it has no 'arms'"),
    (lambda d: d.update(arms={"grpo": 1}), "is damaged: 'arms' is a dict, not a list"),
    (lambda d: d["arms"][0].pop("mem"), "is damaged: an arm lacks its algo, seed or mem"),
    (lambda d: d.update(config="smoke"), "is damaged: 'config' is a str, not a dict"),
])
def test_8_a_malformed_baseline(finished, tmp_path, capsys, edit, message):
    data = json.loads(BASELINE.read_text())
    edit(data)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    code, _, err = run_main(capsys, "check", finished, "--baseline", path)
    assert_one_line(code, err, message)
    assert str(path) in err


@pytest.mark.slow
def test_8_a_run_folder_whose_config_was_edited_to_a_bad_value(finished, capsys):
    path = finished / GRPO / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["optim"]["lr"] = -1.0
    path.write_text(yaml.safe_dump(config))
    before = snapshot(finished)
    code, _, err = run_main(capsys, "run", "--run-dir", finished / GRPO, "--resume")
    assert_one_line(code, err, f"{path}: optim.lr: must be above 0, got -1.0")
    assert snapshot(finished) == before


# ---------------------------------------------------------------- 10. the lower items

@pytest.mark.slow
def test_10_a_bad_line_in_steps_is_skipped_counted_and_said(finished, tmp_path, capsys):
    from harness.results.io import read_jsonl
    steps = finished / GRPO / "steps.jsonl"
    lines = steps.read_text().splitlines()
    steps.write_text("\n".join([lines[0], '{"step": 2, "reward/me', *lines[2:]]) + "\n")
    assert [r["step"] for r in read_jsonl(steps)] == [1, 3]  # step 3 is not lost with step 2
    bad: list[int] = []
    read_jsonl(steps, bad)
    assert bad == [2]
    code, _, err = run_main(capsys, "report", finished, "--out", tmp_path, "--no-pdf")
    assert code == 0 and f"{steps}: 1 unreadable line skipped (2)" in err
    assert "1 unreadable line skipped (2)" in (tmp_path / "finished.html").read_text()


# ---------------------------------------------------------------- 26.9 a baseline figure that is no number

@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    # the typed record would read '1987592' as the number: the raw file is checked before it
    (lambda mem: mem["live"].update(peak="1987592"), "the memory figures of grpo s0 are not in the form harness "
                                                     "writes (mem.live.peak is '1987592')"),
    (lambda mem: mem["live"]["phases"]["generate"].update(total=-1), "live tensors: generate of grpo s0 is -1, not a "
                                                                     "number of bytes"),
    (lambda mem: mem["live"].update(phases="x"), "the memory figures of grpo s0 are not in the form harness writes"),
])
def test_26_9_a_baseline_whose_figure_is_not_a_number(finished, tmp_path, capsys, edit, message):
    data = json.loads(BASELINE.read_text())
    edit(data["arms"][0]["mem"])
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    code, out, err = run_main(capsys, "check", finished, "--baseline", path)
    assert_one_line(code, err, f"baseline {path} is damaged: ")
    assert message in err and "nothing regressed" not in out


# ---------------------------------------------------------------- 26 lower: NaN in steps.jsonl

def test_26_lower_a_non_finite_figure_is_written_as_json_and_read_back(tmp_path):
    import math

    import pandas as pd

    from harness.results.exports import steps_frame
    from harness.results.io import append_jsonl, read_jsonl, rewrite_jsonl
    steps = tmp_path / GRPO / "steps.jsonl"
    steps.parent.mkdir()
    append_jsonl(steps, {"step": 1, "loss/loss": 0.5, "loss/approx_kl": 0.0})
    append_jsonl(steps, {"step": 2, "loss/loss": float("nan"), "loss/approx_kl": float("inf")})

    def strict(token):
        raise ValueError(f"bare {token} in steps.jsonl")
    lines = [json.loads(line, parse_constant=strict) for line in steps.read_text().splitlines()]  # plain JSON
    assert lines[1]["loss/loss"] is None and lines[1]["nonfinite"] == {"loss/loss": "nan", "loss/approx_kl": "inf"}
    read = read_jsonl(steps)  # what resume, the report, the exports and the trackers read
    assert math.isnan(read[1]["loss/loss"]) and read[1]["loss/approx_kl"] == math.inf and "nonfinite" not in read[1]
    rewrite_jsonl(steps, read)  # a resume rewrites the rows it keeps: still plain JSON, still NaN on reading
    assert [json.loads(line, parse_constant=strict) for line in steps.read_text().splitlines()] == lines
    frame = steps_frame(tmp_path, [{"dir": GRPO, "algo": "grpo", "seed": 0}])
    assert pd.isna(frame["loss/loss"][1]) and frame["loss/approx_kl"][1] == math.inf
