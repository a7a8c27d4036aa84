"""lowbit.quant's uniform-grid arithmetic: the one place QAT, both front ends, the epilogue, the
runtime and the reference take ranges, rounding, levels and requantization from."""
import numpy as np
import pytest

from lowbit import quant
from lowbit.epilogue import Requant


def test_int_range_and_levels():
    assert quant.int_range(4, True) == (-8, 7) and quant.int_range(4, True, narrow=True) == (-7, 7)
    assert quant.int_range(2, False) == (0, 3) and quant.int_range(2, False, narrow=True) == (0, 2)
    assert quant.int_range(1, True) == (-1, 0)          # QONNX's signed 1-bit integer grid, not the binary one
    assert [quant.bits_for(n) for n in (2, 3, 4, 5, 16, 17, 256, 257)] == [1, 2, 2, 3, 4, 8, 8, None]
    assert quant.grid_levels(range(-7, 8), 4) == list(range(-7, 8)) + [0]
    assert quant.grid_levels([1, 2, 3], 2) == [1, 2, 3, 1]


@pytest.mark.parametrize("qn, qp, binary, requant", [(0, 3, False, {"bits": 2, "step": 0.5, "signed": False}),
                                                     (-8, 7, False, {"bits": 4, "step": 0.5, "signed": True}),
                                                     (-7, 7, False, {"bits": 4, "step": 0.5, "signed": True,
                                                                     "qmin": -7, "qmax": 7}),
                                                     (-1, 0, False, {"bits": 1, "step": 0.5, "signed": True,
                                                                     "qmin": -1, "qmax": 0}),
                                                     (0, 31, False, {"bits": 8, "step": 0.5, "signed": False,
                                                                     "qmin": 0, "qmax": 31}),
                                                     (-1, 1, True, None),
                                                     (0, 2, False, {"bits": 2, "step": 0.5, "signed": False,
                                                                    "qmin": 0, "qmax": 2})])
def test_uniform_grid_requant(qn, qp, binary, requant):
    g = quant.UniformGrid(0.5, qn, qp, binary)
    assert g.requant() == requant
    assert g.levels() == ([-1, 1] if binary else quant.grid_levels(range(qn, qp + 1), g.bits))


def test_quantize_rounds_half_to_even_with_a_true_division():
    x = np.float32([-1.25, -0.25, 0.25, 0.75, 1.25, 9.0, -9.0])
    # x / 0.5 = -2.5, -0.5, 0.5, 1.5, 2.5, 18, -18 -> -2, 0, 0, 2, 2, 7 (clamped), -8 (clamped); code = level + 8
    np.testing.assert_array_equal(quant.quantize_codes(x, 0.5, -8, 7), [6, 8, 8, 10, 10, 15, 0])
    np.testing.assert_array_equal(quant.quantize_codes(np.float32([-0.0, -1e-30, 3.0]), 1.0, 0, 1, binary=True),
                                  [1, 0, 1])


def test_requantize_and_dequantize():
    rq = Requant(2, 0.5, signed=True)
    assert (rq.qmin, rq.qmax) == quant.int_range(2, True) and rq.inv_step == np.float32(2.0)
    assert rq.step64 == 0.5
    # v / 0.5 = -10, -0.5, 0.5, 1.5, NaN, 18 -> -2 (clamped), -0 (half to even), 0, 2, NaN (-> qmin), 1 (clamped)
    v = np.float64([[-5.0, -0.25, 0.25, 0.75, np.nan, 9.0]])
    np.testing.assert_array_equal(quant.requantize(v, rq.step64, rq.qmin, rq.qmax), [[0, 2, 2, 3, 0, 3]])
    np.testing.assert_array_equal(quant.dequantize([-2, -1, 0, 1], np.uint8([0, 3]), 0.5), np.float32([-1.0, 0.5]))
