"""What every algorithm shares: the rollout batch, log-probs, loss aggregation, the clipped surrogate
and its statistics, and the Algorithm base class with the one update loop.

Shapes: B completions, P prompt tokens (left-padded), T completion tokens (right-padded), V vocabulary.
An algorithm file holds only what differs: its options, its advantages (`prepare`) and its loss terms
(`policy_loss`, and `critic_loss` where there is a critic). The minibatch/micro-batch loop, gradient
accumulation and clipping, the statistics and the measured phases live here, so that the same label
means the same number in every arm and no algorithm can skip a measurement.

Statistics are detached 0-dim tensors, turned into floats once per step by the harness: no device
sync per micro-batch, and the same code runs on fake tensors (`harness estimate`).
"""

from __future__ import annotations

import dataclasses
import inspect
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
import torch.distributed as dist

AGGREGATIONS = ("sequence", "token", "constant")


@dataclass
class RolloutBatch:
    """What the shared rollout hands to every algorithm; algorithms add advantages (and values, returns)."""

    input_ids: torch.Tensor  # [B, P + T] prompt (left-padded) then completion (right-padded)
    attention_mask: torch.Tensor  # [B, P + T]
    completion_mask: torch.Tensor  # [B, T] 1 on completion tokens up to and including EOS
    prompt_length: int  # P
    scores: torch.Tensor  # [B] total reward of each completion
    group_size: int  # completions per prompt, grouped contiguously
    old_logps: torch.Tensor | None = None  # [B, T] log-probs under the policy that sampled
    ref_logps: torch.Tensor | None = None  # [B, T] under the reference, when a KL term is on
    advantages: torch.Tensor | None = None  # [B, T] filled by Algorithm.prepare
    values: torch.Tensor | None = None  # [B, T] the critic's values at sampling time (critic algorithms)
    returns: torch.Tensor | None = None  # [B, T] the critic's regression targets
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # anything else an algorithm keeps per row

    PER_ROW = ("input_ids", "attention_mask", "completion_mask", "scores", "old_logps", "ref_logps",
               "advantages", "values", "returns")

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (getattr(self, n) for n in self.PER_ROW) if t is not None] + list(self.extras.values())

    def select(self, index: torch.Tensor | slice) -> RolloutBatch:
        """The rows `index` of every per-completion tensor (a minibatch or a micro-batch)."""
        picked = {n: (None if getattr(self, n) is None else getattr(self, n)[index]) for n in self.PER_ROW}
        return RolloutBatch(**picked, prompt_length=self.prompt_length, group_size=self.group_size,
                            extras={k: v[index] for k, v in self.extras.items()})

    def split(self, rows: int) -> list[RolloutBatch]:
        """Consecutive micro-batches of `rows` rows (all rows at once when rows is 0 or larger)."""
        if rows <= 0 or rows >= self.size:
            return [self]
        return [self.select(slice(start, start + rows)) for start in range(0, self.size, rows)]


@dataclass(frozen=True)
class TrainSettings:
    """What the shared loop needs from a run's config; the harness builds it, algorithms never read the config."""

    lr: float = 1e-4  # policy AdamW learning rate
    weight_decay: float = 0.0
    epochs: int = 1  # passes over each rollout batch
    minibatches: int = 2  # optimizer steps per pass
    micro_batch_size: int = 0  # rows per forward/backward, gradients accumulated (0: the whole minibatch)
    max_grad_norm: float = 1.0
    entropy_coef: float = 0.0  # entropy bonus; 0 computes entropy under no_grad, as a statistic only
    temperature: float = 1.0  # the sampler's: logits are divided by it before every log-prob
    max_new_tokens: int = 1  # the constant length normaliser (Dr. GRPO)
    logprob_batch_size: int = 0  # rows per no-grad forward (old and reference log-probs, values); 0: all
    autocast_dtype: torch.dtype | None = None  # bf16-mixed: bf16 compute over fp32 weights
    # A step's batch is cut into sampling slices (whole groups); each has its own sampling seed and its own
    # minibatch partition, so the math is the same whether one process holds every slice or each rank a few.
    slices: int = 1  # slices on this process
    first_slice: int = 0  # the global index of its first slice


# ---------------------------------------------------------------- across processes

def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over every process of the job (the tensor itself in a single process); a new tensor."""
    if not distributed():
        return tensor
    total = tensor.detach().clone() if tensor.requires_grad else tensor.clone()
    dist.all_reduce(total)
    return total


class Meter(Protocol):
    """The harness's measurement hooks: a context per phase (time, live tensors, allocator peaks)."""

    def phase(self, name: str) -> AbstractContextManager: ...


class NoMeter:
    def phase(self, name: str) -> AbstractContextManager:
        return nullcontext()


# ---------------------------------------------------------------- masked reductions

def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where mask is 1 (all of them, or along `dim`)."""
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def global_masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of every process's batch (the whole step's batch)."""
    return all_sum(masked_sum(values, mask)) / all_sum(mask.sum()).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions of the whole step's batch; masked-out positions come back as 0."""
    mean = global_masked_mean(values, mask)
    var = global_masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


