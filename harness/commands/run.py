"""`harness run`: train one arm (what `harness compare` starts for each arm): in this process, or as a
torchrun job of run.nproc_per_node processes that this process launches and waits for.

The process that starts the arm holds its folder's lock until the arm ends (one writer per folder; the
ranks of a torchrun job write under their launcher's lock). SIGTERM (docker stop, timeout, a cancelled
CI job) or SIGINT stops the arm cleanly: summary.json says `interrupted` with the last step written,
the process exits 143 or 130, and `--resume` continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from harness import Interrupted, UserError
from harness.commands.terminal import ArmProgress, print_arm, timestamp
from harness.config.derive import algorithm_options
from harness.config.schema import Config
from harness.estimate.preflight import check_setup
from harness.results.arm_config import arm_config_dict, read_arm_config
from harness.results.io import (FolderLock, checkpoint_file, command_line, output_folder, describe_bad_lines,
                                read_json_object, read_jsonl, remove_temporaries, write_yaml)
from harness.train import distributed as ranks_
from harness.train.checkpoint import read_payload
from harness.train.inputs import check_inputs
from harness.train.runner import _partial_state as partial_state  # the steps a stopped arm wrote
from harness.train.runner import ArmResult, finished_ok, record_launch_failure, run_arm, run_name, summarize, write_summary
from harness.train.supervise import Supervisor, stop_on_signals


def run(config: Config, algo: str, out: Path | str | None = None, probes: bool = True) -> int:
    """Train a new arm into `out` (default results/TASK__ALGO__sSEED__TIME); 0 when it finished."""
    check_setup(config, [algo])
    ranks_.check_launch(config)
    run_dir = output_folder(out, config.run.results_dir, f"{run_name(config, algo)}__{timestamp()}", "run")
    with FolderLock(run_dir, command_line()):
        if (run_dir / "summary.json").exists() or (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir} already holds a run; continue it with 'harness run --run-dir {run_dir} "
                            f"--resume', or choose another --out")
        if config.world_size > 1:
            resolved = arm_config_dict(config, algo)
            resolved["derived"]["algorithm_options"] = algorithm_options(config, algo).model_dump()
            write_yaml(run_dir / "config.yaml", resolved)
            return launch(run_dir, config, resume=False)
        return _train(config, algo, run_dir, resume=False, probes=probes)


def launch(run_dir: Path, config: Config, resume: bool) -> int:
    """Start the arm's torchrun job and wait for it; the ranks write the folder. A rank that dies
    (killed, out of memory) takes the job down: its number goes into the summary. A stop signal is
    forwarded to the job, whose rank 0 records it."""
    from harness.train.models import prepare_model
    prepare_model(config)  # the warm-started tiny model, built here once: ranks building it side by side raced
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "launcher.log"
    log.unlink(missing_ok=True)
    with Supervisor().forwarding_signals() as job:
        code, _ = job.run(ranks_.arm_command(run_dir, resume, config), log, echo=False, child_watches=False)
    if job.stopped_by:
        summary = read_json_object(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
        stop = Interrupted(job.stopped_by, hint=f"harness run --run-dir {run_dir} --resume")
        if summary.get("status") in (None, "running"):
            record_interrupted(config, summary.get("algo") or "?", run_dir, stop)
        raise stop
    if code and finished_ok(run_dir):
        # every rank passed the arm's last collective before rank 0 wrote `ok`: only the job's teardown
        # failed (a rank's exit, the rendezvous closing), and the arm's results are whole
        print(f"warning: the arm finished and wrote its results, then its torchrun job exited with status {code} "
              f"while shutting down: {last_error_line(log.read_text(errors='replace'))} (see {log})", file=sys.stderr)
        return 0
    if code:
        record_launch_failure(run_dir, config, code, log.read_text(errors="replace"))
    return code


def last_error_line(launcher_log: str) -> str:
    """The line of a torchrun log most likely to say what went wrong: its last one naming an error.

    >>> last_error_line("ok\\nTraceback (most recent call last):\\n  File x\\nRuntimeError: Connection closed by peer\\n")
    'RuntimeError: Connection closed by peer'
    """
    lines = [line.strip() for line in launcher_log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line or "exitcode" in line]
    return (errors or lines or ["the log is empty"])[-1]


def run_folder(run_dir: Path | str, resume: bool = False, probes: bool = True, force_resume: bool = False) -> int:
    """Train the arm a folder's config.yaml describes; with `resume`, from its checkpoint, once its inputs
    are found unchanged (or `force_resume` says to go on)."""
    run_dir = Path(run_dir)
    config, algo, name = read_arm_config(run_dir)
    check_setup(config, [algo])
    if ranks_.from_env().active:  # a rank of a torchrun job: its launcher holds the folder
        return _train(config, algo, run_dir, resume=resume, probes=probes, name=name)
    with FolderLock(run_dir, command_line()):
        if resume:
            check_inputs(run_dir, config, force=force_resume)
        if config.world_size > 1:  # not yet a rank of the job: start it
            ranks_.check_launch(config)
            if resume and checkpoint_file(run_dir).exists():  # refused here, before a rank writes anything
                read_payload(checkpoint_file(run_dir), config.world_size)
            return launch(run_dir, config, resume)
        return _train(config, algo, run_dir, resume=resume, probes=probes, name=name)


def _train(config: Config, algo: str, run_dir: Path, resume: bool, probes: bool, name: str | None = None) -> int:
    """Train the arm in this process; `name`: the arm's name in its comparison (default its algorithm)."""
    main = ranks_.from_env().main  # the other ranks of a torchrun job train silently
    if main:
        remove_temporaries(run_dir)  # what a killed writer left; this process is the folder's writer now
        remove_temporaries(run_dir / "checkpoint")
        if resume:
            warn_bad_lines(run_dir)
    with stop_on_signals() as stopping:
        try:
            with ArmProgress(f"{name or algo} s{config.run.seed}") if main else contextlib.nullcontext() as progress:
                summary = run_arm(config, algo, run_dir, resume=resume, progress=progress, probes_enabled=probes,
                                  name=name)
        except Interrupted as stop:
            stopping[:] = [stop.signum]
        if stopping:  # also when the code the signal interrupted turned it into an error of its own
            stop = Interrupted(stopping[0], hint=f"harness run --run-dir {run_dir} --resume")
            if main:
                record_interrupted(config, algo, run_dir, stop)
            raise stop
    if main:
        print_arm(summary, run_dir, name)
    return 0 if summary.ok else 1


def warn_bad_lines(run_dir: Path) -> None:
    bad_lines: list[int] = []
    read_jsonl(run_dir / "steps.jsonl", bad_lines)
    if bad_lines:
        print(f"warning: {describe_bad_lines(run_dir / 'steps.jsonl', bad_lines)}", file=sys.stderr)


def record_interrupted(config: Config, algo: str, run_dir: Path, stop: Interrupted) -> None:
    """summary.json of an arm stopped by a signal: `interrupted`, with the last step it wrote."""
    state = partial_state(run_dir)
    write_summary(run_dir, summarize(config, algo, ArmResult(state), "interrupted",
                                     f"interrupted by {stop.name} after step {state.step}"))
