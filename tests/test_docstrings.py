"""Every runnable example in lowp_ops's docstrings runs and prints what it shows (the README's promise that the
public API works as written starts here)."""

import doctest
import importlib
import pkgutil

import pytest

import lowp_ops


def _with_examples() -> list[str]:
    names = ["lowp_ops"] + sorted(m.name for m in pkgutil.walk_packages(lowp_ops.__path__, "lowp_ops."))
    finder = doctest.DocTestFinder()
    return [n for n in names if any(t.examples for t in finder.find(importlib.import_module(n)))]


MODULES = _with_examples()


def test_the_public_api_has_examples():
    assert {"lowp_ops", "lowp_ops.registry.api", "lowp_ops.registry.workflows", "lowp_ops.registry.handlers",
            "lowp_ops.registry.configs"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} of {result.attempted} failed in {name}"