# ---------------------------------------------------------------- log-probs, the way TRL computes them

def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision values; fp32 and fp64 stay as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor's full value (a gradient norm over FSDP shards is one); a plain tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def selective_log_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., targets] `[B, T]` from logits `[B, T, V]`, without a full log-softmax.

    Gather minus logsumexp, row by row so that the logsumexp's fp32 temporaries are one row's
    (TRL's selective_log_softmax); bf16 logits are upcast one row at a time.
    """
    rows = []
    for row_logits, row_targets in zip(logits, targets):
        row_logits = upcast(row_logits)
        picked = row_logits.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy `[B, T]` of the categorical over the last dimension, row by row in fp32."""
    rows = []
    for row_logits in logits:
        row_logits = upcast(row_logits)
        probs = torch.softmax(row_logits, dim=-1)
        rows.append(torch.logsumexp(row_logits, dim=-1) - (probs * row_logits).sum(-1))
    return torch.stack(rows)


def _accepts_logits_to_keep(model) -> bool:
    cached = getattr(model, "_harness_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(model.forward).parameters
        model._harness_logits_to_keep = cached
    return cached


def completion_logits(model, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
    """Logits `[B, T, V]` that predicted each completion token, divided by the sampling temperature.

    Only the positions that predict a completion token (P - 1 ... P + T - 2) go through the LM head
    (`logits_to_keep` with their indices): the prompt's logits are never materialised.
    """
    length = batch.completion_mask.shape[1]
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    if _accepts_logits_to_keep(model):
        keep = torch.arange(batch.prompt_length - 1, batch.prompt_length - 1 + length, device=batch.input_ids.device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                       use_cache=False, logits_to_keep=keep).logits
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                       use_cache=False).logits[:, -(length + 1):-1]
    return logits / temperature if temperature != 1.0 else logits


def completion_logps(model, batch: RolloutBatch, temperature: float = 1.0,
                     entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs `[B, T]` of the completion tokens, entropies `[B, T]` or None) under `model`."""
    logits = completion_logits(model, batch, temperature)
    targets = batch.input_ids[:, batch.prompt_length:]
    logps = selective_log_softmax(logits, targets)
    return logps, entropy_from_logits(logits) if entropy else None


@torch.no_grad()
def batched_logps(model, batch: RolloutBatch, settings: TrainSettings) -> torch.Tensor:
    """Log-probs `[B, T]` in no-grad micro-batches of `settings.logprob_batch_size` rows."""
    with autocast(model, settings.autocast_dtype):
        return torch.cat([completion_logps(model, part, settings.temperature)[0]
                          for part in batch.split(settings.logprob_batch_size)])


def checkpointing_on(model) -> None:
    """transformers' activation checkpointing, non-reentrant (>= 5 names it so; earlier: gradient checkpointing)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def checkpointing_is_on(model) -> bool:
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def autocast(model, dtype: torch.dtype | None) -> AbstractContextManager:
    """bf16 compute over fp32 weights (bf16-mixed); nothing for fp32 or pure bf16."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=next(model.parameters()).device.type, dtype=dtype)


# ---------------------------------------------------------------- losses and their statistics

def loss_denominator(mask: torch.Tensor, aggregation: str, max_tokens: int) -> float | torch.Tensor:
    """What a (mini)batch's loss is divided by, so that micro-batch losses add up to the minibatch's.

    A token count stays a 0-dim tensor: no device sync, and it works on fake tensors.
    """
    if aggregation == "sequence":
        return float(mask.shape[0])
    if aggregation == "token":
        return mask.sum().clamp(min=1)
    if aggregation == "constant":
        return float(mask.shape[0] * max_tokens)
    raise ValueError(f"unknown aggregation '{aggregation}'; valid: {', '.join(AGGREGATIONS)}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str,
              denominator: float | torch.Tensor | None = None, max_tokens: int | None = None) -> torch.Tensor:
    """Reduce a `[B, T]` loss to a scalar.

    sequence: sum over sequences of each sequence's token mean, / number of sequences (GRPO paper);
    token: sum over all tokens / number of tokens (DAPO, PPO);
    constant: sum over all tokens / (sequences x max_tokens), a constant normaliser (Dr. GRPO).
    `denominator` is the whole minibatch's when a micro-batch is reduced (default: this batch's own).
    """
    mask = mask.to(per_token.dtype)
    if denominator is None:
        denominator = loss_denominator(mask, aggregation, max_tokens or mask.shape[1])
    if aggregation == "sequence":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / denominator
    if aggregation in ("token", "constant"):
        return (per_token * mask).sum() / denominator
    raise ValueError(f"unknown aggregation '{aggregation}'; valid: {', '.join(AGGREGATIONS)}")


def clipped_surrogate(logps, old_logps, advantages, eps_low: float = 0.2, eps_high: float = 0.2) -> torch.Tensor:
    """Per-token PPO-clip loss `[B, T]`: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = p / p_old.

    Advantages `[B]` broadcast over tokens.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logps - old_logps)
    return -torch.min(ratio * advantages, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - logp, >= 0.

    http://joschu.net/blog/kl-approx.html
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


@torch.no_grad()
def ratio_stats(logps, old_logps, advantages, mask, eps_low: float = 0.2, eps_high: float = 0.2) -> dict[str, torch.Tensor]:
    """The statistics of a clipped surrogate, one definition for every algorithm (token means):

    clipfrac: share of tokens whose gradient the clip removed (ratio past the bound on the side
    the advantage pushes it); approx_kl: k3 estimate of KL(old || new) from the sampler's tokens,
    r - 1 - log r.
    """
    mask = mask.to(logps.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    log_ratio = (logps - old_logps).detach()
    ratio = torch.exp(log_ratio)
    clipped = ((ratio < 1 - eps_low) & (advantages < 0)) | ((ratio > 1 + eps_high) & (advantages > 0))
    return {"clipfrac": masked_mean(clipped.to(mask.dtype), mask),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask)}


def minibatch_indices(size: int, minibatches: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random partition of range(size) into `minibatches` equal parts."""
    order = torch.randperm(size, generator=generator)
    return list(order.chunk(minibatches))


def partition_seed(seed: int, update: int, epoch: int, slice_index: int) -> int:
    """The seed of one slice's minibatch partition: a function of where it is, not of the process holding it."""
    return ((seed * 1_000_003 + update) * 101 + epoch) * 10_007 + slice_index


def sliced_minibatches(size: int, slices: int, first_slice: int, minibatches: int, seed: int, update: int,
                       epoch: int) -> list[torch.Tensor]:
    """Minibatch row indices into a batch of `slices` equal consecutive slices: minibatch m takes the m-th
    part of each slice's own random partition (so every process's share of a minibatch is the same size)."""
    rows = size // slices
    parts = [minibatch_indices(rows, minibatches,
                               torch.Generator().manual_seed(partition_seed(seed, update, epoch, first_slice + s)))
             for s in range(slices)]
    return [torch.cat([s * rows + parts[s][m] for s in range(slices)]) for m in range(minibatches)]


class StepStats:
    """Statistics over one update: loss terms (names ending in 'loss') add up over the micro-batches of a
    minibatch (and over the processes, each holding a share of it) and are averaged over minibatches;
    every other statistic is a token-weighted mean over every process's tokens."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}
        self.minibatch: dict[str, torch.Tensor] = {}
        self.shares: set[str] = set()  # loss terms: each process holds a share of the minibatch's value

    def add(self, stats: dict[str, torch.Tensor], tokens: torch.Tensor) -> None:
        for name, value in stats.items():
            value = upcast(value.detach())
            if name == "loss" or name.endswith("_loss"):
                self.minibatch[name] = self.minibatch.get(name, 0) + value
            else:
                self.sums[name] = self.sums.get(name, 0) + value * tokens
                self.weights[name] = self.weights.get(name, 0) + tokens

    def add_per_minibatch(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0) + upcast(plain(value.detach()))
        self.weights[name] = self.weights.get(name, 0) + 1

    def end_minibatch(self) -> None:
        for name, value in self.minibatch.items():
            self.add_per_minibatch(name, value)
            self.shares.add(name)
        self.minibatch = {}

    def means(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in sorted(self.sums):  # the same order on every process: the reductions pair up
            weight = torch.as_tensor(self.weights[name], dtype=self.sums[name].dtype)
            total = all_sum(self.sums[name])
            out[name] = total / (weight if name in self.shares else all_sum(weight))
        return out


# ---------------------------------------------------------------- the Algorithm base class

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
        logits = completion_logits(self.policy, micro, settings.temperature)
        logps = selective_log_softmax(logits, micro.input_ids[:, micro.prompt_length:])
        if micro.old_logps is None:  # one optimizer step per rollout: the policy is the sampler (ratio 1)
            micro.old_logps = logps.detach()
        loss, policy_stats = self.policy_loss(logps, micro, denominator)
        mask = micro.completion_mask
        if self.kl_loss_coef and micro.ref_logps is not None:
            loss = loss + self.kl_loss_coef * aggregate(kl_k3(logps, micro.ref_logps), mask, self.loss_aggregation,
                                                        denominator)
        if settings.entropy_coef:
            entropy = entropy_from_logits(logits)
            loss = loss - settings.entropy_coef * aggregate(entropy, mask, self.loss_aggregation, denominator)
        else:
            with torch.no_grad():
                entropy = entropy_from_logits(logits.detach())
        shared = {"entropy": masked_mean(entropy.detach(), mask)}
        if micro.ref_logps is not None:
            shared["kl"] = masked_mean(kl_k3(logps.detach(), micro.ref_logps), mask)
        stats.add({**policy_stats, **shared}, tokens)
        return loss


def options_from(cls: type, options: dict[str, Any]) -> Any:
    """An algorithm's options dataclass from plain YAML values, naming unknown keys and wrong types."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    values = {}
    for name, value in options.items():
        default = known[name].default
        kind = type(default)
        if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} expects a number, got {value!r}") from None
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{name} expects {kind.__name__}, got {value!r}")
        values[name] = value
    return cls(**values)


def check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name} '{value}' is not one of: {', '.join(valid)}")


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """ValueError unless low <= value <= high (low < value when low_open)."""
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")

