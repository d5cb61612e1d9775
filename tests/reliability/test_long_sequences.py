"""Long sequences: forward and backward over tens of thousands of steps, no recursion errors, and
the same outputs and gradients as nn.LSTM.

The time loop is a Python loop and autograd walks its graph iteratively, so the length is bounded
by memory, not by the interpreter's recursion limit. The 100,000-step run is behind ``slow``
(``pytest -m slow tests/reliability``); peak memory against length is measured by
``benchmarks/long_sequence_memory.py``.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from ._helpers import F64, pair

SMALL = dict(input_size=2, hidden_size=3)


def run_long(length: int, packed: bool = False, config: dict | None = None) -> None:
    actual, expected = pair(config or SMALL)
    gen = torch.Generator().manual_seed(0)
    batch = 2 if packed else 1
    x = torch.randn(length, batch, actual.input_size, generator=gen, dtype=F64)
    limit = sys.getrecursionlimit()
    results = []
    for module in (actual, expected):
        leaf = x.clone().requires_grad_()
        input = leaf
        if packed:
            input = pack_padded_sequence(leaf, torch.tensor([length, length // 3]))
        out, (h, c) = module(input)
        data = out.data if packed else out
        (data.sum() + h.sum() + c.square().sum()).backward()
        results.append([data.detach(), h.detach(), c.detach(), leaf.grad])
        results[-1] += [p.grad for p in module.parameters()]
        del out, data, h, c  # free the graph while the recursion limit is still the default
    assert sys.getrecursionlimit() == limit
    for index, (got, want) in enumerate(zip(*results, strict=True)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"result {index}")


def test_twenty_thousand_steps_forward_and_backward():
    run_long(20_000)


def test_two_thousand_steps_packed_bidirectional():
    run_long(2_000, packed=True, config=dict(SMALL, bidirectional=True))


@pytest.mark.slow
def test_hundred_thousand_steps_forward_and_backward():
    run_long(100_000)


@pytest.mark.slow
def test_twenty_thousand_steps_packed():
    run_long(20_000, packed=True)
