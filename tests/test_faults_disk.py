"""The fault matrix (see fault_helpers.py): unwritable and full disks, files written whole, their modes."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import harness
from fault_helpers import GRPO, PPO, assert_one_line, leftovers, planned_comparison, run_main, summary


# ---------------------------------------------------------------- 8. I/O faults and damaged files

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


# ---------------------------------------------------------------- 26 lower: a full disk, recorded and named

def fails_for(names: tuple[str, ...]):
    """os.fsync that reports a full disk for files whose name holds one of `names` (it names no file, as write() does)."""
    real = os.fsync

    def fsync(fd):
        if any(name in os.readlink(f"/proc/self/fd/{fd}") for name in names):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    return fsync


def test_26_lower_a_full_disk_early_in_an_arm_is_recorded_naming_the_file(tmp_path, monkeypatch):
    from harness.config.load import load_config
    from harness.results.io import append_jsonl
    from harness.train import runner
    run_dir = tmp_path / "run"

    class Unbuilt:  # the arm: nothing to build, its training below
        def __init__(self, *args):
            pass

    def writes_a_step(arm, log, resume, probes_enabled):
        append_jsonl(run_dir / "steps.jsonl", {"step": 1, "completions": 32, "tokens": 96})
    monkeypatch.setattr(runner, "arm_class", lambda algo: Unbuilt)
    monkeypatch.setattr(runner, "train_arm", writes_a_step)
    monkeypatch.setattr(os, "fsync", fails_for(("steps.jsonl", "error.txt")))
    record = runner.run_arm(load_config("smoke", overrides=["run.lm_eval=false"]), "grpo", run_dir)
    assert record.status == "failed"
    # the row reached the file, its flush to the disk did not: step 2 is the one that would have run next
    assert record.error == (f"failed at step 2: OSError: [Errno 28] No space left on device: "
                               f"'{run_dir / 'steps.jsonl'}'")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"  # not left at running


def test_26_lower_an_arm_whose_outcome_cannot_be_recorded_does_not_stop_the_next(tmp_path, monkeypatch, capsys):
    from harness.commands import compare
    out = planned_comparison(tmp_path / "cmp", monkeypatch)
    started = tmp_path / "started"
    monkeypatch.setattr(compare, "arm_command", lambda arm_dir, resume: [
        sys.executable, "-c", f"open({str(started)!r}, 'a').write({arm_dir.name!r} + '\\n')"])
    real, calls = compare.record_outcome, []

    def full_once(arm_dir, *args):
        calls.append(arm_dir)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(arm_dir / "summary.json"))
        return real(arm_dir, *args)
    monkeypatch.setattr(compare, "record_outcome", full_once)
    code, _, err = run_main(capsys, "compare", "--resume", out, "--no-report")
    assert code == 1, err
    assert started.read_text().split() == [GRPO, PPO]  # the next arm ran
    assert (f"warning: arm grpo s0 ended with status 0 and its outcome could not be recorded: "
            f"{out / GRPO / 'summary.json'}: No space left on device") in err


def test_26_lower_a_checkpoint_cut_short_by_a_full_disk_names_the_disk_not_torch(small_disk):
    from harness.results.io import atomic_write_with
    disk = small_disk("256k")
    path = disk / "checkpoint" / "state.pt"
    with pytest.raises(OSError) as failure:
        atomic_write_with(path, lambda handle: torch.save({"weights": torch.zeros(1 << 18)}, handle))  # 1 MiB
    assert failure.value.errno == errno.ENOSPC and failure.value.filename == str(path)
    assert not leftovers(disk)


# ---------------------------------------------------------------- 26 lower: every result file takes the umask

def test_26_lower_the_steps_table_and_a_saved_models_files_take_the_umask(tmp_path):
    from harness.results.exports import write_steps_table
    from harness.results.io import atomic_folder
    previous = os.umask(0o022)
    try:
        (tmp_path / GRPO).mkdir()
        (tmp_path / GRPO / "steps.jsonl").write_text('{"step": 1}\n')
        table = write_steps_table(tmp_path, [{"dir": GRPO, "algo": "grpo", "seed": 0}])
        with atomic_folder(tmp_path / "final_model") as staging:
            fd = os.open(staging / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors creates it
            os.close(fd)
    finally:
        os.umask(previous)
    assert table.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "final_model" / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_26_lower_a_finished_arms_model_takes_the_umask(smoke_comparison):
    from harness.results.io import new_file_mode
    out = smoke_comparison[0]
    expected = new_file_mode()  # 0o666 less the umask the session's comparison ran under (pytest's, inherited)
    for path in [out / "steps.parquet", *(out / GRPO / "final_model").iterdir()]:
        assert path.stat().st_mode & 0o777 == expected, path
