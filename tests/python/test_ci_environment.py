"""Tests of optional parts skip where their dependency is absent (an Arm
emulator has no torch, a user may install only the core). In CI, where
scripts/setup.sh installs every extra, a missing one must fail instead of
turning tests into silent skips; so must the system packages it installs
(the Fashion-MNIST data set and qemu-user, which other tests skip without)."""
import importlib
import os
import shutil

import pytest

EXTRAS = ("torch", "onnx", "onnxruntime", "qonnx", "brevitas", "brevitas_examples", "ray", "pyarrow", "PIL",
          "hypothesis")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
only_in_ci = pytest.mark.skipif(not IN_CI, reason="only checked in CI (CI=true), where scripts/setup.sh installs "
                                                   "every dependency")


@only_in_ci
@pytest.mark.parametrize("module", EXTRAS)
def test_ci_installed_every_extra(module):
    importlib.import_module(module)


@only_in_ci
def test_ci_installed_fashion_mnist():
    from lowbit import datasets

    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = datasets.load_fashion_mnist(split, allow_fallback=False)
        assert images.shape == (n, 28, 28) and labels.shape == (n,)


@only_in_ci
def test_ci_installed_qemu_user():
    assert shutil.which("qemu-x86_64"), "qemu-user is not installed (test_dispatch's emulation check needs it)"
