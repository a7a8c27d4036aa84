"""lowbit: 1- to 4-bit neural-network inference on CPUs with lookup-table kernels.

Core API (NumPy only)::

    packed = lowbit.pack_weights(w_codes, bits=2, codebook=None)   # (N, K) uint8 codes
    y = lowbit.gemm(a_codes, packed, a_bits=2, a_codebook=None)    # (M, K) uint8 -> (M, N) int32
    pa = lowbit.pack_activations(a_codes, bits=2)                  # pack once, reuse
    y = lowbit.gemm(pa, packed)
"""
from . import _core, reference  # noqa: F401  (lowbit.reference: the public NumPy oracles)
from ._dispatch import cpu_features, kernels, last_kernel, supported_tiers, use
from .conv import ConvWeights, conv2d, dwconv_kernels, linear, pack_activations_nhwc
from .epilogue import Epilogue, Requant
from .ops import explain, gemm
from .packing import PackedActivations, PackedWeights, pack_activations, pack_weights

__version__ = "0.1.0"


def get_num_threads() -> int:
    """Threads lowbit kernels use (default: the CPUs in this process's affinity mask)."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use n threads (n <= 0 restores the default). Results do not depend on n."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def info() -> dict:
    """CPU features, usable tiers and the registry, with the kernel gemm would
    pick for W2A2 (default codebooks) marked."""
    from . import _dispatch, ops

    try:
        _, _, chosen, _, _ = ops._plan_for(2, 2, *(__import__("numpy").arange(4, dtype="int32"),) * 2)
        chosen_name = chosen["name"]
    except Exception as exc:  # a bad LOWBIT_ISA still lets info() report
        chosen_name = f"error: {exc}"
    ks = [dict(k, selected_for_w2a2=k["name"] == chosen_name) for k in kernels()]
    return {
        "version": __version__,
        "features": cpu_features(),
        "avx512_emulated": bool(_core.avx512_emulated),
        "tiers": supported_tiers(),
        "tier_cap": _dispatch.tier_cap() if not chosen_name.startswith("error") else chosen_name,
        "num_threads": get_num_threads(),
        "kernels": ks,
        "w2a2_kernel": chosen_name,
    }


__all__ = [
    "ConvWeights", "Epilogue", "PackedActivations", "PackedWeights", "Requant", "conv2d", "dwconv_kernels", "linear",
    "pack_activations_nhwc", "cpu_features", "explain", "gemm", "get_num_threads", "info",
    "kernels", "last_kernel", "pack_activations", "pack_weights", "set_num_threads", "supported_tiers", "use",
]

# Model runtime, PyTorch conversion (torch imported only when convert() runs), save/load.
from .errors import ConversionError  # noqa: E402
from .runtime.model import Model  # noqa: E402
# lowbit.convert is the function; the module's other names import as usual
# (from lowbit.convert import compare).
from .frontends.pytorch import convert  # noqa: E402
from .runtime.io import LowbitFormatError, load  # noqa: E402
from .frontends.qonnx import from_qonnx  # noqa: E402  (onnx/qonnx are imported only when it runs)

__all__ += ["ConversionError", "LowbitFormatError", "Model", "convert", "load", "from_qonnx"]

# Short names (package layout: docs/architecture.md), one table: lowbit.qat is lowbit.train.qat,
# as an attribute (loaded on first use, so `import lowbit` stays NumPy-only) and as an import
# (`import lowbit.qat`, `from lowbit.convert import compare`; _ShortNameFinder returns the real module).
_SHORT_NAMES = {"qat": "train.qat", "models": "train.models", "datasets": "train.datasets", "cli": "apps.cli",
                "demo": "apps.demo", "scoring": "apps.scoring", "ray": "apps.ray", "convert": "frontends.pytorch",
                "qonnx": "frontends.qonnx", "qonnx_float": "frontends.qonnx_float",
                "qonnx_parity": "frontends.qonnx_parity", "qonnx_bench": "frontends.qonnx_bench",
                "lowering": "frontends.lowering", "executor": "runtime.executor", "io": "runtime.io",
                "floatops": "runtime.floatops", "autotune": "autotune", "quant": "quant"}


def __getattr__(name):
    if name in _SHORT_NAMES:
        import importlib

        return importlib.import_module(f".{_SHORT_NAMES[name]}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _ShortNameFinder:
    """Import hook for ``import lowbit.<short name>``: returns the real module
    (lowbit.train.qat for lowbit.qat) under the short name too, its own spec kept."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        package, _, short = fullname.partition(".")
        if package != __name__ or _SHORT_NAMES.get(short, short) == short:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(fullname, _ShortNameFinder)

    @staticmethod
    def create_module(spec):
        import importlib

        module = importlib.import_module(f"{__name__}.{_SHORT_NAMES[spec.name.partition('.')[2]]}")
        spec.loader_state = module.__spec__  # restored by exec_module
        return module

    @staticmethod
    def exec_module(module):
        # the import system set the short name's spec on the real module; give it its own back
        module.__spec__ = module.__spec__.loader_state


import sys as _sys  # noqa: E402

if not any(isinstance(f, type) and f.__name__ == "_ShortNameFinder" for f in _sys.meta_path):
    _sys.meta_path.append(_ShortNameFinder)
for _short, _real in _SHORT_NAMES.items():
    if f"{__name__}.{_real}" in _sys.modules and _real != _short:
        _sys.modules.setdefault(f"{__name__}.{_short}", _sys.modules[f"{__name__}.{_real}"])
