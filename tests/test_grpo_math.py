"""Hand-computed checks of GRPO's pure functions (arithmetic in the comments)."""

import math

import pytest
import torch
from torch.testing import assert_close

from harness.algorithms.grpo import aggregate, group_advantages, grpo_loss, kl_k3


def test_equal_rewards_in_a_group_give_zero_advantage():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    for scale in ("group", "batch", "none"):
        assert_close(group_advantages(rewards, group_size=3, scale=scale), torch.zeros(6))


def test_group_advantages_by_hand():
    # group [0, 1, 2]: mean 1, sample std 1 -> (r - 1) / (1 + eps)
    # group [4, 4, 1]: mean 3, sample std sqrt(((1 + 1 + 4) / 2)) = sqrt(3)
    rewards = torch.tensor([0.0, 1.0, 2.0, 4.0, 4.0, 1.0])
    eps = 1e-4
    expected = torch.tensor([-1 / (1 + eps), 0.0, 1 / (1 + eps),
                             1 / (math.sqrt(3) + eps), 1 / (math.sqrt(3) + eps), -2 / (math.sqrt(3) + eps)])
    assert_close(group_advantages(rewards, 3, "group", eps), expected)
    # none: only centred -> [-1, 0, 1, 1, 1, -2]
    assert_close(group_advantages(rewards, 3, "none"), torch.tensor([-1.0, 0.0, 1.0, 1.0, 1.0, -2.0]))
    # batch: centred / batch std; batch mean 2, squares 4+1+0+4+4+1 = 14, std sqrt(14/5)
    assert_close(group_advantages(rewards, 3, "batch", eps),
                 torch.tensor([-1.0, 0.0, 1.0, 1.0, 1.0, -2.0]) / (math.sqrt(14 / 5) + eps))


def test_group_advantages_rejects_ragged_groups_and_unknown_scale():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="unknown scale"):
        group_advantages(torch.zeros(6), 3, scale="rank")


def test_kl_k3_zero_for_equal_and_positive_otherwise():
    logps = torch.tensor([-1.0, -2.0, -0.5])
    assert_close(kl_k3(logps, logps), torch.zeros(3))
    # d = ref - logp = [1, -1, 0.5]: e^1 - 1 - 1 = 0.71828, e^-1 + 1 - 1 = 0.36788, e^0.5 - 0.5 - 1 = 0.14872
    ref = logps + torch.tensor([1.0, -1.0, 0.5])
    expected = torch.tensor([math.e - 2, math.exp(-1), math.exp(0.5) - 1.5])
    assert_close(kl_k3(logps, ref), expected)
    assert (kl_k3(logps, ref) > 0).all()


def test_clipping_at_both_bounds():
    # ratios e^{log 1.5} = 1.5 and 0.5 with eps 0.2: clipped to 1.2 and 0.8
    old = torch.zeros(1, 3)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    mask = torch.ones(1, 3)
    # positive advantage: min(1.5*1, 1.2*1) = 1.2; min(0.5, 0.8) = 0.5; min(1.1, 1.1) = 1.1
    loss, stats = grpo_loss(logps, old, torch.tensor([1.0]), mask, 0.2, 0.2, beta=0.0)
    assert_close(loss, torch.tensor(-(1.2 + 0.5 + 1.1) / 3))
    assert stats["clipfrac"] == pytest.approx(1 / 3)  # only the 1.5 token was clipped (ratio above, A > 0)
    # negative advantage: min(-1.5, -1.2) = -1.5; min(-0.5, -0.8) = -0.8; -1.1
    loss, stats = grpo_loss(logps, old, torch.tensor([-1.0]), mask, 0.2, 0.2, beta=0.0)
    assert_close(loss, torch.tensor((1.5 + 0.8 + 1.1) / 3))
    assert stats["clipfrac"] == pytest.approx(1 / 3)  # only the 0.5 token (ratio below, A < 0)


def test_asymmetric_clip_uses_eps_high_above():
    # ratio 1.25 with eps_high 0.28 is not clipped: loss -1.25
    logps = torch.log(torch.tensor([[1.25]]))
    loss, _ = grpo_loss(logps, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.28, beta=0.0)
    assert_close(loss, torch.tensor(-1.25))


def test_masked_tokens_contribute_nothing():
    old = torch.zeros(2, 3)
    logps = torch.tensor([[0.0, 0.0, 5.0], [0.0, -7.0, 3.0]])  # the masked positions hold wild values
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, 0.0, -9.0], [0.0, 4.0, 1.0]])
    loss, stats = grpo_loss(logps, old, torch.tensor([2.0, -1.0]), mask, beta=0.5, ref_logps=ref)
    # every unmasked token has ratio 1 and kl 0: sequence 1 gives -2, sequence 2 gives +1; mean -0.5
    assert_close(loss, torch.tensor(-0.5))
    assert stats["clipfrac"] == 0.0 and stats["approx_kl"] == 0.0
    logps.requires_grad_(True)
    loss, _ = grpo_loss(logps, old, torch.tensor([2.0, -1.0]), mask, beta=0.5, ref_logps=ref)
    loss.backward()
    assert (logps.grad[mask == 0] == 0).all()


def test_kl_term_is_added_with_beta():
    # one token, ratio 1, advantage 0, d = ref - logp = 1: k3 = e - 2; loss = beta * (e - 2)
    loss, stats = grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0.0]), torch.ones(1, 1),
                            beta=0.04, ref_logps=torch.ones(1, 1))
    assert_close(loss, torch.tensor(0.04 * (math.e - 2)))
    assert stats["policy_loss"] == 0.0  # the surrogate's share: the KL term is not in it


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # sequence: mean(6/3, 4/1) = 3; token: 10/4 = 2.5; constant: 10 / (2 * 3) = 5/3
    assert_close(aggregate(per_token, mask, "sequence"), torch.tensor(3.0))
    assert_close(aggregate(per_token, mask, "token"), torch.tensor(2.5))
    assert_close(aggregate(per_token, mask, "constant"), torch.tensor(10 / 6))
    assert_close(aggregate(per_token, mask, "constant", max_tokens=5), torch.tensor(1.0))
    # a micro-batch reduced with the minibatch's denominator is its share: rows 2 / 2 and 4 / 2 add up to 3
    halves = [aggregate(per_token[i:i + 1], mask[i:i + 1], "sequence", denominator=2.0) for i in range(2)]
    assert_close(halves[0] + halves[1], torch.tensor(3.0))
