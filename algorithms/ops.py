"""Masked reductions, sums across processes, loss aggregation, the clipped surrogate, k3 and the
statistics of an update: the pieces every algorithm's math is made of, pure and `[B, T]`-shaped.

Statistics are detached 0-dim tensors, turned into floats once per step by the harness: no device
sync per micro-batch, and the same code runs on fake tensors (`harness estimate`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


AGGREGATIONS = ("sequence", "token", "constant")


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


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision values; fp32 and fp64 stay as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor's full value (a gradient norm over FSDP shards is one); a plain tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


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


def kl_loss_term(logps, ref_logps, mask, coef: float, aggregation: str,
                 denominator: float | torch.Tensor | None = None, max_tokens: int | None = None) -> torch.Tensor:
    """The KL term of a loss: coef x the k3 KL to the reference `[B, T]`, aggregated like the policy loss.

    One definition for every algorithm: the shared update loop adds it (`Algorithm.needs.kl_loss_coef`).
    """
    return coef * aggregate(kl_k3(logps, ref_logps), mask, aggregation, denominator, max_tokens)


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

