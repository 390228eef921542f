"""The fault matrix (see fault_helpers.py): what a resume refuses, and what it keeps."""

from __future__ import annotations


import pytest

from conftest import harness
from fault_helpers import (GRPO, PPO, SLOW_COMPARE, assert_one_line, rows,
                           run_main, snapshot, summary)


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
