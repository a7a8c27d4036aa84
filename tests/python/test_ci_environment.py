"""Tests of optional parts skip where their dependency is absent (an Arm
emulator has no torch, a user may install only the core). In CI, where
scripts/setup.sh installs every extra, a missing one must fail instead of
turning tests into silent skips."""
import importlib
import os

import pytest

EXTRAS = ("torch", "onnx", "onnxruntime", "qonnx", "brevitas", "ray", "pyarrow", "PIL", "hypothesis")


@pytest.mark.skipif(os.environ.get("CI", "").lower() not in ("true", "1"), reason="only checked in CI (CI=true)")
@pytest.mark.parametrize("module", EXTRAS)
def test_ci_installed_every_extra(module):
    importlib.import_module(module)
