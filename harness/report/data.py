"""Read a comparison folder into arms, step tables and configs; nothing here may crash on a gap.

A comparison folder holds comparison.json (the plan), config.yaml (the resolved config) and one
folder per (arm, seed) with config.yaml, env.json, steps.jsonl and summary.json. An arm that failed,
or never started, keeps whatever it managed to write. Arms are grouped by name (grpo, ppo, ppo-n1, ...);
each trains an algorithm (`algo`); a comparison made before arms had names has one arm per algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness import UserError
from harness.config.load import read_yaml
from harness.results.headline import get_path as get
from harness.results.headline import arm_pair_of, default_baseline, headline
from harness.results.io import describe_bad_lines, read_json_object, read_jsonl
from harness.results.safe_io import arm_folders

# (steps.jsonl key, label) of the training-health panels; the last three belong to one algorithm each.
HEALTH_METRICS = [
    ("loss/kl", "KL to reference (k3)"),
    ("loss/approx_kl", "approx. KL, old to new policy"),
    ("loss/clipfrac", "clip fraction"),
    ("loss/entropy", "entropy (nats/token)"),
    ("completion/len_mean", "completion length (tokens)"),
    ("loss/grad_norm", "gradient norm"),
    ("loss/value_loss", "PPO: value loss"),
    ("loss/explained_variance", "PPO: explained variance"),
    ("loss/zero_adv_frac", "GRPO: share of groups with zero reward spread"),
]


def _read_object(path: Path) -> dict[str, Any] | None:
    """The file's JSON object, or None when it does not exist; a damaged file is one line naming it (UserError)."""
    return read_json_object(path) if path.exists() else None


def _read_yaml(path: Path) -> Any:
    return read_yaml(path) if path.exists() else None



@dataclass
class Arm:
    name: str  # the arm's name: its rows, columns and colours
    algo: str  # the algorithm it trains
    seed: int
    dir: Path
    summary: dict[str, Any]
    steps: pd.DataFrame
    env: dict[str, Any]
    config: dict[str, Any]
    row: dict[str, Any] = field(default_factory=dict)  # harness.results.headline.headline(summary)
    bad_lines: list[int] = field(default_factory=list)  # lines of steps.jsonl that could not be read
    overrides: dict[str, Any] = field(default_factory=dict)  # the arm's config overrides (harness.commands.arm_specs)

    @property
    def bad_lines_note(self) -> str | None:
        return describe_bad_lines(self.dir / "steps.jsonl", self.bad_lines) if self.bad_lines else None

    @property
    def label(self) -> str:
        return f"{self.name} s{self.seed}"

    @property
    def status(self) -> str:
        return self.summary.get("status") or "unknown"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error(self) -> str | None:
        return self.summary.get("error")

    @property
    def time_basis(self) -> str:
        """train_s when the arm recorded its evaluation time apart (time/eval, time.train_s), else wall_s."""
        return "train_s" if get(self.summary, "time", "train_s") is not None else "wall_s"

    def eval_curve(self) -> pd.DataFrame:
        """Held-out accuracy against completions and time: start, every eval row, end.

        `wall` includes the periodic evaluations; `train` leaves them out (the runner's `train_s`, else wall
        minus the `time/eval` seconds logged so far), and equals `wall` for older arms that did not record them.
        """
        points = []
        base = get(self.summary, "eval", "base", "accuracy")
        if base is not None:
            points.append({"completions": 0, "wall": 0.0, "train": 0.0, "accuracy": base})
        if len(self.steps) and "wall" in self.steps:
            eval_time = self.steps["time/eval"].fillna(0).cumsum() if "time/eval" in self.steps else 0.0
            train = self.steps["train_s"] if "train_s" in self.steps else self.steps["wall"] - eval_time
            if "eval/accuracy" in self.steps:
                for index, r in self.steps.dropna(subset=["eval/accuracy"]).iterrows():
                    points.append({"completions": r.get("completions"), "wall": r.get("wall"),
                                   "train": float(train.loc[index]), "accuracy": r["eval/accuracy"]})
        final = get(self.summary, "eval", "final", "accuracy")
        if final is not None:
            completions = get(self.summary, "budget", "used", "completions")
            if completions is None and len(self.steps):
                completions = self.steps["completions"].iloc[-1]
            wall = self.summary.get("wall_s")
            if wall is None and len(self.steps):
                wall = self.steps["wall"].iloc[-1]
            train = get(self.summary, "time", "train_s")
            if not points or points[-1]["completions"] != completions or points[-1]["accuracy"] != final:
                points.append({"completions": completions, "wall": wall, "train": wall if train is None else train,
                               "accuracy": final})
        return pd.DataFrame(points, columns=["completions", "wall", "train", "accuracy"])


