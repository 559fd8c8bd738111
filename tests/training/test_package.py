"""The training package's lazy public API: every name resolves from the module that defines it."""

from __future__ import annotations

import importlib

from edgecascade import training


def test_public_api_names_the_module_that_defines_each_name() -> None:
    assert sorted(training.__all__) == training.__all__
    for name, module_name in training._EXPORTS.items():
        value = getattr(training, name)
        module = importlib.import_module(module_name)
        assert getattr(module, name) is value, name
        defined_in = getattr(value, "__module__", module_name)  # constants have no __module__
        assert defined_in == module_name or name in getattr(module, "__all__", ()), (name, defined_in)
