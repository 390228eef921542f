"""The fault matrix (issue 17): a user's bad day, one row per fault.

Each row gives the bad value or the fault, the one line and exit status expected, and checks that
nothing was half-written or lost. Sections follow the issue's numbered items (3 and 5, divergence and
checkpoint loading, are tested with the runner). Every bug found later gets a row here.

Kill and signal rows run real `harness` processes on the smoke preset and are marked slow, and so are
the rows on a copy of the session's finished smoke comparison (`finished`, `smoke_baseline`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from conftest import harness, wait_for_steps
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


@pytest.fixture
def finished(smoke_comparison, tmp_path) -> Path:
    """A private copy of the session's finished smoke comparison (models and checkpoints left out)."""
    out = tmp_path / "finished"
    shutil.copytree(smoke_comparison[0], out, ignore=shutil.ignore_patterns("final_model", "lm_eval"))
    return out


@pytest.fixture(scope="session")
def smoke_baseline(smoke_comparison, tmp_path_factory) -> Path:
    """A baseline written from the session's smoke comparison: the gate rows compare like with like."""
    path = tmp_path_factory.mktemp("faults-baseline") / "smoke.json"
    assert main(["baseline", str(smoke_comparison[0]), "--out", str(path)]) == 0
    return path


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


# ---------------------------------------------------------------- 1. one writer per folder

@pytest.mark.slow
def test_1_a_second_writer_and_every_reader_are_refused_while_a_comparison_runs(tmp_path):
    out = tmp_path / "cmp"
    writer = start(*SLOW_COMPARE, "--budget", "6400", "--out", str(out))  # 200 steps: it runs while we try
    try:
        wait_for_steps(out / GRPO / "steps.jsonl", 1, writer)
        arm = arm_process(writer, out / GRPO)
        for args, holder in [(("compare", "--resume", out), writer.pid),
                             (("compare", "--out", out, "--preset", "smoke"), writer.pid),
                             (("run", "--run-dir", out / GRPO, "--resume"), arm.pid)]:
            result = run_cli(*args)
            assert_one_line(result.returncode, result.stderr, f"is in use: process {holder} (harness ")
            assert "--resume" not in result.stderr.split("is in use")[1]  # never point at the running folder
        for args in [("check", out, "--baseline", BASELINE), ("baseline", out, "--out", tmp_path / "b.json"),
                     ("report", out, "--out", tmp_path / "reports"), ("check", out / GRPO, "--baseline", BASELINE)]:
            result = run_cli(*args)
            assert_one_line(result.returncode, result.stderr, "is still being written by process")
        assert writer.poll() is None, "the comparison ended before every reader was tried"
        assert not (tmp_path / "b.json").exists() and not (tmp_path / "reports").exists()
    finally:
        stop(writer)
    steps = [r["step"] for r in rows(out / GRPO / "steps.jsonl")]
    assert steps == sorted(set(steps)), "two writers interleaved their steps"


@pytest.mark.slow
def test_1_readers_refuse_a_folder_whose_lock_is_held(finished, smoke_baseline, tmp_path, capsys):
    from harness.results.io import FolderLock
    with FolderLock(finished / PPO, "harness run --run-dir X"):
        for args in [("check", finished, "--baseline", BASELINE), ("baseline", finished, "--out", tmp_path / "b.json"),
                     ("report", finished, "--out", tmp_path / "r", "--no-pdf")]:
            code, _, err = run_main(capsys, *args)
            assert_one_line(code, err, f"{finished / PPO} is still being written by process {os.getpid()} "
                                       f"(harness run --run-dir X, since ")
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "r").exists()
    assert run_main(capsys, "check", finished, "--baseline", smoke_baseline)[0] == 0  # released with its holder


@pytest.mark.slow
def test_1_a_new_run_never_overwrites_a_finished_one(finished, capsys):
    before = snapshot(finished)
    code, _, err = run_main(capsys, "run", "--algo", "grpo", "--preset", "smoke", "--out", finished / GRPO)
    assert_one_line(code, err, f"{finished / GRPO} already holds a run; continue it with 'harness run --run-dir "
                               f"{finished / GRPO} --resume', or choose another --out")
    assert snapshot(finished) == before


