"""Dropout between layers behaves as nn.LSTM's: training only, never after the last layer."""

import torch
from torch import nn

from handlstm import HandLSTM
from handlstm.testing import assert_lstm_close

F64 = torch.float64


def pair(**config):
    torch.manual_seed(0)
    expected = nn.LSTM(3, 4, **config).double()
    actual = HandLSTM(3, 4, **config).double()
    actual.load_state_dict(expected.state_dict())
    return actual, expected


def test_eval_mode_ignores_dropout():
    actual, expected = pair(num_layers=3, dropout=0.7, bidirectional=True)
    actual.eval()
    expected.eval()
    assert_lstm_close(actual, expected, torch.randn(5, 2, 3, dtype=F64))


def test_train_mode_with_p0_equals_nn_lstm():
    actual, expected = pair(num_layers=3, dropout=0.0, proj_size=2)
    actual.train()
    expected.train()
    assert_lstm_close(actual, expected, torch.randn(5, 2, 3, dtype=F64))


def test_train_mode_p1_zeroes_what_nn_lstm_zeroes():
    """p=1 drops every input of layers 2..n: their outputs depend on biases alone."""
    actual, expected = pair(num_layers=2, dropout=1.0, bidirectional=True)
    actual.train()
    expected.train()
    x = torch.randn(5, 2, 3, dtype=F64)
    assert_lstm_close(actual, expected, x)
    # and the first layer's final state still depends on the input
    _, (h_a, _) = actual(x)
    _, (h_b, _) = actual(2 * x)
    assert not torch.equal(h_a[:2], h_b[:2])
    torch.testing.assert_close(h_a[2:], h_b[2:], rtol=0, atol=0)


def test_dropout_never_touches_last_layer_output():
    """With a single layer, dropout (which then warns) changes nothing, even in training."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actual, expected = pair(num_layers=1, dropout=0.9)
    actual.train()
    x = torch.randn(6, 2, 3, dtype=F64)
    first, _ = actual(x)
    second, _ = actual(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert_lstm_close(actual, expected.train(), x)


def test_train_mode_dropout_is_fresh_per_call_and_applied_between_layers():
    actual, _ = pair(num_layers=2, dropout=0.5)
    actual.train()
    x = torch.randn(50, 64, 3, dtype=F64)
    first, _ = actual(x)
    second, _ = actual(x)
    assert not torch.equal(first, second)
    # The dropped layer-1 outputs feed layer 2 as zeros: compare with an explicit computation.
    layer1 = HandLSTM(3, 4).double()
    layer2 = HandLSTM(4, 4).double()
    torch.manual_seed(3)
    out_ours, _ = actual(x)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer1, f"{name}_l0").copy_(getattr(actual, f"{name}_l0"))
            getattr(layer2, f"{name}_l0").copy_(getattr(actual, f"{name}_l1"))
    hidden, _ = layer1(x)
    torch.manual_seed(3)
    manual, _ = layer2(torch.nn.functional.dropout(hidden, 0.5, training=True))
    torch.testing.assert_close(out_ours, manual, rtol=1e-12, atol=1e-12)
