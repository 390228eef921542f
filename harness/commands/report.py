"""`harness report`: the HTML and PDF report of a comparison folder."""

from __future__ import annotations

import contextlib
from pathlib import Path

from harness import UserError
from harness.report import build_report
from harness.results.io import FolderLock, check_writable, command_line, read_json_object, refuse_if_being_written
from harness.results.safe_io import arm_folders


def report(comparison_dir: Path | str, out: Path | str | None = None, target: float | None = None,
           pdf: bool = True) -> int:
    comparison_dir = Path(comparison_dir)
    if not (comparison_dir / "comparison.json").exists():
        raise UserError(f"{comparison_dir} holds no comparison.json: not a comparison folder (make one with 'harness compare')")
    if target is not None and not 0 <= target <= 1:
        raise UserError(f"--target is an accuracy between 0 and 1, not {target}")
    plan = read_json_object(comparison_dir / "comparison.json", {"arms": list})
    refuse_if_being_written(comparison_dir, *arm_folders(comparison_dir, plan))
    check_writable(out or comparison_dir, "report folder")
    # the report goes into the comparison folder unless --out says elsewhere: then this is its writer
    inside = out is None or Path(out).resolve() == comparison_dir.resolve()
    with FolderLock(comparison_dir, command_line()) if inside else contextlib.nullcontext():
        html, pdf_path = build_report(comparison_dir, out, target=target, pdf=pdf)
    print(f"report: {html}")
    if pdf_path:
        print(f"report: {pdf_path}")
    return 0
