"""The examples in the public docstrings run and print what they say."""

import doctest

import pytest

import fastln
from fastln import _ops, modules, reference


@pytest.mark.parametrize("module", [fastln, _ops, modules, reference], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
