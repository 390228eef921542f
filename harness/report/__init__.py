"""The comparison report: one self-contained HTML page (figures embedded) and a PDF made from it,
with every figure beside them as PNG and SVG files.

    harness report COMPARISON_DIR           -> COMPARISON_DIR/report.html, report.pdf, figures/*.png|svg
    harness report COMPARISON_DIR --out DIR -> DIR/<name>.html, DIR/<name>.pdf, DIR/<name>-figures/

The page answers first whether GRPO needed about half of PPO's resources for the same quality on
this setup (ratios with 95% intervals over seeds, and a reading by a stated rule), then shows what
an expert needs to check how that was measured.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from harness import __version__

__all__ = ["build_report", "render_html", "report_files", "report_paths", "write_pdf"]

TEMPLATES = Path(__file__).parent / "templates"
# A gap in the data renders as nothing rather than stopping the report; the tests make this strict.
UNDEFINED = "ChainableUndefined"


def render_html(comparison_dir: Path | str, target: float | None = None, figures_dir: Path | None = None) -> str:
    """The report page as one HTML string, with nothing outside it (no network, no files); with
    `figures_dir`, each figure is also written there as PNG and SVG."""
    from harness.report.data import load_comparison
    return render_comparison(load_comparison(comparison_dir), target, figures_dir)


def render_comparison(cmp, target: float | None = None, figures_dir: Path | None = None) -> str:
    """render_html of a comparison already loaded (harness.report.data.load_comparison)."""
    import jinja2

    from harness.report import content, verdict
    from harness.report.at_scale import at_scale_section
    from harness.report.figures import render_figures
    from harness.report.stats import LEVEL

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=getattr(jinja2, UNDEFINED), trim_blocks=True, lstrip_blocks=True)
    context = {
        "cmp": cmp, "name": cmp.name, "plan": cmp.plan, "level": LEVEL,
        "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "version": __version__,
        "arms": content.arm_table(cmp), "failed": [a for a in cmp.arms if not a.ok],
        "skipped_lines": [a.bad_lines_note for a in cmp.arms if a.bad_lines],
        "verdict": verdict.verdict_section(cmp, target), "accuracy": content.accuracy_section(cmp),
        "health": content.health_section(cmp), "method": content.method_section(cmp),
        "ranks": content.rank_section(cmp), "at_scale": at_scale_section(cmp.dir, cmp),
        "figures": render_figures(cmp, figures_dir), "css": (TEMPLATES / "report.css").read_text(),
    }
    return env.get_template("report.html.j2").render(**context)


def write_pdf(html: str, pdf_path: Path) -> None:
    """The PDF of `html`, written whole or not at all (a kill mid-way leaves the previous PDF)."""
    import logging

    import weasyprint

    from harness.results.io import atomic_file
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    document = weasyprint.HTML(string=html, base_url=str(pdf_path.parent))
    with atomic_file(pdf_path, "wb") as handle:
        document.write_pdf(handle)


def report_paths(comparison_dir: Path, out_dir: Path | str | None = None) -> tuple[Path, Path, Path]:
    """(html, pdf, figures folder): in the comparison folder by default, else <name>.* in out_dir."""
    if out_dir is None or Path(out_dir).resolve() == comparison_dir.resolve():
        return comparison_dir / "report.html", comparison_dir / "report.pdf", comparison_dir / "figures"
    name = comparison_dir.resolve().name
    out_dir = Path(out_dir)
    return out_dir / f"{name}.html", out_dir / f"{name}.pdf", out_dir / f"{name}-figures"


def build_report(comparison_dir: Path | str, out_dir: Path | str | None = None, target: float | None = None,
                 pdf: bool = True) -> tuple[Path, Path | None]:
    """Write the HTML, the PDF and the figure files (see report_paths); the PDF is None if it could not be made."""
    from harness.report.data import load_comparison
    from harness.results.io import atomic_write_text
    comparison_dir = Path(comparison_dir)
    html_path, pdf_path, figures_dir = report_paths(comparison_dir, out_dir)
    cmp = load_comparison(comparison_dir)
    for arm in cmp.arms:
        if arm.bad_lines:
            print(f"report: warning: {arm.bad_lines_note}", file=sys.stderr)
    html = render_comparison(cmp, target, figures_dir)
    atomic_write_text(html_path, html)
    if not pdf:
        return html_path, None
    try:
        write_pdf(html, pdf_path)
    except Exception as err:  # the HTML stands on its own; say why there is no PDF
        print(f"report: no PDF ({type(err).__name__}: {err})", file=sys.stderr)
        return html_path, None
    return html_path, pdf_path


def report_files(comparison_dir: Path | str, out_dir: Path | str | None = None) -> list[Path]:
    """The files a report of this comparison consists of: page, PDF, and every figure as PNG and SVG."""
    html, pdf, figures = report_paths(Path(comparison_dir), out_dir)
    return [p for p in (html, pdf) if p.exists()] + sorted(figures.glob("*.png")) + sorted(figures.glob("*.svg"))
