"""The fault matrix (issues 17 and 26): a user's bad day, one row per fault, in tests/test_faults_*.py by theme.

Each row gives the bad value or the fault, the one line and exit status expected, and checks that nothing
was half-written or lost. Rows named test_N_ follow issue 17's numbered items, test_26_N_ issue 26's
(test_26_lower_ its lower list). Every bug found later gets a row.

    test_faults_folders.py     one writer per folder, links and names inside a results folder, stale temporaries
    test_faults_disk.py        unwritable and full disks, files written whole, modes
    test_faults_signals.py     arms killed or stopped by signals, ranks killed
    test_faults_values.py      values and inputs refused in one line before any folder is written
    test_faults_results.py     the memory gate, damaged result files and baselines, steps.jsonl
    test_faults_resume.py      what a resume refuses, and what it keeps
    test_faults_user_code.py   checkpoints, reward functions and error texts: code and text from outside

Kill and signal rows run real `harness` processes on the smoke preset and are marked slow, and so are
the rows on a copy of the session's finished smoke comparison (`finished`, `smoke_baseline` in conftest).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "results" / "baselines" / "cpu-smoke.json"
GRPO, PPO = "chain_sum__grpo__s0", "chain_sum__ppo__s0"


# ---------------------------------------------------------------- helpers

def run_main(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (the same code as the console script, without a start-up per row)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, message: str, status: int = 2) -> None:
    assert code == status, err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every result file under `folder` with its bytes: to show that a refused command changed nothing
    (lock files say who last held them, and are left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def leftovers(folder: Path) -> list[Path]:
    """What a half-done write leaves: temporary files and staging folders."""
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def start(*args, **popen) -> subprocess.Popen:
    """`harness ARGS` as its own process (and process group, so that a test can clean up after it)."""
    return subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy(), start_new_session=True, **popen)


def arm_process(parent: subprocess.Popen, arm_dir: Path) -> psutil.Process:
    """The `harness run --run-dir ARM_DIR` process a comparison started."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for child in psutil.Process(parent.pid).children(recursive=True):
            try:
                if str(arm_dir) in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no process for {arm_dir}")


def stop(process: subprocess.Popen) -> None:
    """Kill whatever a test left running: the process, its group and its children (arms in groups of their own)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for victim in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`harness ARGS` beside a running one; the timeout keeps a command that should be refused from running on."""
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


SLOW_COMPARE = ("compare", "--algos", "grpo,ppo", "--preset", "smoke", "--no-report", "--set", "run.lm_eval=false")



def planned_comparison(folder: Path, monkeypatch) -> Path:
    """A comparison folder as `harness compare` plans it (comparison.json, configs, inputs), its arms not yet
    run; resuming it runs each arm as a child that prints one line (nothing is trained)."""
    from harness.commands import compare
    from harness.config.load import load_config
    with monkeypatch.context() as patch:
        patch.setattr(compare, "run_arms", lambda *args, **kwargs: 0)
        compare.compare(load_config("smoke", overrides=["run.lm_eval=false"]), ["grpo", "ppo"], [0], out=folder,
                        report=False)
    monkeypatch.setattr(compare, "prepare_model", lambda *args: None)
    monkeypatch.setattr(compare, "arm_command", lambda arm_dir, resume: [sys.executable, "-c", "print('arm ran')"])
    return folder
