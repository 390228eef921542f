"""The rollout batch every algorithm receives, the loop's settings, and the minibatch partitions.

Shapes: B completions, P prompt tokens (left-padded), T completion tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
    logprob_batch_size: int = 0  # rows per no-grad forward (old and reference log-probs, values); 0: the micro-batch
    logprob_chunk: int = 0  # positions per LM-head chunk in log-prob passes (recomputed in backward); 0: whole logits
    autocast_dtype: torch.dtype | None = None  # bf16-mixed: bf16 compute over fp32 weights
    # A step's batch is cut into sampling slices (whole groups); each has its own sampling seed and its own
    # minibatch partition, so the math is the same whether one process holds every slice or each rank a few.
    slices: int = 1  # slices on this process
    first_slice: int = 0  # the global index of its first slice


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

