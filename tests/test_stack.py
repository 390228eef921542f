"""The training stack every algorithm shares: the algorithm contract, micro-batching with gradient
accumulation, separate and joint critic passes, gradient checkpointing, bf16-mixed, entropy."""

import copy
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from pydantic import Field
from torch.testing import assert_close

from conftest import small_policy
from harness import UserError
from harness.algorithms import get_algorithm, parse_options
from harness.algorithms.base import Algorithm, Needs
from harness.algorithms.batch import RolloutBatch, TrainSettings, minibatch_indices, partition_seed, sliced_minibatches
from harness.algorithms.grpo import GRPO, GRPOConfig
from harness.algorithms.gspo import GSPO, GSPOConfig
from harness.algorithms.logprobs import completion_logps
from harness.algorithms.options import StrictModel
from harness.algorithms.ppo import PPO, PPOConfig, value_loss
from harness.train.models import enable_gradient_checkpointing


def rollout_batch(policy, rows=8, prompt=4, completion=5, group=4, seed=1) -> RolloutBatch:
    """Random prompts and completions of different lengths, scored at random, with the policy's log-probs."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 16, (rows, prompt + completion), generator=generator)
    lengths = torch.randint(1, completion + 1, (rows,), generator=generator)
    completion_mask = (torch.arange(completion)[None, :] < lengths[:, None]).to(torch.float64)
    attention = torch.cat([torch.ones(rows, prompt, dtype=torch.long), completion_mask.long()], 1)
    batch = RolloutBatch(input_ids=ids, attention_mask=attention, completion_mask=completion_mask, prompt_length=prompt,
                         scores=torch.rand(rows, generator=generator, dtype=torch.float64), group_size=group)
    with torch.no_grad():
        batch.old_logps = completion_logps(policy, batch)[0]
        batch.ref_logps = batch.old_logps + 0.1 * torch.randn(rows, completion, generator=generator, dtype=torch.float64)
    return batch


def trained(algorithm_class, options, settings, batch_rows=8, **batch_kwargs):
    """(algorithm after one update, its stats) from a fresh small policy."""
    policy = small_policy()
    algorithm = algorithm_class(policy, options, settings, seed=3)
    batch = rollout_batch(policy, rows=batch_rows, **batch_kwargs)
    if algorithm.needs.critic:
        algorithm.compute_values(batch)
    algorithm.prepare(batch)
    stats = algorithm.update(batch)
    return algorithm, {k: float(v) for k, v in stats.items()}


def assert_same_models(a: Algorithm, b: Algorithm, atol=1e-10):
    for name, model in a.trained_models().items():
        other = dict(b.trained_models()[name].named_parameters())
        for pname, param in model.named_parameters():
            assert_close(param, other[pname], atol=atol, rtol=0, msg=f"{name}.{pname}")


# ---------------------------------------------------------------- micro-batching

@pytest.mark.parametrize("algorithm_class, options", [(GRPO, GRPOConfig()), (GRPO, GRPOConfig(aggregation="token")),
                                                      (PPO, PPOConfig()), (GSPO, GSPOConfig(beta=0.04))])
def test_micro_batches_of_one_two_and_all_rows_make_the_same_update(algorithm_class, options):
    # 8 rows, 2 minibatches of 4 rows: micro-batches of 1, 2 and 4 rows accumulate the same gradient
    # (float64, so the only difference is the order of the sums)
    results = [trained(algorithm_class, options, TrainSettings(lr=1e-3, minibatches=2, micro_batch_size=micro))
               for micro in (1, 2, 0)]
    for algorithm, stats in results[1:]:
        assert_same_models(results[0][0], algorithm)
        for key, value in results[0][1].items():
            assert stats[key] == pytest.approx(value, abs=1e-9), key


def test_the_update_moved_the_policy():
    # the test above would pass for an update that does nothing: this one would not
    before = small_policy()
    algorithm, stats = trained(GRPO, GRPOConfig(), TrainSettings(lr=1e-3))
    moved = [not torch.equal(p, q) for p, q in zip(before.parameters(), algorithm.policy.parameters())]
    assert sum(moved) > len(moved) // 2 and stats["grad_norm"] > 0


# ---------------------------------------------------------------- the critic's pass

def test_separate_and_joint_critic_passes_make_the_same_updates():
    separate, stats_separate = trained(PPO, PPOConfig(critic_pass="separate"), TrainSettings(lr=1e-3, epochs=2))
    joint, stats_joint = trained(PPO, PPOConfig(critic_pass="joint"), TrainSettings(lr=1e-3, epochs=2))
    assert_same_models(separate, joint)
    for key in ("policy_loss", "value_loss", "clipfrac", "grad_norm", "critic_grad_norm"):
        assert stats_separate[key] == pytest.approx(stats_joint[key], abs=1e-9), key


def test_the_separate_critic_pass_is_the_value_loss_alone():
    settings = TrainSettings(lr=1e-3, minibatches=2)
    ppo, _ = trained(PPO, PPOConfig(critic_pass="separate"), settings)
    # by hand: the critic trained on its clipped value loss over the same minibatches, nothing else
    policy = small_policy()
    fresh = PPO(policy, PPOConfig(), settings, seed=3)
    batch = rollout_batch(policy)
    fresh.compute_values(batch)
    fresh.prepare(batch)
    critic, optimizer = fresh.critic, fresh.critic_optimizer
    critic.train()
    # the partition the loop draws: one slice, seed 3, the first update, the first epoch
    generator = torch.Generator().manual_seed(partition_seed(3, 0, 0, 0))
    for index in minibatch_indices(batch.size, settings.minibatches, generator):
        mb = batch.select(index)
        optimizer.zero_grad()
        loss, _ = value_loss(critic(mb).squeeze(-1), mb.values, mb.returns, mb.completion_mask, 0.2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(critic.parameters(), settings.max_grad_norm)
        optimizer.step()
    for (name, param), other in zip(ppo.critic.named_parameters(), critic.parameters()):
        assert_close(param, other, atol=1e-10, rtol=0, msg=name)


# ---------------------------------------------------------------- checkpointing, precision, entropy

def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    plain, checkpointed = small_policy(), small_policy()
    enable_gradient_checkpointing(checkpointed)
    batch = rollout_batch(plain)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        logps, _ = completion_logps(model, batch)
        loss = -(logps * batch.completion_mask).sum()
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in model.parameters()]))
    assert_close(grads[0][0], grads[1][0], atol=1e-12, rtol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert_close(a, b, atol=1e-12, rtol=0)


def test_bf16_mixed_computes_in_bf16_over_fp32_weights():
    policy = small_policy(dtype=torch.float32)
    algorithm = GRPO(policy, GRPOConfig(), TrainSettings(lr=1e-3, autocast_dtype=torch.bfloat16))
    batch = rollout_batch(policy)
    for name in ("completion_mask", "scores", "old_logps", "ref_logps"):
        setattr(batch, name, getattr(batch, name).float())
    algorithm.prepare(batch)
    stats = algorithm.update(batch)
    assert all(p.dtype == torch.float32 for p in policy.parameters())  # fp32 master weights
    assert all(s["exp_avg"].dtype == torch.float32 for s in algorithm.optimizer.state.values())
    assert torch.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    # bf16 compute: the update's log-probs differ from fp32's by bf16 rounding, not more
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = completion_logps(policy, batch)[0]
    high = completion_logps(policy, batch)[0]
    gap = (low - high).abs()[batch.completion_mask.bool()]
    assert 0 < gap.max() < 0.1


def test_entropy_is_a_statistic_unless_a_bonus_asks_for_its_gradient():
    def policy_grad(entropy_coef):
        policy = small_policy()
        algorithm = GRPO(policy, GRPOConfig(beta=0.0), TrainSettings(entropy_coef=entropy_coef, minibatches=1))
        batch = rollout_batch(policy)
        algorithm.prepare(batch)
        stats = algorithm._policy_terms(batch, 8.0, _Stats(), batch.completion_mask.sum())
        stats.backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    # without a bonus the gradient is the surrogate's alone; with one, entropy's gradient joins it
    plain = policy_grad(0.0)
    assert not torch.allclose(plain, policy_grad(0.1))
    policy = small_policy()
    algorithm = GRPO(policy, GRPOConfig(beta=0.0), TrainSettings(minibatches=1))
    batch = rollout_batch(policy)
    algorithm.prepare(batch)
    loss, _ = algorithm.policy_loss(completion_logps(policy, batch)[0], batch, 8.0)
    loss.backward()
    assert_close(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]), plain)


class _Stats:
    def add(self, stats, tokens):
        self.last = stats


# ---------------------------------------------------------------- the contract

def test_a_subclass_must_declare_its_own_options():
    with pytest.raises(TypeError, match="must declare its own options model"):
        class Silent(GRPO):  # would silently run with GRPO's defaults
            name = "silent"


def test_no_algorithm_overrides_the_shared_update_loop():
    with pytest.raises(TypeError, match="overrides `update`"):
        class Options(StrictModel):
            beta: float = Field(0.0, ge=0)

        class Rogue(GRPO):
            name = "rogue"
            Config = Options

            def update(self, batch, meter=None):
                return {}


def test_options_are_typed_and_checked():
    with pytest.raises(TypeError, match="takes GRPOConfig options"):
        GRPO(small_policy(), {"beta": 0.1}, TrainSettings())
    with pytest.raises(UserError, match="^critic_pass: 'both' is not one of: separate, joint$"):
        parse_options("ppo", {"critic_pass": "both"})
    with pytest.raises(UserError, match="^algorithms.grpo.eps_low: must be above 0, got 0.0$"):
        parse_options("grpo", {"eps_low": 0.0}, where="algorithms.grpo.")
    assert parse_options("ppo", {"critic_lr": 1}).critic_lr == 1.0


def test_a_subclass_gets_its_own_defaults():
    class Options(GRPOConfig):
        beta: float = Field(0.0, ge=0)

    class NoKL(GRPO):
        name = "nokl"
        Config = Options

    assert not NoKL(small_policy(), Options(), TrainSettings()).needs.reference
    assert GRPO(small_policy(), GRPOConfig(), TrainSettings()).needs.reference


def test_state_dict_round_trip_resumes_the_same_updates():
    first, _ = trained(PPO, PPOConfig(), TrainSettings(lr=1e-3))
    state = copy.deepcopy(first.state_dict())
    policy = small_policy()
    second = PPO(policy, PPOConfig(), TrainSettings(lr=1e-3), seed=99)
    second.load_state_dict(state)
    assert_same_models(first, second, atol=0)
    assert second.updates == first.updates == 1  # with the seed, the update count fixes the next partitions


def test_registered_algorithms_declare_their_passes():
    settings = TrainSettings()
    assert get_algorithm("ppo").declare_needs(PPOConfig(), settings).critic
    assert not get_algorithm("grpo").declare_needs(GRPOConfig(), settings).critic
    assert PPO(small_policy(), PPOConfig(critic_pass="joint"), settings).needs.critic_pass == "joint"


def test_the_critic_warm_up_moves_only_the_critic():
    policy = small_policy()
    before_policy = copy.deepcopy(policy)
    ppo = PPO(policy, PPOConfig(critic_warmup_steps=1), TrainSettings(lr=1e-3), seed=3)
    before_critic = copy.deepcopy(ppo.critic)
    batch = rollout_batch(policy)
    ppo.compute_values(batch)
    ppo.prepare(batch)
    stats = ppo.update(batch)
    assert float(stats["policy_frozen"]) == 1.0 and "policy_loss" not in stats and "value_loss" in stats
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), before_policy.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(ppo.critic.parameters(), before_critic.parameters()))
    # the next update trains both
    stats = ppo.update(batch)
    assert "policy_frozen" not in stats and not all(torch.equal(p, q) for p, q in zip(policy.parameters(),
                                                                                       before_policy.parameters()))


def test_a_head_only_warm_up_leaves_the_critics_body_alone():
    policy = small_policy()
    ppo = PPO(policy, PPOConfig(critic_warmup_steps=1, critic_warmup_head_only=True), TrainSettings(lr=1e-3), seed=3)
    body, head = copy.deepcopy(ppo.critic.backbone), copy.deepcopy(ppo.critic.value_head)
    batch = rollout_batch(policy)
    ppo.compute_values(batch)
    ppo.prepare(batch)
    ppo.update(batch)
    assert all(torch.equal(p, q) for p, q in zip(ppo.critic.backbone.parameters(), body.parameters()))
    assert not torch.equal(ppo.critic.value_head.weight, head.weight)


def test_a_kl_term_in_the_loss_is_k3_aggregated_like_the_policy_loss():
    # PPO with kl_loss_coef: its policy terms equal the surrogate plus coef x token-mean k3
    policy = small_policy()
    ppo = PPO(policy, PPOConfig(kl_coef=0.0, kl_loss_coef=0.5), TrainSettings())
    batch = rollout_batch(policy)
    ppo.compute_values(batch)
    ppo.prepare(batch)
    denominator = batch.completion_mask.sum()
    with_kl = ppo._policy_terms(batch, denominator, _Stats(), denominator)
    logps, _ = completion_logps(policy, batch)
    surrogate, _ = ppo.policy_loss(logps, batch, denominator)
    k3 = torch.exp(batch.ref_logps - logps) - (batch.ref_logps - logps) - 1
    expected = surrogate + 0.5 * (k3 * batch.completion_mask).sum() / denominator
    assert_close(with_kl, expected)


class TablePolicy(torch.nn.Module):
    """A policy whose logits are a table: 2 tokens, logits 0 everywhere, so every log-prob is -log 2."""

    def __init__(self, rows: int, length: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(rows, length, 2, dtype=torch.float64))

    def forward(self, input_ids, attention_mask, position_ids, use_cache, logits_to_keep):
        return SimpleNamespace(logits=self.table)


class _SurrogateOnlyOptions(GRPOConfig):
    beta: float = 0.5


class _SurrogateOnly(GRPO):
    """A GRPO variant written the way issue 22 found the trap: its own policy loss, with no KL term in it."""

    name = "surrogate_only"
    Config = _SurrogateOnlyOptions

    def policy_loss(self, logps, mb, denominator):
        loss = -(mb.advantages * logps * mb.completion_mask).sum() / denominator
        return loss, {"policy_loss": loss.detach()}


@pytest.mark.parametrize("algorithm_class, options, k3_aggregated", [
    # two completions of 2 and 1 tokens, d = ref - logp = [1, -1 | 0.5]: k3 = e^d - d - 1 =
    # [e - 2, e^-1 | e^0.5 - 1.5] = [0.71828, 0.36788 | 0.14872]
    # sequence (GRPO's paper, GSPO): mean of sequence means = ((0.71828 + 0.36788) / 2 + 0.14872) / 2 = 0.34590
    (GRPO, GRPOConfig(beta=0.5), ((math.e - 2 + math.exp(-1)) / 2 + math.exp(0.5) - 1.5) / 2),
    (_SurrogateOnly, _SurrogateOnlyOptions(), ((math.e - 2 + math.exp(-1)) / 2 + math.exp(0.5) - 1.5) / 2),
    (GSPO, GSPOConfig(beta=0.5), ((math.e - 2 + math.exp(-1)) / 2 + math.exp(0.5) - 1.5) / 2),
    # token (what a GRPO arm aggregates with aggregation=token): (0.71828 + 0.36788 + 0.14872) / 3 = 0.41163
    (GRPO, GRPOConfig(beta=0.5, aggregation="token"), (math.e - 2 + math.exp(-1) + math.exp(0.5) - 1.5) / 3),
])
def test_the_shared_loop_adds_the_kl_term_once_for_every_algorithm(algorithm_class, options, k3_aggregated):
    # loss - policy loss = beta x aggregated k3, whether the algorithm's policy loss is GRPO's, a subclass's
    # own (which knows nothing of the KL) or GSPO's; the logged kl is the token mean of k3 in every case
    policy = TablePolicy(2, 3)
    algorithm = algorithm_class(policy, options, TrainSettings(minibatches=1))
    assert algorithm.needs.reference and algorithm.needs.kl_loss_coef == 0.5
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    logps = torch.full((2, 3), -math.log(2), dtype=torch.float64)
    batch = RolloutBatch(input_ids=torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 4), prompt_length=1,
                         completion_mask=mask, scores=torch.tensor([1.0, 0.0], dtype=torch.float64), group_size=2,
                         old_logps=logps, ref_logps=logps + torch.tensor([[1.0, -1.0, 7.0], [0.5, 7.0, 7.0]]))
    algorithm.prepare(batch)
    denominator = 2.0 if algorithm.needs.aggregation == "sequence" else mask.sum()
    stats = _Stats()
    loss = algorithm._policy_terms(batch, denominator, stats, mask.sum())
    assert_close(loss - stats.last["policy_loss"], torch.tensor(0.5 * k3_aggregated, dtype=torch.float64))
    assert_close(stats.last["kl"], torch.tensor((math.e - 2 + math.exp(-1) + math.exp(0.5) - 1.5) / 3,
                                                dtype=torch.float64))


def test_gspo_is_grpo_at_one_optimizer_step_per_rollout():
    # every ratio is 1: GSPO's gradient -A_i x (mean of its tokens' log-prob gradients) is GRPO's
    single = TrainSettings(lr=1e-3, minibatches=1)
    assert_same_models(trained(GRPO, GRPOConfig(), single)[0], trained(GSPO, GSPOConfig(beta=0.04), single)[0])
    # two optimizer steps: the second minibatch's ratios moved and GSPO clips whole completions at 1 +- 4e-4
    two = TrainSettings(lr=1e-3, minibatches=2)
    grpo, gspo = trained(GRPO, GRPOConfig(), two)[0], trained(GSPO, GSPOConfig(beta=0.04), two)[0]
    assert not all(torch.equal(p, q) for p, q in zip(grpo.policy.parameters(), gspo.policy.parameters()))


def test_needs_are_one_record_and_the_retired_hooks_are_refused():
    needs = GRPO.declare_needs(GRPOConfig(beta=0.1, kl_reward_coef=0.0), TrainSettings(minibatches=1))
    assert needs == Needs(reference=True, sampler_logps=False, kl_loss_coef=0.1, aggregation="sequence",
                          min_group_size=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        needs.reference = False
    with pytest.raises(ValueError, match="unknown aggregation 'tokens'"):
        Needs(aggregation="tokens")
    with pytest.raises(TypeError, match="sets loss_aggregation: declare what it needs in `declare_needs`"):
        class OldStyle(GRPO):  # a property the loop no longer reads would be silently ignored
            name = "old_style"
            Config = _SurrogateOnlyOptions

            @property
            def loss_aggregation(self):
                return "token"


def test_sliced_minibatches_take_an_equal_share_of_every_slice():
    # 8 rows in 2 slices of 4, 2 minibatches: each minibatch holds 2 rows of each slice, and a slice's
    # partition is the same whether its process holds one slice or both
    both = sliced_minibatches(8, slices=2, first_slice=0, minibatches=2, seed=5, update=0, epoch=0)
    second_alone = sliced_minibatches(4, slices=1, first_slice=1, minibatches=2, seed=5, update=0, epoch=0)
    for m in range(2):
        assert sorted(int(i) // 4 for i in both[m]) == [0, 0, 1, 1]
        assert sorted(int(i) - 4 for i in both[m] if i >= 4) == sorted(int(i) for i in second_alone[m])
    assert sorted(torch.cat(both).tolist()) == list(range(8))


def test_one_slice_or_two_on_one_process_make_the_same_kind_of_update():
    # the same batch cut into two slices: a different partition, the same gradient arithmetic
    one, _ = trained(GRPO, GRPOConfig(), TrainSettings(lr=1e-3, minibatches=1, slices=1))
    two, _ = trained(GRPO, GRPOConfig(), TrainSettings(lr=1e-3, minibatches=1, slices=2))
    assert_same_models(one, two)  # one minibatch: every row in it either way


def test_one_optimizer_step_per_rollout_needs_no_pass_for_the_samplers_log_probs():
    # one epoch, one minibatch: the ratio is 1, the update's own log-probs serve as the sampler's
    single = TrainSettings(lr=1e-3, minibatches=1)
    assert not GRPO(small_policy(), GRPOConfig(), single).needs.sampler_logps
    assert GRPO(small_policy(), GRPOConfig(), TrainSettings(minibatches=2)).needs.sampler_logps
    assert PPO(small_policy(), PPOConfig(kl_coef=0.05), single).needs.sampler_logps  # the reward's KL needs them
    assert not PPO(small_policy(), PPOConfig(kl_coef=0.0), single).needs.sampler_logps
    # the update is the same whether the sampler's log-probs were scored apart or not
    with_pass, _ = trained(GRPO, GRPOConfig(), single)
    policy = small_policy()
    without = GRPO(policy, GRPOConfig(), single, seed=3)
    batch = rollout_batch(policy)
    batch.old_logps = None
    without.prepare(batch)
    stats = without.update(batch)
    assert_same_models(with_pass, without)
    assert float(stats["clipfrac"]) == 0.0 and float(stats["approx_kl"]) == 0.0
