"""The critic-free family by hand: RLOO, REINFORCE++ (and its baseline variant), Dr. GRPO, DAPO, GSPO."""

import math

import pytest
import torch
from torch.testing import assert_close

from harness.algorithms import algorithm_names, get_algorithm, parse_options
from harness.algorithms.batch import RolloutBatch, TrainSettings
from harness.algorithms.dapo import DAPO, has_spread, overlong_penalty
from harness.algorithms.dr_grpo import DrGRPO, DrGRPOConfig
from harness.algorithms.grpo import grpo_loss
from harness.algorithms.gspo import gspo_loss, sequence_log_ratio
from harness.algorithms.reinforce_pp import reinforce_pp_advantages, reward_to_go
from harness.algorithms.rloo import leave_one_out_advantages, rloo_loss, sequence_kl
from harness.train.rollout import concat_batches


def test_leave_one_out_baseline_by_hand():
    # group [1, 0, 0]: baselines mean(0, 0) = 0, mean(1, 0) = 0.5, 0.5 -> [1, -0.5, -0.5]
    # group [2, 2, 5]: baselines 3.5, 3.5, 2 -> [-1.5, -1.5, 3]
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 5.0])
    assert_close(leave_one_out_advantages(rewards, 3), torch.tensor([1.0, -0.5, -0.5, -1.5, -1.5, 3.0]))
    # = G / (G - 1) * (r - mean): group 1 mean 1/3 -> 1.5 * 2/3 = 1
    with pytest.raises(ValueError, match="at least 2 completions"):
        leave_one_out_advantages(rewards, 1)


def test_rloo_treats_the_completion_as_one_action():
    # one completion of two tokens with log-ratios log 1.5 and log 1.0: sequence ratio 1.5, clipped to 1.2
    logps = torch.log(torch.tensor([[1.5, 1.0], [1.0, 1.0]]))
    old = torch.zeros(2, 2)
    mask = torch.ones(2, 2)
    loss, stats = rloo_loss(logps, old, torch.tensor([1.0, -2.0]), mask)
    # row 1: -min(1.5 * 1, 1.2 * 1) = -1.2; row 2: ratio 1 -> -(-2) = 2; mean (-1.2 + 2) / 2 = 0.4
    assert_close(loss, torch.tensor(0.4))
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    # the KL in the reward is summed over the completion's tokens: (-1 - -1.5) + (-1 - -1) = 0.5
    assert_close(sequence_kl(torch.tensor([[-1.0, -1.0, 9.0]]), torch.tensor([[-1.5, -1.0, 0.0]]),
                             torch.tensor([[1.0, 1.0, 0.0]])), torch.tensor([0.5]))


