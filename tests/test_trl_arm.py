"""The trl-grpo arm: TRL's GRPOTrainer given what our GRPO arm gets, and recorded like it."""

import json

import pytest
import yaml
from trl import GRPOConfig
from trl.trainer.utils import RepeatSampler

from conftest import harness, read_rows, read_summary
from harness import UserError
from harness.cli import main
from harness.config.derive import make_task
from harness.config.load import load_config
from harness.crosscheck.trl.arm import trl_options
from harness.crosscheck.trl.settings import trl_settings
from harness.crosscheck.trl.trainer import TaskReward, prompt_dataset
from harness.report.stats import mean_ci


def smoke(*overrides):
    return load_config("smoke", overrides=list(overrides))


def test_trl_batches_match_ours(tmp_path):
    # smoke: 32 completions per step in 2 minibatches of 16, 3 steps -> 6 optimizer steps of 16 rows each
    config = smoke()
    settings = trl_settings(config, trl_options(config))
    args = GRPOConfig(output_dir=str(tmp_path), **settings.grpo_config)
    assert args.generation_batch_size == 32 and args.per_device_train_batch_size == 16
    assert args.gradient_accumulation_steps == 1 and args.steps_per_generation == 2 and args.num_iterations == 1
    # TRL's optimizer steps per rollout: steps_per_generation * num_iterations / gradient_accumulation_steps
    assert args.steps_per_generation * args.num_iterations // args.gradient_accumulation_steps == 2
    assert settings.optimizer_steps_per_rollout == 2 and args.max_steps == 6


def test_trl_batches_with_epochs_and_micro_batches(tmp_path):
    # 64 completions, 4 minibatches of 16, 2 epochs -> 8 optimizer steps per rollout
    config = smoke("rollout.batch_size=64", "optim.minibatches=4", "optim.epochs=2")
    args = GRPOConfig(output_dir=str(tmp_path), **trl_settings(config, trl_options(config)).grpo_config)
    assert args.generation_batch_size == 64 and args.num_iterations == 2
    assert args.steps_per_generation * args.num_iterations // args.gradient_accumulation_steps == 8


def test_trl_defaults_that_differ_are_set_explicitly(tmp_path):
    config = smoke()
    args = GRPOConfig(output_dir=str(tmp_path), **trl_settings(config, trl_options(config)).grpo_config)
    # GRPOConfig's own defaults: beta 0, loss_type "dapo", bf16 on, gradient checkpointing on, linear decay
    assert args.beta == 0.04 and args.loss_type == "grpo" and args.scale_rewards == "group"
    assert not args.bf16 and not args.gradient_checkpointing and args.lr_scheduler_type == "constant"
    assert args.learning_rate == config.optim.lr and args.max_grad_norm == config.optim.max_grad_norm
    assert args.temperature == 1.0 and args.top_p == 1.0 and args.top_k == 0 and args.max_completion_length == 5
    assert args.num_generations == 4 and not args.shuffle_dataset and not args.mask_truncated_completions
    # no sampling extras: min_p None (0.0 would add a softmax per token), no generation_kwargs
    assert args.min_p is None and args.repetition_penalty == 1.0 and args.generation_kwargs is None


def test_loss_aggregation_maps_to_trl_loss_types():
    for aggregation, loss_type in (("sequence", "grpo"), ("token", "bnpo")):
        config = smoke(f"algorithms.grpo.aggregation={aggregation}")
        assert trl_settings(config, trl_options(config)).grpo_config["loss_type"] == loss_type


def test_trl_takes_grpo_options_unless_told_otherwise():
    config = smoke("algorithms.grpo.beta=0.1", "algorithms.grpo.eps_high=0.28", "algorithms.trl-grpo.eps_high=0.3")
    options = trl_options(config)
    assert options.beta == 0.1 and options.eps_high == 0.3
    with pytest.raises(UserError, match="algorithms.trl-grpo"):
        trl_options(smoke("algorithms.trl-grpo.nonsense=1"))
    with pytest.raises(UserError, match="no KL term in the reward"):
        trl_options(smoke("algorithms.trl-grpo.kl_reward_coef=0.05"))


