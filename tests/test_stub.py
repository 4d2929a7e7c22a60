"""The hand-written _cpu.pyi stub matches the compiled module."""

import ast
import inspect
from pathlib import Path

import pytest

from fastln import _cpu


def _stub_functions():
    stub = Path(_cpu.__file__).with_name("_cpu.pyi")
    if not stub.exists():
        pytest.fail(f"{stub} is not installed beside the extension")
    tree = ast.parse(stub.read_text())
    return {node.name: [a.arg for a in node.args.args]
            + ([node.args.vararg.arg] if node.args.vararg else [])
            for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_stub_lists_every_public_function_with_its_parameters():
    stubbed = _stub_functions()
    compiled = {name: obj for name, obj in vars(_cpu).items()
                if callable(obj) and not name.startswith("_") and not isinstance(obj, type)
                and getattr(obj, "__module__", "") == "fastln._cpu"}
    assert sorted(stubbed) == sorted(compiled)
    for name, func in compiled.items():
        assert list(inspect.signature(func).parameters) == stubbed[name], name
