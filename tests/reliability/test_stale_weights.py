"""No stale weights: after every way parameters can change, the next forward uses the new values.

Each test warms the module up first (a forward with and without grad, so whatever a fast path
caches is populated), changes the parameters one way, then checks outputs, final states and every
gradient against an nn.LSTM loaded with the module's current parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from handlstm import HandLSTM
from handlstm.testing import assert_lstm_close

from ._helpers import F64, oracle_for, pair, sequence, states


def warm(module: HandLSTM) -> None:
    """Run the module in every grad mode, so any cache derived from parameters is filled."""
    x = sequence()
    hx = states(module)
    with torch.no_grad():
        module(x, hx)
    module(x, hx)[0].sum().backward()
    module.zero_grad(set_to_none=True)


def assert_uses_current_weights(module: HandLSTM) -> None:
    x = sequence(seed=7)
    hx = states(module, seed=8)
    assert_lstm_close(module, oracle_for(module), x, hx)
    with torch.no_grad():  # the no-grad path too
        out, (h, c) = module(x, hx)
        ref_out, (ref_h, ref_c) = oracle_for(module)(x, hx)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close((h, c), (ref_h, ref_c), rtol=1e-10, atol=1e-10)


def changed(module: HandLSTM) -> dict[str, torch.Tensor]:
    """New values for every parameter, far from the old ones."""
    gen = torch.Generator().manual_seed(99)
    return {
        name: torch.randn(p.shape, generator=gen, dtype=p.dtype)
        for name, p in module.named_parameters()
    }


def test_optimizer_step():
    module, _ = pair()
    warm(module)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    out, (h, c) = module(sequence(), states(module))
    (out.square().sum() + h.sum() + c.sum()).backward()
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert_uses_current_weights(module)


def test_adam_steps_interleaved_with_forward():
    module, _ = pair()
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    for _ in range(3):
        warm(module)
        optimizer.zero_grad()
        module(sequence())[0].sum().backward()
        optimizer.step()
        assert_uses_current_weights(module)


def test_load_state_dict():
    module, _ = pair()
    warm(module)
    module.load_state_dict(changed(module))
    assert_uses_current_weights(module)


def test_load_state_dict_assign():
    module, _ = pair()
    warm(module)
    new = {k: nn.Parameter(v) for k, v in changed(module).items()}
    module.load_state_dict(new, assign=True)
    assert_uses_current_weights(module)


def test_in_place_edit_under_no_grad():
    module, _ = pair()
    warm(module)
    with torch.no_grad():
        module.weight_hh_l0.mul_(-2.0)
        module.bias_ih_l1_reverse.add_(0.75)
        module.weight_hr_l0.copy_(torch.ones_like(module.weight_hr_l0))
    assert_uses_current_weights(module)


def test_edit_through_data_which_bypasses_the_version_counter():
    module, _ = pair()
    warm(module)
    version = module.weight_ih_l0._version
    module.weight_ih_l0.data.mul_(3.0)  # old-style edit: .data does not bump _version
    module.weight_hh_l1.data = torch.full_like(module.weight_hh_l1, 0.25)
    assert module.weight_ih_l0._version == version
    assert_uses_current_weights(module)


def test_float_then_double_round_trip():
    module, _ = pair()
    warm(module)
    module.float()
    x = sequence().float()
    out, (h, c) = module(x)
    ref_out, (ref_h, ref_c) = oracle_for(module)(x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((h, c), (ref_h, ref_c), rtol=1e-5, atol=1e-5)
    module.double()
    assert module.weight_ih_l0.dtype == F64
    assert_uses_current_weights(module)


def test_to_with_swapped_parameters():
    module, _ = pair()
    warm(module)
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        module.to(torch.float32).to(F64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    assert_uses_current_weights(module)


def test_functional_call_uses_given_parameters_and_leaves_the_module_alone():
    module, _ = pair()
    warm(module)
    new = changed(module)
    x, hx = sequence(seed=3), states(module, seed=4)
    out, (h, c) = functional_call(module, new, (x, hx))
    expected = oracle_for(module)
    expected.load_state_dict(new)
    ref_out, (ref_h, ref_c) = expected(x, hx)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close((h, c), (ref_h, ref_c), rtol=1e-10, atol=1e-10)
    # Gradients flow to the functional parameters, not the module's.
    leaves = {k: v.clone().requires_grad_() for k, v in new.items()}
    functional_call(module, leaves, (x, hx))[0].sum().backward()
    expected.zero_grad()
    expected(x, hx)[0].sum().backward()
    for name, leaf in leaves.items():
        torch.testing.assert_close(
            leaf.grad, getattr(expected, name).grad, rtol=1e-10, atol=1e-10, msg=name
        )
        assert getattr(module, name).grad is None
    # And the module itself still uses its own weights afterwards.
    assert_uses_current_weights(module)


def test_swap_a_parameter_object():
    module, _ = pair()
    warm(module)
    new = changed(module)
    module.weight_hh_l0_reverse = nn.Parameter(new["weight_hh_l0_reverse"])
    module.bias_hh_l1 = nn.Parameter(new["bias_hh_l1"])
    assert_uses_current_weights(module)


def test_swap_tensors_in_place():
    module, _ = pair()
    warm(module)
    new = nn.Parameter(changed(module)["weight_ih_l1"])
    torch.utils.swap_tensors(module.weight_ih_l1, new)
    assert_uses_current_weights(module)


def test_reset_parameters():
    module, _ = pair()
    warm(module)
    before = module.weight_ih_l0.detach().clone()
    torch.manual_seed(1234)
    module.reset_parameters()
    assert not torch.equal(before, module.weight_ih_l0)
    assert_uses_current_weights(module)


def test_requires_grad_toggled_after_warm_up():
    module, _ = pair()
    warm(module)
    module.weight_hh_l0.requires_grad_(False)
    assert_uses_current_weights(module)
    module.weight_hh_l0.requires_grad_(True)
    assert_uses_current_weights(module)


def test_two_modules_with_equal_shapes_do_not_share_state():
    first, _ = pair(seed=0)
    second, _ = pair(seed=1)
    warm(first)
    warm(second)
    assert_uses_current_weights(first)
    assert_uses_current_weights(second)
