"""The fault matrix (see fault_helpers.py): arms killed or stopped by signals, ranks killed."""

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
import pytest

from conftest import harness, wait_for_steps
from fault_helpers import GRPO, PPO, SLOW_COMPARE, arm_process, leftovers, rows, start, stop, summary


# ---------------------------------------------------------------- 2. an arm killed by a signal

@pytest.mark.slow
def test_2_an_arm_killed_by_sigkill_is_recorded_and_the_other_arms_go_on(tmp_path):
    out = tmp_path / "cmp"
    process = start(*SLOW_COMPARE, "--budget", "192", "--out", str(out))
    try:
        wait_for_steps(out / GRPO / "steps.jsonl", 2, process)
        arm_process(process, out / GRPO).kill()  # what the out-of-memory killer sends
        _, err = process.communicate(timeout=600)
    finally:
        stop(process)
    assert process.returncode == 1, err  # the comparison finished; one arm did not
    grpo, ppo = summary(out / GRPO), summary(out / PPO)
    last = rows(out / GRPO / "steps.jsonl")[-1]["step"]
    assert grpo["status"] == "killed" and grpo["steps"] == last >= 2
    assert grpo["error"] == f"killed (signal 9: likely the out-of-memory killer) after step {last}"
    assert ppo["status"] == "ok" and ppo["steps"] == 6
    assert json.loads((out / "summary.json").read_text())["arms"][0]["status"] == "killed"


@pytest.mark.parametrize("status, code", [("ok", 0), ("running", 1)])
def test_2_a_torchrun_job_that_fails_only_in_its_teardown_keeps_a_finished_arm(tmp_path, monkeypatch, capsys,
                                                                                status, code):
    """Seen once in CI: a 2-process arm wrote its results and `ok`, then its torchrun job exited 1 while
    shutting down. The arm is whole (every rank had passed its last collective), so `harness run` exits 0
    with a warning naming the log's error; a job that fails before rank 0 wrote `ok` is still a failure."""
    from harness.commands.run import launch
    from harness.config.load import load_config
    from harness.train import distributed
    config = load_config(preset="smoke", overrides=["run.nproc_per_node=2"])
    (tmp_path / "summary.json").write_text(json.dumps({"algo": "grpo", "seed": 0, "status": status}))
    teardown = "import sys; print('RuntimeError: Connection closed by peer', file=sys.stderr); sys.exit(1)"
    monkeypatch.setattr(distributed, "arm_command", lambda run_dir, resume, config: [sys.executable, "-c", teardown])
    assert launch(tmp_path, config, resume=False) == code
    after = json.loads((tmp_path / "summary.json").read_text())
    if status == "ok":
        assert after["status"] == "ok"
        assert capsys.readouterr().err.startswith("warning: the arm finished and wrote its results, then its torchrun "
                                                  "job exited with status 1 while shutting down: RuntimeError: "
                                                  "Connection closed by peer")
    else:
        assert after["status"] == "failed" and "the torchrun job exited with status 1" in after["error"]


# ---------------------------------------------------------------- 6. SIGTERM and SIGINT

