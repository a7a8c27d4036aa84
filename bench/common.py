"""Machine fingerprint, interleaved timing (lowbit.apps.timing, re-exported), GOPS and geometric means."""
import math
import os
import platform
import subprocess
import time
from pathlib import Path

from lowbit.apps.timing import time_interleaved  # noqa: F401 - the bench scripts' protocol

REPO = Path(__file__).resolve().parent.parent
ISA_FLAGS = ["sse4_2", "avx", "avx2", "fma", "bmi2", "f16c", "avx_vnni", "avx512f", "avx512bw",
             "avx512vl", "avx512dq", "avx512vbmi", "avx512_vbmi2", "avx512_vnni",
             "avx512_vpopcntdq", "avx512_bitalg", "gfni", "vpclmulqdq", "amx_int8"]


def _cmd(args, cwd=None):
    try:
        r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def fingerprint():
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    fp = {
        "cpu_model": model or platform.processor(),
        "isa": {f: f in flags for f in ISA_FLAGS},
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": _cmd(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=REPO),
        "git_dirty": bool(_cmd(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO)),
        "compiler": (_cmd(["c++", "--version"]) or "").splitlines()[:1],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "LOWBIT_ISA", "OMP_WAIT_POLICY")
                if k in os.environ},
    }
    fp["compiler"] = fp["compiler"][0] if fp["compiler"] else None
    for mod in ("numpy", "torch", "onnxruntime", "onnx"):
        try:
            fp[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - a fingerprint never fails
            fp[mod] = f"unavailable: {e}"
    try:
        import torch
        fp["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        fp["torch_quantized_engines"] = list(torch.backends.quantized.supported_engines)
    except Exception:  # noqa: BLE001
        pass
    return fp


def gops(m, n, k, seconds):
    return 2.0 * m * n * k / seconds / 1e9


def geomean(values, weights=None):
    vals = [(v, w) for v, w in zip(values, weights or [1] * len(values)) if v and v > 0]
    if not vals:
        return None
    return math.exp(sum(w * math.log(v) for v, w in vals) / sum(w for _, w in vals))
