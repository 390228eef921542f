"""The arm interface is all the runner asks of an arm kind: a toy kind with no model at all, registered for the
test the way a cross-check is (one line in harness.config.arm_kinds.CROSS_CHECKS), is driven end to end by
harness.train.runner.run_arm and leaves the folder any arm leaves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.config import arm_kinds
from harness.config.load import load_config
from harness.crosscheck.trl.arm import TRLArm
from harness.results.step_record import StepRecord
from harness.train.arm import Arm
from harness.train.arm_interface import ArmRunner
from harness.train.runner import run_arm

BASE = {"accuracy": 0.25, "score": 0.5, "format": 1.0, "n": 4, "per_prompt": [1, 0, 0, 0]}
MODEL = {"params": 8, "grads": 8, "optimizer": 16, "total": 32}


class ToyArm:
    """Counts completions to the budget: every step samples the config's completions per step, each of 3
    tokens, half of them solved. The loss of step k is 1/k, or NaN on step `diverge_at`."""

    diverge_at: int | None = None

    def __init__(self, config, algo, run_dir, progress=None):
        self.config, self.run_dir, self.device = config, Path(run_dir), "cpu"
        self.evaluations = 0

    def resume(self):
        return None

    def evaluate(self):
        self.evaluations += 1
        return dict(BASE)

    def lm_eval(self, label):
        return None

    def train(self, state, probes, log):
        per_step = self.config.completions_per_step
        while state.completions < self.config.budget.total:
            state.step += 1
            state.completions += per_step
            state.tokens += 3 * per_step
            state.train_s += 0.5
            loss = math.nan if state.step == self.diverge_at else 1.0 / state.step
            log(state, StepRecord(step=state.step, completions=state.completions, tokens=state.tokens,
                                  reward_mean=0.5, reward_accuracy=0.5, losses={"loss": loss},
                                  train_s=state.train_s, wall=state.train_s + state.eval_s,
                                  diverged="loss is nan" if math.isnan(loss) else None))

    def save_final_model(self):
        (self.run_dir / "final_model").mkdir()

    def state_bytes(self):
        return {"policy": dict(MODEL)}


def accept_options(name, options):
    """The toy runs every option."""


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(arm_kinds.CROSS_CHECKS, "toy",
                        arm_kinds.CrossCheck("grpo", "test_arm_interface:ToyArm", "test_arm_interface:accept_options"))


def test_our_arm_trls_arm_and_a_toy_implement_the_interface(tmp_path):
    for kind in (Arm, TRLArm, ToyArm):
        missing = [name for name in ("resume", "evaluate", "lm_eval", "train", "save_final_model", "state_bytes")
                   if not callable(getattr(kind, name, None))]
        assert not missing, f"{kind.__name__} lacks {missing}"
    assert ArmRunner in Arm.__mro__ and ArmRunner in TRLArm.__mro__  # explicitly, not only by shape
    assert isinstance(ToyArm(load_config("smoke"), "toy", tmp_path), ArmRunner)  # by shape: all the runner needs


def test_the_runner_drives_a_toy_arm_kind_to_a_summary(toy, tmp_path):
    # smoke: 96 completions in steps of 32 -> 3 steps; eval_every 2 -> a periodic evaluation on step 2
    config = load_config("smoke", overrides=["run.eval_every=2"])
    summary = run_arm(config, "toy", tmp_path / "toy")
    assert summary.status == "ok" and summary.error is None
    written = json.loads((tmp_path / "toy" / "summary.json").read_text())
    assert written == summary.to_json()
    assert written["algo"] == "toy" and written["steps"] == 3
    assert written["budget"]["used"] == {"completions": 96, "tokens": 288, "steps": 3}
    assert written["eval"]["base"] == BASE and written["eval"]["final"] == BASE
    assert written["mem"]["arithmetic"] == {"models": {"policy": MODEL}, "model_state_total": 32}
    assert written["time"]["train_s"] == 1.5 and written["time"]["per_step_s"] == 0.5
    assert written["tput"]["samples_per_s"] == 96 / 1.5
    rows = [json.loads(line) for line in (tmp_path / "toy" / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["loss/loss"] for r in rows] == [1.0, 0.5, 1 / 3]
    assert "eval/accuracy" not in rows[0] and rows[1]["eval/accuracy"] == 0.25 and "time/eval" in rows[1]
    assert "per_prompt" not in json.dumps(rows)  # the periodic evaluation logs figures, not the flags
    assert (tmp_path / "toy" / "final_model").is_dir()
    assert (tmp_path / "toy" / "config.yaml").exists() and (tmp_path / "toy" / "env.json").exists()


def test_a_toy_step_that_diverges_is_recorded_by_the_runner(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(ToyArm, "diverge_at", 2)
    summary = run_arm(load_config("smoke"), "toy", tmp_path / "toy")
    assert summary.status == "diverged" and summary.error == "diverged at step 2: loss is nan"
    assert summary.steps == 2 and summary.budget.used.completions == 64  # the steps it wrote
    rows = (tmp_path / "toy" / "steps.jsonl").read_text().splitlines()
    assert len(rows) == 2 and json.loads(rows[1])["diverged"] == "loss is nan"
    assert not (tmp_path / "toy" / "final_model").exists()
