"""The fault matrix (see fault_helpers.py): code and text from outside: checkpoints, reward functions, error texts."""

from __future__ import annotations

import os
import re

import pytest
import torch

from conftest import harness
from fault_helpers import (assert_one_line, rows,
                           run_main, summary)


# ---------------------------------------------------------------- 3. divergence and NaN

@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_3_a_non_finite_figure_stops_the_arm_as_diverged_and_keeps_its_steps(tmp_path, algo):
    # lr = 10 on the smoke model: the first update sends the log-probs to NaN (PPO's KL, GRPO's loss)
    result = harness("run", "--algo", algo, "--preset", "smoke", "--set", "optim.lr=10", "--set", "run.lm_eval=false",
                     "--out", str(tmp_path / algo))
    assert result.returncode == 1, result.stderr
    recorded = summary(tmp_path / algo)
    assert recorded["status"] == "diverged"
    assert re.fullmatch(r"diverged at step \d+: \S+ is (nan|inf)", recorded["error"]), recorded["error"]
    steps = rows(tmp_path / algo / "steps.jsonl")
    assert steps and steps[-1]["diverged"] == recorded["error"].split(": ", 1)[1]  # the step that diverged is kept


# ---------------------------------------------------------------- 5. checkpoints load weights only

class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_5_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "run", "--algo", "grpo", "--preset", "smoke", "--set", "run.lm_eval=false",
                            "--set", "run.checkpoint_every=1", "--out", run_dir)
    assert code == 0, err
    (run_dir / "summary.json").unlink()  # as if killed mid-run
    crafted = _RunsCode()
    crafted.marker = tmp_path / "code-ran"
    torch.save({"format": 1, "payload": crafted}, run_dir / "checkpoint" / "state.pt")
    code, _, err = run_main(capsys, "run", "--run-dir", run_dir, "--resume")
    assert_one_line(code, err, "cannot be loaded safely (weights only): Trying to load unsupported GLOBAL posix.system")
    assert not crafted.marker.exists()
