"""The fault matrix (see fault_helpers.py): one writer per folder, links and folder names inside a results
folder, stale temporary files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import wait_for_steps
from fault_helpers import (BASELINE, GRPO, PPO, SLOW_COMPARE, arm_process, assert_one_line, leftovers,
                           planned_comparison, rows, run_cli, run_main, snapshot, start, stop)


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


# ---------------------------------------------------------------- 26.2 no write goes through a link

def test_26_2_a_linked_lock_leaves_its_target_untouched(tmp_path, monkeypatch, capsys):
    out = planned_comparison(tmp_path / "cmp", monkeypatch)
    victim = tmp_path / "victim"
    victim.write_text("the victim's own bytes\n")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(victim)
    before = snapshot(out)
    code, _, err = run_main(capsys, "compare", "--resume", out, "--no-report")
    assert_one_line(code, err, f"{out / '.lock'} is a symbolic link (to {victim}): the harness never writes through a "
                               "link in a results folder; remove it")
    assert victim.read_text() == "the victim's own bytes\n" and snapshot(out) == before


def test_26_2_a_linked_arm_log_leaves_its_target_untouched(tmp_path, monkeypatch, capsys):
    out = planned_comparison(tmp_path / "cmp", monkeypatch)
    victim = tmp_path / "victim"
    victim.write_text("the victim's own bytes\n")
    (out / GRPO / "arm.log").symlink_to(victim)
    code, _, err = run_main(capsys, "compare", "--resume", out, "--no-report")
    assert_one_line(code, err, f"{out / GRPO / 'arm.log'} is a symbolic link (to {victim}): the harness never writes "
                               "through a link in a results folder; remove it")
    assert victim.read_text() == "the victim's own bytes\n"


def test_26_2_an_arm_folder_linked_outside_the_comparison_is_refused(tmp_path, monkeypatch, capsys):
    out = planned_comparison(tmp_path / "cmp", monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / GRPO, elsewhere)
    (out / GRPO).symlink_to(elsewhere)
    before = snapshot(elsewhere)
    code, _, err = run_main(capsys, "compare", "--resume", out, "--no-report")
    assert_one_line(code, err, f"{out / GRPO} is a symbolic link (to {elsewhere}): the harness never writes through a "
                               "link in a results folder; remove it")
    assert snapshot(elsewhere) == before


def test_26_2_error_txt_and_steps_are_never_written_through_a_link(tmp_path, monkeypatch):
    from harness import UserError
    from harness.config.load import load_config
    from harness.results.io import FolderLock, append_jsonl, atomic_write_text
    from harness.train import runner
    victim = tmp_path / "victim"
    victim.write_text("the victim's own bytes\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "error.txt").symlink_to(victim)
    (run_dir / "steps.jsonl").symlink_to(victim)

    def breaks(*args, **kwargs):
        raise RuntimeError("the arm broke")
    monkeypatch.setattr(runner, "arm_class", lambda algo: breaks)
    record = runner.run_arm(load_config("smoke", overrides=["run.lm_eval=false"]), "grpo", run_dir)
    assert record.status == "failed" and record.error == "failed at step 1: RuntimeError: the arm broke"
    assert "RuntimeError: the arm broke" in (run_dir / "error.txt").read_text()  # a file of its own now
    assert not (run_dir / "error.txt").is_symlink() and victim.read_text() == "the victim's own bytes\n"
    with pytest.raises(UserError, match="steps.jsonl is a symbolic link"):
        append_jsonl(run_dir / "steps.jsonl", {"step": 1})
    inside = run_dir / "inside"
    inside.symlink_to(tmp_path / "outside", target_is_directory=True)
    (tmp_path / "outside").mkdir()
    with FolderLock(run_dir, "test"), pytest.raises(UserError, match=f"{inside} leads to {tmp_path / 'outside'}, "
                                                                     f"outside the results folder {run_dir}"):
        atomic_write_text(inside / "summary.json", "{}")
    assert victim.read_text() == "the victim's own bytes\n" and not list((tmp_path / "outside").iterdir())


# ---------------------------------------------------------------- 26.4 folder names read from files

@pytest.mark.parametrize("name", ["../../../esc", "a" * 300, "x/y"])
def test_26_4_an_arm_name_in_comparison_json_that_leaves_the_folder_is_refused(tmp_path, monkeypatch, capsys, name):
    out = planned_comparison(tmp_path / "deep" / "cmp", monkeypatch)
    plan = json.loads((out / "comparison.json").read_text())
    plan["arm_specs"][0]["name"] = name
    (out / "comparison.json").write_text(json.dumps(plan))
    before = snapshot(tmp_path)
    code, _, err = run_main(capsys, "compare", "--resume", out, "--no-report")
    assert code == 2 and "arm name" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before  # nothing written, inside the folder or out of it


@pytest.mark.parametrize("command", ["check", "report"])
def test_26_4_an_arm_folder_name_that_leaves_the_folder_is_refused_by_readers(tmp_path, monkeypatch, capsys, command):
    out = planned_comparison(tmp_path / "cmp", monkeypatch)
    plan = json.loads((out / "comparison.json").read_text())
    plan["arms"][0]["dir"] = "../../etc"
    (out / "comparison.json").write_text(json.dumps(plan))
    args = {"check": ("check", out, "--baseline", BASELINE),
            "report": ("report", out, "--out", tmp_path / "r", "--no-pdf")}[command]
    code, _, err = run_main(capsys, *args)
    assert_one_line(code, err, f"{out / 'comparison.json'} is damaged: '../../etc' is not a folder name")


# ---------------------------------------------------------------- 26: stale temporaries removed on start

def test_26_lower_what_killed_writers_left_is_removed_when_a_comparison_resumes(tmp_path, monkeypatch, capsys):
    out = planned_comparison(tmp_path / "cmp", monkeypatch)
    stale = [out / ".summary.json.x1.tmp", out / GRPO / ".summary.json.x2.tmp",
             out / GRPO / "checkpoint" / ".state.pt.x3.tmp", out / PPO / ".final_model.tmp" / "model.safetensors",
             out / PPO / "checkpoint" / ".state.pt.dcp.tmp" / "__0_0.distcp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    assert run_main(capsys, "compare", "--resume", out, "--no-report")[0] == 1  # the arms here train nothing
    assert not leftovers(out), leftovers(out)
