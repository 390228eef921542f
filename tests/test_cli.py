"""The console script as a user runs it: end to end on the smoke preset, and every bad input."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import harness, read_rows, read_summary, run_cli, wait_for_steps
from harness.cli import main


@pytest.mark.slow
def test_compare_smoke_end_to_end(smoke_comparison):
    out, result = smoke_comparison
    plan = json.loads((out / "comparison.json").read_text())
    assert plan["algos"] == ["grpo", "ppo"] and plan["budget"] == {"unit": "completions", "total": 96}
    for arm in plan["arms"]:
        folder = out / arm["dir"]
        summary = read_summary(folder)
        assert summary["status"] == "ok", summary
        # equal budget: the smoke preset's 96 completions = 3 steps of 32, in every arm
        assert summary["budget"]["used"]["completions"] == 96 and summary["steps"] == 3
        rows = read_rows(folder / "steps.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert rows[-1]["completions"] == 96
        for key in ("reward/mean", "reward/std", "reward/accuracy", "loss/policy_loss", "loss/entropy",
                    "completion/len_mean", "time/step", "mem/model_state/policy/params", "mem/live/peak",
                    "mem/live/policy_update/total", "mem/live/generate/kv_cache"):
            assert key in rows[0], key
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["derived"]["completions_per_step"] == 32 and config["algo"] == arm["algo"]
        assert (folder / "env.json").exists() and (folder / "final_model" / "config.json").exists()
    assert "Arms" in result.stdout and "grpo/ppo" in result.stdout
    # the analysis plan, fixed before the run: printed before the first arm and saved; the verdict printed last
    assert result.stdout.index("Analysis plan (fixed before the run") < result.stdout.index("Arms")
    assert plan["plan"]["margin"] == 0.05 and plan["plan"]["eval"]["prompts"] == 32 and plan["plan"]["seeds"] == 1
    verdict = result.stdout[result.stdout.index("Verdict: "):]
    for name in ("*quality", "*compute", "samples", "mem × time", "arith", "at scale", "machine"):
        assert f" {name} " in verdict, name
    assert "one paired seed (an interval needs ≥ 2)" in verdict  # one seed: quality cannot be read


@pytest.mark.slow
def test_both_arms_see_the_same_prompts_and_model(smoke_comparison):
    out, _ = smoke_comparison
    grpo = read_summary(out / "chain_sum__grpo__s0")
    ppo = read_summary(out / "chain_sum__ppo__s0")
    # the same base model and held-out split give the same starting accuracy in both arms
    assert grpo["eval"]["base"] == ppo["eval"]["base"]
    # the first step samples with the same seed from the same weights: identical rollouts and rewards
    first_grpo = read_rows(out / "chain_sum__grpo__s0" / "steps.jsonl")[0]
    first_ppo = read_rows(out / "chain_sum__ppo__s0" / "steps.jsonl")[0]
    for key in ("reward/mean", "reward/std", "completion/len_mean", "tokens"):
        assert first_grpo[key] == first_ppo[key], key


@pytest.mark.slow
def test_same_seed_gives_identical_steps(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        harness("run", "--algo", "ppo", "--preset", "smoke", "--out", str(folder), check=True)
    drop = ("time/", "tput/", "wall", "train_s", "mem/rss", "mem/cuda", "mem/nvml", "flops/mfu")
    rows_a = [{k: v for k, v in r.items() if not k.startswith(drop)} for r in read_rows(a / "steps.jsonl")]
    rows_b = [{k: v for k, v in r.items() if not k.startswith(drop)} for r in read_rows(b / "steps.jsonl")]
    assert rows_a == rows_b and len(rows_a) == 3
    # the per-phase peaks of live tensors are among what repeats to the byte
    assert all(r["mem/live/peak"] > 0 and r["mem/live/peak_phase"] for r in rows_a)


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    # 8 steps, checkpointed every 2; killed (SIGKILL) once 3 steps are written, then resumed:
    # the resumed run's records equal those of a run that was never interrupted.
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    flags = ("--preset", "smoke", "--budget", "256")
    harness("run", "--algo", "ppo", *flags, "--out", str(straight), check=True)
    process = subprocess.Popen([sys.executable, "-m", "harness", "run", "--algo", "ppo", *flags, "--out", str(cut)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_steps(cut / "steps.jsonl", 3, process, timeout=120)
    finally:
        process.kill()
        process.wait()
    assert len(read_rows(cut / "steps.jsonl")) < 8, "the run finished before it was killed: nothing to resume"
    harness("run", "--run-dir", str(cut), "--resume", check=True)
    keep = ("step", "reward/mean", "loss/policy_loss", "loss/value_loss", "completions")
    resumed = [{k: r[k] for k in keep} for r in read_rows(cut / "steps.jsonl")]
    expected = [{k: r[k] for k in keep} for r in read_rows(straight / "steps.jsonl")]
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert resumed == expected
    assert read_summary(cut)["status"] == "ok"


@pytest.mark.parametrize("args, message", [
    (["compare", "--algos", "grpo,a2c"], "unknown algorithm 'a2c'; valid: dapo, dr_grpo, grpo, gspo, ppo, reinforce_pp, rloo"),
    (["run", "--algo", "dpo"], "unknown algorithm 'dpo'; valid: dapo, dr_grpo, grpo, gspo, ppo, reinforce_pp, rloo"),
    (["compare", "--task", "sudoku"],
     "unknown task 'sudoku'; valid: chain_sum, chain_sum_scratchpad, spell_backward, spell_backward_long"),
    (["compare", "--task", "rg:nonesuch"], "unknown reasoning-gym dataset 'nonesuch'; valid: ab, acre,"),
    (["compare", "--preset", "huge"], "unknown preset 'huge'; valid:"),
    (["compare", "--set", "rollout.batch_size=30"], "rollout.batch_size=30 is not divisible by the group size"),
    (["compare", "--set", "rollout.colour=red"], "unknown config field 'rollout.colour'"),
    (["compare", "--set", "rollout.batch_size=many"], "rollout.batch_size: must be an integer, got 'many'"),
    (["compare", "--model", "./no/such/model"], "model path './no/such/model' does not exist"),
    (["compare", "--model", "nobody/no-such-model"], "model 'nobody/no-such-model' is not in the local Hugging Face "
                                                      "cache and HF_HUB_OFFLINE is set"),
    (["compare", "--report-to", "trackio,comet"], "unknown tracker comet; valid: trackio, wandb, tensorboard, mlflow"),
    (["compare", "--task", "data:no/such.jsonl"], "data file 'no/such.jsonl' does not exist"),
    (["compare", "--set", "algorithms.grpo.betta=0.1", "--preset", "smoke"],
     "unknown config field 'algorithms.grpo.betta'; valid: aggregation, beta,"),
    (["compare", "--device", "tpu"], "unknown device 'tpu'"),
    (["compare", "--set", "model.precision=fp8"], "model.precision: 'fp8' is not one of: fp32, bf16-mixed, bf16"),
    (["compare", "--set", "algorithms.ppo.critic_pass=both"],
     "algorithms.ppo.critic_pass: 'both' is not one of: separate, joint"),
    (["compare", "--set", "optim.micro_batch_size=3"], "optim.micro_batch_size=3 does not divide a minibatch of 128 rows"),
    (["compare", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["compare", "--set", "verdict.margin=5"], "verdict.margin: must be below 1, got 5.0"),
    (["compare", "--set", "verdict.pilot=nowhere", "--preset", "smoke"],
     "nowhere holds no comparison.json: not a comparison folder"),
    (["plan", "--seeds", "0"], "--seeds must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    # In this process: the console script's own code (harness.cli.main), without a start-up per row
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *args, "--results-dir", tmp_path / "results")
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # nothing half-written: no comparison or arm folder holds a result
    assert not list((tmp_path / "results").rglob("summary.json"))


def test_malformed_yaml_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  batch_size: [1, 2\n")
    code, _, err = run_cli(capsys, "compare", "--config", bad, "--results-dir", tmp_path / "r")
    assert code == 2
    assert f"malformed YAML in {bad}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["compare", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["compare", "--set", "rollout.batch_size=30"], "rollout.batch_size=30 is not divisible by the group size"),
])
def test_the_console_script_gives_the_same_one_line(tmp_path, args, message):
    result = harness(*args, "--results-dir", str(tmp_path / "results"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_one_arm_out_of_memory_is_recorded_and_the_other_arm_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_INJECT_FAULT", "ppo:2:oom")
    out = tmp_path / "cmp"
    result = harness("compare", "--algos", "grpo,ppo", "--preset", "smoke", "--no-report", "--out", str(out),
                     "--set", "run.lm_eval=false")
    assert result.returncode == 1  # not every arm finished
    grpo = read_summary(out / "chain_sum__grpo__s0")
    ppo = read_summary(out / "chain_sum__ppo__s0")
    assert grpo["status"] == "ok" and grpo["steps"] == 3
    assert ppo["status"] == "oom" and ppo["error"].startswith("out of memory at step 2")
    assert [r["step"] for r in read_rows(out / "chain_sum__ppo__s0" / "steps.jsonl")] == [1]  # step 1 kept
    assert "oom" in result.stdout
    # the comparison resumes: the finished GRPO arm is kept as it was, the PPO arm runs again
    monkeypatch.delenv("HARNESS_INJECT_FAULT")
    grpo_before = (out / "chain_sum__grpo__s0" / "summary.json").read_text()
    resumed = harness("compare", "--resume", str(out), "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "chain_sum__grpo__s0" / "summary.json").read_text() == grpo_before
    ppo = read_summary(out / "chain_sum__ppo__s0")
    assert ppo["status"] == "ok" and ppo["steps"] == 3
    assert [r["step"] for r in read_rows(out / "chain_sum__ppo__s0" / "steps.jsonl")] == [1, 2, 3]


def test_plan_prints_the_minimum_detectable_difference_without_running(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--preset", "smoke", "--seeds", "3", "--set", "verdict.seed_sd=0.01"]) == 0
    out = capsys.readouterr().out
    # sqrt(2 (0.25 / 32 + 0.01^2)) = 0.12579: 12.6 points per seed; x 5.6535 (noncentral t, 2 df) / sqrt(3) = 41.1
    assert "SD of one seed's GRPO − PPO accuracy: 12.6 points" in out
    assert "minimum detectable difference: 41.1 points (80% power, 95% interval, paired t with 2 df)" in out
    assert "32 distinct test prompts (2 terms of 1 digit: 16, 2 terms of 2 digits: 16)" in out
    # one interval method, named before the run; a seed that never reaches the target is censored, not dropped
    assert "interval  quality: paired t over seeds (verdict.interval, named before the run)" in out
    assert "censored at its budget (its whole completions and training time) and kept, never dropped" in out
    assert not list(tmp_path.iterdir())  # nothing written
    assert main(["plan", "--preset", "smoke", "--seeds", "3", "--set", "verdict.interval=bootstrap"]) == 0
    assert "quality: two-way bootstrap over prompts × seeds (verdict.interval" in capsys.readouterr().out
    assert main(["plan", "--preset", "smoke", "--set", "verdict.interval=tighter"]) == 2
    assert "verdict.interval" in capsys.readouterr().err
    # how the start is made: smoke stops at its steps; tiny goes on until 20% on validation
    assert main(["plan", "--preset", "smoke"]) == 0
    assert "start     the tiny model, warm-started per seed (its own initial weights): 20 supervised steps of 64; " \
           "cached" in capsys.readouterr().out
    assert main(["plan", "--preset", "tiny"]) == 0
    assert ("300 supervised steps of 256, then 10 at a time until 20% greedy on the validation split (at most 600)"
            in capsys.readouterr().out)
    assert main(["plan", "--preset", "tiny", "--set", "task.validation_size=0"]) == 0
    assert "(model.warm_start_until=0.2 is off: the task has no validation split)" in capsys.readouterr().out


def test_tasks_lists_the_offline_tasks_and_reasoning_gym_by_name(capsys):
    code = main(["tasks"])
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and names == ["chain_sum", "chain_sum_scratchpad", "spell_backward", "spell_backward_long",
                                   "rg:NAME", "data:FILE"]
    assert "basic_arithmetic" in out  # the rg: line names reasoning-gym's datasets
