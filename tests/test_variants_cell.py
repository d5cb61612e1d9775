"""Claim: HandLSTMCell's variant options compute the same step as the reference, and are
neutral (exactly nn.LSTMCell) at their defaults."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_variants import randomise_variant_params, recorded_masks
from torch import nn
from variant_reference import reference_cell

from handlstm import HandLSTM, HandLSTMCell
from handlstm.modules.cell import CELL_OPTIONS
from handlstm.testing import CellCase, assert_lstm_close, cell_cases

CELL_NON_NEUTRAL: dict[str, Any] = {
    "layer_norm": True,
    "peepholes": True,
    "zoneout_h": 0.3,
    "zoneout_c": 0.7,
    "gate_activation": F.hardsigmoid,
    "cell_activation": F.softsign,
    "cell_clip": 0.3,
}
TOL = {"rtol": 1e-10, "atol": 1e-10}


def test_cell_options_are_the_single_step_ones() -> None:
    assert set(CELL_OPTIONS) == set(CELL_NON_NEUTRAL) | {"forget_bias"}


@settings(max_examples=20)
@given(case=cell_cases(max_size=6), training=st.booleans())
def test_neutral_cell_options_equal_nn_lstm_cell(case: CellCase, training: bool) -> None:
    neutral = {"layer_norm": False, "peepholes": False, "zoneout_h": 0.0, "zoneout_c": 0.0}
    neutral |= {"gate_activation": torch.sigmoid, "cell_activation": torch.tanh}
    neutral |= {"cell_clip": None, "forget_bias": None}
    expected = case.make(nn.LSTMCell).train(training)
    actual = case.make(HandLSTMCell, state_dict=expected.state_dict(), **neutral)
    actual.train(training)
    assert actual.variant_options() == {}
    assert list(actual.state_dict()) == list(expected.state_dict())
    assert_lstm_close(actual, expected, case.input, case.hx)


@st.composite
def cell_option_sets(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(sorted(CELL_NON_NEUTRAL)), min_size=1, unique=True))
    return {name: CELL_NON_NEUTRAL[name] for name in names}


@settings(max_examples=40)
@given(
    case=cell_cases(max_size=6),
    options=cell_option_sets(),
    training=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cell_options_match_reference(
    case: CellCase, options: dict[str, Any], training: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    cell = case.make(HandLSTMCell, **options).train(training)
    randomise_variant_params(cell, seed)
    x = case.input.detach().clone().requires_grad_(True)
    hx = (
        None if case.hx is None else tuple(t.detach().clone().requires_grad_(True) for t in case.hx)
    )
    with recorded_masks() as masks:
        h1, c1 = cell(x, hx)
    if not training:
        assert masks == {}
    batched = case.input.dim() == 2
    xb = x if batched else x.unsqueeze(0)
    if hx is None:
        h0 = c0 = xb.new_zeros(xb.size(0), cell.hidden_size)
    else:
        h0, c0 = (hx[0], hx[1]) if batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
    params = dict(cell.named_parameters())
    ref_h, ref_c = reference_cell(params, options, xb, h0, c0, masks, training)
    if not batched:
        ref_h, ref_c = ref_h.squeeze(0), ref_c.squeeze(0)
    torch.testing.assert_close(h1, ref_h, **TOL)
    torch.testing.assert_close(c1, ref_c, **TOL)
    weights = [torch.randn(t.shape, dtype=t.dtype) for t in (h1, c1)]
    leaves = [x, *(hx or ()), *params.values()]

    def grads(h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        loss = (h * weights[0]).sum() + (c * weights[1]).sum()
        return torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)

    for a, e in zip(grads(h1, c1), grads(ref_h, ref_c), strict=True):
        assert (a is None) == (e is None)
        if a is not None and e is not None:
            torch.testing.assert_close(a, e, **TOL)


def test_cell_unrolled_equals_one_layer_lstm_in_eval() -> None:
    """The cell and the sequence module share the step: unrolling the cell over a sequence with
    the same parameters gives HandLSTM's output for every per-step option."""
    options = dict(CELL_NON_NEUTRAL)
    torch.manual_seed(0)
    lstm = HandLSTM(3, 5, dtype=torch.float64, **options).eval()
    randomise_variant_params(lstm, 0)
    cell = HandLSTMCell(3, 5, dtype=torch.float64, **options).eval()
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in lstm.state_dict().items()})
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h = c = torch.zeros(2, 5, dtype=torch.float64)
    outs = []
    for t in range(6):
        h, c = cell(x[t], (h, c))
        outs.append(h)
    output, (h_n, c_n) = lstm(x)
    torch.testing.assert_close(torch.stack(outs), output, **TOL)
    torch.testing.assert_close(c, c_n[0], **TOL)


def test_cell_zoneout_draws_fresh_masks_per_call() -> None:
    cell = HandLSTMCell(3, 8, zoneout_h=0.5, zoneout_c=0.5).train()
    x = torch.randn(16, 3)
    with recorded_masks() as first:
        cell(x)
    with recorded_masks() as second:
        cell(x)
    assert {k: tuple(v.shape) for k, v in first.items()} == {
        "zoneout_h": (16, 8),
        "zoneout_c": (16, 8),
    }
    assert not torch.equal(first["zoneout_h"], second["zoneout_h"])


@pytest.mark.parametrize("name", sorted(CELL_NON_NEUTRAL))
def test_cell_repr_and_variant_options(name: str) -> None:
    cell = HandLSTMCell(3, 4, **{name: CELL_NON_NEUTRAL[name]})
    assert list(cell.variant_options()) == [name]
    assert f"{name}=" in repr(cell)
