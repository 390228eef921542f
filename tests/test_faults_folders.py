"""The fault matrix (see fault_helpers.py): one writer per folder, links and folder names inside a results
folder, stale temporary files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import wait_for_steps
from fault_helpers import (BASELINE, GRPO, PPO, SLOW_COMPARE, arm_process, assert_one_line, rows,
                           run_cli, run_main, snapshot, start, stop)


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
