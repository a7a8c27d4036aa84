"""tests/python/parity.py's rule itself: it passes differences at rounding ties only and
fails on any other difference (so the parity tests that use it cannot pass vacuously)."""
import numpy as np
import pytest

from conftest import optional_import
from parity import _check_codes, _check_logits, boundary_distance


def _record(name, ours, theirs, v, mode="ROUND"):
    return (name, np.asarray(ours), np.asarray(theirs), lambda: (np.asarray(v, np.float64), mode))


def test_boundary_distance():
    assert boundary_distance(np.array([2.5, 2.75, -1.5]), "ROUND").tolist() == [0.0, 0.25, 0.0]
    assert boundary_distance(np.array([3.0, 2.75, 2.1]), "FLOOR").tolist() == pytest.approx([0.0, 0.25, 0.1])


def test_codes_may_differ_only_at_ties():
    tie = _record("t", [[1, 2]], [[1, 3]], [[1.0, 2.5 + 1e-7]])
    assert _check_codes([tie], 1, isolate=True).tolist() == [True]
    away = _record("t", [[1, 2]], [[1, 3]], [[1.0, 2.4]])
    with pytest.raises(AssertionError, match="away from a rounding tie"):
        _check_codes([away], 1, isolate=True)
    sign = _record("s", [[0]], [[1]], [[1e-3]], "SIGN")
    with pytest.raises(AssertionError, match="SIGN"):
        _check_codes([sign], 1, isolate=True)


def test_end_to_end_holds_each_sample_at_its_first_difference_only():
    first = _record("a", [[0], [5]], [[1], [5]], [[0.5], [5.0]])      # sample 0 flips at a tie
    later = _record("b", [[0], [7]], [[3], [7]], [[1.2], [7.0]])      # sample 0's inputs changed: not held
    assert _check_codes([first, later], 2, isolate=False).tolist() == [True, False]
    with pytest.raises(AssertionError):                                # isolate: every quantizer is held
        _check_codes([first, later], 2, isolate=True)
    fresh = _record("b", [[0], [7]], [[0], [8]], [[1.0], [7.2]])      # sample 1's first difference, not a tie
    with pytest.raises(AssertionError, match="b: codes differ"):
        _check_codes([first, fresh], 2, isolate=False)


def test_logits_of_agreeing_samples_must_match_within_rounding():
    ref = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    out = ref.copy()
    out[0, 1] = -2.0 + 1e-6
    assert _check_logits(out, ref, [], rel=1e-5) == 1.0
    out[1, 0] = 3.1
    with pytest.raises(AssertionError, match="beyond float rounding"):
        _check_logits(out, ref, [], rel=1e-5)
    assert _check_logits(out, ref, [1], rel=1e-5) == 1.0   # sample 1 flipped a code at a tie: not compared
    with pytest.raises(AssertionError):
        _check_logits(ref + np.float32(1e-6), ref, [], rel=0.0)   # rel=0: exactly equal


def test_torch_parity_catches_a_wrong_quantizer_step():
    torch = optional_import("torch")
    import lowbit
    from lowbit import models, qat
    from parity import check_torch_parity

    torch.manual_seed(0)
    q = qat.prepare(models.FmnistResNet(8, 10), 2, 2, first_last_bits=8)
    q.train()
    q(torch.randn(16, 1, 28, 28))  # initialises the LSQ steps and BatchNorm statistics
    q.eval()
    m = lowbit.convert(q, torch.zeros(1, 1, 28, 28))
    x = np.random.default_rng(0).normal(size=(8, 1, 28, 28)).astype(np.float32)
    assert check_torch_parity(q, m, x)["tie_samples"] == []
    quantize = next(n for n in m.nodes if n.op == "quantize")
    quantize.attrs["step"] *= 1.01  # codes near a level boundary move: not at ties
    m.__dict__.pop("_memo", None)  # the plans were built with the old step
    with pytest.raises(AssertionError, match="away from a rounding tie"):
        check_torch_parity(q, m, x)


def test_torch_parity_of_a_module_called_twice():
    """A shared layer (one module, two calls) is two layers of the model: each is compared with
    the codes of its own call, in call order (a capture per module would keep only the last)."""
    torch = optional_import("torch")
    import lowbit
    from lowbit import qat
    from parity import check_torch_parity

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 6, 3, padding=1)
            self.block = torch.nn.Conv2d(6, 6, 3, padding=1)
            self.fc = torch.nn.Linear(6 * 8 * 8, 10)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = torch.relu(self.block(x))
            x = torch.relu(self.block(x))  # the same module again, on other inputs
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(1)
    q = qat.prepare(Shared(), 2, 2)
    q.train()
    q(torch.randn(16, 1, 8, 8))
    q.eval()
    m = lowbit.convert(q, torch.zeros(1, 1, 8, 8))
    assert [n.attrs.get("module") for n in m.nodes if n.op == "conv"].count("block") == 2
    x = np.random.default_rng(1).normal(size=(16, 1, 8, 8)).astype(np.float32)
    r = check_torch_parity(q, m, x)
    assert r["codes_differ"] == 0 and r["tie_samples"] == [], r["codes_differ"]
