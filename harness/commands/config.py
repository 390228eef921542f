"""`harness config`: every field of the config (the sections' and each algorithm's options) with its type,
default, bounds or choices and description; with a preset, --config or --set, the resolved value beside the
default. `--json` for machines; `--markdown` for the README's table (`--markdown README.md` rewrites it there).

    harness config                       # every field, the schema's defaults
    harness config rollout --preset smoke  # the rollout section, and what the smoke preset makes of it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness import UserError
from harness.config.reference import (FieldRow, cross_check_lines, field_rows, markdown_table, readme_table,
                                      section_descriptions, value_text, with_readme_table)
from harness.config.schema import Config
from harness.results.io import atomic_write_text


def config_command(config: Config | None = None, prefix: str | None = None, as_json: bool = False,
                   markdown: str | None = None, echo=print) -> int:
    """Print the fields (those under `prefix`, e.g. 'rollout' or 'algorithms.ppo'), with `config`'s values when
    given. `markdown`: '-' prints the README's table, a path rewrites the table between its markers there."""
    if markdown is not None:
        return write_markdown(markdown, echo)
    rows = field_rows(config, prefix)
    if as_json:
        echo(json.dumps({"preset": config.preset if config else None, "fields": [r.to_dict() for r in rows]},
                        indent=1, default=str))
        return 0
    render(rows, config, cross_checks=not prefix or prefix.rstrip(".") == "algorithms")
    return 0


def write_markdown(target: str, echo) -> int:
    table = markdown_table()
    if target == "-":
        echo(table)
        return 0
    path = Path(target)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if readme_table(text) == table:
        echo(f"{path}: the configuration table is up to date")
        return 0
    atomic_write_text(path, with_readme_table(text, table))
    echo(f"{path}: configuration table rewritten from the schema")
    return 0


def render(rows: list[FieldRow], config: Config | None, cross_checks: bool = True) -> None:
    """One table per section: field, type, default (and the config's value), allowed values, description;
    `cross_checks`: then what the cross-checks' sections take."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    console = Console() if sys.stdout.isatty() else Console(width=160)
    by_section: dict[str, list[FieldRow]] = {}
    for row in rows:
        by_section.setdefault(row.section, []).append(row)
    descriptions = section_descriptions(list(by_section))
    for section, members in by_section.items():
        title = f"{section or 'config'}: {descriptions.get(section, '')}".rstrip(": ")
        table = Table(title=escape(title), title_justify="left")
        table.add_column("field", no_wrap=True)
        table.add_column("type", no_wrap=True)
        table.add_column("default")
        if config is not None:
            table.add_column("value")
        table.add_column("allowed")
        table.add_column("description")
        for row in members:
            value = [] if config is None else [shown_value(row)]
            table.add_row(*map(escape, (row.name, row.type, value_text(row.default))), *value,
                          *map(escape, (row.allowed(), row.description)))
        console.print(table)
    if config is not None:
        console.print(f"value: preset {escape(config.preset)} with the given --config, flags and --set "
                      "(bold where it is not the default)")
    if cross_checks:
        for line in cross_check_lines():
            console.print(line)


def shown_value(row: FieldRow) -> str:
    """The config's value (rich markup), bold where it is not the default."""
    from rich.markup import escape
    text = escape(value_text(row.value))
    return text if row.value == row.default else f"[bold]{text}[/bold]"
