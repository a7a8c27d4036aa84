"""Runtime dispatch: tiers, LOWBIT_ISA / lowbit.use caps, the registry, info()."""
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import lowbit

from conftest import assert_best_of_its_family

TIERS = ["scalar", "avx2", "avx512", "avx512icl"]


def run_py(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_registry_fields_and_names():
    ks = lowbit.kernels()
    assert len({k["name"] for k in ks}) == len(ks)
    for k in ks:
        assert k["name"].endswith("__" + k["tier"]), k["name"]
        assert k["tier"] in TIERS
        assert k["family"] in ("lutgemm", "grouplut", "grouplut6", "bitserial", "dot8", "dotgemm")
        assert k["mr"] >= 1 and k["nr"] >= 1
    # every family has a scalar twin of each table kind it offers (an "i32" twin computes every kind)
    for fam, kind in {(k["family"], k["table_kind"]) for k in ks}:
        assert any(k["family"] == fam and k["table_kind"] in (kind, "i32") and k["tier"] == "scalar" for k in ks), \
            (fam, kind)


def test_tiers_form_a_chain():
    sup = lowbit.supported_tiers()
    assert sup[0] == "scalar"
    assert sup == TIERS[:len(sup)]


def test_info_reports_features_tiers_and_choice():
    info = lowbit.info()
    assert set(info["features"]) >= {"avx2", "avx512f", "avx512bw", "avx512vbmi", "avx512vnni"}
    assert info["tiers"] == lowbit.supported_tiers()
    marked = [k for k in info["kernels"] if k["selected_for_w2a2"]]
    assert len(marked) == 1 and marked[0]["name"] == info["w2a2_kernel"]


def test_env_cap_applies_and_names_the_tier():
    code = ("import numpy as np, lowbit; a=np.zeros((2,5),np.uint8); "
            "lowbit.gemm(a, lowbit.pack_weights(np.zeros((3,5),np.uint8),2), 2); print(lowbit.last_kernel())")
    for tier in lowbit.supported_tiers():
        r = run_py(code, LOWBIT_ISA=tier)
        assert r.returncode == 0, r.stderr
        assert_best_of_its_family(r.stdout.strip(), tier)
        if tier in ("scalar", "avx2"):  # every family has kernels at these tiers
            assert r.stdout.strip().endswith("__" + tier)


def test_unsupported_tier_fails_at_selection_not_import():
    missing = [t for t in TIERS if t not in lowbit.supported_tiers()]
    bad = missing[0] if missing else "not-a-tier"
    r = run_py("import lowbit; print('imported')\n"
               "import numpy as np\n"
               "lowbit.gemm(np.zeros((1,4),np.uint8), lowbit.pack_weights(np.zeros((1,4),np.uint8),2), 2)",
               LOWBIT_ISA=bad)
    assert r.stdout.startswith("imported")
    assert r.returncode != 0
    assert "LOWBIT_ISA" in r.stderr and bad in r.stderr


def test_use_caps_and_restores():
    a = np.zeros((2, 5), np.uint8)
    pw = lowbit.pack_weights(np.zeros((3, 5), np.uint8), 2)
    with lowbit.use(isa="scalar"):
        lowbit.gemm(a, pw, 2)
        assert lowbit.last_kernel().endswith("__scalar")
        with lowbit.use(strategy="lutgemm"):
            lowbit.gemm(a, pw, 2)
            assert lowbit.last_kernel() == "a2w2_lutgemm_1x1__scalar"
    lowbit.gemm(a, pw, 2)
    assert_best_of_its_family(lowbit.last_kernel(), lowbit.supported_tiers()[-1])
    assert not lowbit.last_kernel().endswith("__scalar") or lowbit.supported_tiers() == ["scalar"]


def test_forcing_a_tier_above_the_cap_raises():
    above = [k for k in lowbit.kernels() if k["available"] and k["tier"] != "scalar"]
    if not above:
        pytest.skip("only the scalar tier here")
    a = np.zeros((2, 5), np.uint8)
    pw = lowbit.pack_weights(np.zeros((3, 5), np.uint8), 2)
    with lowbit.use(isa="scalar", kernel=above[0]["name"]):
        with pytest.raises(RuntimeError, match="capped"):
            lowbit.gemm(a, pw, 2)


def test_last_kernel_is_per_thread():
    a = np.zeros((2, 5), np.uint8)
    pw = lowbit.pack_weights(np.zeros((3, 5), np.uint8), 2)
    seen = {}

    def worker():
        seen["before"] = lowbit.last_kernel()
        with lowbit.use(isa="scalar"):
            lowbit.gemm(a, pw, 2)
        seen["after"] = lowbit.last_kernel()

    lowbit.gemm(a, pw, 2)
    mine = lowbit.last_kernel()
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["before"] is None and seen["after"].endswith("__scalar")
    assert lowbit.last_kernel() == mine


def test_explain_names_kernel_and_reason():
    text = lowbit.explain(3136, 64, 576, a_bits=2, w_bits=2, a_codebook=[0, 1, 2, 3], w_codebook=[-2, -1, 0, 1])
    assert "kernel" in text and "K_max" in text
    with lowbit.use(strategy="lutgemm"):
        assert "lutgemm" in lowbit.explain(10, 10, 10, a_bits=2, w_bits=2)


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.skipif(QEMU is None or not sys.platform.startswith("linux"), reason="qemu-user not installed")
@pytest.mark.parametrize("cpu,tier", [("Haswell", "avx2"), ("Nehalem", "scalar")])
def test_runs_on_cpus_without_avx512(cpu, tier):
    """The built package imports and computes exactly on an emulated CPU
    without AVX-512 (Haswell) and without AVX at all (Nehalem): no AVX-512
    (or AVX2) instruction leaks into baseline code."""
    code = ("import numpy as np, lowbit\n"
            "r = np.random.default_rng(0)\n"
            "a = r.integers(0, 4, (5, 300), dtype=np.uint8); w = r.integers(0, 4, (70, 300), dtype=np.uint8)\n"
            "for cbw in (None, [3, -128, 127, 5]):\n"
            "    y = lowbit.gemm(a, lowbit.pack_weights(w, 2, cbw), 2)\n"
            "    assert np.array_equal(y, lowbit.reference.gemm(a, w, 2, 2, w_codebook=cbw))\n"
            "print(lowbit.supported_tiers()[-1], lowbit.last_kernel())\n")
    kernel_tiers = {tier}
    if lowbit._core.avx512_emulated and tier == "avx2":
        # SIMDe test build: the AVX-512 tiers run on AVX2 code, and dispatch
        # may pick an AVX2 or an (emulated) AVX-512 kernel there.
        tier, kernel_tiers = "avx512icl", {"avx2", "avx512", "avx512icl"}
    r = subprocess.run([QEMU, "-cpu", cpu, sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    top, kernel = r.stdout.split()
    assert top == tier and kernel.rsplit("__", 1)[1] in kernel_tiers, (top, kernel)
