"""Shared fixtures and helpers: an isolated model cache, offline Hugging Face, one smoke comparison per session,
the smoke model per module, a tiny random policy, the CLI (in this process and as the console script), and
readers of what a run writes. Tests import the helpers (`from conftest import harness, read_rows`)."""

import os
import shutil
import subprocess
import sys
import tempfile
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

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


def harness_command() -> list[str]:
    """The console script beside this Python (`python -m harness` where it is not installed)."""
    exe = Path(sys.executable).with_name("harness")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "harness"]


def harness(*args, cwd=None, check=False):
    """Run the console script as a user would; returns the CompletedProcess."""
    result = subprocess.run(harness_command() + list(args), capture_output=True, text=True, cwd=cwd,
                            env=os.environ.copy())
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


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`harness ARGS` in this process: (exit status, argparse's own exit included; stdout; stderr)."""
    from harness.cli import main
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit_info:  # argparse rejects a flag by exiting
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (steps.jsonl, lm-eval's samples)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_summary(folder: Path) -> dict[str, Any]:
    """An arm's (or a comparison's) summary.json, as written."""
    return json.loads((folder / "summary.json").read_text())


class SmokeModel(NamedTuple):
    config: Any
    task: Any
    policy: Any
    tokenizer: Any


@pytest.fixture(scope="module")
def smoke_model() -> SmokeModel:
    """The smoke preset's config, its task, and its warm-started tiny policy (cached) with its tokenizer;
    one per test module, so that a module that changes the policy changes only its own."""
    from harness.config.derive import make_task
    from harness.config.load import load_config
    from harness.train.models import load_policy, resolve_model_path
    config = load_config("smoke")
    task = make_task(config)
    policy, tokenizer = load_policy(resolve_model_path(config.model, task))
    return SmokeModel(config, task, policy, tokenizer)


def small_policy(hidden_size: int = 16, num_layers: int = 2, dtype=None):
    """A seeded random decoder over the characters of sums (13 characters + pad, eos, unk = 16 tokens), in
    `dtype` (float64 by default: equivalence tests compare to 1e-10)."""
    import torch

    from harness.config.schema import ModelConfig
    from harness.train.models import char_tokenizer, tiny_model
    torch.manual_seed(0)
    tokenizer = char_tokenizer("0123456789+-=")
    model = tiny_model(ModelConfig(hidden_size=hidden_size, num_layers=num_layers, num_heads=2), tokenizer)
    return model.to(dtype or torch.float64)
# ---------------------------------------------------------------- the fault matrix's fixtures

@pytest.fixture
def finished(smoke_comparison, tmp_path) -> Path:
    """A private copy of the session's finished smoke comparison (models and checkpoints left out)."""
    out = tmp_path / "finished"
    shutil.copytree(smoke_comparison[0], out, ignore=shutil.ignore_patterns("final_model", "lm_eval"))
    return out


@pytest.fixture(scope="session")
def smoke_baseline(smoke_comparison, tmp_path_factory) -> Path:
    """A baseline written from the session's smoke comparison: the gate rows compare like with like."""
    from harness.cli import main
    path = tmp_path_factory.mktemp("faults-baseline") / "smoke.json"
    assert main(["baseline", str(smoke_comparison[0]), "--out", str(path)]) == 0
    return path


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
