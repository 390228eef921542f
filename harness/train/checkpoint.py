"""What a resumed arm carries on from: the run state, the algorithm's state and the random generators.

A checkpoint holds tensors and plain containers only, so `torch.load(..., weights_only=True)` reads
it: a crafted file cannot run code on resume. Anything else is refused with one line. Under torchrun
the models and optimizers are saved sharded by `torch.distributed.checkpoint` (each rank writes its
shards into `state.pt.dcp/`), and each rank's random generators beside them; resume needs the same
number of processes, and reads the shards' metadata without unpickling anything but torch's own classes
(harness.train.dcp_safe).
"""

from __future__ import annotations

import dataclasses
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import UserError
from harness.results.io import TEMP_SUFFIX, atomic_write_with
from harness.train import dcp_safe

FORMAT = 2


@dataclass
class RunState:
    """The counters of one arm: everything the step loop adds up, saved with each checkpoint."""

    step: int = 0
    completions: int = 0
    tokens: int = 0
    train_s: float = 0.0  # seconds of training steps; periodic held-out evaluations excluded
    eval_s: float = 0.0  # seconds of periodic held-out evaluations
    tracked_steps: int = 0  # steps that ran with the live-tensor tracker
    tracked_s: float = 0.0  # their seconds (left out of time per step)
    phase_totals: dict[str, float] = field(default_factory=dict)  # seconds per phase, summed
    live_peaks: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> largest peak of live tensors
    base_eval: dict[str, Any] | None = None
    base_lm_eval: dict[str, Any] | None = None


def rng_state() -> dict[str, Any]:
    """The global generators as tensors and plain values (numpy's key array as a tensor)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))


def _tuples(value: Any) -> Any:
    """random.setstate wants tuples where a round trip may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path: Path, state: RunState, algorithm, ranks=None) -> None:
    path = Path(path)
    if ranks is not None and ranks.active:
        save_sharded(path, state, algorithm, ranks)
        return
    payload = {"format": FORMAT, "run_state": dataclasses.asdict(state), "algorithm": algorithm.state_dict(),
               "rng": rng_state()}
    atomic_write_with(path, lambda handle: torch.save(payload, handle))


def save_sharded(path: Path, state: RunState, algorithm, ranks) -> None:
    """The shards by torch.distributed.checkpoint into a fresh folder, renamed into place once every
    rank has written; then the run state (rank 0) that says the folder is whole."""
    import shutil

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    folder, staging = Path(f"{path}.dcp"), path.with_name(f".{path.name}.dcp{TEMP_SUFFIX}")  # removed on start if left
    if ranks.main:
        shutil.rmtree(staging, ignore_errors=True)
    dist.barrier()
    dcp.save({"algorithm": algorithm.state_dict()}, checkpoint_id=str(staging))
    atomic_write_with(staging / f"rng-{ranks.rank}.pt", lambda handle: torch.save(rng_state(), handle))
    dist.barrier()
    if ranks.main:
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        payload = {"format": FORMAT, "run_state": dataclasses.asdict(state), "sharded": ranks.world}
        atomic_write_with(path, lambda handle: torch.save(payload, handle))
    dist.barrier()


def load_refusal(err: Exception) -> str:
    """Why torch refused a file in one phrase: the object it would not build, never torch's advice to
    load it unsafely."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")]
    return named[0].rstrip(".") if named else (lines[0].split(". ")[0] if lines else type(err).__name__)


def read_payload(path: Path, world: int = 1) -> dict[str, Any]:
    """state.pt read weights only, of this format and this many processes; with `world` > 1, the shards'
    `.metadata` read safely too (harness.train.dcp_safe). One line (UserError) for anything else."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise UserError(f"checkpoint {path} cannot be loaded safely (weights only): {load_refusal(err)}; "
                        f"{AFRESH}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a checkpoint of this harness version (format {FORMAT}); {AFRESH}")
    if payload.get("sharded", 1) != world:
        raise UserError(f"checkpoint {path} was saved by {payload.get('sharded', 1)} processes and this run has "
                        f"{world}: resume with the same --nproc-per-node")
    if world > 1:
        metadata = Path(f"{path}.dcp") / dcp_safe.METADATA_FILE
        try:
            dcp_safe.read_metadata(metadata)
        except dcp_safe.RefusedGlobal as err:
            raise UserError(f"checkpoint {metadata} cannot be loaded safely: {err}; {AFRESH}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as err:
            raise UserError(f"checkpoint {metadata} is damaged ({type(err).__name__}: {err}); {AFRESH}") from None
    return payload


AFRESH = "delete the checkpoint folder to start the arm afresh"


def load_checkpoint(path: Path, algorithm, ranks=None) -> RunState:
    """Restore the algorithm and the generators; the run state to carry on from."""
    world = ranks.world if ranks is not None else 1
    payload = read_payload(path, world)
    if world > 1:
        from torch.distributed.checkpoint.state_dict import _init_optim_state
        for optimizer in algorithm.optimizers().values():
            # a fresh optimizer holds no state yet, so the template would load none: a zero-lr step makes it
            _init_optim_state(optimizer)
        shards = {"algorithm": algorithm.state_dict()}
        dcp_safe.load(shards, f"{path}.dcp")
        algorithm.load_state_dict(shards["algorithm"])
        set_rng_state(torch.load(Path(f"{path}.dcp") / f"rng-{ranks.rank}.pt", weights_only=True))
    else:
        algorithm.load_state_dict(payload["algorithm"])
        set_rng_state(payload["rng"])
    known = {f.name for f in dataclasses.fields(RunState)}
    return RunState(**{k: v for k, v in payload["run_state"].items() if k in known})
