"""Max pooling on the native executor's paths: the AVX2 float twin's channel blocks (up to 64
channels in registers per pass over the window) against the scalar rule, byte for byte."""
import numpy as np
import pytest

from lowbit import _core
from lowbit.runtime import model as rt


def _geometry(shape, window):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = window
    b, h, w, c = shape
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    attrs = {"kernel": [kh, kw], "stride": [sh, sw], "padding": [ph, pw], "dilation": [dh, dw]}
    return (b, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow), attrs


def _awkward(rng, shape):
    """float32 values with NaN, +-inf, -0.0, +0.0 and repeated values mixed in."""
    x = rng.integers(-3, 4, shape).astype(np.float32) * np.float32(0.5)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -np.nan], np.float32)
    mask = rng.random(shape) < 0.08
    x[mask] = special[rng.integers(0, len(special), int(mask.sum()))]
    return x


@pytest.mark.parametrize("c", [8, 16, 24, 40, 56, 64, 72, 100, 128, 136])
@pytest.mark.parametrize("window", [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 3), (1, 2), (0, 1), (2, 1)),
                                    ((5, 5), (1, 1), (2, 2), (1, 1))])
def test_float_maxpool_channel_blocks_match_the_scalar_rule(rng, c, window):
    x = _awkward(rng, (2, 9, 10, c))
    geometry, attrs = _geometry(x.shape, window)
    scalar = _core.executor_maxpool_nhwc(x, geometry, False)
    simd = _core.executor_maxpool_nhwc(x, geometry, True)
    assert simd.tobytes() == scalar.tobytes()
    assert np.array_equal(scalar, rt.maxpool(x, attrs, native=False), equal_nan=True)
