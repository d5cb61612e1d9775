"""Parameters, state dicts, initialisation and module surface are nn.LSTM's."""

import itertools
import pickle

import pytest
import torch
from torch import nn

from handlstm import HandLSTM

CONFIGS = [
    dict(input_size=3, hidden_size=5, num_layers=n, bias=b, bidirectional=d, proj_size=p)
    for n, b, d, p in itertools.product([1, 3], [True, False], [True, False], [0, 2])
]


@pytest.mark.parametrize("config", CONFIGS)
def test_named_parameters_and_state_dict_match(config):
    expected, actual = nn.LSTM(**config), HandLSTM(**config)
    assert [n for n, _ in actual.named_parameters()] == [n for n, _ in expected.named_parameters()]
    assert list(actual.state_dict()) == list(expected.state_dict())
    for (name, a), (_, e) in zip(
        actual.named_parameters(), expected.named_parameters(), strict=True
    ):
        assert a.shape == e.shape, name
        assert a.dtype == e.dtype, name


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_loads_both_ways_strict(config):
    expected, actual = nn.LSTM(**config), HandLSTM(**config)
    actual.load_state_dict(expected.state_dict(), strict=True)
    for key, value in expected.state_dict().items():
        assert torch.equal(actual.state_dict()[key], value), key
    with torch.no_grad():
        for p in actual.parameters():
            p.add_(1.0)
    expected.load_state_dict(actual.state_dict(), strict=True)
    for key, value in actual.state_dict().items():
        assert torch.equal(expected.state_dict()[key], value), key


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("seed", [0, 123])
def test_seeded_construction_is_bit_identical(config, seed):
    torch.manual_seed(seed)
    expected = nn.LSTM(**config)
    torch.manual_seed(seed)
    actual = HandLSTM(**config)
    for (name, a), (_, e) in zip(
        actual.named_parameters(), expected.named_parameters(), strict=True
    ):
        assert torch.equal(a, e), name
    # The generator state after construction is the same too: nothing extra was drawn.
    torch.manual_seed(seed)
    nn.LSTM(**config)
    after_expected = torch.rand(4)
    torch.manual_seed(seed)
    HandLSTM(**config)
    assert torch.equal(torch.rand(4), after_expected)


def test_reset_parameters_draws_like_nn_lstm():
    config = dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True, proj_size=3)
    expected, actual = nn.LSTM(**config), HandLSTM(**config)
    torch.manual_seed(7)
    expected.reset_parameters()
    torch.manual_seed(7)
    actual.reset_parameters()
    for a, e in zip(actual.parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, e)


@pytest.mark.parametrize("config", CONFIGS)
def test_all_weights_and_repr(config):
    expected, actual = nn.LSTM(**config), HandLSTM(**config)
    actual.load_state_dict(expected.state_dict())
    assert [[tuple(w.shape) for w in g] for g in actual.all_weights] == [
        [tuple(w.shape) for w in g] for g in expected.all_weights
    ]
    assert all(
        torch.equal(a, e)
        for ga, ge in zip(actual.all_weights, expected.all_weights, strict=True)
        for a, e in zip(ga, ge, strict=True)
    )
    assert repr(actual) == repr(expected).replace("LSTM(", "HandLSTM(", 1)
    actual.flatten_parameters()  # a no-op, as code written for cuDNN calls it


def test_constructor_positional_keyword_and_attributes():
    args = (3, 6, 2, False, True, 0.25, True, 2)
    names = (
        "input_size",
        "hidden_size",
        "num_layers",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
    )
    positional = HandLSTM(*args, dtype=torch.float64)
    keyword = HandLSTM(**dict(zip(names, args, strict=True)), dtype=torch.float64)
    expected = nn.LSTM(*args, dtype=torch.float64)
    for module in (positional, keyword):
        for name in names:
            assert getattr(module, name) == getattr(expected, name), name
        assert type(module.dropout) is float
        assert all(p.dtype == torch.float64 for p in module.parameters())


def test_device_and_dtype_kwargs():
    module = HandLSTM(2, 3, device="meta", dtype=torch.float16)
    assert all(p.device.type == "meta" and p.dtype == torch.float16 for p in module.parameters())


def test_deepcopy_and_pickle_round_trip():
    import copy

    module = HandLSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        out, _ = clone(x)
        torch.testing.assert_close(out, module(x)[0], rtol=0, atol=0)
