"""The installed lbx runs its request path compiled (setup.py), unless built as plain Python."""

from __future__ import annotations

import importlib
import os
import shutil
import sysconfig

import pytest
from conftest import compiled_modules


def has_c_compiler() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(compiler) is not None


@pytest.mark.skipif(bool(os.environ.get("LBX_PURE_PYTHON")), reason="built as plain Python")
@pytest.mark.skipif(not has_c_compiler(), reason="no C compiler: installed as plain Python")
@pytest.mark.parametrize("name", compiled_modules())
def test_request_path_module_is_compiled(name: str) -> None:
    module = importlib.import_module(name)
    assert not str(module.__file__).endswith(".py"), f"{name} is not compiled: {module.__file__}"
