"""HandLSTMCell is nn.LSTMCell: outputs, gradients, init, state dict and errors, with torch as
the oracle."""

import warnings

import pytest
import torch
from hypothesis import given
from torch import nn

from handlstm import HandLSTMCell
from handlstm.testing import assert_lstm_close, cell_cases

F64 = torch.float64


def pair(input_size=3, hidden_size=4, bias=True, seed=0):
    torch.manual_seed(seed)
    expected = nn.LSTMCell(input_size, hidden_size, bias=bias, dtype=F64)
    actual = HandLSTMCell(input_size, hidden_size, bias=bias, dtype=F64)
    actual.load_state_dict(expected.state_dict(), strict=True)
    return actual, expected


@given(cell_cases())
def test_parity_with_nn_lstmcell(case):
    """Outputs, h/c and every gradient (input, h_0, c_0, each weight) to 1e-10 in float64."""
    expected = case.make(nn.LSTMCell)
    actual = case.make(HandLSTMCell, state_dict=expected.state_dict())
    assert_lstm_close(actual, expected, case.input, case.hx, rtol=1e-10, atol=1e-10)


def test_unbatched_equals_batch_of_one_and_nn_lstmcell():
    actual, expected = pair()
    x = torch.randn(3, dtype=F64)
    hx = (torch.randn(4, dtype=F64), torch.randn(4, dtype=F64))
    h, c = actual(x, hx)
    assert h.shape == c.shape == (4,)
    h1, c1 = actual(x[None], (hx[0][None], hx[1][None]))
    torch.testing.assert_close(h, h1[0], rtol=0, atol=0)
    torch.testing.assert_close(c, c1[0], rtol=0, atol=0)
    assert_lstm_close(actual, expected, x, hx)
    assert_lstm_close(actual, expected, x)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times 1.001 backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.001


class _SkewedCell(nn.Module):
    """``cell`` with the same parameters, whose weight_hh gradient is off by 0.1%."""

    def __init__(self, cell):
        super().__init__()
        for name, param in cell.named_parameters():
            self.register_parameter(name, param)
        object.__setattr__(self, "inner", cell)

    def forward(self, x, hx=None):
        params = dict(self.named_parameters())
        params["weight_hh"] = _ScaleGrad.apply(params["weight_hh"])
        args = (x,) if hx is None else (x, hx)
        return torch.func.functional_call(self.inner, params, args)


