"""Model-state bytes (arithmetic) against hand-computed sizes, sampler threads, and the no-GPU path."""

import threading
import time

import pytest
import torch

from conftest import small_policy
from harness.algorithms.batch import TrainSettings
from harness.algorithms.grpo import GRPO, GRPOConfig
from harness.algorithms.ppo import PPO, PPOConfig
from harness.measure.probes import NO_GPU, Probes, Sampler, model_state_bytes, open_nvml, optimizer_state_bytes, parameter_bytes


SMALL = {"hidden_size": 8, "num_layers": 1, "dtype": torch.float32}  # 16 tokens (see conftest.small_policy)


def qwen2_parameter_count(vocab, hidden, layers, intermediate):
    # embeddings (tied with the LM head); per layer: q, k, v with biases, o without; gate, up, down;
    # two RMSNorm weights; and the final norm.
    attention = 3 * (hidden * hidden + hidden) + hidden * hidden
    mlp = 3 * hidden * intermediate
    return vocab * hidden + layers * (attention + mlp + 2 * hidden) + hidden


def test_parameter_bytes_by_hand():
    policy = small_policy(**SMALL)
    # 16 * 8 + (3 * 72 + 64 + 3 * 8 * 32 + 16) + 8 = 128 + 1064 + 8 = 1200 parameters, 4 bytes each
    assert qwen2_parameter_count(16, 8, 1, 32) == 1200
    assert parameter_bytes(policy) == 1200 * 4


def one_step(algorithm, policy):
    """One AdamW step, so that the optimizer holds its state."""
    loss = sum(p.sum() for m in algorithm.trained_models().values() for p in m.parameters())
    loss.backward()
    for optimizer in algorithm.optimizers().values():
        optimizer.step()


def test_adamw_holds_two_states_per_parameter():
    policy = small_policy(**SMALL)
    grpo = GRPO(policy, GRPOConfig(), TrainSettings())
    one_step(grpo, policy)
    tensors = len(list(policy.parameters()))  # 12 tensors (the tied head is the embedding)
    # exp_avg and exp_avg_sq: 2 x 4800 bytes; and one float32 step counter per tensor: 12 x 4
    assert optimizer_state_bytes(grpo.optimizer) == 2 * 4800 + tensors * 4
    state = model_state_bytes(grpo.trained_models(), grpo.optimizers(), {})
    assert state["policy"] == {"params": 4800, "grads": 4800, "optimizer": 9600 + tensors * 4,
                               "total": 4800 * 4 + tensors * 4}


def test_ppo_state_is_grpo_state_plus_the_critic():
    grpo_policy, ppo_policy = small_policy(**SMALL), small_policy(**SMALL)
    grpo, ppo = GRPO(grpo_policy, GRPOConfig(), TrainSettings()), PPO(ppo_policy, PPOConfig(), TrainSettings())
    one_step(grpo, grpo_policy)
    one_step(ppo, ppo_policy)
    grpo_state = model_state_bytes(grpo.trained_models(), grpo.optimizers(), {"reference": grpo_policy})
    ppo_state = model_state_bytes(ppo.trained_models(), ppo.optimizers(), {"reference": ppo_policy})

    def total(state):
        return sum(row["total"] for row in state.values())
    assert total(ppo_state) == total(grpo_state) + ppo_state["critic"]["total"]
    # the critic is the policy's decoder (1200 parameters, tied head not counted twice) + a value head of 8 + 1
    assert ppo_state["critic"]["params"] == (1200 + 9) * 4
    assert ppo_state["reference"] == {"params": 4800, "grads": 0, "optimizer": 0, "total": 4800}


def test_sampler_threads_stop_cleanly_even_when_the_arm_raises():
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError), Probes("cpu", interval=0.001) as probes:
        assert probes.rss.alive
        raise RuntimeError("the arm crashed")
    assert not probes.rss.alive
    assert set(threading.enumerate()) == before
    assert probes.rss.peaks["rss"] > 0


def test_sampler_keeps_peaks():
    values = iter([3, 9, 4] + [1] * 1000)
    sampler = Sampler(lambda: {"x": next(values)}, interval=0.001).start()
    deadline = time.monotonic() + 10
    while sampler.count < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    sampler.stop()
    assert sampler.count >= 3, f"the sampler took {sampler.count} samples in 10 s"
    assert sampler.peaks["x"] == 9


def test_no_gpu_is_reported_in_words():
    probes = Probes("cpu").start()
    probes.stop()
    assert probes.summary()["gpu"] == NO_GPU
    module, reason = open_nvml(0)
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert module is None and (reason.startswith(NO_GPU) or reason.startswith("not measured"))


@pytest.mark.slow
def test_arm_summary_says_why_gpu_figures_are_absent(smoke_comparison):
    import json
    out, _ = smoke_comparison
    summary = json.loads((out / "chain_sum__ppo__s0" / "summary.json").read_text())
    measured = summary["mem"]["measured"]
    assert measured["gpu"] == NO_GPU and measured["rss_peak_net"] > 0
    arithmetic = summary["mem"]["arithmetic"]
    assert set(arithmetic["models"]) == {"policy", "critic", "reference"}
    assert arithmetic["model_state_total"] == sum(row["total"] for row in arithmetic["models"].values())
    live = summary["mem"]["live"]
    # the step peak is the largest phase peak, and the phase is named
    assert live["peak"] == max(row["total"] for row in live["phases"].values())
    assert live["phases"][live["peak_phase"]]["total"] == live["peak"]
