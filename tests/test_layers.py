"""The layers point one way: cli -> commands -> engine -> algorithms, tasks; no import circle anywhere.

Every import statement counts, those inside functions too (they hid a circle before), except the
ones under `if TYPE_CHECKING:`, which never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"harness": ROOT / "harness", "harness.algorithms": ROOT / "algorithms", "harness.tasks": ROOT / "tasks"}
LAYERS = ["cli", "commands", "engine", "core"]  # each may import its own layer and those after it


def module_files() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            modules[name] = path
    return modules


def layer_of(module: str) -> str:
    if module in ("harness.cli", "harness.__main__"):
        return "cli"
    if module.startswith("harness.commands"):
        return "commands"
    if module.startswith(("harness.algorithms", "harness.tasks")) or module == "harness":
        return "core"
    return "engine"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                lines.add(getattr(child, "lineno", -1))
    return lines


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (a package import counts as its __init__)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
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


def test_every_import_points_down_the_layers():
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            if LAYERS.index(layer_of(target)) < LAYERS.index(layer_of(module)):
                wrong.append(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    assert wrong == []


def test_algorithms_and_tasks_import_nothing_of_the_engine():
    wrong = [f"{m} imports {t}" for m, targets in import_graph().items() if layer_of(m) == "core"
             for t in targets if t.startswith("harness.") and layer_of(t) != "core"]
    assert wrong == []


def test_argparse_lives_in_the_cli_only():
    users = [name for name, path in module_files().items()
             if name != "harness.cli" and "argparse" in {n for node in ast.walk(ast.parse(path.read_text()))
                                                         if isinstance(node, (ast.Import, ast.ImportFrom))
                                                         for n in ([a.name for a in node.names]
                                                                   if isinstance(node, ast.Import) else [node.module])}]
    assert users == []


def test_the_checker_finds_a_circle_and_an_upward_import():
    # A test of the test: a hand-made graph with a circle, and an engine module importing a command.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("harness.runner") == "engine" and layer_of("harness.commands.compare") == "commands"


def test_help_does_not_import_torch():
    code = "import sys; from harness.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_report_reads_result_files_only():
    wrong = [f"{m} imports {t}" for m, targets in import_graph().items() if m.startswith("harness.report")
             for t in targets if t.startswith(("harness.algorithms", "harness.runner", "harness.models", "harness.rollout"))]
    assert wrong == []
