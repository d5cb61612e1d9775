"""Caller data is never mutated: input, hx and PackedSequence tensors are bit-identical after a
forward and a backward pass, and their version counters did not move."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from handlstm import HandLSTM, HandLSTMCell
from handlstm.testing import cell_cases, lstm_cases

from ._helpers import pair, sequence, states


def caller_tensors(input, hx) -> list[Tensor]:
    found = []
    if isinstance(input, PackedSequence):
        found += [t for t in input if t is not None]
    else:
        found.append(input)
    if hx is not None:
        found += list(hx)
    return found


def snapshot(tensors: list[Tensor]) -> list[tuple[Tensor, int, tuple, tuple]]:
    return [(t.detach().clone(), t._version, t.shape, t.stride()) for t in tensors]


def assert_unchanged(tensors: list[Tensor], before) -> None:
    for index, (t, (value, version, shape, stride)) in enumerate(zip(tensors, before, strict=True)):
        assert t._version == version, f"tensor {index}: version {version} -> {t._version}"
        assert t.shape == shape and t.stride() == stride, f"tensor {index}: metadata changed"
        assert torch.equal(t.detach(), value), f"tensor {index}: values changed"


def run_forward_backward(module, input, hx) -> None:
    out, (h, c) = module(input) if hx is None else module(input, hx)
    data = out.data if isinstance(out, PackedSequence) else out
    (data.square().sum() + h.sum() + c.sum()).backward()


def with_grad(input, hx):
    """The same caller data, now leaves that require grad (backward reaches them)."""
    if isinstance(input, PackedSequence):
        input = PackedSequence(input.data.requires_grad_(), *input[1:])
    else:
        input = input.requires_grad_()
    if hx is not None:
        hx = tuple(s.requires_grad_() for s in hx)
    return input, hx


@settings(max_examples=25)
@given(lstm_cases(max_layers=2, max_len=5))
def test_lstm_leaves_caller_tensors_untouched(case):
    module = case.make(HandLSTM)
    for input, hx in ((case.input, case.hx), with_grad(case.input, case.hx)):
        tensors = caller_tensors(input, hx)
        before = snapshot(tensors)
        run_forward_backward(module, input, hx)
        with torch.no_grad():
            module(input) if hx is None else module(input, hx)
        assert_unchanged(tensors, before)


@given(cell_cases())
def test_cell_leaves_caller_tensors_untouched(case):
    module = case.make(HandLSTMCell)
    x = case.input.requires_grad_()
    hx = None if case.hx is None else tuple(s.requires_grad_() for s in case.hx)
    tensors = [x, *(hx or ())]
    before = snapshot(tensors)
    h, c = module(x, hx)
    (h.sum() + c.square().sum()).backward()
    assert_unchanged(tensors, before)


def test_non_contiguous_views_and_their_base_untouched():
    module, _ = pair(dict(input_size=3, hidden_size=5, num_layers=2, batch_first=True))
    base = sequence(length=4, batch=6).requires_grad_()  # (L, N, H_in)
    x = base[:, ::2].transpose(0, 1)  # (N, L, H_in), a strided view
    h_base, c_base = (s.requires_grad_() for s in states(module, batch=6))
    hx = (h_base[:, 1::2], c_base[:, ::2])
    tensors = [base, x, h_base, c_base, *hx]
    before = snapshot(tensors)
    run_forward_backward(module, x, hx)
    assert_unchanged(tensors, before)


def test_expanded_input_is_not_written():
    module, _ = pair()
    row = torch.randn(1, 1, 3, dtype=torch.float64)
    x = row.expand(5, 3, 3)  # every element aliases `row`
    before = snapshot([row, x])
    with torch.no_grad():
        module(x)
    run_forward_backward(module, x, None)
    assert_unchanged([row, x], before)
