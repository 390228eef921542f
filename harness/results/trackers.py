"""Experiment trackers: every arm logs to trackio, W&B, TensorBoard and/or MLflow (`--report-to`, TRL's flag).

One tracker run per arm, grouped by comparison: the resolved config, every step record (our names, and the
TRL and verl names of the same figures from METRIC_ALIASES), the summary, the arm's files and, once the
report is written, the report's files, as artifacts where the tracker keeps files (TensorBoard: the
figures as images). Everything stays on this machine unless the user points a tracker elsewhere:

    trackio      its local store ($TRACKIO_DIR, else ~/.cache/huggingface/trackio): `trackio show`
    wandb        offline runs in the arm's folder (wandb/), `wandb sync` uploads them; WANDB_MODE=online logs live
    tensorboard  event files in the arm's folder (tensorboard/): `tensorboard --logdir COMPARISON_DIR`
    mlflow       $MLFLOW_TRACKING_URI, else a file store beside the run folders (RESULTS_DIR/mlruns)

A tracker that fails mid-run says so in one line and stops; training goes on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from harness import UserError
from harness.results.io import read_json, write_json
from harness.results.records import Summary
from harness.results.step_record import StepRecord
from harness.results.units import GIB

# tracker -> (module that must import, the pip extra that installs it)
PACKAGES = {"trackio": ("trackio", "trackers"), "tensorboard": ("tensorboard", "trackers"),
            "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}

# Our steps.jsonl key -> (TRL GRPOTrainer's name, verl's name) of the same figure; None where that
# library logs no such figure. The README's metric table is this dict.
METRIC_ALIASES: dict[str, tuple[str | None, str | None]] = {
    "reward/mean": ("reward", "critic/score/mean"),
    "loss/reward_std": ("reward_std", None),
    "loss/zero_adv_frac": ("frac_reward_zero_std", None),
    "completion/len_mean": ("completions/mean_length", "response_length/mean"),
    "loss/loss": ("loss", None),
    "loss/policy_loss": (None, "actor/pg_loss"),
    "loss/entropy": ("entropy", "actor/entropy"),
    "loss/kl": ("kl", "actor/kl_loss"),
    "loss/approx_kl": (None, "actor/ppo_kl"),
    "loss/clipfrac": ("clip_ratio/region_mean", "actor/pg_clipfrac"),
    "loss/grad_norm": ("grad_norm", "actor/grad_norm"),
    "loss/value_loss": (None, "critic/vf_loss"),
    "loss/explained_variance": (None, "critic/vf_explained_var"),
    "loss/vf_clipfrac": (None, "critic/vf_clipfrac"),
    "loss/value_mean": (None, "critic/values/mean"),
    "time/step": (None, "timing_s/step"),
    "time/generate": (None, "timing_s/gen"),
    "time/score": (None, "timing_s/reward"),
    "time/logprobs": (None, "timing_s/old_log_prob"),
    "time/reference": (None, "timing_s/ref"),
    "time/critic": (None, "timing_s/values"),
    "time/advantages": (None, "timing_s/adv"),
    "time/policy_update": (None, "timing_s/update_actor"),
    "time/critic_update": (None, "timing_s/update_critic"),
}
# verl's peak-memory figures (GiB, as torch.cuda.max_memory_* / 1024**3): our per-phase peaks, max over phases.
PEAK_ALIASES = {"mem/cuda_allocated_peak/": "perf/max_memory_allocated_gb",
                "mem/cuda_reserved_peak/": "perf/max_memory_reserved_gb"}




def check_trackers(names: list[str]) -> None:
    """Every tracker asked for (run.report_to) imports here; else one line naming the pip extra that installs it."""
    for name in names:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--report-to {name} needs the {module} package: pip install 'rl-harness[{extra}]'")


def tracked_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A step record's numbers under our names, plus the TRL and verl names of the same figures."""
    metrics = {k: float(v) for k, v in record.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
    for ours, names in METRIC_ALIASES.items():
        if ours in metrics:
            metrics.update({name: metrics[ours] for name in names if name})
    for prefix, alias in PEAK_ALIASES.items():
        peaks = [v for k, v in metrics.items() if k.startswith(prefix)]
        if peaks:
            metrics[alias] = max(peaks) / GIB
    return metrics


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a/b': 1}: nested summaries and configs as tracker keys."""
    if not isinstance(data, dict):
        return {prefix.rstrip("/"): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}/"))
    return out


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    return {f"summary/{k}": float(v) for k, v in flatten(summary).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


@contextlib.contextmanager
def quiet_stdout():
    """Trackers print banners on stdout; the arm's stdout is its progress log. Their errors still raise."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# ---------------------------------------------------------------- one run per tracker

class TrackioRun:
    def __init__(self, arm: dict[str, Any], saved: dict[str, Any]):
        import trackio
        with quiet_stdout():
            self.run = trackio.init(project=arm["project"], name=arm["name"], group=arm["group"],
                                    config=arm["config"], resume="allow", embed=False,
                                    auto_log_gpu=False, auto_log_cpu=False)
        self.ids = {"project": arm["project"], "name": arm["name"]}
        self.where = f"trackio project {arm['project']}, run {arm['name']} (trackio show --project {arm['project']})"

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, summary: dict[str, Any], step: int) -> None:
        self.run.log(summary_metrics(summary), step=step)

    def files(self, paths: list[Path], kind: str) -> None:
        for path in paths:
            self.run.log_artifact(str(path), name=f"{kind}-{path.name}", type=kind)

    def close(self, ok: bool) -> None:
        import trackio
        with quiet_stdout():
            trackio.finish()  # this run is trackio's current one; finishing it so keeps atexit quiet


class WandbRun:
    def __init__(self, arm: dict[str, Any], saved: dict[str, Any]):
        import wandb
        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(project=arm["project"], name=arm["name"], group=arm["group"], job_type=arm["algo"],
                              config=arm["config"], dir=str(arm["dir"]), mode=mode, id=saved.get("id"),
                              resume="allow", settings=wandb.Settings(silent=True, console="off"))
        self.ids = {"id": self.run.id}
        self.where = (f"W&B {mode} run {self.run.id} in {arm['dir'] / 'wandb'}"
                      + (" (upload: wandb sync)" if mode == "offline" else ""))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, summary: dict[str, Any], step: int) -> None:
        self.run.summary.update(summary_metrics(summary))

    def files(self, paths: list[Path], kind: str) -> None:
        import wandb
        artifact = wandb.Artifact(f"{kind}-{self.run.id}", type=kind)
        for path in paths:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class TensorBoardRun:
    def __init__(self, arm: dict[str, Any], saved: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter
        import yaml
        log_dir = arm["dir"] / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(log_dir))
        if not saved:  # the config once, not again on a resume
            self.writer.add_text("config", "```\n" + yaml.safe_dump(arm["config"], sort_keys=False) + "```", 0)
        self.ids = {"log_dir": str(log_dir)}
        self.where = f"TensorBoard events in {log_dir} (tensorboard --logdir {arm['dir'].parent})"

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def summary(self, summary: dict[str, Any], step: int) -> None:
        for key, value in summary_metrics(summary).items():
            self.writer.add_scalar(key, value, step)
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=2, default=str) + "\n```", step)

    def files(self, paths: list[Path], kind: str) -> None:
        import numpy as np
        from PIL import Image
        for path in paths:  # TensorBoard keeps no files: the figures go in as images
            if path.suffix == ".png":
                image = np.asarray(Image.open(path).convert("RGB"))
                self.writer.add_image(f"{kind}/{path.stem}", image, 0, dataformats="HWC")

    def close(self, ok: bool) -> None:
        self.writer.close()


class MlflowRun:
    def __init__(self, arm: dict[str, Any], saved: dict[str, Any]):
        from mlflow import MlflowClient
        from mlflow.entities import Param
        uri = saved.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or arm["mlflow_uri"]
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store is what we ask for
        self.client = MlflowClient(tracking_uri=uri)
        if saved.get("run_id"):
            self.run_id = saved["run_id"]
        else:
            experiment = self.client.get_experiment_by_name(arm["project"])
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(arm["project"])
            run = self.client.create_run(experiment_id, run_name=arm["name"],
                                         tags={"group": arm["group"], "algo": arm["algo"]})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flatten(arm["config"]).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=params[start: start + 100])
            self.client.log_dict(self.run_id, arm["config"], "config.json")
        self.ids = {"uri": uri, "run_id": self.run_id}
        self.where = f"MLflow run {self.run_id} at {uri}"

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        # A file store keeps metric a/b as a file in folder a: TRL's `reward` cannot sit beside `reward/mean`.
        folders = {"/".join(parts[:i]) for parts in (key.split("/") for key in metrics) for i in range(1, len(parts))}
        batch = [Metric(key, value, now, step) for key, value in metrics.items() if key not in folders]
        for start in range(0, len(batch), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=batch[start: start + 1000])

    def summary(self, summary: dict[str, Any], step: int) -> None:
        self.log(summary_metrics(summary), step)
        self.client.log_dict(self.run_id, summary, "summary.json")

    def files(self, paths: list[Path], kind: str) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path=kind)

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


RUNS = {"trackio": TrackioRun, "wandb": WandbRun, "tensorboard": TensorBoardRun, "mlflow": MlflowRun}


# ---------------------------------------------------------------- an arm's trackers

def arm_identity(run_dir: Path, project: str, results_dir: str) -> dict[str, Any]:
    """Names of an arm's tracker runs: grouped by its comparison folder, unique across comparisons."""
    import yaml
    run_dir = Path(run_dir).resolve()
    in_comparison = (run_dir.parent / "comparison.json").exists()
    group = run_dir.parent.name if in_comparison else run_dir.name
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    return {"project": project, "group": group, "dir": run_dir, "algo": config.get("algo", ""), "config": config,
            "name": f"{group}/{run_dir.name}" if in_comparison else run_dir.name,
            "mlflow_uri": (Path(results_dir).resolve() / "mlruns").as_uri()}


class ArmTrackers:
    """The tracker runs of one arm. A tracker that raises is reported in one line and dropped."""

    def __init__(self, names: list[str], run_dir: Path, project: str = "rl-harness", results_dir: str = "results",
                 log=None):
        self.run_dir = Path(run_dir)
        self.log_line = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.runs: dict[str, Any] = {}
        self.last_step = 0
        if not names:
            return
        saved_path = self.run_dir / "trackers.json"
        saved = read_json(saved_path) if saved_path.exists() else {}
        arm = arm_identity(self.run_dir, project, results_dir)
        for name in names:
            run = self._guard(name, lambda name=name: RUNS[name](arm, saved.get(name, {})))
            if run is not None:
                self.runs[name] = run
                saved[name] = run.ids
        write_json(saved_path, saved)

    def _guard(self, name: str, call):
        try:
            return call()
        except Exception as err:
            first = (str(err).strip().splitlines() or [""])[0]
            self.log_line(f"harness: {name} failed ({type(err).__name__}: {first}); it stops logging, the run goes on")
            self.runs.pop(name, None)
            return None

    def where(self) -> list[str]:
        return [run.where for run in self.runs.values()]

    def log_step(self, record: StepRecord) -> None:
        """Right after a step record is appended to steps.jsonl."""
        self.last_step = record.step if record.step is not None else self.last_step + 1
        metrics = tracked_metrics(record.to_json())
        for name, run in list(self.runs.items()):
            self._guard(name, lambda run=run: run.log(metrics, self.last_step))

    def finish(self, summary: Summary) -> None:
        """Right after summary.json is written: the summary, the arm's files, and the runs closed."""
        step = summary.steps or self.last_step
        files = [self.run_dir / f for f in ("config.yaml", "env.json", "summary.json", "steps.jsonl")
                 if (self.run_dir / f).exists()]
        data = summary.to_json()
        for name, run in list(self.runs.items()):
            self._guard(name, lambda run=run: (run.summary(data, step), run.files(files, "run"), run.close(summary.ok)))
        self.runs = {}


def open_trackers(config, run_dir: Path) -> ArmTrackers:
    """The trackers `config.run.report_to` names, opened (or reopened on a resume) for the arm in run_dir."""
    trackers = ArmTrackers(list(config.run.report_to), run_dir, config.run.tracker_project,
                           config.run.results_dir)
    for line in trackers.where():
        print(f"tracking: {line}", flush=True)
    return trackers


def attach_report(arm_dirs: list[Path], files: list[Path], names: list[str], project: str, results_dir: str) -> None:
    """Reopen each arm's tracker runs (`names`: run.report_to) and add the comparison's report files (figures,
    tables, HTML, PDF)."""
    files = [Path(f) for f in files if f and Path(f).exists()]
    if not names or not files:
        return
    for arm_dir in arm_dirs:
        if not (Path(arm_dir) / "trackers.json").exists():
            continue
        trackers = ArmTrackers(names, arm_dir, project, results_dir)
        for name, run in list(trackers.runs.items()):
            trackers._guard(name, lambda run=run: (run.files(files, "report"), run.close(True)))
