"""The fault matrix (see fault_helpers.py): what a resume refuses, and what it keeps."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from conftest import harness, wait_for_steps
from fault_helpers import GRPO, PPO, SLOW_COMPARE, assert_one_line, rows, run_main, snapshot, start, stop, summary


@pytest.mark.slow
def test_10_resume_keeps_the_steps_after_a_bad_line(tmp_path):
    out = tmp_path / "run"
    harness("run", "--algo", "grpo", "--preset", "smoke", "--budget", "160", "--set", "run.lm_eval=false",
            "--set", "run.checkpoint_every=4", "--out", str(out), check=True)
    steps = out / "steps.jsonl"
    lines = steps.read_text().splitlines()
    steps.write_text("\n".join([lines[0], "garbage", *lines[2:]]) + "\n")
    result = harness("run", "--run-dir", str(out), "--resume")
    assert result.returncode == 0 and f"warning: {steps}: 1 unreadable line skipped (2)" in result.stderr
    assert [r["step"] for r in rows(steps)] == [1, 3, 4, 5]  # rows after the bad line kept, 5 trained again


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("--set", "optim.lr=1"), "drop --set"),
    (("--preset", "tiny"), "drop --preset"),
    (("--algos", "grpo", "--seeds", "2"), "drop --algos, --seeds"),
    (("--out", "elsewhere"), "drop --out"),
])
def test_10_resume_refuses_flags_it_would_ignore(finished, capsys, args, message):
    before = snapshot(finished)
    code, _, err = run_main(capsys, "compare", "--resume", finished, *args)
    assert_one_line(code, err, f"--resume continues {finished} with the config, algorithms and seeds it was started with; "
                               f"{message}")
    assert snapshot(finished) == before


@pytest.mark.slow
def test_10_run_dir_refuses_flags_it_would_ignore(finished, capsys):
    before = snapshot(finished)
    code, _, err = run_main(capsys, "run", "--run-dir", finished / GRPO, "--resume", "--set", "optim.lr=1")
    assert_one_line(code, err, f"--run-dir trains {finished / GRPO} with the config saved in it; drop --set")
    code, _, err = run_main(capsys, "run", "--resume")
    assert_one_line(code, err, "--resume needs --run-dir")
    assert snapshot(finished) == before


@pytest.mark.slow
def test_10_an_arm_that_dies_keeps_its_output_and_its_last_error_line(tmp_path):
    # a model folder whose config.json passes every check before the run, but with no weights to load
    from transformers import Qwen2Config
    model = tmp_path / "no-weights"
    Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=128, vocab_size=16).save_pretrained(model)
    out = tmp_path / "cmp"
    result = harness(*SLOW_COMPARE, "--model", str(model), "--out", str(out))
    assert result.returncode == 1, result.stderr
    for arm in (GRPO, PPO):
        record = summary(out / arm)
        assert record["status"] == "failed"
        assert record["error"].startswith(f"arm process exited with status 2: harness: error: cannot load model "
                                          f"'{model}': Error no file named model.safetensors")
        assert f"cannot load model '{model}'" in (out / arm / "arm.log").read_text()


@pytest.mark.slow
def test_10_eval_of_a_comparison_folder_names_an_arm_folder(smoke_comparison, capsys):
    out = smoke_comparison[0]
    code, _, err = run_main(capsys, "eval", out)
    assert_one_line(code, err, f"{out} is a comparison folder; pass one of its arm folders (e.g. harness eval {out / GRPO})")


# ---------------------------------------------------------------- 26.6 a resume notices changed inputs

def sums(path: Path, shift: int = 0) -> None:
    """A data task of sums; `shift` changes every answer."""
    path.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b + shift)}) + "\n"
                            for a in range(20) for b in range(0, 20, 3)))


def test_26_6_the_digests_follow_the_inputs_without_reading_model_weights(tmp_path):
    from harness.config.load import load_config
    from harness.train.inputs import input_digests
    sums(tmp_path / "sums.jsonl")
    (tmp_path / "rewards.py").write_text("def f(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    with open(model / "model.safetensors", "wb") as handle:  # 15 GB of weights, sparse: reading them would take minutes
        handle.truncate(15 << 30)

    def digests(*overrides):
        return input_digests(load_config("smoke", overrides=[f"task.name=data:{tmp_path / 'sums.jsonl'}",
                                                             f"task.reward={tmp_path / 'rewards.py'}:f",
                                                             f"model.name={model}", *overrides]))
    started = time.monotonic()
    first = digests()
    assert time.monotonic() - started < 60  # not hashed: 15 GB would take minutes
    assert sorted(first) == ["config", f"data {tmp_path / 'sums.jsonl'}", f"model {model}",
                             f"reward {tmp_path / 'rewards.py'}"]
    assert digests() == first
    assert digests("optim.lr=0.5")["config"] != first["config"]
    sums(tmp_path / "sums.jsonl", shift=1)  # the same size: every answer one more
    assert digests()[f"data {tmp_path / 'sums.jsonl'}"] != first[f"data {tmp_path / 'sums.jsonl'}"]
    (tmp_path / "rewards.py").write_text("def f(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    assert digests()[f"reward {tmp_path / 'rewards.py'}"] != first[f"reward {tmp_path / 'rewards.py'}"]
    os.utime(model / "model.safetensors", ns=(0, 0))  # weights written again
    assert digests()[f"model {model}"] != first[f"model {model}"]


def test_26_6_run_dir_resume_refuses_a_changed_reward_module_and_force_resume_records_it(tmp_path, capsys,
                                                                                         monkeypatch):
    from harness.commands import run
    from harness.config.load import load_config
    from harness.results.arm_config import arm_config_dict
    from harness.results.io import write_yaml
    from harness.train.inputs import record_inputs
    sums(tmp_path / "sums.jsonl")
    reward = tmp_path / "rewards.py"
    reward.write_text("def f(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    config = load_config("smoke", overrides=[f"task.name=data:{tmp_path / 'sums.jsonl'}", "task.eval_size=16",
                                             f"task.reward={reward}:f"])
    run_dir = tmp_path / "run"
    write_yaml(run_dir / "config.yaml", arm_config_dict(config, "grpo"))
    record_inputs(run_dir, config)
    (run_dir / "summary.json").write_text('{"status": "interrupted", "error": "interrupted by SIGTERM after step 3"}')
    reward.write_text("def f(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    before = snapshot(run_dir)
    code, _, err = run_main(capsys, "run", "--run-dir", run_dir, "--resume")
    assert_one_line(code, err, f"{run_dir} cannot resume: reward {reward} changed since it started, and it would "
                               "train on both; start a new run, or add --force-resume to continue anyway")
    assert snapshot(run_dir) == before
    monkeypatch.setattr(run, "_train", lambda *args, **kwargs: 0)  # what is tested is the refusal, not the training
    monkeypatch.setattr(sys, "argv", ["harness", "run", "--run-dir", str(run_dir), "--resume", "--force-resume"])
    code, _, err = run_main(capsys, *sys.argv[1:])
    assert code == 0 and f"warning: --force-resume: reward {reward} changed" in err
    recorded = json.loads((run_dir / "inputs.json").read_text())
    assert recorded["forced"][0]["changed"] == [f"reward {reward}"] and "--force-resume" in recorded["forced"][0]["command"]
    assert run_main(capsys, "run", "--run-dir", run_dir, "--resume")[0] == 0  # the new inputs are the run's now


@pytest.mark.slow
def test_26_6_a_comparison_killed_then_given_other_data_refuses_to_resume(tmp_path):
    data = tmp_path / "sums.jsonl"
    sums(data)
    out = tmp_path / "cmp"
    process = start("compare", "--preset", "smoke", "--task", f"data:{data}", "--set", "task.eval_size=16",
                    "--budget", "320", "--set", "run.checkpoint_every=2", "--set", "run.lm_eval=false",
                    "--no-report", "--out", str(out))
    try:
        wait_for_steps(out / "sums__grpo__s0" / "steps.jsonl", 3, process)
    finally:
        stop(process)  # SIGKILL to the comparison and its arm
    sums(data, shift=1)
    before = snapshot(out)
    result = harness("compare", "--resume", str(out), "--no-report")
    assert_one_line(result.returncode, result.stderr, f"{out} cannot resume: data {data} changed since it started, "
                                                      "and it would train on both")
    assert snapshot(out) == before
    result = harness("compare", "--resume", str(out), "--no-report", "--force-resume")
    assert result.returncode == 0, result.stderr
    assert f"warning: --force-resume: data {data} changed" in result.stderr
    for folder in (out, out / "sums__grpo__s0"):
        assert json.loads((folder / "inputs.json").read_text())["forced"][0]["changed"] == [f"data {data}"]


# ---------------------------------------------------------------- 26.8 a refused resume keeps every record

@pytest.mark.slow
def test_26_8_a_refused_resume_leaves_the_recorded_summary_as_it_was(tmp_path, capsys):
    from harness.config.load import load_config
    from harness.results.arm_config import arm_config_dict
    from harness.results.io import write_yaml
    from harness.train.inputs import record_inputs
    config = load_config("smoke", overrides=["run.lm_eval=false"])
    run_dir = tmp_path / "run"
    write_yaml(run_dir / "config.yaml", arm_config_dict(config, "grpo"))
    record_inputs(run_dir, config)
    (run_dir / "env.json").write_text('{"python": "3.11"}')
    (run_dir / "summary.json").write_text(json.dumps({"algo": "grpo", "seed": 0, "status": "killed",
                                                      "error": "killed (signal 9) after step 3"}))
    (run_dir / "steps.jsonl").write_text("".join(json.dumps({"step": s, "completions": 32 * s, "tokens": 99 * s}) + "\n"
                                                 for s in (1, 2, 3)))
    (run_dir / "checkpoint").mkdir()
    (run_dir / "checkpoint" / "state.pt").write_bytes(b"")  # cut short by the kill
    before = snapshot(run_dir)
    code, _, err = run_main(capsys, "run", "--run-dir", run_dir, "--resume")
    assert_one_line(code, err, f"checkpoint {run_dir / 'checkpoint' / 'state.pt'} cannot be loaded safely")
    assert snapshot(run_dir) == before
