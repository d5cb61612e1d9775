"""``forward(x, lengths=)``: a padded batch with PackedSequence semantics, eagerly.

Oracle: nn.LSTM on ``pack_padded_sequence(x, lengths, enforce_sorted=False)``, padded back with
``pad_packed_sequence(total_length=L)``; outputs, h_n, c_n and every gradient, float64, 1e-10.
The same keyword under torch.export / torch.compile is tested in tests/test_export.py and
tests/test_transforms_compile.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from handlstm import HandLSTM

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}


def pair(**config: Any) -> tuple[nn.LSTM, HandLSTM]:
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, dtype=DT, **config)
    lstm = HandLSTM(3, 4, dtype=DT, **config)
    lstm.load_state_dict(ref.state_dict())
    return ref, lstm


def packed_reference(
    ref: nn.LSTM, x: Tensor, lengths: Tensor, hx: Any = None
) -> tuple[Tensor, Tensor, Tensor]:
    packed = pack_padded_sequence(x, lengths, batch_first=ref.batch_first, enforce_sorted=False)
    out, (h, c) = ref(packed, hx)
    total = x.size(1 if ref.batch_first else 0)
    padded, _ = pad_packed_sequence(out, batch_first=ref.batch_first, total_length=total)
    return padded, h, c


def hx_for(lstm: HandLSTM, batch: int) -> tuple[Tensor, Tensor]:
    states = lstm.num_layers * (2 if lstm.bidirectional else 1)
    return (
        torch.randn(states, batch, lstm.proj_size or lstm.hidden_size, dtype=DT),
        torch.randn(states, batch, lstm.hidden_size, dtype=DT),
    )


def with_grads(fn: Any, module: nn.Module, x: Tensor, hx: Any) -> list[Tensor]:
    x = x.clone().requires_grad_()
    leaves = [x, *module.parameters()]
    if hx is not None:
        hx = tuple(t.clone().requires_grad_() for t in hx)
        leaves += list(hx)
    out, h, c = fn(module, x, hx)
    loss = out.square().sum() + (h * h.detach().sign()).sum() + c.square().sum()
    return [out, h, c, *torch.autograd.grad(loss, leaves)]


FLAGS = list(itertools.product([1, 2], [False, True], [0, 2], [True, False], [False, True]))


@pytest.mark.parametrize(("num_layers", "bidirectional", "proj_size", "bias", "batch_first"), FLAGS)
@pytest.mark.parametrize("with_hx", [False, True], ids=["hx_none", "hx_given"])
def test_lengths_equal_nn_lstm_on_packed_input(
    num_layers: int,
    bidirectional: bool,
    proj_size: int,
    bias: bool,
    batch_first: bool,
    with_hx: bool,
) -> None:
    config = {
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "proj_size": proj_size,
        "bias": bias,
        "batch_first": batch_first,
    }
    ref, lstm = pair(**config)
    lengths = torch.tensor([3, 6, 1, 6])  # unsorted, the longest equal to L, a length 1
    x = torch.randn(4, 6, 3, dtype=DT) if batch_first else torch.randn(6, 4, 3, dtype=DT)
    hx = hx_for(lstm, 4) if with_hx else None
    got = with_grads(
        lambda m, xx, h: (lambda o, s: (o, *s))(*m(xx, h, lengths=lengths)), lstm, x, hx
    )
    expected = with_grads(lambda m, xx, h: packed_reference(m, xx, lengths, h), ref, x, hx)
    torch.testing.assert_close(got, expected, **TOL)


def test_lengths_all_full_equal_plain_forward() -> None:
    _, lstm = pair(num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 3, dtype=DT)
    out, (h, c) = lstm(x, lengths=torch.tensor([5, 5, 5]))
    expected, (eh, ec) = lstm(x)
    torch.testing.assert_close((out, h, c), (expected, eh, ec), **TOL)


def test_lengths_list_and_zero_length() -> None:
    """A list of ints is accepted; a length-0 sequence keeps its initial state, outputs zeros."""
    ref, lstm = pair(bidirectional=True)
    x = torch.randn(4, 3, 3, dtype=DT)
    hx = hx_for(lstm, 3)
    out, (h, c) = lstm(x, hx, lengths=[4, 0, 2])
    torch.testing.assert_close(out[:, 1], torch.zeros_like(out[:, 1]), rtol=0, atol=0)
    torch.testing.assert_close((h[:, 1], c[:, 1]), (hx[0][:, 1], hx[1][:, 1]), rtol=0, atol=0)
    keep = torch.tensor([0, 2])
    expected = packed_reference(
        ref, x[:, keep], torch.tensor([4, 2]), tuple(t[:, keep] for t in hx)
    )
    torch.testing.assert_close((out[:, keep], h[:, keep], c[:, keep]), expected, **TOL)


def test_lengths_default_forward_contract_unchanged() -> None:
    """Without lengths, positional (input, hx) is nn.LSTM's contract; lengths is keyword only."""
    ref, lstm = pair()
    x = torch.randn(4, 2, 3, dtype=DT)
    hx = hx_for(lstm, 2)
    torch.testing.assert_close(lstm(x, hx), ref(x, hx), **TOL)
    with pytest.raises(TypeError):
        lstm(x, hx, torch.tensor([4, 4]))  # type: ignore[call-arg]


