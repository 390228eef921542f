"""An arm across two processes (torchrun, gloo, FSDP2) against one: the same math, half the model state
per rank, a killed rank recorded by number, resume from sharded checkpoints, bad launches refused."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import harness, read_rows, read_summary, wait_for_steps
from harness import UserError
from harness.config.load import load_config
from harness.train.distributed import check_launch

pytestmark = pytest.mark.slow
FLAGS = ("--preset", "smoke", "--set", "run.lm_eval=false")


@pytest.fixture(scope="module", params=["grpo", "ppo"])
def one_and_two(request, tmp_path_factory):
    """The same arm with 2 sampling slices in 1 process and in 2 processes (one slice each)."""
    algo, base = request.param, tmp_path_factory.mktemp(f"dist-{request.param}")
    harness("run", "--algo", algo, *FLAGS, "--set", "rollout.slices=2", "--out", str(base / "one"), check=True)
    harness("run", "--algo", algo, *FLAGS, "--nproc-per-node", "2", "--out", str(base / "two"), check=True)
    return algo, base / "one", base / "two"


def test_two_processes_train_what_one_does(one_and_two):
    algo, one, two = one_and_two
    for a, b in zip(read_rows(one / "steps.jsonl")[:3], read_rows(two / "steps.jsonl")[:3]):
        assert a["reward/mean"] == b["reward/mean"] and a["completions"] == b["completions"]  # the same samples
        for key in ("loss/loss", "loss/policy_loss", "loss/grad_norm") + (("loss/value_loss",) if algo == "ppo" else ()):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key
    final_one, final_two = (load_file(f / "final_model" / "model.safetensors") for f in (one, two))
    for name, weight in final_one.items():
        torch.testing.assert_close(final_two[name], weight, atol=1e-4, rtol=0, msg=name)


def test_each_rank_holds_half_of_the_model_state(one_and_two):
    _, one, two = one_and_two
    single = read_summary(one)["mem"]["arithmetic"]["models"]
    ranks = read_summary(two)["mem"]["arithmetic"]["per_rank"]
    assert len(ranks) == 2
    for model, row in single.items():
        for category in ("params", "grads", "optimizer"):
            halves = [rank[model][category] for rank in ranks]
            # FSDP2 shards each tensor on its first dimension: an odd row count leaves one rank a row more
            assert sum(halves) >= row[category] - 64, (model, category)
            assert abs(halves[0] - halves[1]) <= 0.02 * row[category] + 1024, (model, category)
    live = read_summary(two)["mem"]["live"]
    assert len(live["per_rank"]) == 2 and live["peak"] == max(r["peak"] for r in live["per_rank"])


def test_a_killed_rank_is_named_and_the_arm_resumes_from_its_sharded_checkpoint(tmp_path):
    flags = (*FLAGS, "--budget", "256", "--nproc-per-node", "2")  # 8 steps, checkpointed every 2
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    harness("run", "--algo", "ppo", *flags, "--out", str(straight), check=True)
    launcher = subprocess.Popen([sys.executable, "-m", "harness", "run", "--algo", "ppo", *flags, "--out", str(cut)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_steps(cut / "steps.jsonl", 3, launcher, timeout=600)
    rank_one = [pid for pid in map(int, subprocess.run(["pgrep", "-f", f"harness run --run-dir {cut}"],
                                                       capture_output=True, text=True).stdout.split())
                if b"RANK=1\x00" in Path(f"/proc/{pid}/environ").read_bytes()]
    assert rank_one, "rank 1 was not found"
    os.kill(rank_one[0], signal.SIGKILL)
    launcher.wait(timeout=300)
    summary = read_summary(cut)
    assert summary["status"] == "failed" and "rank 1 of 2 died with exit code -9" in summary["error"]
    harness("run", "--run-dir", str(cut), "--resume", check=True)
    resumed, expected = read_rows(cut / "steps.jsonl"), read_rows(straight / "steps.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(expected, resumed):
        assert b["loss/policy_loss"] == pytest.approx(a["loss/policy_loss"], abs=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["run.nproc_per_node=3"], "do not split into 3 sampling slices of whole groups"),
    (["run.nproc_per_node=2", "rollout.slices=3"], "rollout.slices=3 must be a multiple of the 2 processes"),
    (["run.nproc_per_node=2", "optim.micro_batch_size=16"], "does not divide a minibatch of 8 rows per process"),
])
def test_batches_that_do_not_split_across_ranks_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config("smoke", overrides=overrides)


def test_an_unreachable_master_is_refused_before_anything_is_written(tmp_path):
    result = harness("run", "--algo", "grpo", *FLAGS, "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "1",
                     "--master-addr", "127.0.0.1", "--master-port", "9", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "the master 127.0.0.1:9 does not answer" in result.stderr
    assert not (tmp_path / "run").exists()
    result = harness("run", "--algo", "grpo", *FLAGS, "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "0",
                     "--master-addr", "no-such-host.invalid", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "--master-addr no-such-host.invalid cannot be resolved" in result.stderr


def test_more_processes_than_gpus_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config = load_config("smoke", overrides=["run.nproc_per_node=2"])
    config.run.device = "cuda"  # set after loading: the loader checks the device against this machine
    with pytest.raises(UserError, match="more processes than the 1 GPUs visible here"):
        check_launch(config)


def test_a_comparison_on_two_processes_reports_memory_per_rank(tmp_path):
    out = tmp_path / "cmp"
    result = harness("compare", "--algos", "grpo,ppo", *FLAGS, "--nproc-per-node", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    html = next(out.rglob("*.html")).read_text()
    assert "Memory per rank" in html
    for algo in ("grpo", "ppo"):
        summary = read_summary(out / f"chain_sum__{algo}__s0")
        assert summary["world_size"] == 2 and len(summary["mem"]["live"]["per_rank"]) == 2


STACKS = {"zero3": [], "zero2": ["run.shard_policy=grad_optim", "run.shard_critic=grad_optim",
                                  "run.shard_reference=grad_optim"],
          "offload": ["run.offload_policy=true", "run.offload_critic=true", "run.offload_reference=true"]}


@pytest.mark.parametrize("stack", ["zero2", "offload"])
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_the_estimate_of_zero2_and_offload_is_what_a_rank_measures(algo, stack, tmp_path):
    """ZeRO-2-like sharding (parameters gathered from forward to backward) and CPU offload (FSDP2's
    CPUOffloadPolicy, unpinned on gloo) train on two processes, and the fake step of the same stack meets
    rank 0's live tensors per phase within 1%. On the CPU an offloaded shard stays where it is, so the
    estimate is read with the offloaded shards counted (`weigh_offloaded=False`): what CPU offload saves on a
    GPU cannot be measured here, only that the code runs and the rest of each phase is predicted."""
    from harness.estimate.fake_generation import Workload
    from harness.estimate.fake_step import fake_step
    from harness.estimate.model_specs import resolve_model
    overrides = STACKS[stack]
    harness("run", "--algo", algo, *FLAGS, "--nproc-per-node", "2", "--out", str(tmp_path / "two"),
            *(flag for o in overrides for flag in ("--set", o)), check=True)
    steady = read_rows(tmp_path / "two" / "steps.jsonl")[1:]
    config = load_config("smoke", overrides=["estimate.world_size=2", *overrides])
    summary = read_summary(tmp_path / "two")
    assert summary["status"] == "ok"
    workload = Workload(16, 6, 5, config.rollout.samples_per_prompt)  # the smoke step: 32 rows of 6 + 5 tokens, on 2
    step = fake_step(config, algo, resolve_model("tiny", config).config, None, workload, world_size=2, foreach=False,
                     weigh_offloaded=False)
    for phase, estimated in step.phases.items():
        measured = min(row[f"mem/live/{phase}/total"] for row in steady)
        assert estimated["total"] == pytest.approx(measured, rel=0.01), (phase, estimated, measured)


LORA_SHARED = ["model.lora.rank=4", "algorithms.ppo.critic_base=shared"]


@pytest.mark.parametrize("algo, overrides", [("grpo", []), ("ppo", []), ("ppo", LORA_SHARED)],
                         ids=["grpo", "ppo", "ppo-lora-shared"])
def test_the_estimate_at_world_size_two_is_what_a_rank_measures(algo, overrides, tmp_path):
    """`harness estimate --world-size 2` against the live-tensor peaks rank 0 of a 2-process arm records in
    its steady-state steps (the first has no AdamW moments yet): every phase within 1% of the measured
    total, and rank 0's trained model state to the byte (rank 1 holds less of an unevenly split tensor:
    the critic's value head has one row; the frozen reference's root is left gathered by its last
    forward, and the arm's arithmetic then reads it whole).

    A phase is compared with its lowest steady-state peak: a rank's peak sometimes holds one decoder
    layer's FSDP2 buffers more (about 65 kB here; seen in old_logprobs and advantages, on either rank, in
    some runs and not others), freed later than FSDP2's own references are dropped.

    Under LoRA with the critic on the policy's base, the critic's adapter is sharded with the policy's layers
    and its passes run through the policy's root: the estimate follows the same code."""
    from harness.estimate.estimator import estimate
    harness("run", "--algo", algo, *FLAGS, "--nproc-per-node", "2", "--out", str(tmp_path / "two"),
            *(flag for o in overrides for flag in ("--set", o)), check=True)
    steady = read_rows(tmp_path / "two" / "steps.jsonl")[1:]
    mem = read_summary(tmp_path / "two")["mem"]
    config = load_config("smoke", overrides=["estimate.world_size=2", *overrides])
    arm = estimate(config, [algo], cuda_optimizer=False, use_cache=False)["arms"][algo]  # the CPU's AdamW path
    assert len(steady) == 2 and set(arm["phases"]) == set(mem["live"]["per_rank"][0]["phases"])
    for phase, estimated in arm["phases"].items():
        measured = min(row[f"mem/live/{phase}/total"] for row in steady)
        assert estimated["total"] == pytest.approx(measured, rel=0.01), phase
    for model in ("policy", "critic") if algo == "ppo" else ("policy",):
        assert arm["model_state"][model] == mem["arithmetic"]["per_rank"][0][model], model


def test_two_nodes_on_one_machine_run_a_comparison_that_node_zero_writes(tmp_path):
    """`harness compare` on "two nodes" (two launchers on this machine, one process each): node 1 follows
    node 0's plan, joins each arm's torchrun job, and writes nothing but its launcher logs."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    out = tmp_path / "cmp"
    node_flags = ("--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port)
    command = [sys.executable, "-m", "harness", "compare", "--algos", "grpo,ppo", *FLAGS, "--no-report", "--out", str(out)]
    follower = subprocess.Popen([*command, *node_flags, "--node-rank", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)  # started first: it waits for node 0's plan
    leader = subprocess.run([*command, *node_flags, "--node-rank", "0"], capture_output=True, text=True, timeout=900)
    follower_out, _ = follower.communicate(timeout=300)
    assert leader.returncode == 0, leader.stdout + leader.stderr
    assert follower.returncode == 0 and "followed 2 arms" in follower_out, follower_out
    for algo in ("grpo", "ppo"):
        arm = out / f"chain_sum__{algo}__s0"
        summary = read_summary(arm)
        assert summary["status"] == "ok" and summary["world_size"] == 2
        assert len(summary["mem"]["live"]["per_rank"]) == 2
        assert (arm / "launcher-node1.log").exists()
