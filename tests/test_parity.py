"""HandLSTM equals nn.LSTM: outputs, final states and every gradient (torch is the oracle)."""

import itertools

import pytest
import torch
from hypothesis import given
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from handlstm import HandLSTM
from handlstm.testing import assert_lstm_close, lstm_cases

F64 = torch.float64


def pair(config, dtype=F64, seed=0):
    """nn.LSTM and HandLSTM of ``config`` with the same weights."""
    torch.manual_seed(seed)
    expected = nn.LSTM(**config, dtype=dtype)
    actual = HandLSTM(**config, dtype=dtype)
    actual.load_state_dict(expected.state_dict())
    return actual, expected


@given(lstm_cases())
def test_fuzz_float64(case):
    expected = case.make(nn.LSTM)
    actual = case.make(HandLSTM, state_dict=expected.state_dict())
    assert_lstm_close(actual, expected, case.input, case.hx)


@given(lstm_cases(dtypes=(torch.float32,), max_layers=2))
def test_fuzz_float32(case):
    expected = case.make(nn.LSTM)
    actual = case.make(HandLSTM, state_dict=expected.state_dict())
    assert_lstm_close(actual, expected, case.input, case.hx, rtol=1e-5, atol=1e-5)


GRID = list(itertools.product([True, False], repeat=5))


@pytest.mark.parametrize(("bias", "batch_first", "bidirectional", "proj", "give_hx"), GRID)
def test_boolean_grid(bias, batch_first, bidirectional, proj, give_hx):
    config = dict(
        input_size=3,
        hidden_size=5,
        num_layers=2,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        proj_size=2 if proj else 0,
    )
    actual, expected = pair(config)
    gen = torch.Generator().manual_seed(1)
    seq = torch.randn(4, 3, 3, generator=gen, dtype=F64)  # (L, N, H_in)
    hx = None
    if give_hx:
        states = 2 * (2 if bidirectional else 1)
        hx = (
            torch.randn(states, 3, 2 if proj else 5, generator=gen, dtype=F64),
            torch.randn(states, 3, 5, generator=gen, dtype=F64),
        )
    x = seq.transpose(0, 1) if batch_first else seq
    assert_lstm_close(actual, expected, x, hx)
    # The same configuration on packed (unsorted) and unbatched input.
    packed = pack_padded_sequence(
        x, torch.tensor([2, 4, 1]), batch_first=batch_first, enforce_sorted=False
    )
    assert_lstm_close(actual, expected, packed, hx)
    unbatched_hx = None if hx is None else tuple(s[:, 0] for s in hx)
    assert_lstm_close(actual, expected, seq[:, 0], unbatched_hx)


def test_hx_zeros_equals_none():
    actual, _ = pair(
        dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2)
    )
    x = torch.randn(5, 2, 3, dtype=F64)
    zeros = (torch.zeros(4, 2, 2, dtype=F64), torch.zeros(4, 2, 4, dtype=F64))
    out_none, (h_none, c_none) = actual(x)
    out_zero, (h_zero, c_zero) = actual(x, zeros)
    torch.testing.assert_close(out_none, out_zero, rtol=0, atol=0)
    torch.testing.assert_close(h_none, h_zero, rtol=0, atol=0)
    torch.testing.assert_close(c_none, c_zero, rtol=0, atol=0)


def test_non_contiguous_inputs():
    actual, expected = pair(dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True))
    x = torch.randn(6, 3, 5, dtype=F64)[::2, :, 1:4]  # (3, 3, 3), strided
    h0 = torch.randn(4, 4, 3, dtype=F64).transpose(1, 2)  # (4, 3, 4), transposed
    c0 = torch.randn(4, 3, 8, dtype=F64)[..., ::2]  # (4, 3, 4), strided
    assert not (x.is_contiguous() or h0.is_contiguous() or c0.is_contiguous())
    assert_lstm_close(actual, expected, x, (h0, c0))


@pytest.mark.parametrize(("seq_len", "batch"), [(1, 1), (1, 4), (6, 1)])
def test_sequence_length_one_and_batch_one(seq_len, batch):
    actual, expected = pair(
        dict(input_size=2, hidden_size=3, num_layers=2, bidirectional=True, proj_size=1)
    )
    assert_lstm_close(actual, expected, torch.randn(seq_len, batch, 2, dtype=F64))


def test_packed_final_state_is_each_sequences_last_valid_step():
    """h_n of a packed batch equals running each sequence alone, forward and reverse."""
    actual, _ = pair(dict(input_size=2, hidden_size=3, bidirectional=True))
    lengths = [3, 5, 1]
    x = torch.randn(5, 3, 2, dtype=F64)
    _, (h_n, c_n) = actual(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False))
    for b, length in enumerate(lengths):
        _, (h_alone, c_alone) = actual(x[:length, b])
        torch.testing.assert_close(h_n[:, b], h_alone, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c_n[:, b], c_alone, rtol=1e-12, atol=1e-12)


def test_packed_output_keeps_indices():
    actual, expected = pair(dict(input_size=2, hidden_size=3))
    x = torch.randn(4, 3, 2, dtype=F64)
    packed = pack_padded_sequence(x, torch.tensor([2, 4, 3]), enforce_sorted=False)
    out, _ = actual(packed)
    ref, _ = expected(packed)
    assert torch.equal(out.batch_sizes, ref.batch_sizes)
    assert torch.equal(out.sorted_indices, ref.sorted_indices)
    assert torch.equal(out.unsorted_indices, ref.unsorted_indices)
    sorted_packed = pack_padded_sequence(x, torch.tensor([4, 3, 2]))
    out, _ = actual(sorted_packed)
    assert out.sorted_indices is None and out.unsorted_indices is None
