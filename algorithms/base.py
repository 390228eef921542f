"""The Algorithm base class: what an algorithm declares, and the one update loop every algorithm shares.

An algorithm file holds only what differs: its options, what it needs (`declare_needs`, one `Needs`
record), its advantages (`prepare`) and its loss terms (`policy_loss`, and `critic_loss` where there is
a critic). The minibatch/micro-batch loop, gradient accumulation and clipping, the KL term in the loss,
the statistics and the measured phases live here, so that the same label means the same number in every
arm and no algorithm can skip a measurement or drop its KL term.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, Literal, Protocol, get_args

import torch

from harness.algorithms.adapters import load_trained_state_dict, trained_parameters, trained_state_dict
from harness.algorithms.batch import RolloutBatch, TrainSettings, sliced_minibatches
from harness.algorithms.logprobs import autocast, completion_logps_and_entropy
from harness.algorithms.ops import (AGGREGATIONS, StepStats, aggregate, all_sum, kl_k3, kl_loss_term,
                                    loss_denominator, masked_mean, world_size)
from harness.algorithms.options import StrictModel

CriticPass = Literal["separate", "joint"]  # separate: the critic in its own pass (verl, OpenRLHF); joint: one backward
CRITIC_PASSES = get_args(CriticPass)


def micro_batches(minibatch: RolloutBatch, rows: int) -> list[RolloutBatch]:
    """The micro-batches a minibatch's gradients accumulate over (views of its rows; the estimate's fake step
    runs the first two of them, see `harness.estimate.fake_step.repeated_minibatches_skipped`)."""
    return minibatch.split(rows)


class Meter(Protocol):
    """The harness's measurement hooks: a context per phase (time, live tensors, allocator peaks)."""

    def phase(self, name: str) -> AbstractContextManager: ...


class NoMeter:
    def phase(self, name: str) -> AbstractContextManager:
        return nullcontext()


@dataclasses.dataclass(frozen=True)
class Needs:
    """What an algorithm asks of the rollout and of the shared loop, fixed once from its options and settings."""

    reference: bool = False  # the rollout scores the reference's log-probs: a KL term is on, in the loss or the reward
    sampler_logps: bool = False  # the rollout scores the sampler's log-probs in a pass of their own
    kl_loss_coef: float = 0.0  # weight of the k3 KL to the reference that the shared loop adds to the loss
    aggregation: str = "token"  # how the policy loss (and the KL term with it) is reduced over tokens
    min_group_size: int = 1  # completions per prompt the advantages need (a group baseline needs two)
    filters_groups: bool = False  # the rollout drops groups without reward spread and samples more prompts (DAPO)
    critic: bool = False  # a critic: the rollout computes its values, the update trains it
    critic_pass: str = "separate"  # separate: the critic in its own pass after the policy's (verl, OpenRLHF); joint: one backward

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation '{self.aggregation}'; valid: {', '.join(AGGREGATIONS)}")
        if self.critic_pass not in CRITIC_PASSES:
            raise ValueError(f"unknown critic pass '{self.critic_pass}'; valid: {', '.join(CRITIC_PASSES)}")
        if self.min_group_size < 1 or self.kl_loss_coef < 0:
            raise ValueError(f"min_group_size must be >= 1 and kl_loss_coef >= 0, got {self}")


# What `Needs` replaced: a subclass that still sets one would be silently ignored, so it is refused.
RETIRED_NEEDS = ("needs", "needs_reference", "kl_loss_coef", "needs_sampler_logps", "loss_aggregation",
                 "filters_groups", "min_group_size", "critic_pass", "uses_critic")


