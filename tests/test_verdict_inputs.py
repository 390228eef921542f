"""What the verdict reads, made right where it is made: tracked steps at fixed shapes (padding masked: the
update is the unpadded one's; the tracked peak the same on every seed), a warm start per seed (seed 0's
unchanged), and the base model's lm-eval score once per comparison and seed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from harness.algorithms.base import NoMeter
from harness.config.derive import make_task, train_settings
from harness.config.load import load_config
from harness import UserError
from harness.train.models import (build_or_load_tiny, char_tokenizer, load_policy, tiny_key,
                                  tiny_model, validation_accuracy, warm_start)
from harness.train.rollout import generate, pad_batch


class Meter(NoMeter):
    def retag_rollout(self, batch) -> None:
        pass


# ---------------------------------------------------------------- fixed shapes on tracked steps

def test_pad_batch_masks_what_it_adds(smoke_model):
    _, task, policy, tokenizer = smoke_model
    config = load_config("smoke")
    torch.manual_seed(0)
    batch = generate(policy, None, tokenizer, task, task.train_examples(0, 2), config.rollout).batch
    P, T = batch.prompt_length, batch.completion_mask.shape[1]
    wide = pad_batch(batch, P + 3, T + 2, tokenizer.pad_token_id)
    assert wide.input_ids.shape == (batch.size, P + 3 + T + 2) and wide.prompt_length == P + 3
    # the old rows sit in the middle, untouched; 3 masked pads on the left, 2 on the right
    assert torch.equal(wide.input_ids[:, 3:3 + P + T], batch.input_ids)
    assert (wide.input_ids[:, :3] == tokenizer.pad_token_id).all() and (wide.attention_mask[:, :3] == 0).all()
    assert (wide.attention_mask[:, -2:] == 0).all() and (wide.completion_mask[:, -2:] == 0).all()
    assert torch.equal(wide.old_logps[:, :T], batch.old_logps) and (wide.old_logps[:, T:] == 0).all()
    with pytest.raises(ValueError):
        pad_batch(batch, P - 1, T, tokenizer.pad_token_id)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_a_padded_step_samples_and_trains_exactly_as_the_unpadded_one(smoke_model, algo):
    from harness.train.arm import arm_models, learn
    config, task, policy, tokenizer = smoke_model
    settings = train_settings(config)
    examples = task.train_examples(0, config.prompts_per_step)
    longest = max(len(tokenizer.encode(e.prompt)) for e in examples)
    outcomes = []
    for pad_to in (None, (longest + 3, config.rollout.max_new_tokens + 2)):  # wider than any of the step's rows
        model = copy.deepcopy(policy)
        algorithm, reference = arm_models(config, algo, model, settings)
        torch.manual_seed(7)
        rollout = generate(model, reference, tokenizer, task, examples, config.rollout, settings, pad_to=pad_to)
        prepared, updated = learn(algorithm, rollout.batch, Meter())
        weights = {f"{name}.{p}": t.detach().clone() for name, m in algorithm.trained_models().items()
                   for p, t in m.named_parameters()}
        outcomes.append((rollout, {**prepared, **updated}, weights))
    (plain, plain_stats, plain_weights), (padded, padded_stats, padded_weights) = outcomes
    assert padded.batch.input_ids.shape[1] == longest + 3 + config.rollout.max_new_tokens + 2
    assert padded.batch.input_ids.shape[1] > plain.batch.input_ids.shape[1]
    assert padded.completions == plain.completions  # the same samples: the padding is masked while sampling
    assert padded.batch.scores.tolist() == plain.batch.scores.tolist()
    assert padded_stats.keys() == plain_stats.keys() and "policy_loss" in plain_stats
    for key, value in plain_stats.items():  # losses, KL, clip fraction, entropy, grad norm, (PPO) value loss
        torch.testing.assert_close(torch.as_tensor(padded_stats[key]), torch.as_tensor(value), msg=key)
    assert padded_weights.keys() == plain_weights.keys()
    for name, weight in plain_weights.items():  # the updates themselves
        torch.testing.assert_close(padded_weights[name], weight, msg=name)


def tracked_step(config, algo: str, run_dir: Path) -> dict:
    """The record of one live-tensor tracked step (the second: AdamW's state exists from the first)."""
    from harness.measure.live_tensors import LiveTensors
    from harness.measure.probes import Probes
    from harness.measure.step_meter import StepMeter
    from harness.train.arm import Arm
    from harness.train.checkpoint import RunState
    arm = Arm(config, algo, run_dir)
    probes, state = Probes("cpu", enabled=False), RunState()
    arm.train_step(state, StepMeter(probes, None), probes)
    live = LiveTensors(arm.algorithm.trained_models().values(), arm.frozen_models().values(),
                       arm.algorithm.optimizers().values())
    record = arm.train_step(state, StepMeter(probes, live), probes)
    return {"shape": record.live_shape, "peak": record.live_peak, "tracked_shape": arm.tracked_shape(),
            "completion_lengths": record.completion_len_mean}


def test_a_tracked_steps_peak_is_the_same_on_every_seed(tmp_path):
    # two seeds: their own warm starts, their own samples (other completion lengths), one fixed shape and one peak
    records = {seed: tracked_step(load_config("smoke", overrides=[f"run.seed={seed}", "rollout.batch_size=8"]), "ppo",
                                  tmp_path / f"s{seed}") for seed in (0, 1)}
    config = load_config("smoke")
    task = make_task(config)
    longest = max(len(e.prompt) for e in task.eval_examples() + task.validation_examples())  # one token per character
    for record in records.values():
        assert record["shape"] == [longest, config.rollout.max_new_tokens] == list(record["tracked_shape"])
    assert records[0]["completion_lengths"] != records[1]["completion_lengths"]  # what was sampled differs
    assert records[0]["peak"] == records[1]["peak"]


# ---------------------------------------------------------------- a warm start per seed

def test_each_seed_has_its_own_warm_start_and_seed_0s_is_unchanged():
    config = load_config("smoke")
    task = make_task(config)
    # the cache keys seed 0 had before warm starts were per seed (smoke and the default tiny preset)
    assert tiny_key(config.model, task, 0) == "fe7ef1b42b45"
    tiny = load_config("tiny", overrides=["model.warm_start_until=null"])  # the preset's stopping rule came later
    assert tiny_key(tiny.model, make_task(tiny), 0) == "8ebca7a7044e"
    assert tiny_key(config.model, task, 1) != tiny_key(config.model, task, 0)
    folders = {seed: build_or_load_tiny(config.model, task, seed=seed) for seed in (0, 1)}
    weights = {seed: load_policy(str(folder))[0].state_dict() for seed, folder in folders.items()}
    # seed 0: what the single shared warm start always was (initial weights from seed 0, then the supervised pass)
    torch.manual_seed(0)
    tokenizer = char_tokenizer(task.alphabet)
    reference = tiny_model(config.model, tokenizer)
    warm_start(reference, tokenizer, task, config.model, seed=0)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(weights[0][name], tensor), name
    assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert json.loads((folders[1] / "warm_start.json").read_text())["seed"] == 1


def test_the_warm_start_reads_validation_every_ten_steps_past_its_minimum_and_stops_at_the_first_yes():
    config = load_config("smoke", overrides=["model.warm_start_until=0.5", "model.warm_start_max_steps=100"])
    task = make_task(config)
    tokenizer = char_tokenizer(task.alphabet)

    def run(answers):
        asked = []

        def accurate_enough():
            asked.append(len(asked))
            return answers(len(asked))
        torch.manual_seed(0)
        losses = warm_start(tiny_model(config.model, tokenizer), tokenizer, task, config.model, 0,
                            accurate_enough=accurate_enough)
        return len(losses), len(asked)
    # warm_start_steps is 20: asked at steps 20, 30 and 40, yes the third time
    assert run(lambda calls: calls == 3) == (40, 3)
    # never yes: asked at 20, 30, ..., 100 (9 times), and stopped at warm_start_max_steps
    assert run(lambda calls: False) == (100, 9)


def test_a_warm_start_with_a_target_records_what_it_reached_under_its_own_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    plain = load_config("smoke")
    config = load_config("smoke", overrides=["model.warm_start_until=0.99", "model.warm_start_max_steps=40"])
    task = make_task(config)
    assert tiny_key(config.model, task, 0) != tiny_key(plain.model, task, 0) == "fe7ef1b42b45"
    folder = build_or_load_tiny(config.model, task, seed=0)
    notes = json.loads((folder / "warm_start.json").read_text())
    # the smoke model cannot reach 99% in 40 steps: three checks (20, 30, 40), then the maximum
    assert notes["steps"] == 40 and len(notes["validation_checks"]) == 3 and notes["reached"] is False
    policy, tokenizer = load_policy(str(folder))
    assert notes["validation_accuracy"] == validation_accuracy(policy, tokenizer, task)()  # the saved model's


def test_the_warm_start_runs_on_the_threads_the_arms_are_given(monkeypatch, tmp_path):
    """run.threads holds for the warm start too (built in the comparison's own process), and is undone after."""
    import torch

    import harness.train.models as models
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    seen = []
    monkeypatch.setattr(models, "build_or_load_tiny", lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # every core of a 2-core machine, as a process starts; 1 must come from run.threads
    try:
        models.prepare_model(load_config("smoke", overrides=["run.threads=1"]))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_warm_start_target_needs_room_and_is_off_without_a_validation_split(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="warm_start_max_steps=10 is below model.warm_start_steps=20"):
        load_config("smoke", overrides=["model.warm_start_until=0.2", "model.warm_start_max_steps=10"])
    # no split to read (validation_size 0, as a data task has none): the plain warm start, said so
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    config = load_config("smoke", overrides=["model.warm_start_until=0.2", "task.validation_size=0"])
    notes = json.loads((build_or_load_tiny(config.model, make_task(config)) / "warm_start.json").read_text())
    assert notes == {"seed": 0, "steps": 20, "rule": "off: the task has no validation split"}


# ---------------------------------------------------------------- the base model's lm-eval score

def test_the_base_lm_eval_score_runs_once_per_seed_in_a_comparison(tmp_path, monkeypatch):
    import harness.train.lm_eval_bridge as bridge
    from harness.train.arm import Arm
    calls = []

    def fake_score(model, tokenizer, task, *, seed, label, **kwargs):
        calls.append((seed, label))
        return {"pass@1": 0.25 + seed, "k": kwargs["k"], "n": 32}
    monkeypatch.setattr(bridge, "score_policy", fake_score)
    comparison = tmp_path / "comparison"
    comparison.mkdir()
    (comparison / "comparison.json").write_text("{}")
    scores = {}
    for algo, seed in [("grpo", 0), ("ppo", 0), ("grpo", 1), ("ppo", 1)]:
        config = load_config("smoke", overrides=[f"run.seed={seed}", "run.lm_eval=true"])
        arm = Arm(config, algo, comparison / f"chain_sum__{algo}__s{seed}")
        scores[(algo, seed)] = arm.lm_eval("base")
    assert calls == [(0, "base"), (1, "base")]  # the first arm of each seed scored its base, the other read it
    assert scores[("ppo", 0)]["pass@1"] == scores[("grpo", 0)]["pass@1"] == 0.25
    assert scores[("ppo", 1)]["pass@1"] == 1.25
    assert scores[("ppo", 0)]["shared"].startswith("base_lm_eval/")
    assert len(list((comparison / "base_lm_eval").glob("*.json"))) == 2
    # the final policy is every arm's own; an arm run on its own (no comparison folder) scores its base itself
    arm.lm_eval("final")
    alone = Arm(load_config("smoke", overrides=["run.lm_eval=true"]), "grpo", tmp_path / "alone" / "run")
    assert alone.lm_eval("base")["pass@1"] == 0.25 and "shared" not in alone.lm_eval("base")
    assert calls == [(0, "base"), (1, "base"), (1, "final"), (0, "base"), (0, "base")]
