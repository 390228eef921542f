"""The folders' layers point one way, and there is no import circle anywhere.

    cli > commands > {estimate, crosscheck} > {train, report} > {measure, results} > config > {algorithms, tasks}

A folder may import its own modules and any folder of a lower tier; folders of one tier do not import each
other. Every import statement counts: those inside functions and under `if TYPE_CHECKING:` too (both hid
a circle before).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"harness": ROOT / "harness", "harness.algorithms": ROOT / "algorithms", "harness.tasks": ROOT / "tasks"}
# Tiers from the top; a folder may import its own modules and any folder of a later tier.
TIERS = [("cli",), ("commands",), ("estimate", "crosscheck"), ("train", "report"), ("measure", "results"),
         ("config",), ("algorithms", "tasks"), ("harness",)]  # harness: the package's __init__ (UserError)


def module_files() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            modules[name] = path
    return modules


def folder_of(module: str) -> str:
    """The folder a module lives in: 'harness.train.arm' -> 'train'; the CLI's modules -> 'cli';
    the package's own __init__ (UserError, the version) -> 'harness'."""
    if module == "harness.__main__":
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "harness"


def tier_of(module: str) -> int:
    folder = folder_of(module)
    return next(i for i, tier in enumerate(TIERS) if folder in tier)


def may_import(module: str, target: str) -> bool:
    return folder_of(module) == folder_of(target) or tier_of(target) > tier_of(module)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (a package import counts as its __init__)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                base = f"{package}.{base}" if base else package
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (packages importing their own children excepted)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if node.startswith(target + "."):
                continue  # a module importing its own package's __init__ is not a circle we can break
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_every_module_sits_in_a_folder_of_the_map():
    # the top of harness/ keeps only the package's __init__ and __main__; every other module is in a folder
    folders = {f for tier in TIERS for f in tier}
    assert {name for name in module_files() if folder_of(name) not in folders} == set()
    top = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    assert top == ["__init__.py", "__main__.py"]


def test_every_import_points_down_the_tiers():
    wrong = [f"{module} ({folder_of(module)}) imports {target} ({folder_of(target)})"
             for module, targets in import_graph().items() for target in targets if not may_import(module, target)]
    assert wrong == []


def test_algorithms_and_tasks_import_nothing_of_the_engine():
    wrong = [f"{m} imports {t}" for m, targets in import_graph().items() if folder_of(m) in ("algorithms", "tasks")
             for t in targets if folder_of(t) not in ("algorithms", "tasks", "harness")]
    assert wrong == []


def test_nothing_in_algorithms_knows_of_cross_checks():
    text = "\n".join(path.read_text() for path in (ROOT / "algorithms").glob("*.py"))
    assert "crosscheck" not in text and "CROSS_CHECK" not in text and "trl-grpo" not in text


def test_argparse_lives_in_the_cli_only():
    users = [name for name, path in module_files().items()
             if folder_of(name) != "cli" and "argparse" in {n for node in ast.walk(ast.parse(path.read_text()))
                                                         if isinstance(node, (ast.Import, ast.ImportFrom))
                                                         for n in ([a.name for a in node.names]
                                                                   if isinstance(node, ast.Import) else [node.module])}]
    assert users == []


def test_the_checker_finds_a_circle_and_an_upward_import():
    # A test of the test: a hand-made graph with a circle; an engine module importing a command; siblings.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert not may_import("harness.train.runner", "harness.commands.compare")
    assert not may_import("harness.train.runner", "harness.report.data")  # one tier, two folders
    assert not may_import("harness.config.schema", "harness.results.io")
    assert may_import("harness.commands.compare", "harness.train.runner")
    assert may_import("harness.train.arm", "harness.train.rollout")
    assert may_import("harness.config.load", "harness")


def test_help_does_not_import_torch():
    code = "import sys; from harness.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_report_reads_result_files_only():
    wrong = [f"{m} imports {t}" for m, targets in import_graph().items() if folder_of(m) == "report"
             for t in targets if folder_of(t) in ("algorithms", "train", "measure")]
    assert wrong == []
