"""Run by tests/test_logprobs.py under torchrun (2 processes, gloo): the same small model twice, each
FSDP2-sharded as the harness shards (each decoder layer, then the root), one scored through the whole
logits and one through the chunked LM head; the log-probs, entropies and every full gradient must agree.

argv[1]: whether the root reshards after forward ("true": its LM head weight is a shard again until the
pre-backward hook gathers it).
"""

import copy
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.testing import assert_close

from harness.algorithms.logprobs import completion_logps
from harness.train.distributed import decoder_layers
from test_logprobs import padded_policy
from test_stack import rollout_batch


def main(reshard_root: bool) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    policy = padded_policy(torch.float64)
    batch = rollout_batch(copy.deepcopy(policy), rows=8, seed=1 + rank)  # each rank its own rows
    results = []
    for chunk in (0, 3):
        model = copy.deepcopy(policy)
        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(model, reshard_after_forward=reshard_root)
        model.train()
        logps, entropy = completion_logps(model, batch, 0.7, entropy=True, chunk=chunk)
        (logps.sum() + 0.3 * entropy.sum()).backward()
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        results.append((logps.detach(), entropy.detach(), grads))
    whole, chunked = results
    assert_close(chunked[0], whole[0], atol=1e-12, rtol=0)
    assert_close(chunked[1], whole[1], atol=1e-12, rtol=0)
    for name, grad in whole[2].items():
        assert_close(chunked[2][name], grad, atol=1e-12, rtol=1e-10, msg=name)
    print(f"rank {rank}: log-probs, entropies and {len(whole[2])} gradients equal", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1] == "true")