def test_what_could_not_be_matched_is_said():
    one_step = smoke("optim.minibatches=1")
    notes = trl_settings(one_step, trl_options(one_step)).not_matched
    assert any(note.startswith("old log-probs") for note in notes)
    two_steps = smoke()
    notes = trl_settings(two_steps, trl_options(two_steps)).not_matched
    assert any(note.startswith("minibatch rows") for note in notes)
    assert not any(note.startswith("old log-probs") for note in notes)


def test_trl_draws_our_prompts_in_our_order():
    config = smoke()
    task = make_task(config)
    examples, dataset = prompt_dataset(task, config.prompts_per_step, config.total_steps())
    settings = trl_settings(config, trl_options(config)).grpo_config
    # TRL's train sampler as GRPOTrainer builds it (shuffle off): one generation batch per rollout
    sampler = RepeatSampler(dataset, mini_repeat_count=settings["num_generations"],
                            batch_size=config.prompts_per_step,
                            repeat_count=settings["num_iterations"] * settings["steps_per_generation"], shuffle=False)
    indices = list(sampler)
    repeat = settings["num_iterations"] * settings["steps_per_generation"]  # TRL reuses a rollout this many times
    batch = config.rollout.batch_size  # the dataloader hands TRL this many rows per training step
    for step in range(config.total_steps()):
        first = indices[step * batch * repeat:][:batch]  # the rows TRL generates from at rollout `step`
        prompts = [dataset[i]["prompt"] for i in first]
        ours = [e.prompt for e in task.train_examples(step, config.prompts_per_step) for _ in range(4)]
        assert prompts == ours, step  # G = 4 copies of each prompt, grouped, in our order
        assert [examples[dataset[i]["example"]] for i in first][::4] == task.train_examples(step, config.prompts_per_step)


def test_task_reward_scores_like_the_rollout():
    config = smoke()
    task = make_task(config)
    examples = task.train_examples(0, 2)
    eos = 1
    reward = TaskReward(task, examples, eos_token_id=eos)
    right = examples[0].answer
    # completions as TRL hands them: text before EOS, ids cut after the first EOS
    totals = reward(prompts=[e.prompt for e in examples], completions=[right, right],
                    completion_ids=[[5, 6, eos], [5, 6, 7]], example=[0, 1])
    assert totals == [task.reward(right, examples[0], finished=True).total,
                      task.reward(right, examples[1], finished=False).total]
    assert totals[0] == 1.0 + config.task.format_weight  # solved and well-formed
    assert reward.completion_lengths == [3, 3] and reward.example_ids == [0, 1]


def test_unknown_algorithm_lists_trl_grpo(capsys):
    assert main(["run", "--algo", "nope", "--preset", "smoke"]) == 2
    assert "trl-grpo" in capsys.readouterr().err


@pytest.mark.slow
def test_trl_and_grpo_start_from_the_same_rollout(tmp_path):
    folders = {}
    for algo in ("grpo", "trl-grpo"):
        folders[algo] = tmp_path / algo
        harness("run", "--algo", algo, "--preset", "smoke", "--set", "run.lm_eval=false", "--out", str(folders[algo]),
                check=True)
    grpo, trl = (read_rows(folders[a] / "steps.jsonl") for a in ("grpo", "trl-grpo"))
    assert [r["step"] for r in trl] == [1, 2, 3] and trl[-1]["completions"] == 96
    # same model, prompts and sampling seed at step 1: the same completions, so the same rewards and lengths
    for key in ("reward/mean", "reward/std", "reward/accuracy", "reward/format", "completion/len_mean", "tokens",
                "loss/zero_adv_frac", "loss/reward_std"):
        assert trl[0][key] == grpo[0][key], key
    # and the same policy before any update: entropy of the first minibatch agrees to float precision
    assert trl[0]["loss/entropy"] == pytest.approx(grpo[0]["loss/entropy"], rel=1e-3)
    for key in ("time/generate", "time/policy_update", "mem/model_state/policy/optimizer", "mem/model_state/reference/params"):
        assert key in trl[0], key
    summary = read_summary(folders["trl-grpo"])
    assert summary["status"] == "ok" and summary["algo"] == "trl-grpo" and summary["steps"] == 3
    base = read_summary(folders["grpo"])["eval"]["base"]
    assert summary["eval"]["base"] == base  # the same held-out eval through the same function
    config = yaml.safe_load((folders["trl-grpo"] / "config.yaml").read_text())
    trl_section = config["derived"]["trl"]
    assert trl_section["grpo_config"]["loss_type"] == "grpo" and trl_section["not_matched"]
    assert (folders["trl-grpo"] / "final_model" / "config.json").exists()
    assert not (folders["trl-grpo"] / "trl").exists()  # TRL's output_dir is cleaned up


