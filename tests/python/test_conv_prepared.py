"""conv2d's prepared calls (conv._PreparedConv, cached per weights, input
shape, stride/padding/dilation, activation setting and dispatch state) and
the grouplut convolution straight from codes (_core.PreparedGemm.conv_codes):
every repeated call, argument spelling and dispatch state is bit-exact
against the reference, and bad input still raises."""
import numpy as np
import pytest

import lowbit
from lowbit import conv, reference


def _case(rng, cin, cout, k, groups, a_bits=2, w_bits=2, a_codebook=None, w_codebook=None, hw=(6, 5)):
    x = rng.integers(0, 1 << a_bits, (2, *hw, cin), dtype=np.uint8)
    w = rng.integers(0, 1 << w_bits, (cout, cin // groups, k, k), dtype=np.uint8)
    return x, w, lowbit.ConvWeights(w, w_bits, w_codebook, groups=groups)


def _reference(x, w, a_bits, w_bits, a_codebook, w_codebook, groups, stride, padding, dilation):
    return reference.conv2d(x, w, a_bits, w_bits, a_codebook, w_codebook, stride, padding, dilation, groups=groups)


# (cin, cout, k, groups, a_bits, w_bits, a_codebook, w_codebook): grouplut (codes path), bipolar padding
# correction, dot8/dotgemm (packed offsets), depthwise and grouped (native)
CASES = [
    (12, 8, 3, 1, 2, 2, None, [-2, -1, 0, 1]),
    (8, 8, 3, 1, 1, 1, [-1, 1], [-1, 1]),
    (8, 6, 3, 1, 4, 4, None, None),
    (8, 8, 3, 8, 2, 2, None, None),
    (8, 12, 3, 4, 2, 2, None, None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "cin{}-cout{}-k{}-g{}-W{}A{}".format(c[0], c[1], c[2], c[3], c[5], c[4]))
def test_repeated_calls_and_spellings_are_exact(case, rng):
    cin, cout, k, groups, ab, wb, cb_a, cb_w = case
    x, w, cw = _case(rng, cin, cout, k, groups, ab, wb, cb_a, cb_w)
    for stride, padding, dilation in [(1, 1, 1), ((2, 1), (1, 0), 1), (1, 2, (2, 1))]:
        ref = _reference(x, w, ab, wb, cb_a, cb_w, groups, stride, padding, dilation)
        spellings = [(stride, padding, dilation), (np.int64(stride) if type(stride) is int else stride, padding,
                                                   list(dilation) if type(dilation) is tuple else dilation)]
        for s, p, d in spellings:
            for _ in range(3):  # the first call prepares, the others reuse
                y = lowbit.conv2d(x, cw, s, p, d, a_bits=ab, a_codebook=cb_a)
                assert np.array_equal(y, ref), (s, p, d)
            for tier in lowbit.supported_tiers():
                with lowbit.use(isa=tier):
                    assert np.array_equal(lowbit.conv2d(x, cw, s, p, d, a_bits=ab, a_codebook=cb_a), ref), tier
            with lowbit.use(strategy="fastest"):
                assert np.array_equal(lowbit.conv2d(x, cw, s, p, d, a_bits=ab, a_codebook=cb_a), ref)
            # a PackedActivations input takes the same prepared call
            pa = lowbit.pack_activations_nhwc(x, ab, cb_a)
            assert np.array_equal(lowbit.conv2d(pa, cw, s, p, d), ref)
    assert 0 < len(cw.__dict__["_prepared_calls"]) <= conv._PREPARED_LIMIT


def test_prepared_calls_still_refuse_bad_arguments(rng):
    x, w, cw = _case(rng, 8, 8, 3, 1)
    lowbit.conv2d(x, cw, stride=1, padding=1, a_bits=2)  # cached under stride=1
    with pytest.raises(TypeError):
        lowbit.conv2d(x, cw, stride=1.0, padding=1, a_bits=2)
    bad = x.copy()
    bad[1, 2, 3, 4] = 7
    with pytest.raises(ValueError, match=r"a_codes: expected every code in \[0, 4\) for bits=2, got max 7"):
        lowbit.conv2d(bad, cw, padding=1, a_bits=2)
    pa = lowbit.PackedActivations(bad.reshape(-1, 8), 2, np.arange(4, dtype=np.int32))  # skips the Python scan
    pa.shape = bad.shape
    with pytest.raises(ValueError, match=r"a_codes: expected every code in \[0, 4\) for bits=2, got max 7"):
        lowbit.conv2d(pa, cw, padding=1)  # grouplut: checked by the native packer of conv_codes
    with pytest.raises(ValueError, match="x: expected 8 input channels, got 4"):
        lowbit.conv2d(x[..., :4], cw, padding=1, a_bits=2)
    with pytest.raises(ValueError, match="epilogue: scale has 3 values but the layer has 8 outputs"):
        lowbit.conv2d(x, cw, padding=1, a_bits=2, epilogue=lowbit.Epilogue(np.ones(3, np.float32),
                                                                           np.zeros(3, np.float32)))


def test_conv_codes_checks_its_arguments(rng):
    x, w, cw = _case(rng, 8, 8, 3, 1)
    pa = lowbit.pack_activations_nhwc(x, 2)
    prepared = conv._prepared_conv(pa, cw, 1, 1, 1)
    group = prepared.groups[0]
    assert group.indirect and group.packs_natively, lowbit.last_kernel()
    native, rows = group.bound.native, group.rows
    args = (group.seg, group.k_steps, group.correction, group.pad_code)
    y = native.conv_codes(pa.codes, rows, *args)
    assert np.array_equal(y.reshape(2, 6, 5, 8), reference.conv2d(x, w, 2, 2, padding=1))
    bad_rows = rows.copy()
    bad_rows[3, 1] = pa.codes.shape[0]
    with pytest.raises(ValueError, match="taps: entry 60 is not an input pixel in \\[0, 60\\) or -1"):
        native.conv_codes(pa.codes, bad_rows, *args)
    bad_rows[3, 1] = -2
    with pytest.raises(ValueError, match="taps: entry -2"):
        native.conv_codes(pa.codes, bad_rows, *args)
    with pytest.raises(ValueError, match="taps: expected k_steps / seg_steps"):
        native.conv_codes(pa.codes, rows[:, :4].copy(), *args)
    with pytest.raises(ValueError, match="seg_steps: expected Cin / group"):
        native.conv_codes(pa.codes[:, :7].copy(), rows, *args)
    with pytest.raises(ValueError, match="pad_code"):
        native.conv_codes(pa.codes, rows, *args[:3], 4)
    with pytest.raises(TypeError, match="taps: expected dtype int64"):
        native.conv_codes(pa.codes, rows.astype(np.int32), *args)
    with pytest.raises(ValueError, match="x: expected a C-contiguous array"):
        native.conv_codes(np.asfortranarray(pa.codes), rows, *args)
