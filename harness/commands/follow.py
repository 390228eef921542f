"""A node other than 0 in a multi-node comparison: it joins each of node 0's arms and writes nothing.

Every node runs the same `harness compare ... --nnodes M --node-rank R --out SHARED`. Node 0 plans the
comparison, holds its folder, runs the arms and writes every result. A node with R > 0 follows: it
waits for node 0's plan (comparison.json and each arm's config.yaml on the shared folder), then
starts its own share of each unfinished arm's torchrun job in the plan's order; torchrun's
rendezvous on node 0 pairs the two, so this node waits there until node 0 reaches that arm.

    from harness.commands.follow import follow
    from harness.config.schema import load_config
    follow(load_config("tiny", overrides=["run.nnodes=2", "run.node_rank=1", "run.device=cuda"]), "/shared/cmp")
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import Interrupted, UserError
from harness.config.schema import Config
from harness.results.arm_config import read_arm_config
from harness.results.io import checkpoint_file, read_json_object
from harness.train import distributed as ranks_
from harness.train.runner import finished_ok
from harness.train.supervise import Supervisor

PLAN_WAIT_S = 1800  # how long a follower waits for node 0's plan before it gives up


def follow(config: Config, out: Path | str | None, wait_s: float = PLAN_WAIT_S) -> int:
    """Join node 0's arms as node run.node_rank; 0 when every arm's job ended well on this node."""
    if not out:
        raise UserError(f"node {config.run.node_rank} follows node 0's comparison: give the same --out as node 0, "
                        "on a folder both nodes see")
    comparison_dir = Path(out)
    plan = wait_for_plan(comparison_dir, wait_s)
    node = config.run.node_rank
    failures = 0
    with Supervisor().forwarding_signals() as supervisor:
        for entry in plan["arms"]:
            arm_dir = comparison_dir / entry["dir"]
            if finished_ok(arm_dir):
                continue  # node 0 skips it too
            arm_config = node_config(read_arm_config(arm_dir)[0], config)
            resumable = checkpoint_file(arm_dir).exists()
            print(f"node {node}: joining {entry['dir']} ({arm_config.world_size} processes in all)", flush=True)
            code, last_line = supervisor.run(ranks_.arm_command(arm_dir, resumable, arm_config),
                                             arm_dir / f"launcher-node{node}.log", echo=False, child_watches=False)
            if supervisor.stopped_by:
                raise Interrupted(supervisor.stopped_by, hint=f"run the same command again to rejoin {comparison_dir}")
            failures += code != 0
            print(f"node {node}: {entry['dir']} ended with status {code}"
                  + (f" ({last_line})" if code and last_line else ""), flush=True)
    print(f"node {node}: followed {len(plan['arms'])} arms of {comparison_dir}; node 0 writes the results")
    return 1 if failures else 0


def node_config(arm_config: Config, this_node: Config) -> Config:
    """Node 0's arm config with this node's place in the job (its rank and how it reaches the master)."""
    run, mine = arm_config.run, this_node.run
    run.node_rank, run.master_addr, run.master_port = mine.node_rank, mine.master_addr, mine.master_port
    if (run.nnodes, run.nproc_per_node) != (mine.nnodes, mine.nproc_per_node):
        raise UserError(f"node 0 planned arms of {run.nnodes} nodes x {run.nproc_per_node} processes and this node "
                        f"was started with {mine.nnodes} x {mine.nproc_per_node}: give every node the same flags")
    return arm_config


def wait_for_plan(comparison_dir: Path, wait_s: float) -> dict:
    """Node 0's comparison.json once it and every arm's config.yaml are on the shared folder."""
    deadline, said = time.monotonic() + wait_s, False
    while True:
        path = comparison_dir / "comparison.json"
        if path.exists():
            plan = read_json_object(path, {"arms": list})
            if all((comparison_dir / arm["dir"] / "config.yaml").exists() for arm in plan["arms"]):
                return plan
        if time.monotonic() > deadline:
            raise UserError(f"no comparison plan from node 0 in {comparison_dir} after {wait_s:.0f} s: start node 0 "
                            "with the same --out, on a folder both nodes see")
        if not said:
            print(f"waiting for node 0's plan in {comparison_dir} ...", flush=True)
            said = True
        time.sleep(2.0)


