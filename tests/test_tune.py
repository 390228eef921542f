"""harness tune end to end: the same point budget per arm on the validation split, a written preset with each arm's
chosen settings and their provenance, which harness compare then applies (its plan says so), and --resume."""

import json

import pytest
import yaml
from conftest import harness

from harness.cli import main
from harness.commands.tune import arm_axes, points_config, tune_specs
from harness.commands.tune_table import preset_text
from harness.config.kl import KLSetting
from harness.config.load import load_config


@pytest.mark.parametrize("args, message", [
    (["--algos", "ppo-n1=ppo:rollout.samples_per_prompt=1"], "harness tune tunes one arm per algorithm"),
    (["--points", "0"], "--points must be at least 1 per arm"),
    (["--algos", "grpo,a2c"], "unknown algorithm 'a2c'"),
    (["--seed", "-1"], "the seed must be in"),
    (["--set", "rollout.batch_size=30"], "rollout.batch_size=30 is not divisible by the group size"),
    (["--curve-steps", "-5"], "--curve-steps and --curve-every must be positive"),
    (["--write-preset", "mine.txt"], "--write-preset mine.txt must end in .yaml or .yml"),
    (["--write-preset", "/proc/no/mine.yaml"], "--write-preset folder"),
])
def test_bad_tune_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = main(["tune", "--preset", "smoke", *args, "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "t").exists()


def test_a_resume_takes_no_new_settings(tmp_path, capsys):
    code = main(["tune", "--resume", str(tmp_path), "--points", "3"])
    assert code == 2 and "drop --points" in capsys.readouterr().err


def test_each_arms_axes_start_from_its_present_settings_and_keep_only_allowed_values():
    config = points_config(load_config("smoke", overrides=["algorithms.ppo.critic_lr=0"]), budget=None)
    axes, start = arm_axes(config, tune_specs(["ppo"])[0], KLSetting())
    # PPO's critic_lr 0 means the policy's learning rate: the search starts there
    assert start == {"rollout.samples_per_prompt": 4, "optim.lr": 1e-4, "algorithms.ppo.critic_lr": 1e-4,
                     "algorithms.ppo.critic_warmup_steps": 0}
    # a batch of 32 in 2 minibatches: every power of two up to 32 divides it; 3 steps leave warm-up 0 only
    assert axes[0].ladder == (1, 2, 4, 8, 16, 32) and axes[0].first == (1, 8)
    assert axes[3].ladder == (0,)
    config = points_config(load_config("smoke", overrides=["rollout.batch_size=24"]), budget=None)
    axes, _ = arm_axes(config, tune_specs(["grpo"])[0], KLSetting())
    assert axes[0].ladder == (2, 4, 8)  # 16 and 32 do not divide 24 completions


def test_the_written_preset_records_each_arms_choice_with_its_provenance(tmp_path):
    plan = {"command": "harness tune --preset smoke", "preset": "smoke", "seed": 1000, "points": 2,
            "kl": {"mode": "native", "coef": None}, "validation_prompts": 16,
            "budget": {"unit": "completions", "total": 96, "steps": 3},
            "preset_data": {"model": {"name": "tiny"}, "budget": {"unit": "completions", "total": 96}},
            "arm_specs": [{"name": "grpo", "algo": "grpo", "overrides": {},
                           "preset_settings": {"preset": "x", "algo": "grpo", "provenance": "old",
                                               "set": {"optim.lr": 1e-4, "algorithms.grpo.scale": "batch"}}}],
            "axes": {"grpo": {"start": {"optim.lr": 1e-4},
                              "axes": [{"field": "optim.lr", "ladder": [5e-5, 1e-4, 2e-4], "step": 1, "first": [],
                                        "bounds": [False, False]}]}},
            "arms": {"grpo": {"points": [
                {"index": 0, "setting": {"optim.lr": 1e-4}, "score": 0.25, "n": 16, "status": "ok", "seconds": 9,
                 "why": "start", "axis": None},
                {"index": 1, "setting": {"optim.lr": 2e-4}, "score": 0.375, "n": 16, "status": "ok", "seconds": 8,
                 "why": "probe", "axis": "optim.lr"}],
                "choice": {"index": 1, "setting": {"optim.lr": 2e-4}, "score": 0.375},
                "edges": [{"field": "optim.lr", "value": 2e-4, "below": 1e-4, "above": None, "status": "edge",
                           "note": "nothing probed above (the budget ran out)", "final": True, "with": {}},
                          {"field": "rollout.samples_per_prompt", "value": 4, "below": 2, "above": 8,
                           "status": "interior", "note": "", "final": False, "with": {"optim.lr": 1e-4}}],
                "converged": False}},
            "curves": {"arms": {"grpo": {"curve": [[0, 0.1], [2, 0.3], [4, 0.3]],
                                         "plateau": {"step": 2, "best_step": 4, "best": 0.3, "se": 0.11,
                                                     "rising": True, "flat": False}}},
                       "steps": 2, "budget": {"unit": "completions", "total": 64}}}
    text = preset_text(plan, tmp_path)
    data = yaml.safe_load(text)
    entry = data["arm_settings"]["grpo"]
    # the chosen value of the tuned axis, over what the preset's entry set besides
    assert entry["set"] == {"algorithms.grpo.scale": "batch", "optim.lr": 2e-4} and entry["kl"] == "native"
    assert entry["provenance"].startswith("harness tune --preset smoke: the best of 2 points on the validation split "
                                          "(37.5% of 16 prompts after 3 steps, seed 1000, --kl native)")
    assert data["budget"] == {"unit": "completions", "total": 64}  # from the curves
    assert "# | t1 | probe lr | 0.0002 | **37.5%** (chosen) | 8 s |" in text
    assert "#   optim.lr=0.0002: edge (probed 0.0001 below; nothing probed above (the budget ran out))" in text
    assert ("#   rollout.samples_per_prompt=4: interior (probed 2 below and 8 above, with lr=0.0001; not probed again "
            "at the chosen values of the other axes (the budget ran out))") in text
    assert text.splitlines()[0].startswith("# tuned by harness tune from preset smoke")


@pytest.mark.slow
def test_tune_writes_a_preset_that_compare_then_applies(tmp_path):
    out = tmp_path / "tune"
    result = harness("tune", "--preset", "smoke", "--algos", "grpo,ppo", "--points", "2", "--out", str(out),
                     "--set", "run.lm_eval=false", check=True)
    assert "tune: 2 arms (grpo, ppo) x 2 points each, 96 completions (3 steps) per point" in result.stdout
    data = json.loads((out / "tune.json").read_text())
    assert [len(data["arms"][arm]["points"]) for arm in ("grpo", "ppo")] == [2, 2]  # the same budget per arm
    for arm in ("grpo", "ppo"):
        for point in data["arms"][arm]["points"]:
            assert point["status"] == "ok" and point["n"] == 16  # the smoke preset's 16 validation prompts
            assert "eval_split: validation" in (out / point["dir"] / "config.yaml").read_text()
            assert point["dir"].endswith("__s1000")
    assert [p["setting"]["rollout.samples_per_prompt"] for p in data["arms"]["ppo"]["points"]] == [4, 1]
    preset = out / "preset.yaml"
    written = yaml.safe_load(preset.read_text())
    assert set(written["arm_settings"]) == {"grpo", "ppo"}
    assert written["arm_settings"]["ppo"]["set"] == data["arms"]["ppo"]["choice"]["setting"]
    # harness compare with the written preset: each arm its choice, the plan says where it came from
    compared = harness("compare", "--preset", str(preset), "--no-report", "--out", str(tmp_path / "cmp"), check=True)
    assert "  arm ppo (ppo)" in compared.stdout
    assert f": preset {preset.resolve()} (harness tune --preset smoke" in compared.stdout
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    saved = {s["name"]: s for s in comparison["arm_specs"]}
    assert saved["ppo"]["preset_settings"]["set"] == written["arm_settings"]["ppo"]["set"]
    assert {row["field"] for row in saved["ppo"]["settings"]} == set(written["arm_settings"]["ppo"]["set"])
    arm_config = yaml.safe_load((tmp_path / "cmp" / "chain_sum__ppo__s0" / "config.yaml").read_text())
    assert arm_config["optim"]["lr"] == written["arm_settings"]["ppo"]["set"]["optim.lr"]
    # resume: every point finished, nothing runs again, the same preset
    before = (out / data["arms"]["grpo"]["points"][0]["dir"] / "summary.json").stat().st_mtime
    harness("tune", "--resume", str(out), check=True)
    assert (out / data["arms"]["grpo"]["points"][0]["dir"] / "summary.json").stat().st_mtime == before
    assert yaml.safe_load(preset.read_text()) == written


def test_the_expected_time_comes_from_each_arms_start_point():
    from harness.commands.tune import expected_time_line
    plan = {"points": 12, "budget": {"steps": 120}, "curve": {"steps": 400}}
    starts = {"grpo": {"seconds": 480.0, "score": 0.206}, "ppo": {"seconds": 600.0, "score": None}}
    # grpo: 12 x 480 s + 400 curve steps at 4 s a step = 7,360 s; ppo: 12 x 600 + 400 x 5 = 9,200 s; 16,560 s
    assert expected_time_line(plan, starts) == ("expected time: per point grpo 8 min 0 s (start 20.6%), ppo 10 min "
                                                "0 s (start failed): at most 4 h 36 min for 12 points per arm and "
                                                "the curves")


def test_the_tune_warm_starts_the_model_of_its_own_seed(tmp_path, monkeypatch):
    """Before any point's clock starts, the tune builds the warm start its points train from (seed 1000), not
    the comparison's seed 0, which no point uses."""
    from harness.commands import compare, tune

    class Built(Exception):
        pass

    def record(config, seeds=None):
        raise Built(seeds)

    monkeypatch.setattr(compare, "prepare_model", record)
    with pytest.raises(Built) as built:
        tune.run_tune(tmp_path, load_config("smoke"), load_config("smoke"), [], {"seed": 1000, "arms": {}}, False)
    assert built.value.args == ([1000],)
