"""The steps table a comparison exports: one long table, one row per (arm, seed, step), as Parquet or CSV."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.results import exports
from harness.results.exports import write_steps_table

COMPARE = Path(__file__).parent / "fixtures" / "report" / "compare"


def arms_of(folder: Path) -> list[dict]:
    return json.loads((folder / "comparison.json").read_text())["arms"]


@pytest.fixture
def folder(tmp_path):
    return Path(shutil.copytree(COMPARE, tmp_path / "compare"))


def check_table(steps: pd.DataFrame, folder: Path) -> None:
    # 6 arms (grpo, ppo x seeds 0, 1, 2) of 9 steps each: 54 rows, one per (arm, seed, step)
    assert len(steps) == 54 and not steps.duplicated(["arm", "seed", "step"]).any()
    assert list(steps.columns[:5]) == ["arm", "algorithm", "seed", "status", "step"]
    assert sorted(steps.groupby(["algorithm", "seed"]).size().items()) == \
        [((algo, seed), 9) for algo in ("grpo", "ppo") for seed in (0, 1, 2)]
    ppo1 = steps[(steps["arm"] == "chain_sum__ppo__s1")].sort_values("step")
    rows = [json.loads(line) for line in (folder / "chain_sum__ppo__s1" / "steps.jsonl").read_text().splitlines()]
    assert ppo1["reward/mean"].tolist() == [r["reward/mean"] for r in rows]  # values as the arm wrote them
    assert set(ppo1["status"]) == {"ok"}


def test_parquet_loads_with_pandas_one_row_per_arm_seed_step(folder):
    path = write_steps_table(folder, arms_of(folder))
    assert path == folder / "steps.parquet"
    check_table(pd.read_parquet(path), folder)


def test_csv_where_pyarrow_is_missing(folder, monkeypatch):
    monkeypatch.setattr(exports, "has_parquet", lambda: False)
    path = write_steps_table(folder, arms_of(folder))
    assert path == folder / "steps.csv"
    check_table(pd.read_csv(path), folder)


def test_a_failed_arm_keeps_its_steps_and_says_so(folder):
    summary = folder / "chain_sum__grpo__s2" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "oom"}))
    (folder / "chain_sum__ppo__s2" / "steps.jsonl").unlink()  # an arm that never got to step 1
    steps = pd.read_parquet(write_steps_table(folder, arms_of(folder)))
    assert len(steps) == 45 and set(steps[steps["arm"] == "chain_sum__grpo__s2"]["status"]) == {"oom"}
