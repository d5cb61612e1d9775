"""Zoneout, peepholes and layer norm on the fast path (handlstm.engines.fast.lstm_variants): exact,
and actually taken.

Oracles: tests/variant_reference.py (the papers' equations, row by row, with the masks the
package drew) for outputs, states and every gradient; the composed path (``choose.fast_disabled()``)
for everything both paths compute, a Hessian-vector product included; ``gradcheck`` /
``gradgradcheck`` for the hand-written backward and the double backward's recompute.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fast_path import _null, path_counter
from test_variants import check_against_reference, randomise_variant_params
from torch import Tensor
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from handlstm import HandLSTM
from handlstm.core.lstm import LSTM
from handlstm.engines import choose
from handlstm.modules import lstm_variants
from handlstm.testing import LSTMCase, lstm_cases

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}

VARIANTS: dict[str, dict[str, Any]] = {
    "zoneout": {"zoneout_h": 0.3, "zoneout_c": 0.5},
    "zoneout_h": {"zoneout_h": 0.4},
    "zoneout_c": {"zoneout_c": 0.4},
    "peepholes": {"peepholes": True},
    "layer_norm": {"layer_norm": True},
    "all": {
        "layer_norm": True,
        "peepholes": True,
        "zoneout_h": 0.2,
        "zoneout_c": 0.3,
        "recurrent_dropout": 0.3,
        "weight_drop": 0.2,
    },
}


def _steps_of(case: LSTMCase) -> int:
    if isinstance(case.input, PackedSequence):
        return len(case.input.batch_sizes)
    if case.input.dim() == 2:
        return case.input.size(0)
    return case.input.size(1) if case.config["batch_first"] else case.input.size(0)


@pytest.mark.parametrize("name", ["zoneout", "peepholes", "layer_norm", "all"])
@settings(max_examples=8)
@given(
    case=lstm_cases(max_size=4, max_layers=2, max_len=5, max_batch=3),
    training=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_variant_matches_reference(
    name: str, case: LSTMCase, training: bool, seed: int
) -> None:
    """Outputs, h_n, c_n and every gradient against the reference, on the fast path (dense,
    unbatched, packed sorted and unsorted; layers, directions, proj_size, bias drawn)."""
    with path_counter() as seen:
        check_against_reference(case, VARIANTS[name], training, seed)
    directions = 2 if case.config["bidirectional"] else 1
    served = case.config["num_layers"] * directions if _steps_of(case) > 1 else 0
    assert seen["fast"] == served


def _module(options: dict[str, Any], bidirectional: bool, proj: int, training: bool) -> HandLSTM:
    torch.manual_seed(0)
    mine = HandLSTM(
        3, 4, num_layers=2, bidirectional=bidirectional, proj_size=proj, dtype=F64, **options
    )
    randomise_variant_params(mine, 1)
    return mine.train(training)


# Peepholes and layer norm draw no masks: training and eval are the same for them.
NAMES_MODES = [(n, m) for n in ("zoneout", "zoneout_h", "zoneout_c", "all") for m in (True, False)]
NAMES_MODES += [("peepholes", True), ("layer_norm", True)]


@pytest.mark.parametrize("name,training", NAMES_MODES)
@pytest.mark.parametrize(
    "bidirectional,proj,packed",
    [(False, 0, False), (True, 0, True), (True, 2, False), (False, 2, True)],
)
def test_fast_variant_equals_composed(
    name: str, training: bool, bidirectional: bool, proj: int, packed: bool
) -> None:
    """Fast and composed path give the same outputs, states, gradients of the input, the
    initial state and every parameter, and Hessian-vector product (same masks: same seed)."""
    mine = _module(VARIANTS[name], bidirectional, proj, training)
    d = 2 if bidirectional else 1
    x = torch.randn(5, 3, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2 * d, 3, proj or 4, dtype=F64, requires_grad=True)
    c0 = torch.randn(2 * d, 3, 4, dtype=F64, requires_grad=True)
    leaves = [x, h0, c0, *mine.parameters()]
    vs = [torch.randn_like(t) for t in leaves]
    weights = torch.randn(2 * d, 3, proj or 4, dtype=F64)
    results = []
    for fast in (True, False):
        torch.manual_seed(3)
        with path_counter() as seen, choose.fast_disabled() if not fast else _null():
            inp: Any = x
            if packed:
                inp = pack_padded_sequence(x, torch.tensor([2, 5, 4]), enforce_sorted=False)
            out, (h, c) = mine(inp, (h0, c0))
            out = out.data if packed else out
            loss = out.square().sum() + (h * weights).sum() + c.square().sum()
            grads = torch.autograd.grad(loss, leaves, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
            hvp = torch.autograd.grad(dot, leaves)
        assert seen["train"] == (2 * d if fast else 0)
        assert seen["recompute"] == (2 if fast else 0)
        results.append([out, h, c, *grads, *hvp])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("name", ["zoneout", "peepholes", "layer_norm", "all"])
@pytest.mark.parametrize("packed", [False, True])
def test_fast_variant_inference(name: str, packed: bool) -> None:
    """Under no_grad the fast path's inference loop (eval: zoneout's expectation; training:
    its masks), saving nothing, equals the composed path."""
    for training in (False, True):
        mine = _module(VARIANTS[name], True, 2, training)
        x: Any = torch.randn(6, 3, 3, dtype=F64)
        if packed:
            x = pack_padded_sequence(x, torch.tensor([6, 2, 4]), enforce_sorted=False)
        results = []
        for fast in (True, False):
            torch.manual_seed(5)
            off = choose.fast_disabled() if not fast else _null()
            with torch.no_grad(), path_counter() as seen, off:
                out, (h, c) = mine(x)
            assert seen["inference"] == (4 if fast else 0)
            out = out.data if packed else out
            assert out.grad_fn is None
            results.append([out, h, c])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, **TOL)


def test_reverse_direction_alone() -> None:
    """``choose.run_direction(reverse=True)`` on its own: zoneout masks read in processing order."""
    from handlstm.engines.choose import run_direction

    mine = _module(VARIANTS["all"], True, 2, True)
    for packed in (False, True):
        sizes = [3, 3, 2, 1]
        if packed:
            x = torch.randn(sum(sizes), 3, dtype=F64, requires_grad=True)
            batch_sizes: list[int] | None = sizes
        else:
            x = torch.randn(4, 3, 3, dtype=F64, requires_grad=True)
            batch_sizes = None
        h0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
        c0 = torch.randn(3, 4, dtype=F64, requires_grad=True)
        results = []
        for fast in (True, False):
            torch.manual_seed(2)
            weights, variant = lstm_variants.direction_variant(
                mine, mine._direction_weights(0, 1), 0, 1, x, batch_sizes, False
            )
            with path_counter() as seen, choose.fast_disabled() if not fast else _null():
                out, (h, c) = run_direction(LSTM, x, batch_sizes, (h0, c0), weights, True, variant)
                loss = out.square().sum() + (h * c.sum()).sum() + c.square().sum()
                grads = torch.autograd.grad(
                    loss, [x, h0, c0, *mine.parameters()], allow_unused=True
                )
            assert seen["train"] == (1 if fast else 0)
            results.append([out, h, c, *[g for g in grads if g is not None]])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, **TOL)


def _checked(options: dict[str, Any], packed: bool) -> tuple[Any, tuple[Tensor, ...]]:
    mine = HandLSTM(2, 3, bidirectional=True, proj_size=2, dtype=F64, **options)
    randomise_variant_params(mine, 4)
    x = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 2, 2, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, 2, 3, dtype=F64, requires_grad=True)
    names = [n for n, _ in mine.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in mine.parameters()]

    def run(x: Tensor, h0: Tensor, c0: Tensor, *ps: Tensor) -> tuple[Tensor, ...]:
        torch.manual_seed(5)  # the same masks at every evaluation
        inp: Any = x
        if packed:
            inp = pack_padded_sequence(x, torch.tensor([3, 2]), enforce_sorted=False)
        out, (h, c) = functional_call(mine, dict(zip(names, ps, strict=True)), (inp, (h0, c0)))
        return (out.data if packed else out), h, c

    return run, (x, h0, c0, *params)


@pytest.mark.parametrize("name", ["zoneout", "peepholes", "layer_norm", "all"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("fast_mode", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_fast_variant_gradcheck(name: str, packed: bool, fast_mode: bool) -> None:
    """The hand-written backward against finite differences (bidirectional, projected; the
    default run checks random projections of the Jacobian, the slow run all of it)."""
    run, inputs = _checked(VARIANTS[name], packed)
    with path_counter() as seen:
        assert torch.autograd.gradcheck(run, inputs, fast_mode=fast_mode)
    assert seen["train"] > 0 and seen["recompute"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True])
def test_fast_variant_gradgradcheck(packed: bool) -> None:
    """The double backward (the composed path recomputed) against finite differences."""
    run, inputs = _checked(VARIANTS["all"], packed)
    with path_counter() as seen:
        assert torch.autograd.gradgradcheck(run, inputs)
    assert seen["recompute"] > 0


def test_parameter_changes_are_seen() -> None:
    """Nothing is cached: an in-place edit of a variant parameter takes effect at once."""
    mine = _module(VARIANTS["all"], False, 0, False)
    x = torch.randn(4, 2, 3, dtype=F64)
    with torch.no_grad():
        before = mine(x)[0]
        mine.weight_ci_l0.add_(1.0)
        mine.ln_weight_hh_l0.mul_(2.0)
        after = mine(x)[0]
        with choose.fast_disabled():
            want = mine(x)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, **TOL)
