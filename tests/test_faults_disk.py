"""The fault matrix (see fault_helpers.py): unwritable and full disks, files written whole, their modes."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from conftest import harness
from fault_helpers import (assert_one_line, leftovers, run_main, summary)


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
