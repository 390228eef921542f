"""Experiment trackers: the --report-to flag, metric aliases (TRL and verl names), and what trackio,
TensorBoard and MLflow hold when read back, written offline into a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness import UserError
from harness.config.schema import RunConfig
from harness.results.records import Summary
from harness.results.step_record import StepRecord
from harness.results.trackers import ArmTrackers, METRIC_ALIASES, RUNS, attach_report, check_trackers, tracked_metrics
from harness.results.units import GIB

README = Path(__file__).resolve().parents[1] / "README.md"
PROJECT = f"harness-test-{os.getpid()}"


def report_to(value):
    return RunConfig.parse({"report_to": value}).report_to


def test_report_to_follows_trls_convention():
    assert report_to("none") == [] and report_to("") == [] and report_to([]) == []
    assert report_to("trackio, TensorBoard,trackio") == ["trackio", "tensorboard"]
    assert report_to(["trackio", "tensorboard"]) == ["trackio", "tensorboard"]  # a YAML list
    assert report_to("all") == ["trackio", "wandb", "tensorboard", "mlflow"]
    with pytest.raises(UserError, match="^run.report_to: unknown tracker comet; valid: trackio, wandb, tensorboard, "
                                        "mlflow, all, none$"):
        report_to("trackio,comet")
    with pytest.raises(UserError, match="unknown tracker none \\(alone only\\)"):
        report_to("trackio,none")
    # the saved config.yaml keeps the form it always had: comma-separated text, 'none' for no tracker
    assert RunConfig.parse({"report_to": "trackio,tensorboard"}).model_dump()["report_to"] == "trackio,tensorboard"
    assert RunConfig().model_dump()["report_to"] == "none"


def test_a_missing_package_names_the_extra_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    with pytest.raises(UserError) as err:
        check_trackers(["tensorboard", "trackio"])
    assert str(err.value) == "--report-to trackio needs the trackio package: pip install 'rl-harness[trackers]'"


def test_trl_and_verl_names_are_added_beside_ours():
    record = {"step": 4, "reward/mean": 0.5, "loss/zero_adv_frac": 0.25, "loss/clipfrac": 0.125, "time/generate": 2.0,
              "mem/cuda_allocated_peak/generate": 1 * GIB, "mem/cuda_allocated_peak/update": 3 * GIB,
              "eval/flag": True, "note": "text"}
    metrics = tracked_metrics(record)
    assert metrics["reward/mean"] == metrics["reward"] == metrics["critic/score/mean"] == 0.5
    assert metrics["frac_reward_zero_std"] == 0.25
    assert metrics["actor/pg_clipfrac"] == metrics["clip_ratio/region_mean"] == 0.125
    assert metrics["timing_s/gen"] == 2.0
    assert metrics["perf/max_memory_allocated_gb"] == 3.0  # the largest phase peak, 3 GiB
    assert "step" not in metrics and "note" not in metrics and "eval/flag" not in metrics


def test_the_readme_documents_every_alias():
    # The README's table rows: | `ours` | `trl` or — | `verl` or — |
    rows = re.findall(r"^\| `([^`]+)` \| (`[^`]+`|—) \| (`[^`]+`|—) \|$", README.read_text(), flags=re.M)
    table = {ours: tuple(None if name == "—" else name.strip("`") for name in (trl, verl)) for ours, trl, verl in rows}
    assert table == METRIC_ALIASES


# ---------------------------------------------------------------- written offline, read back

def fake_comparison(root: Path) -> list[Path]:
    """A comparison folder with two arms' config.yaml, as run_arm leaves them before training."""
    (root / "comparison.json").parent.mkdir(parents=True)
    (root / "comparison.json").write_text("{}")
    dirs = []
    for algo in ("grpo", "ppo"):
        arm = root / f"sums__{algo}__s0"
        arm.mkdir()
        (arm / "config.yaml").write_text(yaml.safe_dump({"algo": algo, "task": {"name": "data:sums.jsonl"}}))
        dirs.append(arm)
    return dirs


