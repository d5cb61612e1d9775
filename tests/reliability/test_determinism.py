"""The same inputs give bit-identical outputs and gradients across calls on CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from ._helpers import FULL, pair, sequence, states


def everything(module, input, hx) -> list[torch.Tensor]:
    """Outputs, final states and the gradients of the input, hx and every parameter."""
    module.zero_grad(set_to_none=True)
    if isinstance(input, PackedSequence):
        leaf = input.data.detach().clone().requires_grad_()
        input = PackedSequence(leaf, *input[1:])
    else:
        leaf = input = input.detach().clone().requires_grad_()
    hx = tuple(s.detach().clone().requires_grad_() for s in hx)
    out, (h, c) = module(input, hx)
    data = out.data if isinstance(out, PackedSequence) else out
    weights = torch.linspace(-1, 1, data.numel(), dtype=data.dtype).view_as(data)
    ((data * weights).sum() + h.square().sum() + c.sum()).backward()
    grads = [leaf.grad, hx[0].grad, hx[1].grad] + [p.grad for p in module.parameters()]
    return [data.detach(), h.detach(), c.detach(), *grads]


@pytest.mark.parametrize("packed", [False, True])
def test_repeated_calls_are_bit_identical(packed):
    module, _ = pair()
    x = sequence(length=6)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([6, 2, 4]), enforce_sorted=False)
    hx = states(module)
    first = everything(module, x, hx)
    for _ in range(3):
        again = everything(module, x, hx)
        for index, (a, b) in enumerate(zip(first, again, strict=True)):
            assert torch.equal(a, b), f"result {index} changed between calls"


def test_a_copy_and_a_rebuilt_module_are_bit_identical():
    module, _ = pair()
    x, hx = sequence(), states(module)
    reference = everything(module, x, hx)
    twin = copy.deepcopy(module)
    rebuilt, _ = pair(FULL)
    for other in (twin, rebuilt):
        for a, b in zip(reference, everything(other, x, hx), strict=True):
            assert torch.equal(a, b)


def test_float32_is_bit_identical_too():
    module, _ = pair()
    module.float()
    x = sequence().float()
    hx = tuple(s.float() for s in states(module))
    first = everything(module, x, hx)
    for a, b in zip(first, everything(module, x, hx), strict=True):
        assert torch.equal(a, b)