def test_reward_to_go_and_batch_normalisation_of_reinforce_pp():
    rewards = torch.tensor([[0.0, -0.1, 1.0], [0.2, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # row 1: [0.9, 0.9, 1.0]; row 2: [0.2, 0.0], padding 0
    assert_close(reward_to_go(rewards, mask), torch.tensor([[0.9, 0.9, 1.0], [0.2, 0.0, 0.0]]))
    # gamma 0.5 on row 1: t2 1.0, t1 -0.1 + 0.5 = 0.4, t0 0 + 0.2 = 0.2
    assert_close(reward_to_go(rewards[:1], mask[:1], gamma=0.5), torch.tensor([[0.2, 0.4, 1.0]]))
    advantages = reinforce_pp_advantages(rewards, mask, group_size=1)
    # whitened over the 5 real tokens [0.9, 0.9, 1.0, 0.2, 0.0]: mean 0.6, variance 0.172
    expected = (torch.tensor([[0.9, 0.9, 1.0], [0.2, 0.0, 0.6]]) - 0.6) / math.sqrt(0.172) * mask
    assert_close(advantages, expected, atol=1e-5, rtol=1e-5)


def test_reinforce_pp_baseline_subtracts_the_group_mean_first():
    # two groups of two, one token each: totals [1, 0 | 3, 3] -> centred [0.5, -0.5 | 0, 0]
    # whitened over the batch: mean 0, variance 0.125 -> [0.5, -0.5, 0, 0] / sqrt(0.125)
    rewards = torch.tensor([[1.0], [0.0], [3.0], [3.0]])
    advantages = reinforce_pp_advantages(rewards, torch.ones(4, 1), group_size=2, baseline=True)
    assert_close(advantages, torch.tensor([[0.5], [-0.5], [0.0], [0.0]]) / math.sqrt(0.125), atol=1e-5, rtol=1e-5)


def test_dr_grpo_keeps_the_group_mean_and_a_constant_normaliser():
    policy = torch.nn.Linear(1, 1)  # the algorithm only needs parameters for its optimizer here
    algorithm = DrGRPO(policy, DrGRPOConfig(), TrainSettings(max_new_tokens=4))
    # group [1, 0, 0, 0]: mean 0.25 -> [0.75, -0.25, -0.25, -0.25], no std scaling
    assert_close(algorithm.advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4), torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert algorithm.needs.aggregation == "constant" and not algorithm.needs.reference
    # loss: ratio 1, one sequence of 2 real tokens with advantage 0.75 -> sum -1.5 / (1 x 4 max tokens) = -0.375
    batch = RolloutBatch(input_ids=torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 5),
                         completion_mask=torch.tensor([[1.0, 1.0, 0.0, 0.0]]), prompt_length=1,
                         scores=torch.zeros(1), group_size=1, old_logps=torch.zeros(1, 4),
                         advantages=torch.full((1, 4), 0.75))
    loss, _ = algorithm.policy_loss(torch.zeros(1, 4), batch, denominator=1.0 * 4)
    assert_close(loss, torch.tensor(-0.375))


def test_dapo_length_penalty_clip_higher_and_groups_without_spread():
    # max 10 tokens, buffer 4: no penalty up to 6 tokens; 8 tokens -> (6 - 8) / 4 = -0.5; 10 -> -1
    assert_close(overlong_penalty(torch.tensor([3, 6, 8, 10]), 10, 4), torch.tensor([0.0, 0.0, -0.5, -1.0]))
    assert has_spread(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2).tolist() == [False, True]
    options = parse_options("dapo", {})
    assert (options.eps_low, options.eps_high) == (0.2, 0.28)  # clip-higher
    algorithm = DAPO(torch.nn.Linear(1, 1), options, TrainSettings(max_new_tokens=5))
    assert algorithm.needs.filters_groups and algorithm.needs.aggregation == "token" and not algorithm.needs.reference
    assert algorithm.buffer_tokens() == 1  # 20% of 5 tokens


# two completions of 2 and 1 tokens; the masked positions hold wild values that must not count
GSPO_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_gspo_sequence_ratio_is_the_mean_token_log_ratio():
    # log-ratios [0.1, 0.3 | -0.1]: means 0.2 and -0.1
    logps = torch.tensor([[0.1, 0.3, 9.0], [-0.1, -9.0, 9.0]])
    assert_close(sequence_log_ratio(logps, torch.zeros(2, 3), GSPO_MASK), torch.tensor([0.2, -0.1]))


def test_gspo_clips_whole_completions():
    logps = torch.tensor([[0.1, 0.3, 9.0], [-0.1, -9.0, 9.0]], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0])
    # eps 0.2 to compare with GRPO: s_1 = e^0.2 = 1.22140 > 1.2 with A > 0 -> clipped: -1.2;
    # s_2 = e^-0.1 = 0.90484 inside [0.8, 1.2] -> -min(-0.90484, -0.90484) = 0.90484
    loss, stats = gspo_loss(logps, torch.zeros(2, 3), advantages, GSPO_MASK, 0.2, 0.2)
    assert_close(loss, torch.tensor((-1.2 + math.exp(-0.1)) / 2))
    assert stats["clipfrac"] == pytest.approx(2 / 3)  # the clipped completion's 2 tokens of 3
    assert stats["policy_loss"] == loss.detach()
    # GRPO clips tokens: e^0.1 = 1.10517 is not clipped, e^0.3 = 1.34986 is: -(1.10517 + 1.2) / 2 for the first
    token_level, _ = grpo_loss(logps.detach(), torch.zeros(2, 3), advantages, GSPO_MASK, 0.2, 0.2, beta=0.0)
    assert_close(token_level, torch.tensor((-(math.exp(0.1) + 1.2) / 2 + math.exp(-0.1)) / 2))
    # gradient: the clipped completion gets none; the other's tokens each get -A s_2 / (n_2 x B) = 0.90484 / 2
    loss.backward()
    assert_close(logps.grad, torch.tensor([[0.0, 0.0, 0.0], [math.exp(-0.1) / 2, 0.0, 0.0]]))
    # token aggregation weighs each completion by its length: (2 x -1.2 + 0.90484) / 3 tokens
    loss, _ = gspo_loss(logps.detach(), torch.zeros(2, 3), advantages, GSPO_MASK, 0.2, 0.2, "token")
    assert_close(loss, torch.tensor((2 * -1.2 + math.exp(-0.1)) / 3))


def test_gspo_defaults_are_the_papers_small_clip_ranges():
    options = parse_options("gspo", {})
    assert (options.eps_low, options.eps_high, options.beta) == (3e-4, 4e-4, 0.0)
    needs = get_algorithm("gspo").declare_needs(options, TrainSettings())
    assert needs.aggregation == "sequence" and needs.min_group_size == 2 and not needs.reference
    # log-ratios [0.0005, 0.0015] -> mean 0.001, s_1 = 1.0010005 > 1.0004 with A = 2 -> clipped: -2 x 1.0004;
    # [0.0002] -> s_2 = e^0.0002 = 1.0002000 inside [0.9997, 1.0004], A = -1 -> +1.0002000
    logps = torch.tensor([[0.0005, 0.0015, 0.0], [0.0002, 0.0, 0.0]], dtype=torch.float64)
    loss, stats = gspo_loss(logps, torch.zeros(2, 3, dtype=torch.float64), torch.tensor([2.0, -1.0], dtype=torch.float64),
                            GSPO_MASK.double())
    assert_close(loss, torch.tensor((-2 * 1.0004 + math.exp(0.0002)) / 2, dtype=torch.float64))
    assert stats["clipfrac"] == pytest.approx(2 / 3)


def test_concatenated_rollouts_are_re_padded_on_both_sides():
    def batch(prompt, completion, value):
        rows = 2
        return RolloutBatch(input_ids=torch.full((rows, prompt + completion), value),
                            attention_mask=torch.ones(rows, prompt + completion),
                            completion_mask=torch.ones(rows, completion), prompt_length=prompt,
                            scores=torch.full((rows,), float(value)), group_size=2,
                            old_logps=torch.full((rows, completion), -1.0))
    merged = concat_batches([batch(2, 3, 7), batch(4, 1, 8)], pad_id=0)
    assert merged.prompt_length == 4 and merged.input_ids.shape == (4, 7)
    # the short prompt is padded on the left, the short completion on the right
    assert merged.input_ids[0].tolist() == [0, 0, 7, 7, 7, 7, 7]
    assert merged.input_ids[2].tolist() == [8, 8, 8, 8, 8, 0, 0]
    assert merged.completion_mask[2].tolist() == [1, 0, 0] and merged.old_logps[2].tolist() == [-1, 0, 0]
    assert merged.attention_mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1]


