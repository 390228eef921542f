"""Record the golden trajectory after an intended change to the math, and say why in the commit:

    python tests/golden/record.py        # runs the smoke comparison, writes tests/golden/smoke_trajectory.json

tests/test_golden.py only compares; it never writes.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from test_golden import GOLDEN, trajectory  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "smoke"
        subprocess.run([sys.executable, "-m", "harness", "compare", "--algos", "grpo,ppo", "--preset", "smoke",
                        "--no-report", "--out", str(out)], check=True)
        now = {algo: trajectory(out / f"chain_sum__{algo}__s0") for algo in ("grpo", "ppo")}
    GOLDEN.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
