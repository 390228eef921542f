"""Arms side by side (`--parallel-arms`): each child sees only its GPU set, no set runs two children at
once, and every child's end is reported. Real subprocesses; no GPU needed to schedule them."""

import json
import sys

import pytest

from harness import UserError
from harness.config.load import load_config
from harness.train.distributed import arm_device_sets
from harness.train.supervise import Supervisor, device_sets


def test_jobs_run_side_by_side_each_on_its_own_device_set(tmp_path, capsys):
    # each child writes the GPUs it sees and the time span it ran; 5 jobs on 2 sets of 2 GPUs
    script = ("import json, os, sys, time; start = time.time(); time.sleep(0.3); "
              "json.dump({'gpus': os.environ['CUDA_VISIBLE_DEVICES'], 'span': [start, time.time()]}, "
              "open(sys.argv[1], 'w')); sys.exit(int(sys.argv[2]))")
    jobs = [(f"arm{i}", [sys.executable, "-c", script, str(tmp_path / f"arm{i}.json"), str(i % 2)], tmp_path / f"arm{i}.log")
            for i in range(5)]
    finished = {}
    Supervisor().run_side_by_side(jobs, device_sets(4, 2), lambda key, code, last: finished.update({key: code}))
    assert finished == {"arm0": 0, "arm1": 1, "arm2": 0, "arm3": 1, "arm4": 0}  # every end reported, with its status
    runs = [json.loads((tmp_path / f"arm{i}.json").read_text()) for i in range(5)]
    assert {run["gpus"] for run in runs} == {"0,1", "2,3"}
    for gpus in ("0,1", "2,3"):  # one child at a time on a set
        spans = sorted(run["span"] for run in runs if run["gpus"] == gpus)
        assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:]))
    out = capsys.readouterr().out
    assert out.count("started on GPU") == 5 and "arm1: exited with status 1" in out


def test_device_sets_are_disjoint_and_leave_the_remainder_idle():
    assert device_sets(8, 3) == [[0, 1, 2], [3, 4, 5]]  # GPUs 6 and 7 cannot hold a third arm of 3
    assert device_sets(1, 1) == [[0]]


@pytest.mark.parametrize("overrides, message", [
    ([], "this run's device is cpu"),
    (["run.device=cuda:1"], "use --device cuda, not cuda:1"),
    (["run.device=cuda", "run.nnodes=2"], "GPUs of one machine"),
    (["run.device=cuda"], "needs room for two arms"),
])
def test_parallel_arms_are_refused_where_they_cannot_run(overrides, message):
    with pytest.raises(UserError, match=message):
        arm_device_sets(load_config("smoke", overrides=overrides))


@pytest.mark.parametrize("flags, message", [
    (["--parallel-arms"], "this run's device is cpu"),
    (["--devices-per-arm", "2"], "--devices-per-arm goes with --parallel-arms"),
    (["--parallel-arms", "--devices-per-arm", "2", "--nproc-per-node", "4"], "give one"),
])
def test_compare_refuses_parallel_arms_it_cannot_run_before_any_folder(tmp_path, capsys, flags, message):
    from harness.cli import main
    code = main(["compare", "--preset", "smoke", "--out", str(tmp_path / "cmp"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "cmp").exists()
