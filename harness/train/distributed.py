"""One arm across processes: torch.distributed with FSDP2, launched by torchrun (gloo on the CPU, NCCL on GPUs).

The harness does not grow a trainer of its own: every model of an arm (policy, critic, reference) is
sharded with `fully_shard` per decoder layer and then at the root, with a `MixedPrecisionPolicy` for
bf16-mixed and a `CPUOffloadPolicy` where asked. Each rank samples and scores its share of the
step's prompts (whole groups, so that group baselines need no communication); loss denominators,
whitening and statistics are reduced over the ranks, and gradients are summed, so that the global
batch, the budget and the learning rate mean the same at any number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> Ranks:
    """The process's place in a torchrun job (a single process when torchrun did not start it)."""
    return Ranks(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init(device: str) -> Ranks:
    """Join the job's process group (gloo on the CPU, NCCL on GPUs); one GPU per process."""
    ranks = from_env()
    if ranks.active and not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return ranks


def rank_device(device: str, ranks: Ranks) -> str:
    """cuda -> cuda:LOCAL_RANK under torchrun; the device as given otherwise."""
    return f"cuda:{ranks.local_rank}" if ranks.active and device.startswith("cuda") else device


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM, of its decoder, or of a critic's backbone (under LoRA:
    of the peft model's base, adapters inside the blocks, sharded with them)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    for owner in (model, getattr(model, "model", None), getattr(model, "backbone", None)):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if layers is not None:
            return list(layers)
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")


def shard(model: torch.nn.Module, precision: str, offload: bool = False, mesh=None,
          sharding: str = "full") -> torch.nn.Module:
    """FSDP2: each decoder layer, then the root; bf16 compute over fp32 shards for bf16-mixed, shards in
    CPU memory with `offload` (FSDP2's CPUOffloadPolicy: parameters, gradients and the optimizer step).

    `sharding`: "full" (ZeRO-3) frees each unit's gathered parameters after its forward and gathers them
    again for backward; "grad_optim" (ZeRO-2-like) keeps them gathered from forward to backward, so only
    gradients and optimizer state stay sharded through the step. The root is resharded after forward as
    the layers are, as verl sets it: FSDP2 otherwise leaves the root (embedding and LM head) gathered
    after forward, and a frozen model (reference, reward model), whose one pass in a step is a forward,
    would keep them gathered for the rest of the step. FSDP averages gradients over the ranks; the shared loop's loss
    carries the whole minibatch's denominator times the world size, so the average is the minibatch's
    gradient. `mesh`: the device mesh (default: the whole job on this process's accelerator; `harness
    estimate` passes a CPU mesh over a fake process group)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    # pinned host memory needs an accelerator: on a CPU mesh (gloo, or an estimate's fake ranks) the shards are plain
    pinned = torch.cuda.is_available() and (mesh is None or mesh.device_type == "cuda")
    kwargs: dict[str, Any] = {"offload_policy": CPUOffloadPolicy(pin_memory=pinned) if offload else OffloadPolicy(),
                              "mesh": mesh, "reshard_after_forward": sharding == "full"}
    if precision == "bf16-mixed":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    # a lone module (the shared critic's value head) is one unit; a model is its decoder layers, then the root
    for layer in decoder_layers(model) if any(True for _ in model.children()) else []:
        fully_shard(layer, **kwargs)
    # a peft model's root is its base: generate() and the adapters-off reference run the base's forward
    fully_shard(model.get_base_model() if hasattr(model, "get_base_model") else model, **kwargs)
    return model


def model_sharding(run, name: str) -> dict[str, Any]:
    """The keywords of `shard` for one model of an arm from the config's `run` section: its sharding and
    offload (the reward model of an estimate follows the reference's)."""
    key = {"reward_model": "reference"}.get(name, name)
    return {"sharding": getattr(run, f"shard_{key}"), "offload": getattr(run, f"offload_{key}")}


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value`, in rank order (a list of one in a single process)."""
    if not ranks.active:
        return [value]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, value)
    return out


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()


def full_state_dict(model: torch.nn.Module, ranks: Ranks) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0 (CPU), gathered from the shards; an empty dict elsewhere."""
    if not ranks.active:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def arm_command(run_dir, resume: bool, config) -> list[str]:
    """The command that trains the arm of `run_dir`: `python -m harness run --run-dir DIR`, under torchrun
    (`python -m torch.distributed.run`, one process per device) when the config asks for several."""
    import sys
    command = ["-m", "harness", "run", "--run-dir", str(run_dir), *(["--resume"] if resume else [])]
    run = config.run
    if config.world_size == 1:
        return [sys.executable, *command]
    launcher = ["-m", "torch.distributed.run", f"--nproc-per-node={run.nproc_per_node}"]
    if run.nnodes == 1:  # a free port of this machine: arms and tests side by side never collide
        launcher.append("--standalone")
    else:
        launcher += [f"--nnodes={run.nnodes}", f"--node-rank={run.node_rank}", f"--master-addr={run.master_addr}",
                     f"--master-port={run.master_port}"]
    return [sys.executable, *launcher, *command]


def check_launch(config) -> None:
    """What can be known before a folder is written: enough GPUs for the processes, and a master that answers."""
    import socket

    from harness import UserError
    run = config.run
    if config.world_size == 1:
        return
    if config.run.device.startswith("cuda") and torch.cuda.is_available() and run.nproc_per_node > torch.cuda.device_count():
        raise UserError(f"--nproc-per-node {run.nproc_per_node} asks for more processes than the "
                        f"{torch.cuda.device_count()} GPUs visible here (one process per GPU)")
    if run.nnodes == 1:
        return  # torchrun --standalone: a rendezvous on this machine
    try:
        socket.getaddrinfo(run.master_addr, run.master_port)
    except OSError as err:
        raise UserError(f"--master-addr {run.master_addr} cannot be resolved ({err.strerror or err}); "
                        "give node 0's address") from None
    if run.node_rank > 0:  # node 0 hosts the rendezvous: the others must reach it
        try:
            socket.create_connection((run.master_addr, run.master_port), timeout=5).close()
        except OSError as err:
            raise UserError(f"the master {run.master_addr}:{run.master_port} does not answer "
                            f"({err.strerror or err}); start node 0 first, or check --master-addr/--master-port") from None


def arm_device_sets(config) -> list[list[int]]:
    """The disjoint GPU sets that `--parallel-arms` runs arms on, one process per GPU of a set; one line
    when it cannot: arms side by side need several GPUs of one machine."""
    from harness import UserError
    from harness.train.supervise import device_sets
    run = config.run
    if not run.device.startswith("cuda"):
        raise UserError(f"--parallel-arms places arms on disjoint GPUs, and this run's device is {run.device}: "
                        "drop --parallel-arms (arms then run one after another)")
    if run.device != "cuda":
        raise UserError(f"--parallel-arms gives each arm its own GPUs: use --device cuda, not {run.device}")
    if run.nnodes > 1:
        raise UserError("--parallel-arms places arms on the GPUs of one machine; with --nnodes > 1 each arm spans "
                        "the nodes and the arms run one after another")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    sets = device_sets(count, run.nproc_per_node)
    if len(sets) < 2:
        raise UserError(f"--parallel-arms needs room for two arms of {run.nproc_per_node} GPU(s) "
                        f"(--devices-per-arm), and {count} GPU(s) are visible here")
    return sets


def failed_rank(launcher_log: str) -> tuple[int, int] | None:
    """(rank, exit code) of the first failure torchrun reports ("Root Cause"), or None.

    >>> failed_rank("Root Cause (first observed failure):\\n[0]:\\n  rank      : 1 (local_rank: 1)\\n  exitcode  : -9 (pid: 7)")
    (1, -9)
    """
    import re
    cause = launcher_log.split("Root Cause", 1)[-1]
    match = re.search(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*exitcode\s*:\s*(-?\d+)", cause)
    return (int(match.group(1)), int(match.group(2))) if match else None


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank holds of a (possibly sharded) tensor."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def finish(ranks: Ranks) -> None:
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()