@dataclass
class Comparison:
    dir: Path
    name: str
    plan: dict[str, Any]
    config: dict[str, Any]
    arms: list[Arm]

    @property
    def specs(self) -> list[dict[str, Any]]:
        """Each arm's name, algorithm and overrides, in the comparison's order."""
        saved = self.plan.get("arm_specs")
        if isinstance(saved, list) and all(isinstance(s, dict) and s.get("name") for s in saved):
            return [{"name": s["name"], "algo": s.get("algo") or s["name"], "overrides": s.get("overrides") or {}}
                    for s in saved]
        names = self.plan.get("algos") or list(dict.fromkeys(a.name for a in self.arms))
        return [{"name": n, "algo": n, "overrides": {}} for n in names]

    @property
    def names(self) -> list[str]:
        """The arms' names, in the comparison's order."""
        return [s["name"] for s in self.specs]

    @property
    def arm_algos(self) -> dict[str, str]:
        return {s["name"]: s["algo"] for s in self.specs}

    @property
    def algos(self) -> list[str]:
        """The algorithms the arms train, each once."""
        return list(dict.fromkeys(self.arm_algos.values()))

    @property
    def seeds(self) -> list[int]:
        return list(self.plan.get("seeds") or sorted({a.seed for a in self.arms}))

    @property
    def baseline(self) -> str | None:
        """The arm every ratio is taken against: as saved, else the first PPO arm, else the first."""
        saved = self.plan.get("baseline")
        return saved if saved in self.names else default_baseline(self.arm_algos)

    @property
    def pair(self) -> tuple[str, str] | None:
        """(numerator, baseline) of the verdict: the first GRPO arm against the baseline (grpo/ppo when both ran)."""
        return arm_pair_of(self.arm_algos, self.baseline)

    def ok_arms(self, name: str) -> list[Arm]:
        return [a for a in self.arms if a.name == name and a.ok]

    def arms_of(self, name: str) -> list[Arm]:
        return [a for a in self.arms if a.name == name]

    def steps(self, ok_only: bool = True) -> pd.DataFrame:
        """Every arm's steps.jsonl in one table, with arm, algo, seed and status columns."""
        frames = []
        for arm in self.arms:
            if arm.steps.empty or (ok_only and not arm.ok):
                continue
            frames.append(arm.steps.assign(arm=arm.name, algo=arm.algo, seed=arm.seed, status=arm.status))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_arm(comparison_dir: Path, entry: dict[str, Any]) -> Arm:
    arm_dir = comparison_dir / entry["dir"]
    summary = _read_object(arm_dir / "summary.json")
    if summary is None:
        reason = "not started: no summary.json" if not arm_dir.exists() else "no summary.json"
        summary = {"status": "missing", "error": reason}
    summary.setdefault("algo", entry.get("algo"))
    summary.setdefault("arm", entry.get("arm") or summary.get("algo"))
    summary.setdefault("seed", entry.get("seed"))
    bad_lines: list[int] = []
    rows = [row for row in read_jsonl(arm_dir / "steps.jsonl", bad_lines) if isinstance(row.get("step"), int)]
    steps = pd.DataFrame(rows)
    if not steps.empty:
        steps = steps.sort_values("step", kind="stable").reset_index(drop=True) if "step" in steps else steps
    algo = entry.get("algo") or summary.get("algo")
    return Arm(name=entry.get("arm") or summary.get("arm") or algo, algo=algo,
               seed=entry.get("seed", summary.get("seed")), dir=arm_dir, summary=summary, steps=steps,
               env=_read_object(arm_dir / "env.json") or {}, config=_read_yaml(arm_dir / "config.yaml") or {},
               row=headline(summary), bad_lines=bad_lines, overrides=entry.get("overrides") or {})


def load_comparison(comparison_dir: Path | str) -> Comparison:
    comparison_dir = Path(comparison_dir)
    if not (comparison_dir / "comparison.json").exists():
        raise UserError(f"{comparison_dir} holds no comparison.json: not a comparison folder "
                        "(make one with 'harness compare')")
    plan = read_json_object(comparison_dir / "comparison.json", {"arms": list})
    arm_folders(comparison_dir, plan)  # every entry names a folder inside the comparison
    config = _read_yaml(comparison_dir / "config.yaml") or {}
    # What the page names in its title: from the plan, else the resolved config, else a dash.
    plan.setdefault("task", get(config, "task", "name") or "—")
    plan.setdefault("preset", config.get("preset") or "—")
    plan.setdefault("model", get(config, "model", "name") or "—")
    budget = plan.get("budget") if isinstance(plan.get("budget"), dict) else {}
    plan["budget"] = {"unit": budget.get("unit") or get(config, "budget", "unit") or "—",
                      "total": budget.get("total") or get(config, "budget", "total") or "—"}
    plan.setdefault("arms", [])
    arms = [load_arm(comparison_dir, entry) for entry in plan["arms"]]
    return Comparison(dir=comparison_dir, name=comparison_dir.resolve().name, plan=plan, config=config, arms=arms)
