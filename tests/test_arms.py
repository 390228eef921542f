"""Arm variants, the baseline arm and the matched KL of a comparison (harness.commands.arm_specs, harness.results.headline)."""

import json
import shutil

import pandas as pd
import pytest
from conftest import harness

from harness import UserError
from harness.cli import main
from harness.commands.arm_specs import ArmSpec, arm_config, arms_from_yaml, parse_arm_spec, parse_arm_specs
from harness.config.kl import KLSetting
from harness.config.load import load_config
from harness.results.headline import arm_pair_of, default_baseline, ratio_rows

N1 = "ppo-n1=ppo:rollout.samples_per_prompt=1"


# ---------------------------------------------------------------- parsing

def test_an_arm_is_a_name_an_algorithm_and_overrides():
    assert parse_arm_spec("grpo") == ArmSpec("grpo", "grpo", {})
    assert parse_arm_spec(N1) == ArmSpec("ppo-n1", "ppo", {"rollout.samples_per_prompt": 1})
    spec = parse_arm_spec("fast=ppo:optim.lr=3e-4:algorithms.ppo.critic_warmup_steps=2")
    assert spec.overrides == {"optim.lr": 3e-4, "algorithms.ppo.critic_warmup_steps": 2}
    assert [s.name for s in parse_arm_specs(f"grpo,ppo,{N1},trl-grpo")] == ["grpo", "ppo", "ppo-n1", "trl-grpo"]
    assert parse_arm_spec(N1).text == N1 and parse_arm_spec("ppo").text == "ppo"


def test_the_arms_section_of_a_config_file_says_the_same():
    specs = arms_from_yaml([{"name": "grpo", "algo": "grpo"},
                            {"name": "ppo-n1", "algo": "ppo", "set": {"rollout.samples_per_prompt": 1}},
                            {"name": "slow", "algo": "ppo", "set": {"optim": {"lr": "1e-5"}}}], "arms.yaml")
    assert specs[1] == parse_arm_spec(N1)
    assert specs[2].overrides == {"optim.lr": 1e-5}


BAD_SPECS = [
    ("grpo,ppo,a=", "names no algorithm"),
    ("=ppo", "names no arm"),
    ("x=ppo:novalue", "override 'novalue' must look like section.field=value"),
    ("grpo,ppo,grpo", "arm name grpo is given twice"),
    ("ppo,x=ppo,x=grpo", "arm name x is given twice"),
    ("x=nope", "unknown algorithm 'nope'"),
    ("x=ppo:rollout.nope=1", "arm x: unknown config field 'rollout.nope'"),
    ("x=ppo:algorithms.ppo.nope=1", "arm x: unknown config field 'algorithms.ppo.nope'; valid: clip_eps,"),
    ("x=ppo:optim.lr=fast", "arm x: optim.lr: must be a finite number, got 'fast'"),
    ("x=grpo:algorithms.ppo.kl_coef=0", "arm x runs grpo: algorithms.ppo.kl_coef does not apply to it"),
    ("x=ppo:budget.total=10", "arm x: budget.total is the same for every arm"),
    ("x=ppo:rollout.samples_per_prompt=3", "arm x: rollout.batch_size=32 is not divisible by the group size"),
    ("x=grpo:rollout.samples_per_prompt=1", "arm x: grpo compares completions within a group"),
    ("ppo:rollout.samples_per_prompt=1", "has overrides but no name"),
]