@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_6_a_signal_to_compare_stops_its_arm_records_interrupted_and_resumes(tmp_path, signum, status):
    out = tmp_path / "cmp"
    process = start(*SLOW_COMPARE, "--budget", "320", "--out", str(out))
    try:
        wait_for_steps(out / GRPO / "steps.jsonl", 2, process)
        arm = arm_process(process, out / GRPO)
        process.send_signal(signum)  # SIGTERM: docker stop, timeout, CI; SIGINT: Ctrl-C
        process.wait(timeout=120)
        assert not arm.is_running() or arm.status() == psutil.STATUS_ZOMBIE, "the arm trains on, orphaned"
        _, err = process.communicate(timeout=120)
    finally:
        stop(process)
    assert process.returncode == status, err
    assert f"stopped by {signal.Signals(signum).name}" in err and f"harness compare --resume {out}" in err
    grpo = summary(out / GRPO)
    last = rows(out / GRPO / "steps.jsonl")[-1]["step"]
    assert grpo["status"] == "interrupted" and grpo["steps"] == last
    assert grpo["error"] == f"interrupted by {signal.Signals(signum).name} after step {last}"
    assert not (out / PPO / "summary.json").exists()  # the comparison stopped: the next arm never started
    assert not leftovers(out)  # a checkpoint cut short by the signal included
    resumed = harness("compare", "--resume", str(out), "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in rows(out / GRPO / "steps.jsonl")] == list(range(1, 11))


@pytest.mark.slow
def test_6_sigterm_to_a_lone_run_records_interrupted_and_exits_143(tmp_path):
    out = tmp_path / "run"
    process = start("run", "--algo", "ppo", "--preset", "smoke", "--budget", "320", "--set", "run.lm_eval=false",
                    "--out", str(out))
    try:
        wait_for_steps(out / "steps.jsonl", 2, process)
        process.terminate()
        _, err = process.communicate(timeout=120)
    finally:
        stop(process)
    assert process.returncode == 143 and f"harness run --run-dir {out} --resume" in err, err
    assert summary(out)["status"] == "interrupted" and summary(out)["steps"] == rows(out / "steps.jsonl")[-1]["step"]


def test_6_a_stop_that_torch_turned_into_another_error_is_still_an_interruption(tmp_path, monkeypatch):
    # A signal handler raising inside a C++ callback (a dispatch mode, an autograd hook) comes out as
    # torch's RuntimeError, which the runner records as a failure: the arm still records `interrupted`.
    from harness import Interrupted
    from harness.commands import run
    from harness.config.load import load_config
    from harness.results.io import write_json
    from harness.results.records import Summary

    def runner_inside_torch(config, algo, run_dir, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except BaseException as err:
            wrapped = RuntimeError(f"in a dispatch mode: {err}")
        failed = {"algo": algo, "status": "failed", "error": f"failed at step 1: RuntimeError: {wrapped}"}
        write_json(run_dir / "summary.json", failed)
        return Summary.read(failed)
    monkeypatch.setattr(run, "run_arm", runner_inside_torch)
    config = load_config("smoke", overrides=["run.lm_eval=false"])
    with pytest.raises(Interrupted) as stop:
        run.run(config, "grpo", out=tmp_path / "run")
    assert stop.value.signum == signal.SIGTERM and stop.value.hint == f"harness run --run-dir {tmp_path / 'run'} --resume"
    record = summary(tmp_path / "run")
    assert record["status"] == "interrupted" and record["error"] == "interrupted by SIGTERM after step 0"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


# ---------------------------------------------------------------- 26.3 a killed rank still ends in a verdict

def rank_process(parent: subprocess.Popen, arm_dir: Path, rank: int) -> psutil.Process:
    """The rank `rank` process of the torchrun job an arm of `parent` runs."""
    deadline = time.time() + 120
    while time.time() < deadline:
        for child in psutil.Process(parent.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if str(arm_dir) in " ".join(child.cmdline()) and child.environ().get("RANK") == str(rank):
                    return child
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} for {arm_dir}")


@pytest.mark.slow
def test_26_3_a_killed_rank_ends_in_a_printed_verdict_and_a_report(tmp_path):
    out = tmp_path / "cmp"
    process = start("compare", "--algos", "grpo,ppo", "--preset", "smoke", "--set", "run.lm_eval=false",
                    "--nproc-per-node", "2", "--budget", "192", "--out", str(out))
    try:
        wait_for_steps(out / GRPO / "steps.jsonl", 2, process, timeout=600)
        rank_one = rank_process(process, out / GRPO, 1)
        agent = rank_one.parent()  # torchrun's agent, held still so that rank 0 meets the dead peer in gloo
        agent.suspend()            # first: its error names gloo's source file in brackets, '[/...pair.cc:NNN]'
        try:
            rank_one.kill()
            deadline = time.time() + 180
            while time.time() < deadline and summary(out / GRPO).get("status") == "running":
                time.sleep(0.2)
        finally:
            agent.resume()
        stdout, stderr = process.communicate(timeout=1200)
    finally:
        stop(process)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr and "MarkupError" not in stderr, stderr
    grpo = summary(out / GRPO)
    assert grpo["status"] == "failed" and "rank 1 of 2 died with exit code -9" in grpo["error"]
    assert "(rank 0 saw: failed at step" in grpo["error"], grpo["error"]  # gloo's own words, markup to rich
    assert "Verdict:" in stdout and f"report: {out / 'report.html'}" in stdout
    assert summary(out / PPO)["status"] == "ok" and (out / "report.html").exists()
