"""Exports of a comparison for the user's own tools: every arm's steps in one long table.

    steps.parquet (steps.csv where pyarrow is not installed): one row per (arm, seed, step), with the
    columns arm (the arm's folder), algorithm, seed and status first, then every steps.jsonl key.

    import pandas as pd
    steps = pd.read_parquet("results/compare__chain_sum__.../steps.parquet")
    steps.groupby(["algorithm", "step"])["reward/mean"].mean()
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from harness.results.io import new_file_mode, read_json, read_jsonl
from harness.results.records import Summary

FIRST_COLUMNS = ["arm", "algorithm", "seed", "status", "step"]


def steps_frame(comparison_dir: Path, arms: list[dict[str, Any]]) -> pd.DataFrame:
    """Every arm's steps.jsonl in one table; a failed arm's steps are kept, with its status."""
    rows = []
    for arm in arms:
        arm_dir = Path(comparison_dir) / arm["dir"]
        summary = Summary.read(read_json(arm_dir / "summary.json") if (arm_dir / "summary.json").exists() else {})
        labels = {"arm": arm["dir"], "algorithm": arm["algo"], "seed": arm["seed"],
                  "status": summary.status or "missing"}
        rows += [{**labels, **row} for row in read_jsonl(arm_dir / "steps.jsonl")]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=FIRST_COLUMNS)
    rest = sorted(c for c in frame.columns if c not in FIRST_COLUMNS)
    return frame[FIRST_COLUMNS + rest]


def has_parquet() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def write_steps_table(comparison_dir: Path | str, arms: list[dict[str, Any]]) -> Path:
    """steps.parquet, or steps.csv without pyarrow, written atomically into the comparison folder."""
    comparison_dir = Path(comparison_dir)
    frame = steps_frame(comparison_dir, arms)
    path = comparison_dir / ("steps.parquet" if has_parquet() else "steps.csv")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=comparison_dir)
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.chmod(tmp, new_file_mode())  # mkstemp gives 0600; result files take the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