class Algorithm:
    """An RL algorithm: its typed options, what it needs, the models it trains, its advantages and loss terms.

    A subclass sets `name`, its own options model `Config` (a subclass never inherits another's
    defaults: declaring it is checked at class creation), `prepare` and `policy_loss`, and changes its
    parent's `declare_needs` where it needs more (a critic algorithm: `critic=True`, then
    `compute_values`, `critic_loss` and its critic). The harness reads `self.needs` to run the rollout's
    no-grad passes, and calls `update`, the one loop, which no subclass overrides. The KL term in the loss
    is the loop's, from the option `KL_OPTIONS["loss"]` names: no algorithm adds it itself.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    # Which options hold the coefficient of a KL term to the reference in the loss (k3, aggregated like
    # the policy loss) and in the reward (k1): `harness compare --kl loss|reward|off` sets them alike in every arm.
    KL_OPTIONS: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" not in cls.__dict__ or not (isinstance(cls.Config, type) and issubclass(cls.Config, StrictModel)):
            raise TypeError(f"{cls.__name__} must declare its own options model (a StrictModel) as `Config`")
        if "name" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its registry `name`")
        if "update" in cls.__dict__:
            raise TypeError(f"{cls.__name__} overrides `update`: algorithms share one update loop")
        retired = [name for name in RETIRED_NEEDS if name in cls.__dict__]
        if retired:
            raise TypeError(f"{cls.__name__} sets {', '.join(retired)}: declare what it needs in `declare_needs`")

    def __init__(self, policy: torch.nn.Module, options: Any, settings: TrainSettings, seed: int = 0):
        if not isinstance(options, self.Config):
            raise TypeError(f"{type(self).__name__} takes {self.Config.__name__} options, got {type(options).__name__}")
        self.options, self.settings, self.policy, self.seed = options, settings, policy, seed
        self.needs = self.declare_needs(options, settings)
        self.build_optimizers()
        self.updates = 0  # rollout batches trained on so far (checkpointed): with the seed it fixes the partitions

    # ------------------------------------------------------------ declared needs

    @classmethod
    def declare_needs(cls, options: Any, settings: TrainSettings) -> Needs:
        """What this algorithm needs under these options and settings; a subclass changes its parent's record
        (`dataclasses.replace`). The harness may ask before any model exists (a group size, say).

        The KL fields follow `KL_OPTIONS`. The sampler's log-probs need a pass of their own for a ratio
        across several optimizer steps, or a KL in the reward; with one step per rollout and no reward KL
        the ratio is 1 and the update's own log-probs serve (TRL skips the pass alike).
        """
        kl = {place: getattr(options, field) for place, field in cls.KL_OPTIONS.items()}
        several = settings.epochs * settings.minibatches > 1
        return Needs(reference=any(coef > 0 for coef in kl.values()),
                     sampler_logps=several or kl.get("reward", 0.0) > 0,
                     kl_loss_coef=kl.get("loss", 0.0))

    def policy_frozen(self) -> bool:
        """Whether this update leaves the policy as it is (a critic's warm-up): asked once per update."""
        return False

    # ------------------------------------------------------------ models and state

    def trained_models(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy}

    def build_optimizers(self) -> None:
        """AdamW over each trained model's trained parameters (again after sharding replaced them): all of them,
        or a LoRA model's adapters."""
        s = self.settings
        self.optimizer = torch.optim.AdamW(trained_parameters(self.policy), lr=s.lr, weight_decay=s.weight_decay)

    def shard_models(self, shard) -> None:
        """`shard(name, model)` every trained model in place (FSDP2), then optimizers over the shards."""
        for name, model in self.trained_models().items():
            shard(name, model)
        self.build_optimizers()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer}

    def state_dict(self) -> dict[str, Any]:
        """Everything resume needs: model weights (under LoRA the adapters and value head; the frozen base is
        the model's folder), optimizer states, the update count (tensors and plain data)."""
        return {"models": {k: trained_state_dict(m) for k, m in self.trained_models().items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, model in self.trained_models().items():
            load_trained_state_dict(model, state["models"][name])
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.updates = state["updates"]

    # ------------------------------------------------------------ what differs between algorithms

    def prepare(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """Fill batch.advantages `[B, T]` (and returns); statistics of the batch."""
        raise NotImplementedError

    def policy_loss(self, logps: torch.Tensor, mb: RolloutBatch, denominator) -> tuple[torch.Tensor, dict]:
        """(loss, stats) of a micro-batch; `denominator` is the minibatch's (see `aggregate`)."""
        raise NotImplementedError

    def compute_values(self, batch: RolloutBatch) -> None:
        """Critic algorithms: fill batch.values with the critic's no-grad values."""
        raise NotImplementedError

    def critic_loss(self, mb: RolloutBatch, denominator) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    # ------------------------------------------------------------ the one update loop

    def update(self, batch: RolloutBatch, meter: Meter | None = None) -> dict[str, torch.Tensor]:
        """Epochs x minibatches of optimizer steps on one rollout batch, gradients accumulated over
        micro-batches. The partition into minibatches is drawn once per epoch and shared by the
        policy's and the critic's passes, so that separate and joint passes make the same updates."""
        meter = meter or NoMeter()
        stats = StepStats()
        s = self.settings
        partitions = [sliced_minibatches(batch.size, s.slices, s.first_slice, s.minibatches, self.seed, self.updates, epoch)
                      for epoch in range(s.epochs)]
        frozen = self.policy_frozen()
        critic = self.needs.critic
        if critic and self.needs.critic_pass == "joint" and not frozen:
            with meter.phase("joint_update"):
                self._train(batch, partitions, stats, policy=True, critic=True)
        else:
            if not frozen:
                with meter.phase("policy_update"):
                    self._train(batch, partitions, stats, policy=True, critic=False)
            if critic:
                with meter.phase("critic_update"):
                    self._train(batch, partitions, stats, policy=False, critic=True)
        self.updates += 1
        return {**stats.means(), **({"policy_frozen": torch.ones(())} if frozen else {})}

    def _train(self, batch: RolloutBatch, partitions, stats: StepStats, policy: bool, critic: bool) -> None:
        settings = self.settings
        models = {**({"policy": self.policy} if policy else {}),
                  **({"critic": self.trained_models()["critic"]} if critic else {})}
        optimizers = [self.optimizers()[name] for name in models]
        for model in models.values():
            model.train()
        for epoch in partitions:
            for index in epoch:
                mb = batch.select(index)
                # the whole minibatch's denominators, every process's rows included: gradients are summed
                policy_denominator = all_sum(torch.as_tensor(
                    loss_denominator(mb.completion_mask, self.needs.aggregation, settings.max_new_tokens)))
                token_denominator = all_sum(loss_denominator(mb.completion_mask, "token", settings.max_new_tokens))
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                for micro in micro_batches(mb, settings.micro_batch_size):
                    tokens = micro.completion_mask.sum()
                    terms = []
                    with autocast(self.policy, settings.autocast_dtype):
                        if policy:
                            terms.append(self._policy_terms(micro, policy_denominator, stats, tokens))
                        if critic:
                            value_loss, critic_stats = self.critic_loss(micro, token_denominator)
                            stats.add(critic_stats, tokens)
                            terms.append(value_loss)
                    loss = sum(terms[1:], terms[0])
                    stats.add({"loss": loss}, tokens)
                    # data-parallel wrappers (FSDP, DDP) average gradients over the processes, and each
                    # process's loss is its share of the minibatch's: scaled back, the average is their sum
                    (loss * world_size()).backward()
                for name, optimizer in zip(models, optimizers):  # each model's trained parameters only
                    params = [p for group in optimizer.param_groups for p in group["params"]]
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                    stats.add_per_minibatch("grad_norm" if name == "policy" else f"{name}_grad_norm", grad_norm)
                for optimizer in optimizers:
                    optimizer.step()
                stats.end_minibatch()
        for optimizer in optimizers:  # the gradients are spent: free them before the next rollout, as TRL does
            optimizer.zero_grad(set_to_none=True)
        for model in models.values():
            model.eval()

    def _policy_terms(self, micro: RolloutBatch, denominator, stats: StepStats, tokens: torch.Tensor) -> torch.Tensor:
        """The algorithm's policy loss, the KL term in the loss where the algorithm declares one, the entropy
        bonus, and what every algorithm logs: entropy, KL to the reference."""
        settings, needs = self.settings, self.needs
        logps, entropy = completion_logps_and_entropy(self.policy, micro, settings)
        if micro.old_logps is None:  # one optimizer step per rollout: the policy is the sampler (ratio 1)
            # on a copy of the micro-batch: written onto it, every micro-batch's log-probs would stay alive
            # (the minibatch's list holds them) until the minibatch ends
            micro = dataclasses.replace(micro, old_logps=logps.detach())
        loss, policy_stats = self.policy_loss(logps, micro, denominator)
        mask = micro.completion_mask
        if needs.kl_loss_coef and micro.ref_logps is not None:
            loss = loss + kl_loss_term(logps, micro.ref_logps, mask, needs.kl_loss_coef, needs.aggregation, denominator)
        if settings.entropy_coef:  # the entropy carries its gradient only then
            loss = loss - settings.entropy_coef * aggregate(entropy, mask, needs.aggregation, denominator)
        shared = {"entropy": masked_mean(entropy.detach(), mask)}
        if micro.ref_logps is not None:
            shared["kl"] = masked_mean(kl_k3(logps.detach(), micro.ref_logps), mask)
        stats.add({**policy_stats, **shared}, tokens)
        return loss

