"""The composed engine: one direction of one layer over a sequence, step by step, for any cell kind.

The reference loop: every other engine computes the same function and is tested equal to it.
A sequence arrives in one of two layouts and both go through the same loop:

* dense: ``x`` is ``(L, N, H_in)`` and every step has all ``N`` rows;
* packed: ``x`` is a PackedSequence's ``data``, ``(sum(batch_sizes), H_in)``, and step ``t`` has
  the first ``batch_sizes[t]`` rows (batch sizes never grow with ``t``).

The state is kept for the whole batch. A step updates only its active rows, so after the forward
pass each row holds its own last valid step, and in the reverse pass a row still holds its initial
state until its sequence starts. That is exactly torch's packed semantics.

Shapes: L sequence, N batch, H_in input size, G*H the projected input's features, H_out output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..core.kinds import CellKind, DirectionVariant, DirectionWeights, State


def scan(
    kind: CellKind,
    projected: Tensor,
    batch_sizes: Sequence[int] | None,
    state0: State,
    weights: DirectionWeights,
    reverse: bool,
    variant: DirectionVariant | None = None,
) -> tuple[Tensor, State]:
    """Run the recurrence over time in one direction.

    Args:
        kind: the cell kind whose step runs.
        projected: the input's share of every step, from ``kind.project``:
            ``(L, N, G*H)`` dense, or ``(sum(batch_sizes), G*H)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        state0: the initial state, ``(N, *)`` each (h first).
        weights: this layer's and direction's parameters (the step reads its own).
        reverse: run from the last step to the first.
        variant: the variant's parameters and masks; None is the plain cell. With
            ``variant.record``, every step's ``kind.records`` are joined in ``projected``'s
            layout and handed to ``variant.keep``.

    Returns:
        ``(output, state_n)``: output in the layout of ``projected`` with ``H_out`` features,
        and the final state.
    """
    if batch_sizes is None:
        steps = projected.unbind(0)  # L x (N, G*H)
        sizes = None  # every step has all rows
    else:
        steps = projected.split(list(batch_sizes), 0)  # L x (B_t, G*H)
        sizes = list(batch_sizes)
    length = len(steps)
    order = range(length - 1, -1, -1) if reverse else range(length)

    full = state0[0].size(0)
    state = tuple(state0)
    cell, record = (kind.default_cell, False) if variant is None else (variant.cell, variant.record)
    outputs: list[Tensor] = [state0[0]] * length
    records: list[tuple[Tensor, ...]] = [()] * length
    for t in order:
        noise = kind.no_noise if variant is None else variant.noise(t)
        active = full if sizes is None else sizes[t]
        if active == full:
            state, acts = kind.step(steps[t], state, weights, cell, noise)
            state_t = state
        else:
            rows = tuple(s[:active] for s in state)
            state_t, acts = kind.step(steps[t], rows, weights, cell, noise.rows(active))
            state = tuple(
                torch.cat((new, old[active:]), 0) for new, old in zip(state_t, state, strict=True)
            )
        outputs[t] = state_t[0]
        if record:
            records[t] = kind.records(state_t, acts)

    join = torch.stack if sizes is None else torch.cat
    output = join(outputs, 0)  # (L, N, H_out) or (sum(batch_sizes), H_out)
    if record and variant is not None:
        variant.keep(tuple(join(list(column), 0) for column in zip(*records, strict=True)))
    return output, state


def run_direction(
    kind: CellKind,
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    state0: State,
    weights: DirectionWeights,
    reverse: bool,
    variant: DirectionVariant | None = None,
) -> tuple[Tensor, State]:
    """One direction of one layer: ``kind.project`` for the whole sequence, then the time loop.

    Args:
        x: ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed; the rest as
            :func:`scan`.

    Returns:
        ``(output, state_n)`` as :func:`scan`.
    """
    projected = kind.project(x, weights, variant)
    return scan(kind, projected, batch_sizes, state0, weights, reverse, variant)
