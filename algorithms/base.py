"""The Algorithm base class: what an algorithm declares, and the one update loop every algorithm shares.

An algorithm file holds only what differs: its options, its advantages (`prepare`) and its loss terms
(`policy_loss`, and `critic_loss` where there is a critic). The minibatch/micro-batch loop, gradient
accumulation and clipping, the statistics and the measured phases live here, so that the same label
means the same number in every arm and no algorithm can skip a measurement.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, Protocol

import torch

from harness.algorithms.batch import RolloutBatch, TrainSettings, sliced_minibatches
from harness.algorithms.logprobs import autocast, completion_logps_and_entropy
from harness.algorithms.ops import (StepStats, aggregate, all_sum, kl_k3, loss_denominator, masked_mean,
                                    world_size)


class Meter(Protocol):
    """The harness's measurement hooks: a context per phase (time, live tensors, allocator peaks)."""

    def phase(self, name: str) -> AbstractContextManager: ...


class NoMeter:
    def phase(self, name: str) -> AbstractContextManager:
        return nullcontext()


class Algorithm:
    """An RL algorithm: its typed options, the models it trains, its advantages and loss terms.

    A subclass sets `name`, its own options dataclass `Config` (a subclass never inherits another's
    defaults: declaring it is checked at class creation), `prepare` and `policy_loss`; a critic
    algorithm sets `uses_critic` and adds `compute_values`, `critic_loss` and its critic. The harness
    reads the declared passes (`needs_reference`, `uses_critic`) to run the rollout's no-grad passes,
    and calls `update`, the one loop, which no subclass overrides.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    uses_critic: ClassVar[bool] = False
    # Which options hold the coefficient of a KL term to the reference in the loss (k3, aggregated like
    # the policy loss) and in the reward (k1): `harness compare --kl loss|reward|off` sets them alike in every arm.
    KL_OPTIONS: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" not in cls.__dict__ or not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"{cls.__name__} must declare its own options dataclass as `Config`")
        if "name" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its registry `name`")
        if "update" in cls.__dict__:
            raise TypeError(f"{cls.__name__} overrides `update`: algorithms share one update loop")

    def __init__(self, policy: torch.nn.Module, options: Any, settings: TrainSettings, seed: int = 0):
        if not isinstance(options, self.Config):
            raise TypeError(f"{type(self).__name__} takes {self.Config.__name__} options, got {type(options).__name__}")
        self.options, self.settings, self.policy, self.seed = options, settings, policy, seed
        self.build_optimizers()
        self.updates = 0  # rollout batches trained on so far (checkpointed): with the seed it fixes the partitions

    # ------------------------------------------------------------ declared needs

    @property
    def needs_reference(self) -> bool:
        """Whether the rollout must compute reference log-probs: a KL term is on, in the loss or the reward."""
        return any(getattr(self.options, field) > 0 for field in self.KL_OPTIONS.values())

    @property
    def kl_loss_coef(self) -> float:
        """Weight of the k3 KL term the shared loop adds to the loss (0 where the algorithm's own loss holds it)."""
        return 0.0

    @property
    def needs_sampler_logps(self) -> bool:
        """Whether the rollout must score the sampler's log-probs in a pass of their own: for a ratio across
        several optimizer steps, or a KL in the reward. With one step per rollout and no reward KL the
        ratio is 1 and the update's own log-probs serve (TRL skips the pass alike)."""
        several = self.settings.epochs * self.settings.minibatches > 1
        reward_kl = self.KL_OPTIONS.get("reward")
        return several or (reward_kl is not None and getattr(self.options, reward_kl) > 0)

    def policy_frozen(self) -> bool:
        """Whether this update leaves the policy as it is (a critic's warm-up)."""
        return False

    @property
    def loss_aggregation(self) -> str:
        """How the policy loss is reduced over tokens: sequence, token or constant."""
        return "token"

    @property
    def filters_groups(self) -> bool:
        """Whether the rollout drops groups without reward spread and samples more prompts (DAPO)."""
        return False

    @classmethod
    def min_group_size(cls, options: Any) -> int:
        """Completions per prompt the advantages need (a group baseline needs two)."""
        return 1

    # ------------------------------------------------------------ models and state

    def trained_models(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy}

    def build_optimizers(self) -> None:
        """AdamW over each trained model's parameters (again after sharding replaced them)."""
        s = self.settings
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=s.lr, weight_decay=s.weight_decay)

    def shard_models(self, shard) -> None:
        """`shard(name, model)` every trained model in place (FSDP2), then optimizers over the shards."""
        for name, model in self.trained_models().items():
            shard(name, model)
        self.build_optimizers()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer}

    def state_dict(self) -> dict[str, Any]:
        """Everything resume needs: model weights, optimizer states, the update count (tensors and plain data)."""
        return {"models": {k: m.state_dict() for k, m in self.trained_models().items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, model in self.trained_models().items():
            model.load_state_dict(state["models"][name])
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

    @property
    def critic_pass(self) -> str:
        """separate: the critic trained in its own pass after the policy's (verl, OpenRLHF); joint: one backward."""
        return "separate"

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
        if self.uses_critic and self.critic_pass == "joint" and not frozen:
            with meter.phase("joint_update"):
                self._train(batch, partitions, stats, policy=True, critic=True)
        else:
            if not frozen:
                with meter.phase("policy_update"):
                    self._train(batch, partitions, stats, policy=True, critic=False)
            if self.uses_critic:
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
                    loss_denominator(mb.completion_mask, self.loss_aggregation, settings.max_new_tokens)))
                token_denominator = all_sum(loss_denominator(mb.completion_mask, "token", settings.max_new_tokens))
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                for micro in mb.split(settings.micro_batch_size):
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
                for name, model in models.items():
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                    stats.add_per_minibatch("grad_norm" if name == "policy" else f"{name}_grad_norm", grad_norm)
                for optimizer in optimizers:
                    optimizer.step()
                stats.end_minibatch()
        for optimizer in optimizers:  # the gradients are spent: free them before the next rollout, as TRL does
            optimizer.zero_grad(set_to_none=True)
        for model in models.values():
            model.eval()

    def _policy_terms(self, micro: RolloutBatch, denominator, stats: StepStats, tokens: torch.Tensor) -> torch.Tensor:
        """The algorithm's policy loss plus what every algorithm logs: entropy, KL to the reference."""
        settings = self.settings
        logps, entropy = completion_logps_and_entropy(self.policy, micro, settings)
        if micro.old_logps is None:  # one optimizer step per rollout: the policy is the sampler (ratio 1)
            micro.old_logps = logps.detach()
        loss, policy_stats = self.policy_loss(logps, micro, denominator)
        mask = micro.completion_mask
        if self.kl_loss_coef and micro.ref_logps is not None:
            loss = loss + self.kl_loss_coef * aggregate(kl_k3(logps, micro.ref_logps), mask, self.loss_aggregation,
                                                        denominator)
        if settings.entropy_coef:  # the entropy carries its gradient only then
            loss = loss - settings.entropy_coef * aggregate(entropy, mask, self.loss_aggregation, denominator)
        shared = {"entropy": masked_mean(entropy.detach(), mask)}
        if micro.ref_logps is not None:
            shared["kl"] = masked_mean(kl_k3(logps.detach(), micro.ref_logps), mask)
        stats.add({**policy_stats, **shared}, tokens)
        return loss