def test_lengths_variants_match_masked_definition() -> None:
    """Variant options through lengths: each sequence equals the variant run on it alone."""
    torch.manual_seed(0)
    lstm = HandLSTM(
        3, 4, dtype=DT, layer_norm=True, peepholes=True, cell_clip=0.5, bidirectional=True
    ).eval()
    x = torch.randn(5, 3, 3, dtype=DT)
    lengths = [5, 2, 4]
    out, (h, c) = lstm(x, lengths=torch.tensor(lengths))
    for n, length in enumerate(lengths):
        alone, (ah, ac) = lstm(x[:length, n : n + 1])
        torch.testing.assert_close(out[:length, n : n + 1], alone, **TOL)
        torch.testing.assert_close((h[:, n : n + 1], c[:, n : n + 1]), (ah, ac), **TOL)


@pytest.mark.parametrize(
    ("make_input", "lengths", "error", "match"),
    [
        (lambda: torch.randn(4, 3, dtype=DT), [4], ValueError, "batched input of 3 dimensions"),
        (lambda: torch.randn(4, 2, 3, dtype=DT), [4, 4, 4], ValueError, r"expected shape \(2,\)"),
        (lambda: torch.randn(4, 2, 3, dtype=DT), [[4, 4]], ValueError, r"expected shape \(2,\)"),
        (lambda: torch.randn(4, 2, 3, dtype=DT), [5, 1], ValueError, r"in \[0, 4\]"),
        (lambda: torch.randn(4, 2, 3, dtype=DT), [-1, 1], ValueError, r"in \[0, 4\]"),
        (lambda: torch.randn(4, 2, 3, dtype=DT), [4.0, 1.0], TypeError, "integer tensor"),
        (
            lambda: pack_padded_sequence(torch.randn(4, 2, 3, dtype=DT), [4, 2]),
            [4, 2],
            ValueError,
            "PackedSequence carries its own lengths",
        ),
    ],
    ids=["unbatched", "too_many", "two_dims", "too_long", "negative", "float", "packed"],
)
def test_lengths_bad_input(make_input: Any, lengths: Any, error: type, match: str) -> None:
    _, lstm = pair()
    x = make_input()
    before = x.clone() if isinstance(x, Tensor) else None
    with pytest.raises(error, match=match):
        lstm(x, lengths=torch.tensor(lengths))
    if before is not None:
        torch.testing.assert_close(x, before, rtol=0, atol=0)


def test_constant_at_trace_time_marks_as_torch_decorator_does() -> None:
    # handlstm.engines.tracing marks its trace-time constants without importing torch._dynamo at
    # import (it imports sympy); this pins that marker to what torch's own decorator sets.
    from handlstm.engines.tracing import constant_at_trace_time

    def theirs() -> bool:
        return True

    def ours() -> bool:
        return True

    torch.compiler.assume_constant_result(theirs)
    constant_at_trace_time(ours)
    assert vars(theirs) == vars(ours) == {"_dynamo_marked_constant": True}


def test_import_handlstm_imports_neither_dynamo_nor_sympy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, torch, handlstm\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
