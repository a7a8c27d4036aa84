"""Kernel choice measured on the machine at hand (why and when: docs/kernels.md,
"Measured on the machine at hand").

The first GEMM of each *shape class* (bit widths, codebooks, tier cap, thread
count, and M, N, K rounded up to powers of two) times every candidate on a trial
GEMM of that class (the first shape seen, capped at TRIAL_MACS multiply-adds a
run), contenders interleaved round-robin, and keeps the one with the lowest time:
the minimum over TRIAL_RUNS runs after a warm-up, which other processes can only
make longer (the medians are recorded too). Results never depend on the choice:
every kernel is exact.

The choice is cached in memory and on disk, in one JSON file per CPU model,
feature set and lowbit version:

* directory: ``$LOWBIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lowbit``, else
  ``~/.cache/lowbit``; an unwritable directory (or ``LOWBIT_CACHE_DIR=""``)
  keeps choices in memory only;
* two processes may tune at once: each writes a whole new file and renames it
  over the old one (atomic), merging what the other wrote; a corrupt or
  foreign file is ignored and rewritten;
* ``LOWBIT_AUTOTUNE=0`` (read at import) or ``lowbit.use(autotune=False)``
  turns measuring off: the fixed order of :data:`lowbit.families.PREFERENCE`
  applies, as it always does where only one kernel qualifies.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
import tempfile
import threading
import time

import numpy as np

from . import _core, _dispatch

FORMAT = 1
TRIAL_RUNS = 7
TRIAL_MACS = 1e8   # multiply-adds per timed run, at most
_LOCK = threading.Lock()
_MEMORY: dict = {}        # shape-class key -> record


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model name", "CPU part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """What a cached choice is valid for: CPU model, usable features, build, version."""
    from . import __version__

    feats = ",".join(k for k, v in sorted(_core.cpu_features().items()) if v)
    emulated = "simde" if getattr(_core, "avx512_emulated", False) else "native"
    return f"{_cpu_model()}|{feats}|{emulated}|lowbit {__version__}|format {FORMAT}"


def cache_path():
    """The JSON file choices persist in, or None (memory only)."""
    d = os.environ.get("LOWBIT_CACHE_DIR")
    if d is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "lowbit")
    if not d:
        return None
    digest = hashlib.sha256(machine_key().encode()).hexdigest()[:16]
    return pathlib.Path(d) / f"dispatch-{digest}.json"


def shape_class(m: int, n: int, k: int) -> tuple:
    """(M, N, K) each rounded up to a power of two."""
    return tuple(1 << max(0, int(x) - 1).bit_length() for x in (m, n, k))


def _read(path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("machine") != machine_key() or not isinstance(data.get("choices"), dict):
        return {}
    return {k: v for k, v in data["choices"].items() if isinstance(v, dict) and isinstance(v.get("kernel"), str)}


def _write(path, record_key: str, record: dict) -> None:
    """Merge one record into the file: read, update, write a temp file, rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        choices = _read(path)
        choices[record_key] = record
        fd, tmp = tempfile.mkstemp(prefix=".dispatch-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"machine": machine_key(), "choices": choices}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only home, full disk...: the choice stays in memory


def lookup(key: str):
    """The cached record for a shape-class key (memory, then disk), or None."""
    with _LOCK:
        hit = _MEMORY.get(key)
        if hit is not None:
            return hit
        path = cache_path()
        if path is not None:  # a new cache file, or another process may have tuned it since
            _MEMORY.update(_read(path))
        return _MEMORY.get(key)


def record_key(bw, ba, cb_w, cb_a, names, cls) -> str:
    threads = _core.get_num_threads()
    return (f"W{bw}A{ba} w{','.join(map(str, cb_w.tolist()))} a{','.join(map(str, cb_a.tolist()))} "
            f"t{threads} M{cls[0]} N{cls[1]} K{cls[2]} | {' '.join(sorted(names))}")


def trial_shape(m: int, n: int, k: int) -> tuple:
    """The GEMM timed for a shape class: the shape itself, capped so a run
    stays under TRIAL_MACS multiply-adds (M shrinks first, to 32 rows)."""
    m, n, k = max(1, min(m, 1024)), max(1, min(n, 1024)), max(1, min(k, 4608))
    m = max(min(m, 32), min(m, int(TRIAL_MACS // (n * k))))
    return m, n, k


def measure(names, bw, ba, cb_w, cb_a, shape) -> dict:
    """{name: (min us, median us)} of each kernel on the trial GEMM, run
    round-robin (TRIAL_RUNS rounds after one warm-up round)."""
    from .ops import gemm
    from .packing import pack_weights

    m, n, k = shape
    rng = np.random.default_rng(1234)
    w = rng.integers(0, 1 << bw, (n, k), dtype=np.uint8)
    a = rng.integers(0, 1 << ba, (m, k), dtype=np.uint8)
    packed = pack_weights(w, bw, cb_w)
    times = {name: [] for name in names}
    for rnd in range(TRIAL_RUNS + 1):
        for name in names:
            with _dispatch.use(kernel=name, autotune=False):
                t0 = time.perf_counter()
                gemm(a, packed, ba, cb_a)
                dt = time.perf_counter() - t0
            if rnd:
                times[name].append(dt)
    return {name: (min(t) * 1e6, float(np.median(t)) * 1e6) for name, t in times.items()}


def choose(names, bw, ba, cb_w, cb_a, m, n, k) -> dict:
    """{"kernel": fastest name, "us": {name: min us}, "median_us": {...},
    "trial": [m, n, k]} for this shape class: cached, or measured now and stored."""
    cls = shape_class(m, n, k)
    key = record_key(bw, ba, cb_w, cb_a, names, cls)
    hit = lookup(key)
    if hit is not None and hit["kernel"] in names:
        return hit
    trial = trial_shape(m, n, k)
    us = measure(names, bw, ba, cb_w, cb_a, trial)
    fastest = {name: round(t[0], 2) for name, t in us.items()}   # as recorded and shown by explain()
    record = {"kernel": min(fastest, key=fastest.get),  # the first of equal figures, as explain() lists them
              "us": fastest, "median_us": {name: round(t[1], 2) for name, t in us.items()},
              "trial": list(trial)}
    with _LOCK:
        _MEMORY[key] = record
    path = cache_path()
    if path is not None:
        _write(path, key, record)
    return record


def clear_memory() -> None:
    """Forget in-memory choices (the disk cache stays): for tests."""
    with _LOCK:
        _MEMORY.clear()