@pytest.mark.parametrize("algos,message", BAD_SPECS)
def test_a_bad_arm_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, algos, message):
    out = tmp_path / "comparison"
    code = main(["compare", "--preset", "smoke", "--algos", algos, "--out", str(out),
                 "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("args,message", [
    (["--algos", "grpo,trl-grpo", "--kl", "reward"], "TRL's GRPOTrainer (trl-grpo) has no KL term in the reward"),
    (["--kl", "off", "--kl-coef", "0.1"], "--kl off has none"),
    (["--kl", "loss", "--kl-coef", "-1"], "--kl-coef must be a positive number"),
    (["--algos", "grpo,ppo", "--baseline", "rloo"], "--baseline rloo is not an arm of this comparison"),
])
def test_a_kl_or_baseline_it_cannot_do_is_one_line_exit_2(tmp_path, capsys, args, message):
    code = main(["compare", "--preset", "smoke", *args, "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- configs of arms

@pytest.mark.parametrize("unit,total", [("completions", 96), ("tokens", 300), ("steps", 3)])
def test_the_budget_is_the_same_in_its_unit_whatever_the_group_size(unit, total):
    config = load_config("smoke", overrides=[f"budget.unit={unit}", f"budget.total={total}"])
    group, single = arm_config(config, parse_arm_spec("ppo")), arm_config(config, parse_arm_spec(N1))
    # 32 completions per step either way: 8 prompts x 4, or 32 prompts x 1
    assert (group.prompts_per_step, single.prompts_per_step) == (8, 32)
    assert group.completions_per_step == single.completions_per_step == 32
    assert group.budget.unit == single.budget.unit == unit and group.budget.total == single.budget.total == total
    assert group.total_steps() == single.total_steps()  # completions: 96 / 32 = 3; steps: 3; tokens: a bound


def test_matched_kl_is_applied_to_every_arm_before_its_overrides():
    config = load_config("smoke")
    options = lambda arm, kl: arm_config(config, parse_arm_spec(arm), KLSetting(*kl)).algorithms  # noqa: E731
    assert options("ppo", ("off",))["ppo"] == {"kl_coef": 0.0, "kl_loss_coef": 0.0}
    assert options("grpo", ("off",))["grpo"] == {"beta": 0.0, "kl_reward_coef": 0.0}
    assert options("grpo", ("loss", 0.1))["grpo"] == {"beta": 0.1, "kl_reward_coef": 0.0}
    assert options("ppo", ("loss",))["ppo"] == {"kl_coef": 0.0, "kl_loss_coef": 0.04}  # GRPO's paper beta
    assert options("ppo", ("reward",))["ppo"] == {"kl_coef": 0.05, "kl_loss_coef": 0.0}
    assert options("trl-grpo", ("loss", 0.02))["grpo"]["beta"] == 0.02  # a cross-check reads grpo's options
    # an arm's own override wins over the comparison's KL
    assert options("g0=grpo:algorithms.grpo.beta=0", ("loss", 0.1))["grpo"]["beta"] == 0.0
    assert options("ppo", ("native",)) == config.algorithms


# ---------------------------------------------------------------- the baseline and the ratios

def summary(arm, algo, seed, peak, step_s, accuracy):
    return {"arm": arm, "algo": algo, "seed": seed, "status": "ok", "mem": {"live": {"peak": peak}},
            "time": {"per_step_s": step_s, "train_s": 10 * step_s}, "eval": {"final": {"accuracy": accuracy}}}


def test_two_arms_read_as_before_grpo_over_ppo():
    arms = {"ppo": "ppo", "grpo": "grpo"}
    assert default_baseline(arms) == "ppo" and arm_pair_of(arms) == ("grpo", "ppo")
    assert arm_pair_of(["grpo", "ppo"]) == ("grpo", "ppo")
    rows = ratio_rows([summary("grpo", "grpo", 0, 60, 1.0, 0.5), summary("ppo", "ppo", 0, 100, 2.0, 0.4),
                       summary("grpo", "grpo", 1, 40, 3.0, 0.5), summary("ppo", "ppo", 1, 100, 2.0, 0.6)], arms)
    assert (rows["numerator"], rows["denominator"], rows["baseline"]) == ("grpo", "ppo", "ppo")
    # seed means: peak 50 / 100; time per step 2 / 2; accuracy paired: (0.1 + -0.1) / 2 = 0
    assert rows["figures"]["mem_live_peak"]["ratio"] == pytest.approx(0.5)
    assert rows["figures"]["time_per_step"]["ratio"] == pytest.approx(1.0)
    assert rows["arms"]["grpo"]["acc_final_difference"] == pytest.approx(0.0)


def test_every_arm_gets_a_ratio_against_the_baseline():
    names = ["grpo", "ppo", "rloo", "reinforce_pp", "dr_grpo", "dapo", "trl-grpo"]
    arms = {name: name for name in names}
    summaries = [summary(n, n, 0, 10 * (i + 1), 1.0, 0.1 * i) for i, n in enumerate(names)]
    rows = ratio_rows(summaries, arms)
    assert rows["baseline"] == "ppo" and sorted(rows["arms"]) == sorted(set(names) - {"ppo"})
    assert rows["arms"]["rloo"]["figures"]["mem_live_peak"]["ratio"] == pytest.approx(30 / 20)
    assert rows["arms"]["dapo"]["acc_final_difference"] == pytest.approx(0.5 - 0.1)
    # no PPO arm: the first arm; a named baseline wins
    assert default_baseline({"grpo": "grpo", "rloo": "rloo"}) == "grpo"
    assert arm_pair_of({"grpo": "grpo", "rloo": "rloo"}, "rloo") == ("grpo", "rloo")
    assert arm_pair_of({"ppo": "ppo", "ppo-n1": "ppo", "grpo": "grpo"}, "ppo-n1") == ("grpo", "ppo-n1")


def test_critic_warm_up_completions_are_read_from_the_steps():
    from harness.report.content import warmup_completions
    from harness.report.data import Arm
    from harness.results.records import Summary
    steps = pd.DataFrame({"step": [1, 2, 3], "completions": [32, 64, 96],
                          "loss/policy_frozen": [1.0, None, None]})
    arm = Arm(name="ppo", algo="ppo", seed=0, dir=None, summary=Summary(status="ok"), steps=steps, env={}, config={})
    assert warmup_completions(arm) == (1, 32)


# ---------------------------------------------------------------- end to end

@pytest.mark.slow
def test_a_three_arm_comparison_with_matched_kl_and_its_resume(tmp_path):
    out = tmp_path / "three"
    warm = f"{N1}:algorithms.ppo.critic_warmup_steps=1"
    result = harness("compare", "--preset", "smoke", "--algos", f"grpo,ppo,{warm}", "--kl", "loss", "--no-report",
                     "--out", str(out), "--set", "run.lm_eval=false", check=True)
    assert "KL to the reference: matched: k3 in the loss with coefficient 0.04" in result.stdout
    assert "Every arm against the baseline ppo" in result.stdout and "ppo-n1" in result.stdout
    assert "ppo-n1 s0: accuracy" in result.stdout and "ppo-n1 s0 train: " in result.stdout  # its own lines name it
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "chain_sum__grpo__s0", "chain_sum__ppo-n1__s0", "chain_sum__ppo__s0"]
    data = json.loads((out / "summary.json").read_text())
    assert data["baseline"] == "ppo" and sorted(data["ratios"]["arms"]) == ["grpo", "ppo-n1"]
    assert data["ratios"]["numerator"] == "grpo"
    n1 = json.loads((out / "chain_sum__ppo-n1__s0" / "summary.json").read_text())
    assert n1["arm"] == "ppo-n1" and n1["algo"] == "ppo"
    assert n1["overrides"] == {"rollout.samples_per_prompt": 1, "algorithms.ppo.critic_warmup_steps": 1}
    used = [json.loads((out / a / "summary.json").read_text())["budget"]["used"]["completions"]
            for a in ("chain_sum__grpo__s0", "chain_sum__ppo__s0", "chain_sum__ppo-n1__s0")]
    assert used == [96, 96, 96]  # the warm-up's 32 completions included
    # resume: a lost arm runs again under its own name and overrides, the others are kept
    kept = (out / "chain_sum__grpo__s0" / "summary.json").read_text()
    shutil.rmtree(out / "chain_sum__ppo-n1__s0")
    resumed = harness("compare", "--resume", str(out), "--no-report", check=True)
    assert "ppo-n1 s0: accuracy" in resumed.stdout
    assert (out / "chain_sum__grpo__s0" / "summary.json").read_text() == kept
    again = json.loads((out / "chain_sum__ppo-n1__s0" / "summary.json").read_text())
    assert again["status"] == "ok" and again["arm"] == "ppo-n1"
    from harness.report import render_html
    html = render_html(out)
    assert "Every arm against the baseline, ppo" in html and "rollout.samples_per_prompt=1" in html
    assert "1 steps, 32 completions" in html and "matched: k3 in the loss" in html


@pytest.mark.slow
def test_the_whole_family_against_ppo_with_a_report(tmp_path):
    out = tmp_path / "family"
    harness("compare", "--algos", "grpo,ppo,rloo,reinforce_pp,dr_grpo,dapo,gspo,trl-grpo", "--preset", "smoke",
            "--out", str(out), "--set", "run.lm_eval=false", check=True)
    data = json.loads((out / "summary.json").read_text())
    assert sorted(data["ratios"]["arms"]) == sorted(["grpo", "rloo", "reinforce_pp", "dr_grpo", "dapo", "gspo",
                                                     "trl-grpo"])
    assert all("mem_live_peak" in a["figures"] for a in data["ratios"]["arms"].values())
    html = (out / "report.html").read_text()
    assert "Every arm against the baseline, ppo" in html
    for name in ("RLOO", "REINFORCE_PP", "DR_GRPO", "DAPO", "GSPO", "TRL-GRPO"):
        assert f">{name}</span>" in html


def test_kl_setting_refuses_what_it_cannot_mean():
    with pytest.raises(UserError, match="not one of"):
        KLSetting("both")
    assert KLSetting("reward").coef == 0.05 and KLSetting("native").coef is None
