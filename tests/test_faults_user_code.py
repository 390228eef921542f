"""The fault matrix (see fault_helpers.py): code and text from outside: checkpoints, reward functions, error texts."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import harness
from fault_helpers import assert_one_line, rows, run_main, snapshot, summary


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


# ---------------------------------------------------------------- 26.1 sharded checkpoints read nothing but data

def crafted_pickle(marker: Path) -> bytes:
    crafted = _RunsCode()
    crafted.marker = marker
    return pickle.dumps(crafted)


def test_26_1_the_metadata_reader_builds_torchs_classes_and_refuses_any_other_global(tmp_path):
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                       MetadataIndex, TensorProperties, TensorStorageMetadata)

    from harness.train.dcp_safe import RefusedGlobal, read_metadata
    # what torch's FileSystemWriter pickles: sizes, dtypes, layouts, the storage index of each shard
    metadata = Metadata(
        state_dict_metadata={"w": TensorStorageMetadata(TensorProperties(dtype=torch.bfloat16), torch.Size([4, 2]),
                                                        [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 2]))]),
                             "lr": BytesStorageMetadata()},
        storage_data={MetadataIndex("w", torch.Size([0, 0])): _StorageInfo("__0_0.distcp", 0, 64)})
    (tmp_path / "good").write_bytes(pickle.dumps(metadata))
    read = read_metadata(tmp_path / "good")
    assert read.state_dict_metadata["w"].properties.dtype == torch.bfloat16 and read.storage_data == metadata.storage_data
    (tmp_path / "crafted").write_bytes(crafted_pickle(tmp_path / "code-ran"))
    with pytest.raises(RefusedGlobal, match="the global posix.system"):
        read_metadata(tmp_path / "crafted")
    assert not (tmp_path / "code-ran").exists()


def test_26_1_a_non_tensor_shard_item_loads_weights_only(tmp_path):
    import io

    from harness.train.dcp_safe import SafePlanner
    crafted, code = io.BytesIO(), _RunsCode()
    code.marker = tmp_path / "code-ran"
    torch.save({"step": code}, crafted)  # torch's writer saves a non-tensor item this way
    planner = SafePlanner(flatten_state_dict=False)
    planner.state_dict = {}
    with pytest.raises(pickle.UnpicklingError):
        planner.load_bytes(type("Item", (), {"dest_index": type("Index", (), {"fqn": "step"})()})(),
                           io.BytesIO(crafted.getvalue()))
    plain = io.BytesIO()
    torch.save({"lr": 0.1, "betas": (0.9, 0.99)}, plain)
    plain.seek(0)
    planner.load_bytes(type("Item", (), {"dest_index": type("Index", (), {"fqn": "group"})()})(), plain)
    assert planner.state_dict["group"] == {"lr": 0.1, "betas": (0.9, 0.99)}
    assert not code.marker.exists()


@pytest.mark.slow
def test_26_1_a_crafted_metadata_of_a_two_process_arm_runs_nothing(tmp_path):
    run_dir = tmp_path / "run"
    harness("run", "--algo", "ppo", "--preset", "smoke", "--set", "run.lm_eval=false", "--budget", "64",
            "--set", "run.checkpoint_every=1", "--nproc-per-node", "2", "--out", str(run_dir), check=True)
    metadata = run_dir / "checkpoint" / "state.pt.dcp" / ".metadata"
    assert metadata.exists()
    (run_dir / "summary.json").write_text(json.dumps({"algo": "ppo", "seed": 0, "status": "killed",
                                                      "error": "killed (signal 9) after step 2"}))
    metadata.write_bytes(crafted_pickle(tmp_path / "code-ran"))
    before = snapshot(run_dir)
    result = harness("run", "--run-dir", str(run_dir), "--resume")
    assert_one_line(result.returncode, result.stderr, f"checkpoint {metadata} cannot be loaded safely: it asks for "
                                                      "the global posix.system, which no checkpoint needs")
    assert not (tmp_path / "code-ran").exists()
    assert snapshot(run_dir) == before  # the refused resume recorded nothing


# ---------------------------------------------------------------- 26.3 error texts are text, never markup

MARKUP = "ValueError: [/x] closing tag of nothing [bold]"


def test_26_3_an_arm_error_with_markup_is_printed_as_it_is(capsys):
    from rich.console import Console

    from harness.commands.terminal import print_arm, render_terminal
    from harness.results.records import Summary
    failed = {"algo": "grpo", "seed": 0, "status": "failed", "error": f"failed at step 2: {MARKUP}", "steps": 1}
    print_arm(Summary.read(failed), Path("run"))
    render_terminal([Summary.read(failed)], ["grpo"], console=Console(width=300))
    out = " ".join(capsys.readouterr().out.split())  # lines wrapped at the console's width, joined
    assert out.count(MARKUP) == 2


REWARDS = '''
import sys, time

def answers(completions, answer, **kwargs):  # the up-front check scores the reference answers: they pass
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

def markup(completions, answer, **kwargs):
    if any(c != a for c, a in zip(completions, answer)):
        raise ValueError("[/x] closing tag of nothing")
    return [1.0] * len(completions)

def sleeps(completions, answer, **kwargs):
    if any(c != a for c, a in zip(completions, answer)):
        time.sleep(3600)
    return [1.0] * len(completions)

def busy(completions, **kwargs):
    while True:
        try:
            pass
        except Exception:  # what a careless function does with every error
            pass

def exits(completions, answer, **kwargs):
    if any(c != a for c, a in zip(completions, answer)):
        sys.exit(0)
    return [1.0] * len(completions)

def exits_at_once(completions, **kwargs):
    sys.exit(0)

def interrupts(completions, **kwargs):
    raise KeyboardInterrupt

def endless(completions, **kwargs):
    while True:
        yield 1.0
'''


def write_task(folder: Path) -> list[str]:
    """A small sums task (data:FILE) and the reward module above; the flags that use them."""
    with open(folder / "sums.jsonl", "w") as handle:
        for a in range(20):
            for b in range(0, 20, 3):
                handle.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    (folder / "rewards.py").write_text(REWARDS)
    return ["--task", f"data:{folder / 'sums.jsonl'}", "--set", "task.eval_size=16"]


@pytest.mark.parametrize("function, timeout, message", [
    ("busy", "0.5", "reward function {module}:busy did not return within 0.5 s (task.reward_timeout)"),
    ("exits_at_once", "60", "reward function {module}:exits_at_once called sys.exit(0)"),
    ("interrupts", "60", "reward function {module}:interrupts raised KeyboardInterrupt"),
    ("endless", "0.5", "reward function {module}:endless did not return within 0.5 s (task.reward_timeout)"),
])
def test_26_5_a_reward_function_is_checked_up_front_under_its_time_limit(tmp_path, capsys, function, timeout,
                                                                           message):
    task = write_task(tmp_path)
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", *task, "--reward", f"{tmp_path / 'rewards.py'}:{function}",
                            "--set", f"task.reward_timeout={timeout}", "--results-dir", tmp_path / "results")
    assert_one_line(code, err, message.format(module=tmp_path / "rewards.py"))
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("body, message", [
    ("import sys\nsys.exit(3)\n", "importing reward module '{module}' called sys.exit(3)"),
    ("import time\ntime.sleep(3600)\n", "importing reward module '{module}' did not return within 0.5 s"),
])
def test_26_5_a_reward_module_that_exits_or_hangs_when_imported(tmp_path, capsys, body, message):
    task = write_task(tmp_path)
    (tmp_path / "bad.py").write_text(body + "def f(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", *task, "--reward", f"{tmp_path / 'bad.py'}:f",
                            "--set", "task.reward_timeout=0.5", "--results-dir", tmp_path / "results")
    assert_one_line(code, err, message.format(module=tmp_path / "bad.py"))
    assert not (tmp_path / "results").exists()


def test_26_5_the_time_limit_stops_sleeps_and_loops_and_leaves_a_real_ctrl_c_alone():
    from harness.tasks.reward_guard import RewardExit, RewardTimeout, call_with_limit
    for hang in (lambda: time.sleep(3600), lambda: [None for _ in iter(int, 1)]):
        started = time.monotonic()
        with pytest.raises(RewardTimeout, match="did not return within 0.2 s"):
            call_with_limit(hang, 0.2)
        assert time.monotonic() - started < 30
    assert call_with_limit(lambda: 7, 0.2) == 7
    time.sleep(0.5)  # a call that ended before its deadline leaves nothing armed
    with pytest.raises(RewardExit, match="raised KeyboardInterrupt"):
        call_with_limit(lambda: (_ for _ in ()).throw(KeyboardInterrupt), 5)
    # Python's own Ctrl-C handler, as in a terminal: a shell starts a background job (`pytest ... &`) with SIGINT
    # ignored, and then no Ctrl-C could reach the call at all
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):  # the user's own Ctrl-C during a call still stops the process
            call_with_limit(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)), 30)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_26_5_a_reward_that_exits_during_training_fails_the_comparison_instead_of_passing_it(tmp_path):
    task = write_task(tmp_path)
    out = tmp_path / "cmp"
    result = harness("compare", "--preset", "smoke", *task, "--reward", f"{tmp_path / 'rewards.py'}:exits",
                     "--set", "run.lm_eval=false", "--no-report", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # CI stays red: the arms trained nothing
    for arm in ("sums__grpo__s0", "sums__ppo__s0"):
        assert summary(out / arm)["status"] == "failed"
        assert summary(out / arm)["error"].endswith(f"reward function {tmp_path / 'rewards.py'}:exits called sys.exit(0)")


@pytest.mark.slow
def test_26_5_a_reward_that_hangs_during_training_is_the_arms_recorded_failure(tmp_path):
    task = write_task(tmp_path)
    result = harness("run", "--algo", "grpo", "--preset", "smoke", *task, "--reward",
                     f"{tmp_path / 'rewards.py'}:sleeps", "--set", "task.reward_timeout=1", "--set", "run.lm_eval=false",
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 1, result.stderr
    recorded = summary(tmp_path / "run")
    assert recorded["status"] == "failed"
    assert recorded["error"].endswith(f"reward function {tmp_path / 'rewards.py'}:sleeps did not return within 1 s "
                                      "(task.reward_timeout)")


@pytest.mark.slow
def test_26_3_a_reward_error_with_markup_ends_in_a_verdict_and_a_report(tmp_path):
    task = write_task(tmp_path)
    out = tmp_path / "cmp"
    result = harness("compare", "--preset", "smoke", *task, "--reward", f"{tmp_path / 'rewards.py'}:markup",
                     "--set", "run.lm_eval=false", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Verdict:" in result.stdout, result.stderr
    assert "raised ValueError: [/x] closing tag of nothing" in result.stdout
    html = (out / "report.html").read_text()
    assert "raised ValueError: [/x] closing tag of nothing" in html


# ---------------------------------------------------------------- 26 lower: what FSDP2 hooks is never a view

def test_26_lower_the_value_model_returns_a_tensor_fsdp2_can_hook(capsys):
    import warnings

    from harness.cli import main
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # PPO's step at world size 2 on fake tensors: its critic is an FSDP2 root, as in a sharded run
        assert main(["estimate", "--preset", "smoke", "--algos", "grpo,ppo", "--world-size", "2", "--no-cache"]) == 0
    views = [str(w.message) for w in caught if "returned a view tensor" in str(w.message)]
    assert not views, views[0]
    assert "PPO step peak (estimated)" in capsys.readouterr().out
