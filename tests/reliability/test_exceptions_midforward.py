"""An exception raised in the middle of a forward pass leaves the module usable: the next forward
is correct, grad mode and training flag are restored, and nothing is left half-updated."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from handlstm.testing import assert_lstm_close

from ._helpers import oracle_for, pair, sequence, states


def assert_healthy(module) -> None:
    assert torch.is_grad_enabled()
    assert module.training
    assert all(p.grad is None for p in module.parameters())
    assert_lstm_close(module, oracle_for(module), sequence(seed=5), states(module, seed=6))


def test_bad_hx_then_good_forward():
    module, _ = pair()
    x = sequence()
    h, c = states(module)
    bad = [(h,), (h, c, c), (h[:, :2], c), (h, c[..., :-1]), (h.float(), c), h]
    for hx in bad:
        with pytest.raises((RuntimeError, TypeError, IndexError)):
            module(x, hx)
        assert_healthy(module)


class Interrupt(TorchFunctionMode):
    """Raise KeyboardInterrupt at the ``at``-th torch call made inside the mode."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt(f"interrupted at torch call {self.at}")
        return func(*args, **(kwargs or {}))


def count_calls(module, x, hx) -> int:
    mode = Interrupt(at=-1)
    with mode:
        module(x, hx)
    return mode.calls


@pytest.mark.parametrize("grad", [True, False])
def test_keyboard_interrupt_at_every_point_of_the_forward(grad):
    module, _ = pair(dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True))
    x, hx = sequence(length=3), states(module)
    total = count_calls(module, x, hx)
    assert total > 10
    points = sorted({1, 2, 3, total // 3, total // 2, total - 1, total})
    for at in points:
        with torch.set_grad_enabled(grad), pytest.raises(KeyboardInterrupt), Interrupt(at):
            module(x, hx)
        assert_healthy(module)


def test_keyboard_interrupt_from_forward_pre_hook():
    module, _ = pair()

    def hook(mod, args):
        raise KeyboardInterrupt("from a forward pre-hook")

    handle = module.register_forward_pre_hook(hook)
    with pytest.raises(KeyboardInterrupt):
        module(sequence())
    handle.remove()
    assert_healthy(module)


def test_keyboard_interrupt_from_forward_hook_of_a_submodule():
    lstm, _ = pair()
    model = nn.Sequential()
    model.add_module("lstm", lstm)

    def hook(mod, args, output):
        raise KeyboardInterrupt("from the LSTM's forward hook")

    handle = lstm.register_forward_hook(hook)
    with pytest.raises(KeyboardInterrupt):
        model(sequence())
    handle.remove()
    assert_healthy(lstm)


def test_keyboard_interrupt_from_a_tensor_hook_in_backward():
    module, _ = pair()
    x = sequence().requires_grad_()

    def hook(grad):
        raise KeyboardInterrupt("from a tensor hook during backward")

    out, _ = module(x)
    out.register_hook(hook)
    with pytest.raises(KeyboardInterrupt):
        out.sum().backward()
    module.zero_grad(set_to_none=True)
    assert_healthy(module)


def test_keyboard_interrupt_from_a_parameter_hook_in_backward():
    module, _ = pair()
    handle = module.weight_hh_l0.register_hook(lambda g: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        module(sequence())[0].sum().backward()
    handle.remove()
    module.zero_grad(set_to_none=True)
    assert_healthy(module)
