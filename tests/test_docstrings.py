"""Every runnable example in lowp_ops's docstrings runs and prints what it shows (the README's promise that the
public API works as written starts here)."""

import ast
import doctest
import importlib
import inspect
import pkgutil

import pytest
from torch._library.custom_ops import CustomOpDef

import lowp_ops


def _op_examples(module) -> list[doctest.DocTest]:
    """The examples of the module's torch.ops.lowp registrations: triton_op turns each function into a CustomOpDef,
    which keeps no docstring, so doctest's finder never sees them; they are read from the source instead."""
    parser, tests = doctest.DocTestParser(), []
    for node in ast.parse(inspect.getsource(module)).body:
        doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
        if doc and isinstance(getattr(module, node.name, None), CustomOpDef):
            tests.append(parser.get_doctest(doc, dict(vars(module)), f"{module.__name__}.{node.name}",
                                            module.__file__, node.lineno))
    return [t for t in tests if t.examples]


def _examples(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    return [t for t in doctest.DocTestFinder().find(module) if t.examples] + _op_examples(module)


def _with_examples() -> list[str]:
    names = ["lowp_ops"] + sorted(m.name for m in pkgutil.walk_packages(lowp_ops.__path__, "lowp_ops."))
    return [n for n in names if _examples(n)]


MODULES = _with_examples()


def test_the_public_api_has_examples():
    assert {"lowp_ops", "lowp_ops.registry.api", "lowp_ops.registry.workflows", "lowp_ops.registry.handlers",
            "lowp_ops.registry.configs", "lowp_ops.ops.int8", "lowp_ops.ops.fp8", "lowp_ops.ops.quantize",
            "lowp_ops.ops.conv", "lowp_ops.nn.fp8"} <= set(MODULES)
    ops = {t.name.rpartition(".")[2] for t in _op_examples(importlib.import_module("lowp_ops.ops.fp8"))}
    assert ops == {"fp8_mm", "fp8_linear"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in _examples(name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} of {result.attempted} failed in {name}"
