"""harness sweep: the grid per arm, selection on the validation split only, best against best on fresh seeds."""

import json

import pytest
from conftest import harness

from harness import UserError
from harness.cli import main
from harness.commands.arm_specs import ArmSpec, parse_arm_spec
from harness.commands.sweep import choose, fields_for, parse_grid, plan_points, sweep_config
from harness.config.derive import make_task
from harness.config.kl import KLSetting
from harness.config.load import load_config


def test_a_grid_field_applies_to_the_arms_whose_config_has_it():
    grid = parse_grid(["optim.lr=1e-4,3e-4", "algorithms.ppo.critic_lr=0,1e-3"])
    assert grid == {"optim.lr": [1e-4, 3e-4], "algorithms.ppo.critic_lr": [0, 1e-3]}
    assert fields_for(parse_arm_spec("grpo"), grid) == ["optim.lr"]
    assert fields_for(parse_arm_spec("ppo-n1=ppo:rollout.samples_per_prompt=1"), grid) == list(grid)
    config = sweep_config(load_config("smoke"), budget=64)
    points = plan_points(config, [parse_arm_spec("grpo"), parse_arm_spec("ppo")], grid, [0, 1], KLSetting())
    # grpo: 2 lr points; ppo: 2 x 2; each for 2 seeds
    assert len(points) == (2 + 4) * 2
    ppo3 = next(p for p in points if p["arm"] == "ppo.p3" and p["seed"] == 1)
    assert ppo3["setting"] == {"optim.lr": 3e-4, "algorithms.ppo.critic_lr": 1e-3}
    assert ppo3["dir"] == "chain_sum__ppo.p3__s1" and ppo3["config"].optim.lr == 3e-4
    assert ppo3["config"].run.eval_split == "validation" and ppo3["config"].budget.total == 64


@pytest.mark.parametrize("grid,message", [
    ([], "needs at least one --grid"), (["optim.lr"], "must look like section.field=v1,v2"),
    (["optim.lr=1e-4,1e-4"], "repeats a value"), (["optim.lr=1", "optim.lr=2"], "twice"),
])
def test_a_bad_grid_is_one_line(grid, message):
    with pytest.raises(UserError, match=message):
        parse_grid(grid)


def test_a_bad_point_is_refused_before_anything_is_written(tmp_path, capsys):
    code = main(["sweep", "--preset", "smoke", "--grid", "rollout.samples_per_prompt=4,3", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "arm grpo.p1: rollout.batch_size=32 is not divisible" in err
    assert not (tmp_path / "s").exists()
    code = main(["sweep", "--preset", "smoke", "--grid", "budget.total=32,64", "--out", str(tmp_path / "s")])
    assert code == 2 and "budget.total is the same for every arm" in capsys.readouterr().err


def test_the_best_point_is_the_highest_validation_accuracy_ties_to_the_first():
    results = [{"arm": "ppo", "point": f"ppo.p{i}", "index": i, "setting": {"optim.lr": lr}, "overrides": {},
                "validation_accuracy": accuracy} for i, (lr, accuracy) in enumerate([(1e-4, 0.5), (3e-4, 0.6),
                                                                                     (1e-3, 0.6), (3e-3, None)])]
    assert choose([ArmSpec("ppo", "ppo")], results)["ppo"]["point"] == "ppo.p1"  # 0.6 twice: the lower lr
    assert choose([ArmSpec("grpo", "grpo")], results)["grpo"] is None


def test_a_point_evaluates_on_the_validation_split_never_the_test_split(tmp_path, monkeypatch):
    """A sweep point trains and evaluates without ever scoring a test prompt: the greedy evaluation is handed
    validation prompts only (and would fail this test on a test prompt)."""
    from harness.commands.run import run
    from harness.train import policy_arm as arm_module
    config = sweep_config(load_config("smoke", overrides=["budget.total=32"]), budget=None)
    task = make_task(load_config("smoke"))
    test_prompts = {e.prompt for e in task.eval_examples()}
    validation_prompts = {e.prompt for e in task.validation_examples()}
    seen = []
    real = arm_module.greedy_eval

    def watched(policy, tokenizer, task, examples, *args, **kwargs):
        prompts = {e.prompt for e in examples}
        assert not prompts & test_prompts, "a sweep point scored test prompts"
        seen.append(prompts)
        return real(policy, tokenizer, task, examples, *args, **kwargs)

    monkeypatch.setattr(arm_module, "greedy_eval", watched)
    assert run(config, "grpo", out=tmp_path / "point") == 0
    assert seen and all(prompts == validation_prompts for prompts in seen)
    summary = json.loads((tmp_path / "point" / "summary.json").read_text())
    assert summary["eval"]["final"]["n"] == len(validation_prompts) == config.task.validation_size


@pytest.mark.slow
def test_a_tiny_sweep_picks_per_arm_and_compares_best_against_best(tmp_path):
    out = tmp_path / "sweep"
    result = harness("sweep", "--preset", "smoke", "--algos", "grpo,ppo", "--grid", "optim.lr=1e-4,1e-3",
                     "--no-report", "--out", str(out), check=True)
    assert "Sweep: greedy accuracy on the validation split" in result.stdout
    data = json.loads((out / "sweep.json").read_text())
    assert [r["point"] for r in data["results"]] == ["grpo.p0", "grpo.p1", "ppo.p0", "ppo.p1"]
    assert set(data["choice"]) == {"grpo", "ppo"} and all(c is not None for c in data["choice"].values())
    for r in data["results"]:  # every point scored the 16 validation prompts of the smoke preset
        assert all(s["n"] == 16 and s["status"] == "ok" for s in r["seeds"].values())
        saved = (out / next(iter(r["seeds"].values()))["dir"] / "config.yaml").read_text()
        assert "eval_split: validation" in saved
    assert (out / "sweep.html").exists() and (out / "figures" / "sweep.png").exists()
    comparison = json.loads((out / "compare" / "comparison.json").read_text())
    assert comparison["seeds"] == [1]  # fresh: after the sweep's seed 0
    chosen = {s["name"]: s["overrides"] for s in comparison["arm_specs"]}
    assert chosen == {name: c["overrides"] for name, c in data["choice"].items()}
    summary = json.loads((out / "compare" / "chain_sum__ppo__s1" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["eval"]["final"]["n"] == 32  # the test split
    # resume: every point finished, nothing runs again
    before = (out / "chain_sum__grpo.p0__s0" / "summary.json").stat().st_mtime
    harness("sweep", "--resume", str(out), "--no-report", check=True)
    assert (out / "chain_sum__grpo.p0__s0" / "summary.json").stat().st_mtime == before
