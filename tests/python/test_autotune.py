"""Measured kernel choice (lowbit.autotune): exact whatever it picks, cached on
disk per machine, safe with a corrupt file, a read-only directory or two
processes at once, and off with LOWBIT_AUTOTUNE=0 / use(autotune=False)."""
import json
import os
import subprocess

import numpy as np
import pytest

import lowbit
from lowbit import autotune, ops

from conftest import python_command


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    autotune.clear_memory()
    yield tmp_path
    autotune.clear_memory()


SHAPES = [(1, 70, 300), (37, 64, 576), (300, 130, 147)]


@pytest.mark.parametrize("bw,ba", [(1, 1), (2, 2), (1, 2), (3, 3), (4, 4)])
@pytest.mark.parametrize("strategy", [None, "fastest"])
def test_measured_choice_is_exact(cache_dir, bw, ba, strategy, rng):
    for m, n, k in SHAPES:
        w = rng.integers(0, 1 << bw, (n, k), dtype=np.uint8)
        a = rng.integers(0, 1 << ba, (m, k), dtype=np.uint8)
        with lowbit.use(autotune=True, strategy=strategy):
            y = lowbit.gemm(a, lowbit.pack_weights(w, bw), ba)
            ran = lowbit.last_kernel()
            text = lowbit.explain(m, n, k, a_bits=ba, w_bits=bw)
        np.testing.assert_array_equal(y, lowbit.reference.gemm(a, w, a_bits=ba, w_bits=bw))
        assert f"kernel {ran} " in text  # explain names what gemm ran
        if "measured here" in text:
            # the chosen kernel is the fastest of the figures shown
            figures = text.split("lowbit.autotune): ", 1)[1].splitlines()[0]
            assert figures.split(" ", 1)[0] == ran


def test_default_keeps_lookup_families_fastest_may_leave_them(cache_dir):
    cb = np.arange(4, dtype=np.int32)
    *_, measured = ops._plan_uncached(2, 2, cb, cb, None, None)
    assert measured and all(o[1].name in ops.LOOKUP_FAMILIES for o in measured)
    *_, measured = ops._plan_uncached(2, 2, cb, cb, None, "fastest")
    assert {o[1].name for o in measured} >= {"grouplut", "dot8"}
    # W4A4 with an exact table (unsigned 4-bit activations x signed 4-bit weights): one MAC per
    # lookup, which plan.slow names slower than dot8, so the measured pool holds both
    w4 = np.arange(-8, 8, dtype=np.int32)
    *_, measured = ops._plan_uncached(4, 4, w4, np.arange(16, dtype=np.int32), None, None)
    assert {o[1].name for o in measured} >= {"grouplut", "dot8"}
    assert {o[1].name for o in measured} <= set(ops.LOOKUP_FAMILIES) | {"dot8"}
    *_, measured = ops._plan_uncached(4, 4, np.arange(16, dtype=np.int32), np.arange(16, dtype=np.int32), None, None)
    assert {o[1].name for o in measured} <= {"dot8", "dotgemm"}  # no exact table: the dot families


def test_choice_persists_on_disk_and_is_reused(cache_dir, monkeypatch):
    names = ("grouplut_4x64__avx2", "a2w2_lutgemm_1x4__avx2")
    if not all(n in lowbit._dispatch._BY_NAME and lowbit._dispatch._BY_NAME[n]["tier"] in lowbit.supported_tiers()
               for n in names):  # no AVX2 here (or not an x86 build)
        names = ("a2w2_lutgemm_1x1__scalar", "grouplut_1x32__scalar")
    cb = np.arange(4, dtype=np.int32)
    rec = autotune.choose(names, 2, 2, cb, cb, 64, 64, 256)
    assert rec["kernel"] in names and set(rec["us"]) == set(names)
    path = autotune.cache_path()
    assert path.parent == cache_dir and path.is_file()
    data = json.loads(path.read_text())
    assert data["machine"] == autotune.machine_key() and len(data["choices"]) == 1
    # a new process state: memory forgotten, the file answers without measuring
    autotune.clear_memory()
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured again"))
    assert autotune.choose(names, 2, 2, cb, cb, 50, 60, 200) == rec  # same shape class
    with pytest.raises(pytest.fail.Exception):
        autotune.choose(names, 2, 2, cb, cb, 1000, 64, 256)  # another class measures