def test_gradients_really_compared():
    """The comparison fails when only a gradient differs: the oracle checks gradients."""
    actual, expected = pair()
    x = torch.randn(2, 3, dtype=F64)
    hx = (torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64))
    skewed = _SkewedCell(actual)
    for a, b in zip(skewed(x, hx), expected(x, hx), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(AssertionError, match=r"1 of \d+ tensors differ:\n  grad\.weight_hh"):
        assert_lstm_close(skewed, expected, x, hx)


def test_unbatched_hx_is_read_by_index_like_nn_lstmcell():
    """Unbatched, torch reads hx[0] and hx[1]: a stacked tensor or a longer tuple works."""
    actual, expected = pair()
    x, h, c = torch.randn(3, dtype=F64), torch.randn(4, dtype=F64), torch.randn(4, dtype=F64)
    for hx in (torch.stack([h, c]), (h, c, h), [h, c]):
        for a, b in zip(actual(x, hx), expected(x, hx), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_zero_hx_equals_none():
    actual, _ = pair()
    x = torch.randn(2, 3, dtype=F64)
    zeros = (torch.zeros(2, 4, dtype=F64), torch.zeros(2, 4, dtype=F64))
    for a, b in zip(actual(x), actual(x, zeros), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_seeded_init_is_bit_identical(bias):
    torch.manual_seed(7)
    expected = nn.LSTMCell(5, 6, bias=bias)
    after_torch = torch.rand(3)
    torch.manual_seed(7)
    actual = HandLSTMCell(5, 6, bias=bias)
    after_hand = torch.rand(3)
    assert list(actual.state_dict()) == list(expected.state_dict())
    for key, value in expected.state_dict().items():
        assert torch.equal(actual.state_dict()[key], value), key
    # and both consumed the global generator by the same amount
    assert torch.equal(after_hand, after_torch)


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_loads_both_ways_strictly(bias):
    torch_cell = nn.LSTMCell(3, 4, bias=bias)
    hand = HandLSTMCell(3, 4, bias=bias)
    assert [(k, v.shape) for k, v in hand.state_dict().items()] == [
        (k, v.shape) for k, v in torch_cell.state_dict().items()
    ]
    hand.load_state_dict(torch_cell.state_dict(), strict=True)
    torch_cell2 = nn.LSTMCell(3, 4, bias=bias)
    torch_cell2.load_state_dict(hand.state_dict(), strict=True)
    for key, value in torch_cell.state_dict().items():
        assert torch.equal(torch_cell2.state_dict()[key], value)


def test_dtype_and_repr_follow_nn_lstmcell():
    assert repr(HandLSTMCell(3, 4, bias=False)) == "Hand" + repr(nn.LSTMCell(3, 4, bias=False))
    cell = HandLSTMCell(3, 4, dtype=F64)
    assert all(p.dtype == F64 for p in cell.parameters())


# -- errors: the same bad input to both, the same exception class ------------------------------

H = 4


def bad_forwards():
    x2, x1 = torch.randn(2, 3), torch.randn(3)
    h2, h1 = torch.randn(2, H), torch.randn(H)
    return {
        "3-D input": (torch.randn(1, 2, 3), None),
        "0-D input": (torch.tensor(1.0), None),
        "wrong input size": (torch.randn(2, 5), None),
        "wrong input size unbatched": (torch.randn(5), None),
        "hx batch mismatch": (x2, (torch.randn(3, H), torch.randn(3, H))),
        "c batch mismatch": (x2, (h2, torch.randn(3, H))),
        "hx hidden mismatch": (x2, (torch.randn(2, H + 1), h2)),
        "cx hidden mismatch": (x2, (h2, torch.randn(2, H + 1))),
        "hx 3-D": (x2, (torch.randn(1, 2, H), h2)),
        "hx 1-D with 2-D input": (x2, (h1, h1)),
        "hx 1-D with 2-D input, batch equals hidden": (torch.randn(H, 3), (h1, h1)),
        "hx 1-D of size N=1 with 2-D input": (torch.randn(1, 3), (torch.randn(1), torch.randn(1))),
        "c 1-D with 2-D input": (x2, (h2, h1)),
        "hx 2-D with 1-D input": (x1, (h2, h2)),
        "single tensor hx": (x2, h2),
        "three-tensor hx": (x2, (h2, h2, h2)),
        "one-tensor tuple hx": (x2, (h2,)),
        "one-tensor tuple hx unbatched": (x1, (h1,)),
        "None as c_0": (x2, (h2, None)),
        "0-D tensor hx": (x2, torch.tensor(1.0)),
        "int hx": (x2, 5),
        "float64 input, float32 weights": (x2.double(), None),
        "float64 hx, float32 weights": (x2, (h2.double(), h2.double())),
    }


@pytest.mark.parametrize("case", list(bad_forwards()))
def test_forward_errors_match_nn_lstmcell(case):
    x, hx = bad_forwards()[case]
    torch.manual_seed(0)
    expected = nn.LSTMCell(3, H)
    actual = HandLSTMCell(3, H)
    actual.load_state_dict(expected.state_dict())
    x_before = x.clone()
    with pytest.raises(Exception) as torch_error:
        expected(x, hx)
    with pytest.raises(Exception) as hand_error:
        actual(x, hx)
    # the same class, or a subclass of it: an `except` written for torch's error catches ours
    assert isinstance(hand_error.value, type(torch_error.value)), (
        f"{case}: nn.LSTMCell raised {torch_error.value!r}, HandLSTMCell {hand_error.value!r}"
    )
    assert torch.equal(x, x_before)


@pytest.mark.parametrize(
    "args",
    [
        ("3", 4),
        (3, "4"),
        (3.0, 4),
        (3, 4.5),
        (-1, 4),
        (3, -2),
        (3, 4, True, "cpu", "float64"),
    ],
)
def test_constructor_errors_match_nn_lstmcell(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as torch_error:
            nn.LSTMCell(*args)
        with pytest.raises(Exception) as hand_error:
            HandLSTMCell(*args)
    assert type(hand_error.value) is type(torch_error.value), (torch_error.value, hand_error.value)


def test_bias_is_taken_by_its_truth_like_nn_lstmcell():
    for bias in ("yes", 1, 0, ""):
        expected, actual = nn.LSTMCell(3, 4, bias=bias), HandLSTMCell(3, 4, bias=bias)
        assert list(actual.state_dict()) == list(expected.state_dict())
        assert actual.bias == expected.bias


def test_error_messages_say_expected_and_got():
    cell = HandLSTMCell(3, H)
    with pytest.raises(RuntimeError, match=r"5.*3|3.*5"):
        cell(torch.randn(2, 5))
    with pytest.raises(RuntimeError, match=r"3.*2|2.*3"):
        cell(torch.randn(2, 3), (torch.randn(3, H), torch.randn(3, H)))
