"""The per-call shortcuts of HandLSTM.forward stay exact and never serve stale parameters.

forward reads every parameter once per call from the module's ``_parameters`` (a ``getattr``
only for a name that is not there), keeps only the parameter *names* across calls, tests the
common input before running the checks, and uses one zero tensor for both initial states when
``hx`` is None. Each test here warms the module up, changes its parameters one way, and then
compares outputs, final states and every gradient with an nn.LSTM holding the current values, on
the paths these shortcuts serve: ``hx=None``, one step and several, with and without projection
(separate zero states), one layer and two bidirectional ones.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize, prune

from handlstm import HandLSTM, HandLSTMCell, LSTMOptions
from handlstm.testing import assert_lstm_close

F64 = torch.float64

CONFIGS = {
    "one-layer": dict(input_size=3, hidden_size=4),
    "proj": dict(input_size=3, hidden_size=4, proj_size=2),
    "2L-bi": dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True),
    "no-bias": dict(input_size=3, hidden_size=4, bias=False),
    "no-bias-proj": dict(input_size=3, hidden_size=4, bias=False, proj_size=3),
    "2L-bi-proj": dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2),
}


def make_pair(config: dict, seed: int = 0) -> tuple[HandLSTM, nn.LSTM]:
    torch.manual_seed(seed)
    expected = nn.LSTM(**config, dtype=F64)
    actual = HandLSTM(**config, dtype=F64)
    actual.load_state_dict(expected.state_dict())
    return actual, expected


def oracle(module: HandLSTM) -> nn.LSTM:
    """nn.LSTM with copies of ``module``'s current parameter values and requires_grad flags."""
    config = {
        name: getattr(module, name)
        for name in ("input_size", "hidden_size", "num_layers", "bias", "bidirectional")
    }
    expected = nn.LSTM(**config, proj_size=module.proj_size, dtype=F64)
    for name, param in expected.named_parameters():
        current = getattr(module, name)  # with grad on: a parametrized one requires grad too
        with torch.no_grad():
            param.copy_(current)
        param.requires_grad_(current.requires_grad)
    return expected