def test_cached_kernel_not_among_candidates_is_remeasured(cache_dir):
    cb = np.arange(4, dtype=np.int32)
    names = ("a2w2_lutgemm_1x1__scalar", "grouplut_1x32__scalar")
    key = autotune.record_key(2, 2, cb, cb, names, autotune.shape_class(8, 8, 64))
    autotune._write(autotune.cache_path(), key, {"kernel": "no_such_kernel", "us": {}})
    assert autotune.choose(names, 2, 2, cb, cb, 8, 8, 64)["kernel"] in names


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b'{"machine": "other", "choices": {}}',
                                     b"\xff\xfe\x00garbage"])
def test_corrupt_or_foreign_cache_file_is_ignored_and_rewritten(cache_dir, content):
    path = autotune.cache_path()
    path.write_bytes(content)
    cb = np.arange(4, dtype=np.int32)
    names = ("a2w2_lutgemm_1x1__scalar", "grouplut_1x32__scalar")
    assert autotune.choose(names, 2, 2, cb, cb, 8, 8, 64)["kernel"] in names
    assert json.loads(path.read_text())["machine"] == autotune.machine_key()


def test_unwritable_cache_dir_keeps_choices_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(blocker / "sub"))  # cannot be created
    autotune.clear_memory()
    cb = np.arange(4, dtype=np.int32)
    names = ("a2w2_lutgemm_1x1__scalar", "grouplut_1x32__scalar")
    rec = autotune.choose(names, 2, 2, cb, cb, 8, 8, 64)
    assert autotune.lookup(autotune.record_key(2, 2, cb, cb, names, autotune.shape_class(8, 8, 64))) == rec
    monkeypatch.setenv("LOWBIT_CACHE_DIR", "")
    assert autotune.cache_path() is None
    autotune.clear_memory()


_TUNE = """
import numpy as np, lowbit
rng = np.random.default_rng({seed})
for m, k in ((3, 100), (40, 600), (500, 90)):
    w = rng.integers(0, 4, (50, k), dtype=np.uint8); a = rng.integers(0, 4, (m, k), dtype=np.uint8)
    with lowbit.use(autotune=True, strategy="fastest"):
        y = lowbit.gemm(a, lowbit.pack_weights(w, 2), 2)
    assert (y == lowbit.reference.gemm(a, w, 2, 2)).all()
print(lowbit.explain(3, 50, 100, a_bits=2, w_bits=2).count("measured here"))
"""


def test_two_processes_tuning_at_once_leave_a_valid_file(cache_dir):
    env = dict(os.environ, LOWBIT_CACHE_DIR=str(cache_dir), LOWBIT_AUTOTUNE="1")
    procs = [subprocess.Popen([*python_command(), "-c", _TUNE.format(seed=s)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == "1"
    files = list(cache_dir.glob("dispatch-*.json"))
    assert len(files) == 1 and not list(cache_dir.glob(".dispatch-*"))  # no temp file left behind
    choices = json.loads(files[0].read_text())["choices"]
    assert len(choices) >= 3  # the three shape classes (each process's, merged)


def test_env_var_turns_measuring_off(cache_dir):
    code = ("import lowbit; t = lowbit.explain(40, 50, 600, a_bits=2, w_bits=2); "
            "print('measured here' in t, lowbit._dispatch.autotune_enabled())")
    env = dict(os.environ, LOWBIT_CACHE_DIR=str(cache_dir))
    for value, expect in (("0", "False False"), ("1", "True True")):
        env["LOWBIT_AUTOTUNE"] = value
        r = subprocess.run([*python_command(), "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip() == expect


def test_use_autotune_argument_checked():
    with pytest.raises(TypeError, match="autotune"):
        with lowbit.use(autotune="yes"):
            pass
    with lowbit.use(autotune=False):
        assert "measured here" not in lowbit.explain(40, 50, 600, a_bits=2, w_bits=2)