def test_the_family_is_registered_and_each_declares_what_it_needs():
    assert set(algorithm_names()) >= {"grpo", "ppo", "rloo", "reinforce_pp", "dr_grpo", "dapo", "gspo"}
    for name in algorithm_names():
        cls = get_algorithm(name)
        options = parse_options(name, {})
        assert cls.declare_needs(options, TrainSettings()).min_group_size in (1, 2), name
    baseline = parse_options("reinforce_pp", {"baseline": True})
    assert get_algorithm("reinforce_pp").declare_needs(baseline, TrainSettings()).min_group_size == 2


def test_matched_kl_sets_the_same_term_in_every_algorithm():
    from harness.algorithms import kl_settings
    assert kl_settings("grpo", "loss", 0.04) == {"beta": 0.04, "kl_reward_coef": 0.0}
    assert kl_settings("ppo", "loss", 0.04) == {"kl_loss_coef": 0.04, "kl_coef": 0.0}
    assert kl_settings("ppo", "reward", 0.05) == {"kl_loss_coef": 0.0, "kl_coef": 0.05}
    assert kl_settings("grpo", "off", 0.04) == {"beta": 0.0, "kl_reward_coef": 0.0}
    assert kl_settings("ppo", "native", 0.04) == {}
    with pytest.raises(ValueError, match="unknown KL mode 'both'"):
        kl_settings("grpo", "both", 0.1)
    # off drops the reference model in every algorithm; loss and reward need it
    for name in algorithm_names():
        for mode, needed in (("off", False), ("loss", True), ("reward", True)):
            options = parse_options(name, kl_settings(name, mode, 0.04))
            algorithm = get_algorithm(name)(small_linear_policy(), options, TrainSettings())
            assert algorithm.needs.reference is needed, (name, mode)


def small_linear_policy():
    from harness.config.schema import ModelConfig
    from harness.train.models import char_tokenizer, tiny_model
    torch.manual_seed(0)
    return tiny_model(ModelConfig(hidden_size=8, num_layers=1, num_heads=2), char_tokenizer("0123456789+-="))


def test_grpo_kl_in_the_reward_lowers_the_reward_of_completions_that_left_the_reference():
    from harness.algorithms.grpo import reward_with_kl
    # completion 1 drifted: logp - ref = 0.5 on two tokens -> KL 1.0; completion 2 did not
    scores = torch.tensor([1.0, 1.0])
    logps, ref = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]]), torch.tensor([[-1.5, -1.5], [-2.0, -2.0]])
    assert_close(reward_with_kl(scores, logps, ref, torch.ones(2, 2), 0.1), torch.tensor([0.9, 1.0]))
