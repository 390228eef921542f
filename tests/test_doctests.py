"""The examples in docstrings run, so that they stay true."""

import doctest
import importlib
import pkgutil

import pytest

import harness

MODULES = sorted(info.name for info in pkgutil.walk_packages(harness.__path__, "harness.")
                 if not info.name.endswith("__main__"))
# harness.algorithms and harness.tasks live in their own folders: walk them too
for package in ("harness.algorithms", "harness.tasks"):
    module = importlib.import_module(package)
    MODULES += sorted(info.name for info in pkgutil.walk_packages(module.__path__, f"{package}."))
MODULES = sorted(set(MODULES))


def with_examples(name: str) -> bool:
    module = importlib.import_module(name)
    return any(test.examples for test in doctest.DocTestFinder().find(module))


@pytest.mark.parametrize("name", [m for m in MODULES if with_examples(m)])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_examples_are_found():
    # the walk above must reach the modules that hold examples; a broken walk would test nothing
    expected = {"harness.train.rollout", "harness.measure.step_meter", "harness.tasks.gym"}
    assert expected <= {m for m in MODULES if with_examples(m)}
