"""Claim: the recurrence is a parameter of the engines.

A toy cell kind defined here (a one-gate Elman cell, ``h' = tanh(W_ih x + b_ih + W_hh h +
b_hh)``, state ``(h,)``) runs through the composed engine, the traced engine (eagerly, and as
torch's scan op under ``torch.compile(fullgraph=True, dynamic=True)`` and ``torch.export``), the
chooser and the layer/direction loop, none of which knows it. Oracles: a plain Python loop
written here, and ``nn.RNN`` (the same function), in float64 with tight tolerances, gradients
included.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from handlstm.core.kinds import CellKind, DirectionWeights
from handlstm.engines import choose, composed, traced
from handlstm.engines.tracing import time_loop
from handlstm.modules.layers import run_layers

TOL = {"rtol": 1e-10, "atol": 1e-10}
F64 = torch.float64


def _project(x: Tensor, weights: DirectionWeights, variant: object) -> Tensor:
    bias = None
    if weights.bias_ih is not None and weights.bias_hh is not None:
        bias = weights.bias_ih + weights.bias_hh
    return F.linear(x, weights.weight_ih, bias)  # (L, N, H)


def _step(
    projected: Tensor,
    state: tuple[Tensor, ...],
    weights: DirectionWeights,
    cell: object,
    noise: object,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    (h,) = state
    h_next = torch.tanh(projected + F.linear(h, weights.weight_hh))
    return (h_next,), (h_next,)


ELMAN = CellKind(name="toy-elman", gates=1, states=("h",), project=_project, step=_step)


def elman_loop(x: Tensor, h0: Tensor, w: DirectionWeights, reverse: bool) -> tuple[Tensor, Tensor]:
    """The oracle: ``(L, N, H_in)`` -> ``(L, N, H)``, ``(N, H)``, one step at a time."""
    steps = range(x.size(0) - 1, -1, -1) if reverse else range(x.size(0))
    h, out = h0, [None] * x.size(0)
    for t in steps:
        h = torch.tanh(x[t] @ w.weight_ih.T + w.bias_ih + h @ w.weight_hh.T + w.bias_hh)
        out[t] = h
    return torch.stack(out), h  # type: ignore[arg-type]


def rnn_and_weights(bidirectional: bool = False, layers: int = 1) -> tuple[nn.RNN, list]:
    torch.manual_seed(0)
    rnn = nn.RNN(3, 4, num_layers=layers, bidirectional=bidirectional, dtype=F64)
    weights = []
    for layer in range(layers):
        per_layer = []
        for suffix in ("", "_reverse")[: 2 if bidirectional else 1]:
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            per_layer.append(
                DirectionWeights(*(getattr(rnn, f"{n}_l{layer}{suffix}") for n in names), None)
            )
        weights.append(per_layer)
    return rnn, weights


@pytest.mark.parametrize("reverse", [False, True])
def test_composed_and_traced_engines_run_a_toy_kind(reverse: bool) -> None:
    _, [[w]] = rnn_and_weights()
    x = torch.randn(6, 2, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=F64, requires_grad=True)
    expected_out, expected_h = elman_loop(x, h0, w, reverse)
    runs = {
        "composed": composed.run_direction(ELMAN, x, None, (h0,), w, reverse),
        "traced": traced.run_direction(ELMAN, x, (h0,), w, reverse),
        "chooser": choose.run_direction(ELMAN, x, None, (h0,), w, reverse),
    }
    wrt = [x, h0, *w[:4]]
    expected_grads = torch.autograd.grad((expected_out.sum() + expected_h.square().sum()), wrt)
    for name, (out, (h_n,)) in runs.items():
        torch.testing.assert_close(out, expected_out, **TOL, msg=name)
        torch.testing.assert_close(h_n, expected_h, **TOL, msg=name)
        grads = torch.autograd.grad(out.sum() + h_n.square().sum(), wrt)
        for g, e in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(g, e, **TOL, msg=name)


def test_packed_steps_and_lengths_mask_keep_each_sequences_own_state() -> None:
    rnn, [[w]] = rnn_and_weights()
    x = torch.randn(5, 3, 3, dtype=F64)
    lengths = torch.tensor([5, 2, 4])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    ref_out, ref_h = rnn(packed)
    ref_padded, _ = pad_packed_sequence(ref_out, total_length=5)
    h0 = torch.zeros(3, 4, dtype=F64)
    sorted_x = packed.data
    sizes = packed.batch_sizes.tolist()
    for reverse in (False, True):
        out, (h_n,) = composed.run_direction(ELMAN, sorted_x, sizes, (h0,), w, reverse)
        if not reverse:
            torch.testing.assert_close(out, ref_out.data, **TOL)
            torch.testing.assert_close(
                h_n.index_select(0, packed.unsorted_indices), ref_h[0], **TOL
            )
        masked, (h_m,) = traced.run_direction(ELMAN, x, (h0,), w, reverse, None, lengths)
        # the masked dense loop and the packed loop agree row by row
        for n, length in enumerate(lengths.tolist()):
            loop_out, loop_h = elman_loop(x[:length, n : n + 1], h0[n : n + 1], w, reverse)
            torch.testing.assert_close(masked[:length, n : n + 1], loop_out, **TOL)
            torch.testing.assert_close(masked[length:, n], torch.zeros(5 - length, 4, dtype=F64))
            torch.testing.assert_close(h_m[n : n + 1], loop_h, **TOL)
        if not reverse:
            torch.testing.assert_close(masked, ref_padded, **TOL)


def test_layer_loop_runs_a_toy_kind_like_nn_rnn() -> None:
    rnn, weights = rnn_and_weights(bidirectional=True, layers=2)
    x = torch.randn(7, 2, 3, dtype=F64)
    h0 = torch.randn(4, 2, 4, dtype=F64)
    out, (h_n,) = run_layers(ELMAN, x, None, (h0,), weights, dropout=0.0, training=False)
    ref_out, ref_h = rnn(x, h0)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(h_n, ref_h, **TOL)


def test_traced_engine_holds_the_toy_step_once_under_compile_and_export() -> None:
    """The toy step as torch's scan op: one compiled graph and one exported program at any
    length, equal to the loop."""
    rnn, [[w]] = rnn_and_weights()

    class Direction(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # nn.RNN's own Parameters (not the RNN, which Dynamo refuses): export lifts them
            self.w = nn.ParameterDict(dict(rnn.named_parameters()))

        def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
            names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
            weights = DirectionWeights(*(self.w[n] for n in names), None)
            out, (h_n,) = traced.run_direction(ELMAN, x, (h0,), weights, False)
            return out, h_n

    direction = Direction()
    h0 = torch.randn(2, 4, dtype=F64)
    with time_loop("scan"):
        compiles = torch._dynamo.testing.CompileCounter()
        compiled = torch.compile(direction, fullgraph=True, dynamic=True, backend=compiles)
        length = torch.export.Dim("length", min=2, max=1024)
        x_export = torch.randn(5, 2, 3, dtype=F64)
        program = torch.export.export(direction, (x_export, h0), dynamic_shapes=({0: length}, None))
        # lengths unlike every other size here (2, 3, 4): Dynamo's duck sizing would give an
        # equal dimension the same symbol, and the input size's guard would fix the length
        for steps in (5, 11, 7):
            x = torch.randn(steps, 2, 3, dtype=F64)
            expected = elman_loop(x, h0, w, False)
            with torch.no_grad():
                results = [compiled(x, h0), program.module()(x, h0)]
            for got in results:
                torch.testing.assert_close(got[0], expected[0], **TOL)
                torch.testing.assert_close(got[1], expected[1], **TOL)
    assert compiles.frame_count == 1  # one graph for all three lengths
    scans = [
        n for n in program.graph.nodes if n.op == "call_function" and "scan" in str(n.target)
    ]
    assert len(scans) == 1, [str(n.target) for n in program.graph.nodes]


def test_no_fast_path_is_claimed_for_a_kind_without_one() -> None:
    _, [[w]] = rnn_and_weights()
    x = torch.randn(6, 2, 3, dtype=F64)
    h0 = torch.zeros(2, 4, dtype=F64)
    assert not choose.fast_wanted(ELMAN, x, None, (h0,), [w], [None])
