"""Bad input: HandLSTM raises the class nn.LSTM raises, with a message naming expected and got."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from handlstm import HandLSTM

F64 = torch.float64


def outcome(fn):
    """The exception class ``fn`` raises, or None when it returns."""
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the class is what is compared
        return type(error), str(error)
    return None, ""


BAD_CONSTRUCTOR_ARGS = {
    "dropout above 1": dict(input_size=3, hidden_size=4, num_layers=2, dropout=1.5),
    "dropout negative": dict(input_size=3, hidden_size=4, num_layers=2, dropout=-0.1),
    "dropout bool": dict(input_size=3, hidden_size=4, num_layers=2, dropout=True),
    "dropout string": dict(input_size=3, hidden_size=4, num_layers=2, dropout="0.1"),
    "hidden_size float": dict(input_size=3, hidden_size=4.0),
    "hidden_size None": dict(input_size=3, hidden_size=None),
    "hidden_size zero": dict(input_size=3, hidden_size=0),
    "hidden_size negative": dict(input_size=3, hidden_size=-2),
    "input_size float": dict(input_size=3.0, hidden_size=4),
    "input_size zero": dict(input_size=0, hidden_size=4),
    "num_layers zero": dict(input_size=3, hidden_size=4, num_layers=0),
    "num_layers negative": dict(input_size=3, hidden_size=4, num_layers=-1),
    "num_layers float": dict(input_size=3, hidden_size=4, num_layers=2.0),
    "num_layers string": dict(input_size=3, hidden_size=4, num_layers="2"),
    "proj_size negative": dict(input_size=3, hidden_size=4, proj_size=-1),
    "proj_size equal hidden": dict(input_size=3, hidden_size=4, proj_size=4),
    "proj_size above hidden": dict(input_size=3, hidden_size=4, proj_size=7),
    "proj_size float": dict(input_size=3, hidden_size=4, proj_size=1.0),
    "bias not bool": dict(input_size=3, hidden_size=4, bias=1),
    "batch_first not bool": dict(input_size=3, hidden_size=4, batch_first="yes"),
}


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTOR_ARGS))
def test_constructor_error_parity(case):
    kwargs = BAD_CONSTRUCTOR_ARGS[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_cls, _ = outcome(lambda: nn.LSTM(**kwargs))
        actual_cls, message = outcome(lambda: HandLSTM(**kwargs))
    assert expected_cls is not None, "the oracle accepted this input; the case is wrong"
    assert actual_cls is expected_cls, message
    assert "got" in message or "smaller than" in message, message


def test_dropout_with_one_layer_warns_like_nn_lstm():
    with pytest.warns(UserWarning, match="num_layers greater than 1") as ours:
        HandLSTM(3, 4, dropout=0.5)
    with pytest.warns(UserWarning, match="num_layers greater than 1") as theirs:
        nn.LSTM(3, 4, dropout=0.5)
    assert len(ours) == len(theirs) == 1
    assert ours[0].filename == __file__  # points at the caller, as torch's does


def modules(**config):
    torch.manual_seed(0)
    expected = nn.LSTM(**config).double()
    actual = HandLSTM(**config).double()
    actual.load_state_dict(expected.state_dict())
    return actual, expected


def x3(*shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype)


# Each case: (config, input, hx). Config default: input_size=3, hidden_size=4, num_layers=2.
BAD_FORWARD = {
    "input 1-D": ({}, x3(3), None),
    "input 4-D": ({}, x3(2, 2, 2, 3), None),
    "wrong input_size": ({}, x3(5, 2, 7), None),
    "wrong input_size unbatched": ({}, x3(5, 7), None),
    "int input": ({}, torch.ones(5, 2, 3, dtype=torch.long), None),
    "float32 input, float64 weights": ({}, x3(5, 2, 3, dtype=torch.float32), None),
    "empty sequence": ({}, x3(0, 2, 3), None),
    "hx 2-D for batched": ({}, x3(5, 2, 3), (x3(2, 4), x3(2, 4))),
    "hx 3-D for unbatched": ({}, x3(5, 3), (x3(2, 1, 4), x3(2, 1, 4))),
    "hx single tensor": ({}, x3(5, 2, 3), x3(2, 2, 4)),
    "hx 3-tuple": ({}, x3(5, 2, 3), (x3(2, 2, 4),) * 3),
    "h0 wrong layers": ({}, x3(5, 2, 3), (x3(3, 2, 4), x3(2, 2, 4))),
    "h0 wrong batch": ({}, x3(5, 2, 3), (x3(2, 3, 4), x3(2, 2, 4))),
    "h0 wrong size": ({}, x3(5, 2, 3), (x3(2, 2, 5), x3(2, 2, 4))),
    "c0 wrong size": ({}, x3(5, 2, 3), (x3(2, 2, 4), x3(2, 2, 5))),
    "h0 wrong size with proj": ({"proj_size": 2}, x3(5, 2, 3), (x3(2, 2, 4), x3(2, 2, 4))),
    "c0 wrong size with proj": ({"proj_size": 2}, x3(5, 2, 3), (x3(2, 2, 2), x3(2, 2, 2))),
    "h0 float32": ({}, x3(5, 2, 3), (x3(2, 2, 4, dtype=torch.float32), x3(2, 2, 4))),
    "hx wrong batch with batch_first": (
        {"batch_first": True},
        x3(2, 5, 3),
        (x3(2, 5, 4), x3(2, 5, 4)),
    ),
    "unbatched hx wrong size": ({}, x3(5, 3), (x3(2, 5), x3(2, 4))),
}


@pytest.mark.parametrize("case", list(BAD_FORWARD))
def test_forward_error_parity(case):
    config, x, hx = BAD_FORWARD[case]
    actual, expected = modules(**{"input_size": 3, "hidden_size": 4, "num_layers": 2, **config})
    expected_cls, _ = outcome(lambda: expected(x, hx))
    actual_cls, message = outcome(lambda: actual(x, hx))
    assert expected_cls is not None, "the oracle accepted this input; the case is wrong"
    assert actual_cls is expected_cls, message
    assert "got" in message, message


def packed(x, lengths):
    return pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)


BAD_PACKED = {
    "wrong feature size": lambda: PackedSequence(x3(8, 2), torch.tensor([2, 2, 2, 2])),
    "float32 data": lambda: PackedSequence(
        x3(8, 3, dtype=torch.float32), torch.tensor([2, 2, 2, 2])
    ),
    "3-D data": lambda: PackedSequence(x3(1, 8, 3), torch.tensor([2, 2, 2, 2])),
    "batch sizes do not sum to rows": lambda: PackedSequence(x3(8, 3), torch.tensor([2, 3, 3])),
}


@pytest.mark.parametrize("case", list(BAD_PACKED))
def test_packed_error_parity(case):
    actual, expected = modules(input_size=3, hidden_size=4)
    data = BAD_PACKED[case]()
    expected_cls, _ = outcome(lambda: expected(data))
    actual_cls, message = outcome(lambda: actual(data))
    assert expected_cls is not None
    assert actual_cls is expected_cls, message
    assert "got" in message or "sum to" in message, message


def test_packed_hx_is_checked():
    """torch skips its Python checks for packed input; HandLSTM checks hx there too."""
    actual, expected = modules(input_size=3, hidden_size=4)
    data = packed(x3(5, 2, 3), [5, 3])
    bad_hx = (x3(1, 3, 4), x3(1, 3, 4))  # batch 3 for a batch of 2
    expected_cls, _ = outcome(lambda: expected(data, bad_hx))
    actual_cls, message = outcome(lambda: actual(data, bad_hx))
    assert expected_cls is None  # nn.LSTM (torch 2.13 CPU) silently accepts this hx
    assert actual_cls is RuntimeError  # the class nn.LSTM uses for a wrong hidden size
    assert "Expected hidden[0] size (1, 2, 4), got [1, 3, 4]" in message


def test_failed_forward_leaves_inputs_untouched():
    actual, _ = modules(input_size=3, hidden_size=4)
    x = x3(5, 2, 3)
    before = x.clone()
    with pytest.raises(RuntimeError):
        actual(x, (x3(1, 9, 4), x3(1, 2, 4)))
    assert torch.equal(x, before) and x._version == 0
