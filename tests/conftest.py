"""Shared fixtures: an isolated model cache, offline Hugging Face, and one smoke comparison per session."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trackio keeps its store where $TRACKIO_DIR says (read when it is imported): never the user's own store
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="harness-tests-trackio-"))


def pytest_collection_modifyitems(config, items):
    """The smoke comparison takes most of a minute: a test that reads it belongs in the slow lane."""
    unmarked = [item.nodeid for item in items
                if "smoke_comparison" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError(f"mark @pytest.mark.slow (it runs the smoke comparison): {', '.join(unmarked)}")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Every test builds the smoke model into one session cache, never the user's."""
    if "HARNESS_CACHE" not in os.environ:
        os.environ["HARNESS_CACHE"] = str(tmp_path_factory.mktemp("harness-cache"))
    return Path(os.environ["HARNESS_CACHE"])


def harness(*args, cwd=None, check=False):
    """Run the console script as a user would; returns the CompletedProcess."""
    exe = Path(sys.executable).with_name("harness")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "harness"]
    result = subprocess.run(command + list(args), capture_output=True, text=True, cwd=cwd, env=os.environ.copy())
    if check and result.returncode != 0:
        raise AssertionError(f"harness {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def wait_for_steps(path: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll `path` (a steps.jsonl) until it holds `count` rows; fail loudly if the process exits first or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        if process.poll() is not None:
            stderr = process.communicate()[1] or ""
            raise AssertionError(f"exited {process.returncode} before step {count}:\n{stderr[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no step {count} in {path} after {timeout} s")


@pytest.fixture(scope="session")
def smoke_comparison(tmp_path_factory):
    """`harness compare --algos grpo,ppo --preset smoke` through the console script, once per session."""
    out = tmp_path_factory.mktemp("compare") / "smoke"
    result = harness("compare", "--algos", "grpo,ppo", "--preset", "smoke", "--no-report", "--out", str(out), check=True)
    return out, result