@pytest.mark.slow
def test_1_eval_does_not_write_into_a_run_folder_being_trained(smoke_comparison, capsys):
    from harness.results.io import FolderLock
    arm = smoke_comparison[0] / GRPO
    with FolderLock(arm, "harness run --run-dir X"):
        code, _, err = run_main(capsys, "eval", arm, "--k", 0, "--limit", 2)
    assert_one_line(code, err, f"{arm} is in use: process {os.getpid()} (harness run --run-dir X, since ")


def test_1_folder_lock_is_exclusive_and_released_when_its_holder_ends(tmp_path):
    from harness import UserError
    from harness.results.io import FolderLock, folder_writer
    with FolderLock(tmp_path, "first"):
        with pytest.raises(UserError, match=f"is in use: process {os.getpid()} \\(first, since "):
            FolderLock(tmp_path, "second").__enter__()
        assert folder_writer(tmp_path).startswith(f"process {os.getpid()}")
    assert folder_writer(tmp_path) is None
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from harness.results.io import FolderLock; "
                               f"FolderLock({str(tmp_path)!r}, 'child').__enter__(); print(1, flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        assert folder_writer(tmp_path).startswith(f"process {holder.pid} (child")
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock, nothing is stale
        holder.wait()
    assert folder_writer(tmp_path) is None


def test_1_two_comparisons_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    from harness.commands import compare
    from harness.config.load import load_config
    monkeypatch.setattr(compare, "timestamp", lambda: "20261125-120000")
    monkeypatch.setattr(compare, "run_arms", lambda *args, **kwargs: 0)  # the arms are not what is tested
    config = load_config("smoke", overrides=[f"run.results_dir={tmp_path}"])
    compare.compare(config, ["grpo", "ppo"], [0])
    compare.compare(config, ["grpo", "ppo"], [0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare__chain_sum__20261125-120000",
                                                          "compare__chain_sum__20261125-120000-2"]


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


# ---------------------------------------------------------------- 4. the memory gate

@pytest.mark.slow
def test_4_a_summary_without_its_memory_figures_is_an_error_not_an_improvement(finished, smoke_baseline, capsys):
    data = summary(finished / PPO)
    del data["mem"]
    (finished / PPO / "summary.json").write_text(json.dumps(data))
    code, out, err = run_main(capsys, "check", finished, "--baseline", smoke_baseline)
    assert_one_line(code, err, f"{finished / PPO / 'summary.json'} has no measured: step peak of live tensors")
    assert "gated figures are missing; the run lost its memory data" in err and "improved" not in out


@pytest.mark.slow
def test_4_a_phase_that_lost_its_figure_is_an_error(finished, smoke_baseline, capsys):
    data = summary(finished / PPO)
    data["mem"]["live"]["phases"]["policy_update"].pop("total")
    (finished / PPO / "summary.json").write_text(json.dumps(data))
    code, _, err = run_main(capsys, "check", finished, "--baseline", smoke_baseline)
    assert_one_line(code, err, "has no live tensors: policy_update for ppo s0: a gated figure is missing")


@pytest.mark.slow
def test_4_a_phase_dropped_under_the_baselines_own_config_is_an_error(finished, smoke_baseline, capsys):
    data = summary(finished / PPO)
    del data["mem"]["live"]["phases"]["critic_update"]
    (finished / PPO / "summary.json").write_text(json.dumps(data))
    code, out, err = run_main(capsys, "check", finished, "--baseline", smoke_baseline)
    assert_one_line(code, err, "has no live tensors: critic_update for ppo s0, which the baseline measured with "
                               "the same config: the run lost memory data")


@pytest.mark.slow
def test_4_baseline_refuses_a_run_without_memory_figures(finished, smoke_baseline, tmp_path, capsys):
    data = summary(finished / GRPO)
    del data["mem"]["live"]
    (finished / GRPO / "summary.json").write_text(json.dumps(data))
    code, _, err = run_main(capsys, "baseline", finished, "--out", tmp_path / "b.json")
    assert_one_line(code, err, "has no measured: step peak of live tensors (max over phases) for grpo s0")
    assert "a baseline without it would gate nothing" in err and not (tmp_path / "b.json").exists()


@pytest.mark.slow
def test_4_a_baseline_that_lost_a_gated_figure_is_an_error(finished, smoke_baseline, tmp_path, capsys):
    data = json.loads(smoke_baseline.read_text())
    data["arms"][1]["mem"]["arithmetic"].pop("model_state_total")
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    code, _, err = run_main(capsys, "check", finished, "--baseline", edited)
    assert_one_line(code, err, f"baseline {edited} has no arithmetic: model state (params + grads + optimizer) "
                               f"for ppo s0")


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

    def runner_inside_torch(config, algo, run_dir, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except BaseException as err:
            wrapped = RuntimeError(f"in a dispatch mode: {err}")
        failed = {"algo": algo, "status": "failed", "error": f"failed at step 1: RuntimeError: {wrapped}"}
        write_json(run_dir / "summary.json", failed)
        return failed
    monkeypatch.setattr(run, "run_arm", runner_inside_torch)
    config = load_config("smoke", overrides=["run.lm_eval=false"])
    with pytest.raises(Interrupted) as stop:
        run.run(config, "grpo", out=tmp_path / "run")
    assert stop.value.signum == signal.SIGTERM and stop.value.hint == f"harness run --run-dir {tmp_path / 'run'} --resume"
    record = summary(tmp_path / "run")
    assert record["status"] == "interrupted" and record["error"] == "interrupted by SIGTERM after step 0"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


# ---------------------------------------------------------------- 7. values that got past validation

BAD_VALUES = [
    ("optim.lr=-1", "optim.lr: must be above 0, got -1.0"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),
    ("rollout.temperature=0", "rollout.temperature: must be above 0, got 0.0"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens: must be at least 1, got 0"),
    ("optim.epochs=0", "optim.epochs: must be at least 1, got 0"),
    ("optim.minibatches=0", "optim.minibatches: must be at least 1, got 0"),
    ("task.eval_size=0", "task.eval_size: must be at least 1, got 0"),
    ("optim.max_grad_norm=-1", "optim.max_grad_norm: must be above 0, got -1.0"),
    ("rollout.top_p=0", "rollout.top_p: must be above 0, got 0.0"),
    ("rollout.top_p=1.5", "rollout.top_p: must be at most 1, got 1.5"),
    ("budget.total=true", "budget.total: must be an integer, got True"),
    ("run.lm_eval=maybe", "run.lm_eval: must be true or false, got 'maybe'"),
    ("run.lm_eval=1", "run.lm_eval: must be true or false, got 1"),
    ("run.eval_every=3.5", "run.eval_every: must be an integer, got 3.5"),
    ("run.seed=5000", "run.seed: must be at most 4293, got 5000"),
    ("run.seed=-1", "run.seed: must be at least 0, got -1"),
    ("model.hidden_size=30", "model.hidden_size=30 must split into model.num_heads=2 heads of an even width"),
    ("algorithms.a2c.lr=1", "unknown section 'algorithms.a2c'; valid: algorithms.dapo, algorithms.dr_grpo, "),
    ("algorithms.grpo.beta=-0.1", "algorithms.grpo.beta: must be at least 0, got -0.1"),
    ("algorithms.grpo.beta=nan", "algorithms.grpo.beta: must be a finite number, got nan"),
    ("algorithms.ppo.clip_eps=1.5", "algorithms.ppo.clip_eps: must be at most 1, got 1.5"),
    ("algorithms.ppo.gamma=2", "algorithms.ppo.gamma: must be at most 1, got 2.0"),
    ("algorithms.ppo.critic_warmup_steps=3.5", "algorithms.ppo.critic_warmup_steps: must be an integer, got 3.5"),
    ("algorithms.grpo.scale=std", "algorithms.grpo.scale: 'std' is not one of: group, batch, none"),
    ("algorithms.grpo.betta=0.1", "unknown config field 'algorithms.grpo.betta'; valid: aggregation, beta, eps_high,"),
    ("optim.micro_batch_size=-1", "optim.micro_batch_size: must be at least 0, got -1"),
    ("rollout.logprob_batch_size=-8", "rollout.logprob_batch_size: must be at least 0, got -8"),
    ("verdict.band=0.6", "verdict.band must lie below verdict.claim (the band is a half-width around the claim), "
                         "got 0.5 ± 0.6"),
    ("run.node_rank=1", "run.node_rank=1 must be below run.nnodes=1"),
    ("task.options.max_digitz=3", "unknown option 'task.options.max_digitz' of task chain_sum; valid: allow_negation,"),
    ("task.options.max_digits=two", "task.options.max_digits expects int, got 'two'"),
    ("task.options.max_digits=0", "task.options of chain_sum: max_digits must be >= min_digits"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_7_a_bad_value_is_one_line_before_any_folder(tmp_path, capsys, override, message):
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", "--results-dir", tmp_path / "results",
                            "--set", override)
    assert_one_line(code, err, message)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("text, message", [
    ("budget:\n  total: true\n", "budget.total: must be an integer, got True"),
    ("run:\n  lm_eval: maybe\n", "run.lm_eval: must be true or false, got 'maybe'"),
    ("algorithms:\n  grpo: 0.1\n", "algorithms.grpo: must be a mapping, got 0.1"),
    ("rollout: 3\n", "rollout: must be a mapping of fields, got 3"),
    ("rollout:\n  colour: red\n", "unknown config field 'rollout.colour'; valid: backend, batch_size,"),
    ("algorithms:\n  grpo:\n    eps_low: 0\n", "algorithms.grpo.eps_low: must be above 0, got 0.0"),
])
def test_7_a_bad_value_in_a_config_file(tmp_path, capsys, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code, _, err = run_main(capsys, "run", "--algo", "grpo", "--preset", "smoke", "--config", path,
                            "--out", tmp_path / "run")
    assert_one_line(code, err, message)
    assert not (tmp_path / "run").exists()


def test_7_a_seed_past_the_limit_from_the_seed_flags(tmp_path, capsys):
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", "--seed", 4290, "--seeds", 5,
                            "--out", tmp_path / "cmp")
    assert_one_line(code, err, "the seed must be in [0, 4293], got 4294")
    assert not (tmp_path / "cmp").exists()


@pytest.mark.slow
def test_7_a_batch_too_big_for_this_machine_is_refused_before_it_starts(tmp_path):
    # 2**30 completions of the smoke model: its KV cache alone is hundreds of GiB. Before the check this
    # ran until the machine ran out of memory; the address-space limit keeps a regression from doing so.
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))
    result = subprocess.run([sys.executable, "-m", "harness", "run", "--algo", "grpo", "--preset", "smoke",
                             "--set", "rollout.batch_size=1073741824", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert_one_line(result.returncode, result.stderr, "this run needs at least ")
    assert "GiB available; lower rollout.batch_size, rollout.max_new_tokens or rollout.logprob_batch_size" in result.stderr
    assert not (tmp_path / "run").exists()


def test_7_every_numeric_field_declares_its_bounds():
    """Every number of the config and of every algorithm's options has bounds on its field (a new one is refused
    here until it says its range), and `harness config` shows them."""
    from harness.config.reference import field_rows
    numeric = [row for row in field_rows() if row.type in ("int", "float")]
    assert len(numeric) >= 80 and {row.section for row in numeric} >= {"run", "verdict", "algorithms.ppo"}
    assert [row.dotted for row in numeric if not row.bounds] == []


# ---------------------------------------------------------------- 8. I/O faults and damaged files

@pytest.fixture
def small_disk(tmp_path):
    """A filesystem of its own (tmpfs, for root) that a test can fill or make read-only."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def make(size: str, read_only: bool = False) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
        if done.returncode:
            pytest.skip("needs a tmpfs mount (root)")
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        return mount
    yield make
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path, small_disk):
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    else:
        yield small_disk("1m", read_only=True)


def test_8_a_read_only_output_folder(read_only_dir, capsys):
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", "--out", read_only_dir / "cmp")
    assert_one_line(code, err, f"comparison folder {read_only_dir / 'cmp'} is not writable")


def test_8_an_output_path_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = run_main(capsys, "run", "--algo", "grpo", "--preset", "smoke", "--out", tmp_path / "file" / "run")
    assert_one_line(code, err, f"run folder {tmp_path / 'file' / 'run'} cannot be created: {tmp_path / 'file'} is a file")


def test_8_an_unwritable_model_cache_is_refused_before_any_folder(read_only_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(read_only_dir / "cache"))
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", "--results-dir", tmp_path / "results")
    assert_one_line(code, err, f"the model cache ($HARNESS_CACHE) {read_only_dir / 'cache'} is not writable")
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_8_a_full_disk_leaves_no_partial_file_and_no_summary_stuck_at_running(small_disk):
    disk = small_disk("192k")  # room for the run's records, not for its first checkpoint
    result = harness("run", "--algo", "ppo", "--preset", "smoke", "--set", "run.lm_eval=false",
                     "--out", str(disk / "run"))
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr
    record = summary(disk / "run")
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert not leftovers(disk), leftovers(disk)


def test_8_atomic_writes_leave_the_old_file_and_name_the_new_one_when_the_disk_fills(tmp_path, monkeypatch):
    from harness.results.io import atomic_write_text, write_json
    path = tmp_path / "summary.json"
    write_json(path, {"status": "running"})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as failure:
        atomic_write_text(path, "x" * 100_000)
    assert failure.value.filename == str(path)  # a failed write() names no file; the one line must
    assert json.loads(path.read_text()) == {"status": "running"} and not leftovers(tmp_path)


@pytest.mark.slow
def test_8_a_write_failure_is_one_line_not_a_traceback(finished, tmp_path, capsys, monkeypatch):
    import harness.results.io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "b.json"))
    monkeypatch.setattr(harness.results.io, "atomic_write_text", full)
    code, _, err = run_main(capsys, "baseline", finished, "--out", tmp_path / "b.json")
    assert_one_line(code, err, f"{tmp_path / 'b.json'}: No space left on device")


@pytest.mark.parametrize("content, message", [
    (b"rollout:\n  batch_size: \xff\xfe\n", "is not UTF-8 text (byte 23): save it as UTF-8"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "is nested too deeply to be a config"),
])
def test_8_a_config_file_that_is_not_a_config(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    code, _, err = run_main(capsys, "run", "--algo", "grpo", "--preset", "smoke", "--config", path)
    assert_one_line(code, err, f"{path} {message}")


DAMAGED = [b"{\"status\": \"ok\", \"mem\": {", b"\xff\xfe not text", b"[1, 2, 3]"]
DAMAGED_FILES = ["comparison.json", f"{GRPO}/summary.json", f"{PPO}/env.json"]


# --resume does not read env.json: each arm writes it anew
DAMAGED_READS = [(command, name) for command in ("check", "baseline", "report", "resume") for name in DAMAGED_FILES
                 if not (command == "resume" and name.endswith("env.json"))]


@pytest.mark.slow
@pytest.mark.parametrize("command, name", DAMAGED_READS)
def test_8_a_damaged_result_file_is_named_in_one_line(finished, tmp_path, capsys, command, name):
    for content in DAMAGED:
        (finished / name).write_bytes(content)
        before = snapshot(finished)
        args = {"check": ("check", finished, "--baseline", BASELINE),
                "baseline": ("baseline", finished, "--out", tmp_path / "b.json"),
                "report": ("report", finished, "--out", tmp_path / "r", "--no-pdf"),
                "resume": ("compare", "--resume", finished, "--no-report")}[command]
        code, _, err = run_main(capsys, *args)
        assert_one_line(code, err, f"{finished / name} is damaged: ")
        assert snapshot(finished) == before
        assert not (tmp_path / "b.json").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("arms"), "is damaged: it has no 'arms'"),
    (lambda d: d.update(arms={"grpo": 1}), "is damaged: 'arms' is a dict, not a list"),
    (lambda d: d["arms"][0].pop("mem"), "is damaged: an arm lacks its algo, seed or mem"),
    (lambda d: d.update(config="smoke"), "is damaged: 'config' is a str, not a dict"),
])
def test_8_a_malformed_baseline(finished, tmp_path, capsys, edit, message):
    data = json.loads(BASELINE.read_text())
    edit(data)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    code, _, err = run_main(capsys, "check", finished, "--baseline", path)
    assert_one_line(code, err, message)
    assert str(path) in err


@pytest.mark.slow
def test_8_a_run_folder_whose_config_was_edited_to_a_bad_value(finished, capsys):
    path = finished / GRPO / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["optim"]["lr"] = -1.0
    path.write_text(yaml.safe_dump(config))
    before = snapshot(finished)
    code, _, err = run_main(capsys, "run", "--run-dir", finished / GRPO, "--resume")
    assert_one_line(code, err, f"{path}: optim.lr: must be above 0, got -1.0")
    assert snapshot(finished) == before


# ---------------------------------------------------------------- 9. every output file written whole

@pytest.mark.slow
def test_9_a_kill_mid_pdf_leaves_the_previous_report(finished, tmp_path, monkeypatch):
    import weasyprint

    from harness.report import build_report
    html, pdf = build_report(finished, tmp_path)
    assert pdf is not None
    good = pdf.read_bytes()

    def killed_midway(self, target=None, **kwargs):
        part = b"%PDF-1.7 half a page"
        target.write(part) if hasattr(target, "write") else Path(target).write_bytes(part)
        raise KeyboardInterrupt  # the user's Ctrl-C, half-way through the PDF
    monkeypatch.setattr(weasyprint.HTML, "write_pdf", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        build_report(finished, tmp_path)
    assert pdf.read_bytes() == good and not leftovers(tmp_path)


def test_9_a_model_folder_is_staged_and_renamed(tmp_path):
    from harness.results.io import atomic_folder
    folder = tmp_path / "final_model"
    with atomic_folder(folder) as staging:
        (staging / "config.json").write_text("{}")
        assert not folder.exists()  # nothing visible until it is whole
    assert (folder / "config.json").read_text() == "{}"
    with pytest.raises(RuntimeError), atomic_folder(folder) as staging:
        (staging / "config.json").write_text('{"half": ')
        raise RuntimeError("killed while saving")
    assert (folder / "config.json").read_text() == "{}" and not leftovers(tmp_path)
    with atomic_folder(folder) as staging:
        (staging / "model.safetensors").write_bytes(b"new")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"] and not leftovers(tmp_path)


@pytest.mark.parametrize("umask, mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_9_result_files_take_the_umask(tmp_path, umask, mode, folder_mode):
    from harness.results.io import atomic_folder, atomic_write_bytes, write_json
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "summary.json", {})
        atomic_write_bytes(tmp_path / "state.pt", b"")
        with atomic_folder(tmp_path / "model"):
            pass
    finally:
        os.umask(previous)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "state.pt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "model").stat().st_mode & 0o777 == folder_mode


# ---------------------------------------------------------------- 10. the lower items

@pytest.mark.slow
def test_10_a_bad_line_in_steps_is_skipped_counted_and_said(finished, tmp_path, capsys):
    from harness.results.io import read_jsonl
    steps = finished / GRPO / "steps.jsonl"
    lines = steps.read_text().splitlines()
    steps.write_text("\n".join([lines[0], '{"step": 2, "reward/me', *lines[2:]]) + "\n")
    assert [r["step"] for r in read_jsonl(steps)] == [1, 3]  # step 3 is not lost with step 2
    bad: list[int] = []
    read_jsonl(steps, bad)
    assert bad == [2]
    code, _, err = run_main(capsys, "report", finished, "--out", tmp_path, "--no-pdf")
    assert code == 0 and f"{steps}: 1 unreadable line skipped (2)" in err
    assert "1 unreadable line skipped (2)" in (tmp_path / "finished.html").read_text()


@pytest.mark.slow
def test_10_resume_keeps_the_steps_after_a_bad_line(tmp_path):
    out = tmp_path / "run"
    harness("run", "--algo", "grpo", "--preset", "smoke", "--budget", "160", "--set", "run.lm_eval=false",
            "--set", "run.checkpoint_every=4", "--out", str(out), check=True)
    steps = out / "steps.jsonl"
    lines = steps.read_text().splitlines()
    steps.write_text("\n".join([lines[0], "garbage", *lines[2:]]) + "\n")
    result = harness("run", "--run-dir", str(out), "--resume")
    assert result.returncode == 0 and f"warning: {steps}: 1 unreadable line skipped (2)" in result.stderr
    assert [r["step"] for r in rows(steps)] == [1, 3, 4, 5]  # rows after the bad line kept, 5 trained again


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("--set", "optim.lr=1"), "drop --set"),
    (("--preset", "tiny"), "drop --preset"),
    (("--algos", "grpo", "--seeds", "2"), "drop --algos, --seeds"),
    (("--out", "elsewhere"), "drop --out"),
])
def test_10_resume_refuses_flags_it_would_ignore(finished, capsys, args, message):
    before = snapshot(finished)
    code, _, err = run_main(capsys, "compare", "--resume", finished, *args)
    assert_one_line(code, err, f"--resume continues {finished} with the config, algorithms and seeds it was started with; "
                               f"{message}")
    assert snapshot(finished) == before


@pytest.mark.slow
def test_10_run_dir_refuses_flags_it_would_ignore(finished, capsys):
    before = snapshot(finished)
    code, _, err = run_main(capsys, "run", "--run-dir", finished / GRPO, "--resume", "--set", "optim.lr=1")
    assert_one_line(code, err, f"--run-dir trains {finished / GRPO} with the config saved in it; drop --set")
    code, _, err = run_main(capsys, "run", "--resume")
    assert_one_line(code, err, "--resume needs --run-dir")
    assert snapshot(finished) == before


@pytest.mark.slow
def test_10_an_arm_that_dies_keeps_its_output_and_its_last_error_line(tmp_path):
    # a model folder whose config.json passes every check before the run, but with no weights to load
    from transformers import Qwen2Config
    model = tmp_path / "no-weights"
    Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=128, vocab_size=16).save_pretrained(model)
    out = tmp_path / "cmp"
    result = harness(*SLOW_COMPARE, "--model", str(model), "--out", str(out))
    assert result.returncode == 1, result.stderr
    for arm in (GRPO, PPO):
        record = summary(out / arm)
        assert record["status"] == "failed"
        assert record["error"].startswith(f"arm process exited with status 2: harness: error: cannot load model "
                                          f"'{model}': Error no file named model.safetensors")
        assert f"cannot load model '{model}'" in (out / arm / "arm.log").read_text()


@pytest.mark.slow
def test_10_eval_of_a_comparison_folder_names_an_arm_folder(smoke_comparison, capsys):
    out = smoke_comparison[0]
    code, _, err = run_main(capsys, "eval", out)
    assert_one_line(code, err, f"{out} is a comparison folder; pass one of its arm folders (e.g. harness eval {out / GRPO})")


# ---------------------------------------------------------------- 3. divergence and NaN

@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_3_a_non_finite_figure_stops_the_arm_as_diverged_and_keeps_its_steps(tmp_path, algo):
    # lr = 10 on the smoke model: the first update sends the log-probs to NaN (PPO's KL, GRPO's loss)
    result = harness("run", "--algo", algo, "--preset", "smoke", "--set", "optim.lr=10", "--set", "run.lm_eval=false",
                     "--out", str(tmp_path / algo))
    assert result.returncode == 1, result.stderr
    recorded = summary(tmp_path / algo)
    assert recorded["status"] == "diverged"
    assert re.fullmatch(r"diverged at step \d+: \S+ is (nan|inf)", recorded["error"]), recorded["error"]
    steps = rows(tmp_path / algo / "steps.jsonl")
    assert steps and steps[-1]["diverged"] == recorded["error"].split(": ", 1)[1]  # the step that diverged is kept


# ---------------------------------------------------------------- 5. checkpoints load weights only

class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_5_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "run", "--algo", "grpo", "--preset", "smoke", "--set", "run.lm_eval=false",
                            "--set", "run.checkpoint_every=1", "--out", run_dir)
    assert code == 0, err
    (run_dir / "summary.json").unlink()  # as if killed mid-run
    crafted = _RunsCode()
    crafted.marker = tmp_path / "code-ran"
    torch.save({"format": 1, "payload": crafted}, run_dir / "checkpoint" / "state.pt")
    code, _, err = run_main(capsys, "run", "--run-dir", run_dir, "--resume")
    assert_one_line(code, err, "cannot be loaded safely (weights only): Trying to load unsupported GLOBAL posix.system")
    assert not crafted.marker.exists()
