"""End to end as a TRL user would run it: a smoke comparison on their own JSONL task and reward
function, with trackio and TensorBoard, piped into a log; then the exports, the tracker read-back,
and a reward function that breaks during training."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import harness, harness_command

pytestmark = pytest.mark.slow

REWARDS = '''
def correct(completions, answer, **kwargs):
    """TRL's signature: one float per completion."""
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def only_batches(completions, **kwargs):
    """Passes the check before training (3 completions at once), fails on the first single one."""
    if len(completions) == 1:
        raise RuntimeError("cannot score one completion")
    return [0.0] * len(completions)
'''
PROGRESS = re.compile(r"^(grpo|ppo) s0 train: (\d)/3 \(\d+%\)  reward [\d.]+  acc [\d.]+  elapsed .+  ETA .+$")


def write_task(folder: Path) -> None:
    rng = random.Random(0)
    with open(folder / "sums.jsonl", "w") as handle:
        for _ in range(300):
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            handle.write(json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    (folder / "rewards.py").write_text(REWARDS)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """The comparison, its stdout read line by line while it runs (as a CI log would show it)."""
    folder = tmp_path_factory.mktemp("own")
    write_task(folder)
    out = folder / "cmp"
    project = f"e2e-{os.getpid()}"
    command = harness_command() + [
        "compare", "--preset", "smoke", "--task", "data:sums.jsonl", "--prompt-key", "question",
        "--reward", "rewards:correct", "--set", "task.eval_size=32", "--report-to", "trackio,tensorboard",
        "--set", f"run.tracker_project={project}", "--out", str(out), "--results-dir", str(folder / "results")]
    env = {**os.environ, "HARNESS_PROGRESS_SECONDS": "0"}
    with open(folder / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        lines = [(line.rstrip("\n"), process.poll() is None) for line in process.stdout]
        code = process.wait(timeout=600)
    assert code == 0, (folder / "stderr.txt").read_text()
    return {"out": out, "lines": lines, "project": project, "folder": folder}


def test_piped_output_shows_the_plan_then_progress_lines_while_it_runs(own):
    lines = [line for line, _ in own["lines"]]
    assert lines[0].startswith("plan: 2 arms = grpo, ppo x 1 seed (0)")
    assert "  budget per arm: 96 completions = 3 steps of 32 completions (8 prompts x 4)" in lines
    progress = [(line, running) for line, running in own["lines"] if PROGRESS.match(line)]
    # every step of both arms, each line read while the comparison was still running
    assert [PROGRESS.match(line).group(1, 2) for line, _ in progress] == \
        [("grpo", "1"), ("grpo", "2"), ("grpo", "3"), ("ppo", "1"), ("ppo", "2"), ("ppo", "3")]
    assert all(running for _, running in progress)
    assert any(line.startswith("grpo s0 lm-eval final: ") for line in lines)
    assert any(re.match(r"ppo s0 eval: 32/32 \(100%\)  acc [\d.]+", line) for line in lines)
    assert "\x1b[" not in "\n".join(lines)  # no terminal escapes in a log


def test_the_users_task_and_reward_function_train_both_arms(own):
    out = own["out"]
    for algo in ("grpo", "ppo"):
        summary = json.loads((out / f"sums__{algo}__s0" / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["steps"] == 3
        assert summary["task"] == f"data:{own['folder'] / 'sums.jsonl'}"
        for row in map(json.loads, (out / f"sums__{algo}__s0" / "steps.jsonl").read_text().splitlines()):
            # the function's 0/1 is the whole reward: its mean is a count of 32 completions, and equals accuracy
            assert row["reward/mean"] == row["reward/accuracy"] and (row["reward/mean"] * 32).is_integer()
    assert (out / "sums__grpo__s0" / "final_model" / "config.json").exists()


def test_exports_the_steps_table_the_report_and_its_figures(own):
    out = own["out"]
    steps = pd.read_parquet(out / "steps.parquet")
    assert sorted(zip(steps["arm"], steps["algorithm"], steps["seed"], steps["step"])) == \
        [(f"sums__{algo}__s0", algo, 0, step) for algo in ("grpo", "ppo") for step in (1, 2, 3)]
    assert (out / "report.html").exists()
    for name in ("learning", "memory", "phases", "throughput", "health"):
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.svg").exists()


def test_trackio_and_tensorboard_hold_each_arms_steps_and_summary(own):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trackio.sqlite_storage import SQLiteStorage
    out, project = own["out"], own["project"]
    assert sorted(SQLiteStorage.get_runs(project)) == [f"cmp/sums__{a}__s0" for a in ("grpo", "ppo")]
    for algo in ("grpo", "ppo"):
        arm = out / f"sums__{algo}__s0"
        rows = [json.loads(line) for line in (arm / "steps.jsonl").read_text().splitlines()]
        summary = json.loads((arm / "summary.json").read_text())
        logs = SQLiteStorage.get_logs(project, f"cmp/{arm.name}")
        steps = [row for row in logs if "reward/mean" in row]
        assert [(r["step"], r["reward/mean"], r["completions/mean_length"]) for r in steps] == \
            [(r["step"], r["reward/mean"], r["completion/len_mean"]) for r in rows]
        final = [row["summary/eval/final/accuracy"] for row in logs if "summary/eval/final/accuracy" in row]
        assert final == [summary["eval"]["final"]["accuracy"]]
        events = EventAccumulator(str(arm / "tensorboard"))
        events.Reload()
        assert [(e.step, round(e.value, 6)) for e in events.Scalars("reward/mean")] == \
            [(r["step"], round(r["reward/mean"], 6)) for r in rows]
        assert [round(e.value, 6) for e in events.Scalars("summary/eval/final/accuracy")] == \
            [round(summary["eval"]["final"]["accuracy"], 6)]
        assert "report/learning" in events.Tags()["images"]  # the report's figures, added once it was written


def test_a_reward_function_that_breaks_during_training_is_the_arms_recorded_failure(own):
    folder = own["folder"]
    result = harness("run", "--algo", "grpo", "--preset", "smoke", "--task", "data:sums.jsonl", "--prompt-key", "question",
                     "--reward", "rewards:only_batches", "--set", "task.eval_size=32", "--set", "run.lm_eval=false",
                     "--out", str(folder / "broken"), cwd=folder)
    assert result.returncode == 1
    summary = json.loads((folder / "broken" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "RewardFunctionError: reward function rewards:only_batches raised RuntimeError: cannot score one " \
           "completion" in summary["error"]
    assert "Traceback" not in result.stderr
