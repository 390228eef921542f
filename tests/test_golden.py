"""Seeded golden trajectory: the smoke arms' first losses, committed as JSON.

A silent change in the math (a sign, a normalizer, a mask shifted by one) moves these numbers even
when every unit test still passes. After an intended change, record them again with
`python tests/golden/record.py` and say why in the commit message; this test only compares.
"""

import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "smoke_trajectory.json"
KEYS = ("reward/mean", "completion/len_mean", "loss/loss", "loss/policy_loss", "loss/entropy",
        "loss/approx_kl", "loss/kl", "loss/grad_norm", "loss/value_loss", "loss/explained_variance")


def trajectory(folder: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
    return [{k: row[k] for k in KEYS if k in row} for row in rows]


@pytest.mark.slow
def test_smoke_trajectory_matches_golden(smoke_comparison):
    out, _ = smoke_comparison
    now = {algo: trajectory(out / f"chain_sum__{algo}__s0") for algo in ("grpo", "ppo")}
    golden = json.loads(GOLDEN.read_text())
    for algo, rows in golden.items():
        assert len(now[algo]) == len(rows)
        for step, (expected, actual) in enumerate(zip(rows, now[algo]), start=1):
            for key, value in expected.items():
                assert actual[key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{algo} step {step} {key}"