@pytest.fixture(scope="module")
def family_comparison(tmp_path_factory):
    """grpo, ppo and trl-grpo over three seeds on the smoke preset, without lm-eval."""
    out = tmp_path_factory.mktemp("family") / "compare"
    harness("compare", "--algos", "grpo,ppo,trl-grpo", "--seeds", "3", "--preset", "smoke",
            "--set", "run.lm_eval=false", "--no-report", "--out", str(out), check=True)
    return out


@pytest.mark.slow
def test_reward_curves_of_trl_and_grpo_agree_within_seed_intervals(family_comparison):
    curves = {algo: [read_rows(family_comparison / f"chain_sum__{algo}__s{seed}" / "steps.jsonl") for seed in range(3)]
              for algo in ("grpo", "trl-grpo")}
    for step in range(3):
        grpo = mean_ci([rows[step]["reward/mean"] for rows in curves["grpo"]])
        trl = mean_ci([rows[step]["reward/mean"] for rows in curves["trl-grpo"]])
        # each arm's seed mean lies in the other's 95% interval: not equal, but not told apart
        assert grpo.lo <= trl.mean <= grpo.hi and trl.lo <= grpo.mean <= trl.hi, (step, grpo, trl)


@pytest.mark.slow
def test_report_renders_trl_grpo_beside_ppo(family_comparison, tmp_path):
    from harness.report import build_report
    summary = read_summary(family_comparison)
    assert {row["algo"] for row in summary["arms"] if row["status"] == "ok"} == {"grpo", "ppo", "trl-grpo"}
    html, _ = build_report(family_comparison, tmp_path, pdf=False)
    text = html.read_text()
    assert "trl-grpo: TRL 1." in text and "GRPOTrainer" in text
    # what could not be matched, as the arm's config.yaml recorded it, and the settings passed explicitly
    config = yaml.safe_load((family_comparison / "chain_sum__trl-grpo__s0" / "config.yaml").read_text())
    for line in config["derived"]["trl"]["not_matched"]:
        assert line.replace("'", "&#39;").replace('"', "&#34;") in text, line
    assert "loss_type" in text and "derived.trl" not in text  # its own section, not the side-by-side table


# ---------------------------------------------------------------- harness bench trl

def test_bench_trl_refuses_bad_input_before_running(capsys):
    assert main(["bench", "trl", "--preset", "smoke", "--budget", "1"]) == 2
    assert "at least 3 steps" in capsys.readouterr().err
    assert main(["bench", "trl", "--preset", "smoke", "--workloads", "huge"]) == 2
    assert "unknown bench workload" in capsys.readouterr().err
    assert main(["bench", "trl", "--preset", "smoke", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_trl_times_both_arms_on_the_fixed_workload(tmp_path):
    out = tmp_path / "bench.json"
    result = harness("bench", "trl", "--preset", "smoke", "--repeats", "1", "--budget", "4", "--workloads", "tiny",
                     "--out", str(out), check=True)
    assert "64 completions per step, G = 8, 4 new tokens, beta 0.04, 1 optimizer step(s) per rollout" in result.stdout
    figures = json.loads(out.read_text())["results"]["tiny"]
    steps = figures["median_step_s"]
    # 4 steps: the first warms caches, the second carries the live-tensor tracker, two are timed
    assert figures["steps_each"] == 2 and steps["grpo"] > 0 and steps["trl-grpo"] > 0
    assert figures["time_ratio"] == pytest.approx(steps["grpo"] / steps["trl-grpo"])
    assert {"generate", "policy_update"} <= set(figures["median_phase_s"]["trl-grpo"])
    peaks = figures["live_peak"]
    assert peaks["grpo"] > 0 and peaks["trl-grpo"] > 0
    assert figures["peak_ratio"] == pytest.approx(peaks["grpo"] / peaks["trl-grpo"])
    assert "grpo/trl" in result.stdout and "machine load" in result.stdout
