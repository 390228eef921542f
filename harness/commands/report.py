"""`harness report`: the HTML and PDF report of a comparison folder."""

from __future__ import annotations

from pathlib import Path

from harness import UserError
from harness.report import build_report


def report(comparison_dir: Path | str, out: Path | str | None = None, target: float | None = None,
           pdf: bool = True) -> int:
    comparison_dir = Path(comparison_dir)
    if not (comparison_dir / "comparison.json").exists():
        raise UserError(f"{comparison_dir} holds no comparison.json: not a comparison folder (make one with 'harness compare')")
    if target is not None and not 0 <= target <= 1:
        raise UserError(f"--target is an accuracy between 0 and 1, not {target}")
    html, pdf_path = build_report(comparison_dir, out, target=target, pdf=pdf)
    print(f"report: {html}")
    if pdf_path:
        print(f"report: {pdf_path}")
    return 0