def log_arm(arm_dir: Path, names: list[str], results: Path, value: float) -> dict:
    trackers = ArmTrackers(names, arm_dir, PROJECT, str(results))
    for step in (1, 2, 3):
        row = {"step": step, "reward/mean": value * step, "loss/zero_adv_frac": 0.5}
        (arm_dir / "steps.jsonl").open("a").write(json.dumps(row) + "\n")
        trackers.log_step(StepRecord.read(row))
    summary = {"algo": arm_dir.name, "status": "ok", "steps": 3, "eval": {"final": {"accuracy": value}}}
    (arm_dir / "summary.json").write_text(json.dumps(summary))
    trackers.finish(Summary.read(summary))
    return summary


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Two arms logged to trackio (in conftest's $TRACKIO_DIR), TensorBoard and MLflow, then a report figure."""
    tmp_path = tmp_path_factory.mktemp("trackers")
    arms = fake_comparison(tmp_path / "cmp")
    # MLflow is an optional extra (heavy): read back where it is installed
    names = ["trackio", "tensorboard"] + (["mlflow"] if importlib.util.find_spec("mlflow") else [])
    for value, arm in zip((0.25, 0.5), arms):
        log_arm(arm, names, tmp_path / "results", value)
    figure = tmp_path / "cmp" / "figures" / "learning.png"
    figure.parent.mkdir()
    from PIL import Image
    Image.fromarray(np.full((4, 6, 3), 200, dtype=np.uint8)).save(figure)
    attach_report(arms, [figure], names, PROJECT, str(tmp_path / "results"))
    return tmp_path, arms


def test_trackio_holds_each_arms_steps_summary_and_report(logged):
    from trackio.sqlite_storage import SQLiteStorage
    tmp_path, arms = logged
    assert sorted(SQLiteStorage.get_runs(PROJECT)) == ["cmp/sums__grpo__s0", "cmp/sums__ppo__s0"]
    for value, arm in zip((0.25, 0.5), arms):
        logs = SQLiteStorage.get_logs(PROJECT, f"cmp/{arm.name}")
        steps = [row for row in logs if "reward/mean" in row]
        assert [(r["step"], r["reward/mean"], r["reward"], r["frac_reward_zero_std"]) for r in steps] == \
            [(1, value, value, 0.5), (2, 2 * value, 2 * value, 0.5), (3, 3 * value, 3 * value, 0.5)]
        assert [r["summary/eval/final/accuracy"] for r in logs if "summary/eval/final/accuracy" in r] == [value]
        config = SQLiteStorage.get_run_config(PROJECT, f"cmp/{arm.name}")
        assert config["algo"] == arm.name.split("__")[1] and config["_Group"] == "cmp"
    artifacts = list((Path(os.environ["TRACKIO_DIR"]) / "artifacts" / PROJECT).rglob("*"))
    assert len([a for a in artifacts if a.is_file()]) >= 2  # the run files and the report figure, kept by trackio


def test_tensorboard_holds_each_arms_steps_summary_and_figures(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _, arms = logged
    for value, arm in zip((0.25, 0.5), arms):
        events = EventAccumulator(str(arm / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == \
            [(1, value), (2, 2 * value), (3, 3 * value)]
        assert [e.value for e in events.Scalars("frac_reward_zero_std")] == [0.5] * 3
        assert [(e.step, e.value) for e in events.Scalars("summary/eval/final/accuracy")] == [(3, value)]
        assert "summary/text_summary" in events.Tags()["tensors"] and "config/text_summary" in events.Tags()["tensors"]
        image = events.Images("report/learning")[0]
        assert (image.width, image.height) == (6, 4)


def test_mlflow_holds_each_arms_steps_summary_and_files(logged):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'rl-harness[mlflow]'")
    MlflowClient = mlflow.MlflowClient
    tmp_path, arms = logged
    for value, arm in zip((0.25, 0.5), arms):
        saved = json.loads((arm / "trackers.json").read_text())["mlflow"]
        client = MlflowClient(saved["uri"])
        history = client.get_metric_history(saved["run_id"], "reward/mean")
        assert [(m.step, m.value) for m in history] == [(1, value), (2, 2 * value), (3, 3 * value)]
        assert [m.value for m in client.get_metric_history(saved["run_id"], "summary/eval/final/accuracy")] == [value]
        files = {a.path for a in client.list_artifacts(saved["run_id"], "run")} | \
                {a.path for a in client.list_artifacts(saved["run_id"], "report")}
        assert {"run/summary.json", "run/steps.jsonl", "run/config.yaml", "report/learning.png"} <= files
        run = client.get_run(saved["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["group"] == "cmp"
        assert run.data.params["task/name"] == "data:sums.jsonl"


def test_a_tracker_that_fails_says_so_once_and_the_others_go_on(tmp_path, monkeypatch):
    class Broken:
        def __init__(self, arm, saved):
            self.ids, self.where = {}, "broken"

        def log(self, metrics, step):
            raise ConnectionError("server went away\nsecond line")

    monkeypatch.setitem(RUNS, "wandb", Broken)
    lines = []
    arm = fake_comparison(tmp_path / "cmp")[0]
    trackers = ArmTrackers(["wandb", "tensorboard"], arm, "p", str(tmp_path), log=lines.append)
    for step in (1, 2):
        trackers.log_step(StepRecord(step=step, reward_mean=1.0))
    trackers.finish(Summary(status="ok", steps=2))
    assert lines == ["harness: wandb failed (ConnectionError: server went away); it stops logging, the run goes on"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(arm / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward/mean")] == [1, 2]
