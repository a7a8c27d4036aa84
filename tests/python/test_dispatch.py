"""Runtime dispatch: tiers, LOWBIT_ISA / lowbit.use caps, the registry, info()."""
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import lowbit
from lowbit import _dispatch

from conftest import IS_ARM64, IS_X86, assert_best_of_its_family, python_command

X86_TIERS = ["scalar", "avx2", "avx512", "avx512icl"]
ARM64_TIERS = ["scalar", "neon", "neondot", "neoni8mm"]
TIERS = X86_TIERS if IS_X86 else ARM64_TIERS if IS_ARM64 else ["scalar"]


def run_py(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([*python_command(), "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


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
    assert list(_dispatch.TIERS) == TIERS  # the build's architecture chain
    sup = lowbit.supported_tiers()
    assert sup[0] == "scalar"
    assert sup == TIERS[:len(sup)]


def test_info_reports_features_tiers_and_choice():
    info = lowbit.info()
    if IS_X86:
        assert set(info["features"]) >= {"avx2", "avx512f", "avx512bw", "avx512vbmi", "avx512vnni"}
    if IS_ARM64:
        assert set(info["features"]) >= {"asimd", "asimddp", "i8mm"}
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
        if tier in ("scalar", "avx2", "neon"):  # W2A2's family (grouplut) has a kernel at these tiers
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
        pytest.skip("this CPU has no SIMD tier (only scalar kernels are available): no kernel above a scalar cap")
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


@pytest.mark.skipif(not os.environ.get("LOWBIT_EXPECT_TIER"),
                    reason="LOWBIT_EXPECT_TIER not set (scripts/test-aarch64.sh sets it per emulated CPU)")
def test_best_tier_is_the_expected_one():
    """Under emulation the script names the tier each guest CPU must reach
    (cortex-a72: neon, neoverse-n1: neondot, max: neoni8mm): HWCAP detection
    must find exactly it, and every kernel of that tier must be available."""
    expected = os.environ["LOWBIT_EXPECT_TIER"]
    assert lowbit.supported_tiers()[-1] == expected
    assert lowbit.supported_tiers() == TIERS[:TIERS.index(expected) + 1]
    mine = [k for k in lowbit.kernels() if k["tier"] == expected]
    assert mine and all(k["available"] for k in mine)
    assert not any(k["available"] for k in lowbit.kernels() if k["tier"] not in lowbit.supported_tiers())


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.skipif(not IS_X86, reason="x86-64 emulation check (Arm64: scripts/test-aarch64.sh)")
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
