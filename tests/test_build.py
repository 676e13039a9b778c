"""The installed lbx runs its request path compiled (setup.py), unless built as plain Python."""

from __future__ import annotations

import importlib
import os

import pytest
from conftest import compiled_modules


@pytest.mark.skipif(bool(os.environ.get("LBX_PURE_PYTHON")), reason="built as plain Python")
@pytest.mark.parametrize("name", compiled_modules())
def test_request_path_module_is_compiled(name: str) -> None:
    module = importlib.import_module(name)
    assert not str(module.__file__).endswith(".py"), f"{name} is not compiled: {module.__file__}"
