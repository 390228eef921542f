"""docs/architecture.md quotes the import graph by folder: the table there is the one the code has.

    python tests/test_architecture.py          # print the table
    python tests/test_architecture.py --write  # write it into docs/architecture.md

A cell counts the modules of the row's folder that import a module of the column's folder, pair by pair (a module
importing another counts once, however many names or statements; imports inside functions and TYPE_CHECKING
blocks count, as in tests/test_layers.py). The diagonal is the imports within a folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from test_layers import TIERS, find_cycle, folder_of, import_graph

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BEGIN, END = "<!-- import-graph:begin -->", "<!-- import-graph:end -->"
FOLDERS = [folder for tier in TIERS for folder in tier]


def folder_counts(graph: dict[str, set[str]]) -> dict[tuple[str, str], int]:
    """(importing folder, imported folder) -> the number of module pairs."""
    counts: dict[tuple[str, str], int] = {}
    for module, targets in graph.items():
        for target in targets:
            key = (folder_of(module), folder_of(target))
            counts[key] = counts.get(key, 0) + 1
    return counts


def folder_table(graph: dict[str, set[str]]) -> str:
    """The markdown table: a row per importing folder, a column per imported folder, in tier order."""
    counts = folder_counts(graph)
    modules = {folder: sum(folder_of(m) == folder for m in graph) for folder in FOLDERS}
    lines = ["| imports → | modules | " + " | ".join(FOLDERS) + " | into others |",
             "|---|---:|" + "---:|" * len(FOLDERS) + "---:|"]
    for row in FOLDERS:
        cells = [str(counts.get((row, column), "")) or "·" for column in FOLDERS]
        cells[FOLDERS.index(row)] = f"({counts.get((row, row), 0)})"
        out = sum(n for (a, b), n in counts.items() if a == row and b != row)
        lines.append(f"| **{row}** | {modules[row]} | " + " | ".join(cells) + f" | {out} |")
    return "\n".join(lines)


def folder_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle between folders (the imports within a folder left out), or None."""
    folders: dict[str, set[str]] = {}
    for module, targets in graph.items():
        folders.setdefault(folder_of(module), set()).update(
            folder_of(t) for t in targets if folder_of(t) != folder_of(module))
    return find_cycle(folders)


def doc_table(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def test_the_architecture_doc_quotes_the_import_graph_the_code_has():
    assert doc_table(DOC.read_text()) == folder_table(import_graph()), \
        "the import graph changed: run `python tests/test_architecture.py --write` and commit docs/architecture.md"


def test_no_circle_between_folders_and_the_counts_by_hand():
    assert folder_cycle(import_graph()) is None
    # a hand-made graph: two train modules import one measure module and each other; a command imports both
    graph = {"harness.train.a": {"harness.train.b", "harness.measure.m"}, "harness.train.b": {"harness.measure.m"},
             "harness.commands.c": {"harness.train.a", "harness.train.b"}, "harness.measure.m": set()}
    assert folder_counts(graph) == {("train", "train"): 1, ("train", "measure"): 2, ("commands", "train"): 2}
    assert folder_cycle({**graph, "harness.measure.m": {"harness.commands.c"}}) is not None


if __name__ == "__main__":
    table = folder_table(import_graph())
    if "--write" in sys.argv:
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")
    print(table)
