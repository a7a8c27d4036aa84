"""Small lowbit.Model graphs built from NumPy alone (no torch): the models the
robustness, stress and fuzz tests run. Every graph is deterministic in `seed`."""
import numpy as np

from lowbit.runtime import Model, Node


def _quantize(name, src, bits, step):
    return Node(name, "quantize", [src], {"bits": bits, "signed": False, "binary": False, "qn": 0,
                                          "qp": (1 << bits) - 1, "step": step, "levels": list(range(1 << bits))})


def _layer(name, op, src, w_codes, rng, w_bits, a_bits, requant=None, clamp=(0.0, None), **conv):
    cout = w_codes.shape[0]
    attrs = {"w_bits": w_bits, "a_bits": a_bits, "w_codebook": list(range(-(1 << (w_bits - 1)), 1 << (w_bits - 1))),
             "a_codebook": list(range(1 << a_bits)), "clamp": list(clamp), "requant": requant,
             "residual": False, "bn": False}
    attrs.update(conv)
    arrays = {"w_codes": w_codes, "scale": rng.uniform(0.01, 0.05, cout).astype(np.float32),
              "bias": rng.uniform(-0.5, 0.5, cout).astype(np.float32)}
    return Node(name, op, [src], attrs, arrays)


def small_cnn(seed=0, w_bits=2, a_bits=2, channels=3, size=12, width=16, classes=10) -> Model:
    """input -> quantize -> conv3x3 (requant) -> conv3x3 s2 (float) -> global
    avgpool -> flatten -> quantize -> linear: W{w_bits}A{a_bits}, any input
    size that the convolutions accept (spatial size free)."""
    rng = np.random.default_rng(seed)
    conv = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    nodes = [
        Node("input", "input", [], {"channels": channels, "height": size, "width": size, "spatial_fixed": False}),
        _quantize("q0", "input", a_bits, 0.25),
        _layer("conv1", "conv", "q0", rng.integers(0, 1 << w_bits, (width, channels, 3, 3), dtype=np.uint8), rng,
               w_bits, a_bits, requant={"bits": a_bits, "step": 0.5, "signed": False}, **conv),
        _layer("conv2", "conv", "conv1", rng.integers(0, 1 << w_bits, (width, width, 3, 3), dtype=np.uint8), rng,
               w_bits, a_bits, **dict(conv, stride=[2, 2])),
        Node("pool", "adaptive_avgpool", ["conv2"], {"output_size": [1, 1]}),
        Node("flat", "flatten", ["pool"]),
        _quantize("q1", "flat", a_bits, 0.5),
        _layer("fc", "linear", "q1", rng.integers(0, 1 << w_bits, (classes, width), dtype=np.uint8), rng,
               w_bits, a_bits, clamp=(None, None)),
    ]
    return Model(nodes, {"name": f"small_cnn W{w_bits}A{a_bits} seed {seed}"})


def images(seed, n, channels=3, size=12) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, channels, size, size)).astype(np.float32)


def conv_nhwc_float64(x, w, b, stride, pad, dil, groups):
    """float64 direct NHWC convolution, weights (Cout, Cin/groups, kh, kw): the oracle the
    float32 layers are compared with (another summation order, far more precision)."""
    x = x.astype(np.float64)
    n, h, wd, c = x.shape
    cout, cg, kh, kw = w.shape
    xp = np.zeros((n, h + 2 * pad[0], wd + 2 * pad[1], c))
    xp[:, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, oh, ow, cout))
    opg = cout // groups
    for o in range(cout):
        gi = o // opg
        for ky in range(kh):
            for kx in range(kw):
                patch = xp[:, ky * dil[0]:ky * dil[0] + stride[0] * (oh - 1) + 1:stride[0],
                           kx * dil[1]:kx * dil[1] + stride[1] * (ow - 1) + 1:stride[1], gi * cg:(gi + 1) * cg]
                out[..., o] += patch @ w[o, :, ky, kx].astype(np.float64)
    return out + b
