"""Hand-computed checks of PPO's pure functions (arithmetic in the comments)."""

import math

import pytest
import torch
from torch.testing import assert_close

from harness.algorithms.ops import masked_mean, masked_whiten
from harness.algorithms.ppo import explained_variance, gae, ppo_policy_loss, token_rewards, value_loss


def test_token_rewards_kl_everywhere_score_at_last_token():
    logps = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = token_rewards(torch.tensor([1.0, 0.5]), logps, ref, kl_coef=0.1, mask=mask)
    # row 1: -0.1 * (logp - ref) = [-0.05, 0, 0.05], score 1 at t=2 -> [-0.05, 0, 1.05]
    # row 2: -0.1 * (-1) = 0.1 on the two real tokens, score 0.5 at t=1, 0 on padding
    assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.05], [0.1, 0.6, 0.0]]))


def test_token_rewards_without_reference_is_the_score_alone():
    rewards = token_rewards(torch.tensor([2.0]), torch.zeros(1, 3), None, 0.1, torch.tensor([[1.0, 1.0, 0.0]]))
    assert_close(rewards, torch.tensor([[0.0, 2.0, 0.0]]))


def test_gae_with_gamma_lambda_one_is_return_minus_value():
    rewards = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 9.0]])
    values = torch.tensor([[0.2, 0.4, 0.6], [0.5, 0.1, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # row 1: returns-to-go [1.5, 1.5, 1.0]; minus values [0.2, 0.4, 0.6] -> [1.3, 1.1, 0.4]
    # row 2: padding ignored: returns-to-go [1.0, 0.0]; minus [0.5, 0.1] -> [0.5, -0.1]
    assert_close(returns, torch.tensor([[1.5, 1.5, 1.0], [1.0, 0.0, 0.0]]))
    assert_close(advantages, torch.tensor([[1.3, 1.1, 0.4], [0.5, -0.1, 0.0]]))


def test_gae_lambda_discounts_the_td_errors():
    # one row, rewards [0, 1], values [0.5, 0.5], gamma 1, lambda 0.5
    # delta_1 = 1 + 0 - 0.5 = 0.5; delta_0 = 0 + 0.5 - 0.5 = 0; A_1 = 0.5; A_0 = 0 + 0.5 * 0.5 = 0.25
    advantages, returns = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2), 1.0, 0.5)
    assert_close(advantages, torch.tensor([[0.25, 0.5]]))
    assert_close(returns, torch.tensor([[0.75, 1.0]]))


def test_ppo_policy_clipping_at_both_bounds_and_value_clipping():
    old = torch.zeros(1, 3)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, stats = ppo_policy_loss(logps, old, advantages, mask, clip_eps=0.2)
    # policy: max(-A r, -A clip(r)): t0 max(-1.5, -1.2) = -1.2; t1 max(0.5, 0.8) = 0.8; t2 max(-2, -2) = -2
    # -> mean (-1.2 + 0.8 - 2) / 3 = -0.8
    assert_close(loss, torch.tensor(-0.8))
    assert stats["policy_loss"].item() == pytest.approx(-0.8)
    # clipfrac counts tokens whose gradient the clip removed: t0 (r 1.5 > 1.2, A > 0) and t1 (r 0.5 < 0.8, A < 0)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    # approx_kl = mean(r - 1 - log r): (0.5 - log 1.5) + (-0.5 - log 0.5) + 0, over 3 tokens
    expected_kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 3
    assert stats["approx_kl"].item() == pytest.approx(expected_kl)
    values = torch.tensor([[1.0, 0.0, 0.5]])
    old_values = torch.tensor([[0.0, 0.0, 0.5]])
    returns = torch.tensor([[1.0, 1.0, 0.5]])
    loss, stats = value_loss(values, old_values, returns, mask, vf_clip=0.2)
    # value: t0 unclipped (1-1)^2 = 0, clipped (0.2-1)^2 = 0.64 -> 0.64; t1 1; t2 0 -> 0.5 * 1.64 / 3
    assert_close(loss, torch.tensor(0.5 * 1.64 / 3))
    assert stats["vf_clipfrac"].item() == pytest.approx(1 / 3)


def test_ppo_masked_tokens_contribute_nothing():
    logps = torch.tensor([[0.0, 3.0]], requires_grad=True)
    values = torch.tensor([[0.0, 50.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0]])
    policy, stats = ppo_policy_loss(logps, torch.zeros(1, 2), torch.tensor([[1.0, 9.0]]), mask)
    value, _ = value_loss(values, torch.zeros(1, 2), torch.tensor([[0.0, -50.0]]), mask)
    # the one real token: ratio 1, A 1 -> policy loss -1, value error 0
    assert policy.item() == pytest.approx(-1.0) and value.item() == 0.0
    (policy + value).backward()
    assert logps.grad[0, 1] == 0 and values.grad[0, 1] == 0


def test_a_micro_batch_loss_is_its_share_of_the_minibatch_loss():
    # two rows of one and three tokens; token mean over the minibatch = (1 + 2 + 3 + 4) / 4 = 2.5
    logps, old = torch.zeros(2, 3), torch.zeros(2, 3)
    advantages = -torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 4.0]])  # ratio 1: per-token loss is -A
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    whole, _ = ppo_policy_loss(logps, old, advantages, mask)
    # with the minibatch's denominator (4 tokens) the rows give 1/4 and 9/4, which add up to 2.5
    first, _ = ppo_policy_loss(logps[:1], old[:1], advantages[:1], mask[:1], denominator=mask.sum())
    second, _ = ppo_policy_loss(logps[1:], old[1:], advantages[1:], mask[1:], denominator=mask.sum())
    assert_close(whole, torch.tensor(2.5))
    assert_close(first + second, whole)


def test_masked_whiten_and_mean():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # mean of [1, 3] = 2; variance 1 -> whitened [-1, 1], masked position 0
    assert masked_mean(values, mask).item() == 2.0
    assert_close(masked_whiten(values, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_explained_variance_perfect_and_useless_critic():
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    # a constant critic explains nothing: residual variance equals the returns' variance
    assert explained_variance(torch.full((1, 3), 7.0), returns, mask).item() == pytest.approx(0.0, abs=1e-6)