def run(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One call with hx=None, its backward with ``grad`` into the output (x needs no grad)."""
    module.zero_grad(set_to_none=True)
    out, (h, c) = module(x)
    out.backward(grad)
    return out.detach(), h.detach(), c.detach()


def assert_current(module: HandLSTM, steps: int) -> None:
    """forward(x) with hx=None equals nn.LSTM on the current parameters: outputs, states and
    every parameter gradient (None exactly where nn.LSTM's is None)."""
    expected = oracle(module)
    gen = torch.Generator().manual_seed(steps)
    x = torch.randn(steps, 2, 3, generator=gen, dtype=F64)
    width = module.num_directions * module.output_size
    grad = torch.randn(steps, 2, width, generator=gen, dtype=F64)
    for got, want in zip(run(module, x, grad), run(expected, x, grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for name, param in expected.named_parameters():
        mine = getattr(module, name)
        if param.grad is None:
            assert mine.grad is None, name
        else:
            assert mine.grad is not None, name
            torch.testing.assert_close(mine.grad, param.grad, rtol=1e-10, atol=1e-10, msg=name)
    with torch.no_grad():
        got = module(x)
        want = expected(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def warm(module: HandLSTM) -> None:
    for steps in (1, 3):
        with torch.no_grad():
            module(torch.randn(steps, 2, 3, dtype=F64))
        module(torch.randn(steps, 2, 3, dtype=F64))[0].sum().backward()
    module.zero_grad(set_to_none=True)


def new_values(module: HandLSTM) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    return {n: torch.randn(p.shape, generator=gen, dtype=F64) for n, p in module.named_parameters()}


def edit_in_place(module: HandLSTM) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.mul_(-1.5).add_(0.25)


def edit_data(module: HandLSTM) -> None:
    for name, value in new_values(module).items():
        getattr(module, name).data = value


def swap_parameter_objects(module: HandLSTM) -> None:
    for name, value in new_values(module).items():
        setattr(module, name, nn.Parameter(value))


def load_state(module: HandLSTM) -> None:
    module.load_state_dict(new_values(module))


def load_state_assign(module: HandLSTM) -> None:
    module.load_state_dict({k: nn.Parameter(v) for k, v in new_values(module).items()}, assign=True)


def freeze_some(module: HandLSTM) -> None:
    module.weight_hh_l0.requires_grad_(False)
    if module.bias:
        module.bias_ih_l0.requires_grad_(False)


def round_trip_dtype(module: HandLSTM) -> None:
    edit_in_place(module)
    module.float()
    out, _ = module(torch.randn(1, 2, 3))  # the float32 module really runs in float32
    assert out.dtype == torch.float32
    module.double()


CHANGES: dict[str, Callable[[HandLSTM], None]] = {
    "in-place": edit_in_place,
    "data": edit_data,
    "swap-parameter": swap_parameter_objects,
    "load_state_dict": load_state,
    "load_state_dict-assign": load_state_assign,
    "requires_grad_": freeze_some,
    "float-double": round_trip_dtype,
}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("change", list(CHANGES))
def test_no_stale_parameters_after_a_change(change: str, config: str, steps: int) -> None:
    module, _ = make_pair(CONFIGS[config])
    warm(module)
    assert_current(module, steps)
    CHANGES[change](module)
    assert_current(module, steps)


@pytest.mark.parametrize("steps", [1, 3])
def test_functional_call_sees_the_given_tensors(steps: int) -> None:
    module, _ = make_pair(CONFIGS["2L-bi"])
    warm(module)
    new = {k: v.requires_grad_() for k, v in new_values(module).items()}
    x = torch.randn(steps, 2, 3, dtype=F64)
    out, (h, c) = functional_call(module, new, (x,))
    expected = oracle(module)
    expected.load_state_dict({k: v.detach() for k, v in new.items()})
    ref_out, (ref_h, ref_c) = expected(x)
    torch.testing.assert_close((out, h, c), (ref_out, ref_h, ref_c), rtol=1e-10, atol=1e-10)
    out.sum().backward()
    ref_out.sum().backward()
    for name, leaf in new.items():
        torch.testing.assert_close(leaf.grad, getattr(expected, name).grad, msg=name)
        assert getattr(module, name).grad is None
    assert_current(module, steps)  # and the module's own parameters afterwards


class Doubled(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


@pytest.mark.parametrize("steps", [1, 3])
def test_parametrized_weight_is_read_through_its_parametrization(steps: int) -> None:
    module, _ = make_pair(CONFIGS["one-layer"])
    warm(module)
    parametrize.register_parametrization(module, "weight_hh_l0", Doubled())
    original = module.parametrizations.weight_hh_l0.original
    expected = oracle(module)  # holds 2 * original, the value forward must use
    torch.testing.assert_close(expected.weight_hh_l0, 2 * original.detach())
    x = torch.randn(steps, 2, 3, dtype=F64)
    out, _ = module(x)
    torch.testing.assert_close(out, expected(x)[0], rtol=1e-10, atol=1e-10)
    out.sum().backward()
    expected(x)[0].sum().backward()
    torch.testing.assert_close(original.grad, 2 * expected.weight_hh_l0.grad)
    with torch.no_grad():
        original.mul_(-1.0)  # a change of the parametrization's input is seen too
    torch.testing.assert_close(module(x)[0], oracle(module)(x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_results_do_not_share_memory_with_each_other_or_the_zero_states(config: str) -> None:
    """hx=None uses one zero tensor for h_0 and c_0: nothing returned may be (a view of) it,
    and an in-place change of one result leaves the others alone, as with nn.LSTM."""
    module, expected = make_pair(CONFIGS[config])
    x = torch.randn(1, 2, 3, dtype=F64)
    out, (h, c) = module(x)
    pointers = {t.untyped_storage().data_ptr() for t in (out, h, c)}
    assert len(pointers) == 3
    ref_out, (ref_h, ref_c) = expected(x)
    with torch.no_grad():
        out.add_(1.0)
        h.mul_(3.0)
    torch.testing.assert_close(c, ref_c, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, 3 * ref_h, rtol=1e-10, atol=1e-10)
    again, (h2, c2) = module(x)  # the next call starts from zeros again
    torch.testing.assert_close((again, h2, c2), (ref_out, ref_h, ref_c), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 2])
def test_one_step_gradcheck_with_zero_states(steps: int) -> None:
    module, _ = make_pair(CONFIGS["proj"])
    params = [p for _, p in module.named_parameters()]
    x = torch.randn(steps, 2, 3, dtype=F64, requires_grad=True)

    def f(x: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = [n for n, _ in module.named_parameters()]
        out, (h, c) = functional_call(module, dict(zip(names, values, strict=True)), (x,))
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


def test_hx_none_matches_explicit_zeros_and_nn_lstm() -> None:
    module, expected = make_pair(CONFIGS["2L-bi"])
    x = torch.randn(1, 2, 3, dtype=F64)
    zeros = torch.zeros(4, 2, 4, dtype=F64)
    assert_lstm_close(module, expected, x)
    assert_lstm_close(module, expected, x, (zeros, zeros.clone()))


# -- HandLSTMCell: its parameters read once per call, from _parameters ---------------------------


def cell_oracle(cell: HandLSTMCell) -> nn.LSTMCell:
    expected = nn.LSTMCell(cell.input_size, cell.hidden_size, bias=cell.bias, dtype=F64)
    for name, param in expected.named_parameters():
        current = getattr(cell, name)
        with torch.no_grad():
            param.copy_(current)
        param.requires_grad_(current.requires_grad)
    return expected


def assert_cell_current(cell: HandLSTMCell) -> None:
    expected = cell_oracle(cell)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, generator=gen, dtype=F64)
    hx = (torch.randn(2, 4, generator=gen, dtype=F64), torch.randn(2, 4, generator=gen, dtype=F64))
    for state in (None, hx):
        results = []
        for module in (cell, expected):
            module.zero_grad(set_to_none=True)
            h, c = module(x) if state is None else module(x, state)
            (h.sum() + 2 * c.sum()).backward()
            results.append((h.detach(), c.detach()))
        torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-10)
        for name, param in expected.named_parameters():
            want = param.grad
            if parametrize.is_parametrized(cell, name):  # Doubled: d/d original = 2 d/d weight
                mine = cell.parametrizations[name].original.grad
                want = None if want is None else 2 * want
            else:
                mine = getattr(cell, name).grad
            assert (mine is None) == (want is None), name
            if mine is not None:
                torch.testing.assert_close(mine, want, rtol=1e-10, atol=1e-10, msg=name)


def cell_changes(cell: HandLSTMCell, change: str) -> None:
    gen = torch.Generator().manual_seed(11)
    new = {n: torch.randn(p.shape, generator=gen, dtype=F64) for n, p in cell.named_parameters()}
    if change == "in-place":
        with torch.no_grad():
            cell.weight_hh.mul_(-2.0)
    elif change == "swap-parameter":
        cell.weight_ih = nn.Parameter(new["weight_ih"])
    elif change == "load_state_dict-assign":
        cell.load_state_dict({k: nn.Parameter(v) for k, v in new.items()}, assign=True)
    elif change == "requires_grad_":
        cell.weight_hh.requires_grad_(False)
    elif change == "parametrize":
        parametrize.register_parametrization(cell, "weight_hh", Doubled())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "change",
    ["in-place", "swap-parameter", "load_state_dict-assign", "requires_grad_", "parametrize"],
)
def test_cell_no_stale_parameters_after_a_change(change: str, bias: bool) -> None:
    torch.manual_seed(0)
    cell = HandLSTMCell(3, 4, bias=bias, dtype=F64)
    cell(torch.randn(2, 3, dtype=F64))[0].sum().backward()  # warm up
    assert_cell_current(cell)
    cell_changes(cell, change)
    assert_cell_current(cell)


def test_cell_functional_call_sees_the_given_tensors() -> None:
    torch.manual_seed(0)
    cell = HandLSTMCell(3, 4, dtype=F64)
    cell(torch.randn(2, 3, dtype=F64))
    new = {n: torch.randn(p.shape, dtype=F64) for n, p in cell.named_parameters()}
    x = torch.randn(2, 3, dtype=F64)
    expected = cell_oracle(cell)
    expected.load_state_dict(new)
    torch.testing.assert_close(functional_call(cell, new, (x,)), expected(x), rtol=1e-10, atol=0)


def test_options_is_default_is_kept_per_object_without_changing_it() -> None:
    """``LSTMOptions.is_default`` is worked out once per (frozen) object: equality, hashing,
    repr, pickling and ``dataclasses.replace`` are those of the fields alone."""
    plain, varied = LSTMOptions(), LSTMOptions(layer_norm=True)
    assert plain.is_default and plain.is_default
    assert not varied.is_default
    fresh = LSTMOptions()
    assert plain == fresh and hash(plain) == hash(fresh) and repr(plain) == repr(fresh)
    assert not dataclasses.replace(plain, peepholes=True).is_default
    assert dataclasses.replace(varied, layer_norm=False).is_default
    assert pickle.loads(pickle.dumps(varied)) == varied
    assert not pickle.loads(pickle.dumps(varied)).is_default
    assert LSTMOptions(forget_bias=1.0).is_default  # init-only


@pytest.mark.parametrize("steps", [1, 3])
def test_pruned_weight_is_the_masked_one(steps: int) -> None:
    """``torch.nn.utils.prune`` moves the parameter to ``<name>_orig`` and sets the masked weight
    as a plain attribute (not in ``_parameters``): forward must use that, and it changes with
    the mask."""
    module, _ = make_pair(CONFIGS["2L-bi"])
    warm(module)
    prune.random_unstructured(module, "weight_hh_l1_reverse", amount=0.5)
    assert "weight_hh_l1_reverse" not in module._parameters
    x = torch.randn(steps, 2, 3, dtype=F64)
    torch.testing.assert_close(module(x), oracle(module)(x), rtol=1e-10, atol=1e-10)
    out, _ = module(x)
    out.sum().backward()
    expected = oracle(module)
    expected(x)[0].sum().backward()
    mask = module.weight_hh_l1_reverse_mask
    torch.testing.assert_close(
        module.weight_hh_l1_reverse_orig.grad, expected.weight_hh_l1_reverse.grad * mask
    )
    prune.remove(module, "weight_hh_l1_reverse")  # back to a Parameter in _parameters
    assert_current(module, steps)
