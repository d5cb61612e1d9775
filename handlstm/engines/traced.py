"""The traced engine: one direction over time as a single ``scan``, for compile and export.

The Python time loop of :func:`handlstm.engines.composed.scan` is unrolled by Dynamo, so a
compiled or exported graph holds one copy of the step per time step and serves one sequence
length. Here the cell kind's step (for the LSTM :func:`handlstm.core.lstm.lstm_step_gates`, the
only copy of its equations) is the combine function of torch's ``scan`` higher-order op, so the
graph holds the step once and the sequence length stays symbolic: one compile, one exported
program for every length. Any :class:`~handlstm.core.kinds.CellKind` runs here.

Per-sequence lengths (a padded batch with PackedSequence semantics) are a mask over the steps:
a step changes only the rows whose sequence is still running, and writes zeros to the output
elsewhere. Forward, each row's state stops at its last valid step; in reverse, a row keeps its
initial state until its sequence starts. That is nn.LSTM's packed semantics, in a dense graph.

Shapes: L sequence, N batch, G*H the projected input's features, H_out output size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.kinds import CellKind, DirectionVariant, DirectionWeights, State
from .tracing import use_scan_op


def step_mask(lengths: Tensor, steps: int | torch.SymInt, like: Tensor) -> Tensor:
    """``(L, N, 1)`` in ``like``'s dtype: 1 where step ``t`` is inside sequence ``n``."""
    t = torch.arange(steps, device=like.device).unsqueeze(1)  # type: ignore[arg-type]  # (L, 1)
    return (t < lengths.to(like.device).unsqueeze(0)).unsqueeze(-1).to(like.dtype)


def scan_direction(
    kind: CellKind,
    projected: Tensor,
    state0: State,
    weights: DirectionWeights,
    reverse: bool,
    variant: DirectionVariant | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, State]:
    """The recurrence over a dense sequence as one scan (or its eager equivalent).

    Args:
        kind: the cell kind whose step is the scan's body.
        projected: the input's share of every step, from ``kind.project``: ``(L, N, G*H)``.
        state0: the initial state, ``(N, *)`` each (h first).
        weights: this layer's and direction's parameters (the step reads its own).
        reverse: run from the last step to the first.
        variant: the variant's parameters and masks; None is the plain cell. With
            ``variant.record``, every step's ``kind.records`` are stacked and handed to
            ``variant.keep``.
        lengths: ``(N,)`` valid steps per sequence, or None when every step is valid.

    Returns:
        ``(output, state_n)``: ``(L, N, H_out)`` (zeros at masked steps) and the final state.
    """
    cell = kind.for_trace(kind.default_cell if variant is None else variant.cell)
    record = variant is not None and variant.record
    xs: dict[str, Tensor] = {"projected": projected}
    if variant is not None:
        xs.update(variant.step_inputs())
    if lengths is not None:
        xs["mask"] = step_mask(lengths, projected.size(0), projected)  # (L, N, 1)

    batch = state0[0].size(0)  # N

    def combine(carry: State, x: dict[str, Tensor]) -> tuple[State, tuple[Tensor, ...]]:
        noise = kind.no_noise if variant is None else variant.noise_of(x)
        state, acts = kind.step(x["projected"], carry, weights, cell, noise)
        out = state[0]
        if "mask" in x:
            m = x["mask"]  # (N, 1)
            out = out * m  # zeros at padded steps, as pad_packed_sequence
            # m is 0 or 1: exactly the previous state or the new one
            state = tuple(torch.lerp(old, new, m) for old, new in zip(carry, state, strict=True))
        # The scan op refuses outputs that alias each other, its inputs, or (in training, under
        # inductor's partitioner) the intermediates it saves for backward: clone each output.
        # A no-op that names the batch size inside the body, so that torch.export lifts it as
        # a scan input: inductor (AOTInductor) sizes the stacked outputs from the scan's inputs
        # and otherwise fails with "KeyError: s.." when batch and length are both dynamic.
        out = out.reshape(batch, out.size(-1))
        ys: tuple[Tensor, ...] = (out.clone(),)
        if record:
            ys = (*ys, *(r.clone() for r in kind.records(state, acts)))
        return tuple(t.clone() for t in state), ys

    if use_scan_op(projected.size(0)):
        from torch._higher_order_ops.scan import scan

        state_n, ys = scan(combine, tuple(state0), xs, reverse=reverse)
    else:  # eager, or unrolled by choice: the same combine function in a Python loop
        state_n, ys = _python_scan(combine, tuple(state0), xs, reverse)
    if record and variant is not None:
        variant.keep(tuple(ys[1:]))
    return ys[0], tuple(state_n)


def run_direction(
    kind: CellKind,
    x: Tensor,
    state0: State,
    weights: DirectionWeights,
    reverse: bool,
    variant: DirectionVariant | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, State]:
    """One dense direction of one layer: ``kind.project`` for the whole sequence, then the scan.

    Args:
        x: ``(L, N, H_in)``; the rest as :func:`scan_direction`.

    Returns:
        ``(output, state_n)`` as :func:`scan_direction`.
    """
    projected = kind.project(x, weights, variant)
    return scan_direction(kind, projected, state0, weights, reverse, variant, lengths)


def _python_scan(
    combine: Any, init: State, xs: dict[str, Tensor], reverse: bool
) -> tuple[State, tuple[Tensor, ...]]:
    """``scan``'s semantics, run eagerly step by step (the scan op would compile in eager)."""
    steps = xs["projected"].size(0)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    carry = init
    outs: list[tuple[Tensor, ...]] = [()] * steps
    for t in order:
        carry, outs[t] = combine(carry, {k: v[t] for k, v in xs.items()})
    stacked = tuple(torch.stack(column, 0) for column in zip(*outs, strict=True))
    return carry, stacked
