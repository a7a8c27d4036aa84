"""The lowbit command line (python -m lowbit ...): info, convert, run, bench, demo (and demo --train)."""
import json
import os
import subprocess

import numpy as np
import pytest

import lowbit

from conftest import fashion_mnist_or_skip, optional_import, python_command

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _lowbit(*args, timeout=300, env=None):
    e = dict(os.environ, **(env or {}))
    r = subprocess.run([*python_command(), "-m", "lowbit", *args], capture_output=True, text=True, timeout=timeout,
                       cwd=REPO, env=e)
    assert r.returncode == 0, f"lowbit {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_info():
    out = _lowbit("info")
    assert "kernel registry" in out and "W2A2:" in out
    for k in lowbit.kernels():
        assert k["name"] in out
    info = json.loads(_lowbit("info", "--json"))
    assert info["version"] == lowbit.__version__ and info["kernels"]


def test_help_lists_commands():
    out = _lowbit("--help")
    for cmd in ("info", "demo", "bench", "convert", "run"):
        assert cmd in out


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    optional_import("torch")
    path = tmp_path_factory.mktemp("cli") / "fmnist.lowbit"
    out = _lowbit("convert", "-o", str(path))
    assert "converted" in out and path.exists()
    return path


def test_run_fmnist_and_npy(saved_model, tmp_path):
    fashion_mnist_or_skip("test")  # without it, `run --fmnist` falls back to digits: this model is no classifier there
    out = _lowbit("run", str(saved_model), "--fmnist", "300", "--threads", "1")
    acc = float(out.split("top-1 accuracy:")[1].split("%")[0])
    assert acc > 85.0
    x = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _lowbit("run", str(saved_model), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), lowbit.load(saved_model)(x))


def test_bench(saved_model):
    out = _lowbit("bench", str(saved_model), "--batch", "1,4", "--repeats", "2", "--top", "3")
    assert "batch 1: median" in out and "batch 4: median" in out


def test_demo_quick():
    optional_import("torch")
    out = _lowbit("demo", "--limit", "300", "--rounds", "1", "--min-time", "0.005")
    for s in ("torch fp32", "W2A2 fake-quant (torch)", "W2A2 lowbit runtime", "top-1 agreement",
              "batch 1 latency", "Model size", "lowbit file"):
        assert s in out, s
    agree = float(out.split("top-1 agreement ")[1].split("%")[0])
    assert agree >= 99.5


@pytest.mark.slow  # trains an epoch: 20-35 s on two shared cores
def test_demo_train_uses_the_training_script(tmp_path):
    optional_import("torch")
    out = _lowbit("demo", "--train", "--data-dir", str(tmp_path), "--epochs", "1", "--width", "8",
                  "--limit-train", "512", "--no-progress", "--limit", "200", "--rounds", "1", "--min-time", "0.005",
                  "--no-codes", env={"LOWBIT_TRAIN_SCRIPT": os.path.join(REPO, "scripts", "train_fmnist.py")})
    assert (tmp_path / "fmnist_w2a2_qat.pt").exists() and (tmp_path / "fmnist_train.json").exists()
    assert "W2A2 lowbit runtime" in out and str(tmp_path) in out


def test_python_m_lowbit_demo_help():
    out = _lowbit("demo", "--help")
    assert "--train" in out
