"""One direction of one LSTM layer over a whole sequence: the only time loop in handlstm.

A sequence arrives in one of two layouts and both go through the same loop:

* dense: ``x`` is ``(L, N, H_in)`` and every step has all ``N`` rows;
* packed: ``x`` is a PackedSequence's ``data``, ``(sum(batch_sizes), H_in)``, and step ``t`` has
  the first ``batch_sizes[t]`` rows (batch sizes never grow with ``t``).

The state is kept for the whole batch. A step updates only its active rows, so after the forward
pass each row holds its own last valid step, and in the reverse pass a row still holds its initial
state until its sequence starts. That is exactly nn.LSTM's packed semantics.

Shapes: L sequence, N batch, H_in input size, H_cell hidden size, H_out output size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._cell import lstm_step


class DirectionWeights(NamedTuple):
    """One layer's and direction's parameters under nn.LSTM's meaning (None where absent)."""

    weight_ih: Tensor  # (4*H_cell, H_in)
    weight_hh: Tensor  # (4*H_cell, H_out)
    bias_ih: Tensor | None  # (4*H_cell,)
    bias_hh: Tensor | None  # (4*H_cell,)
    weight_hr: Tensor | None  # (H_out, H_cell)


def input_gates(x: Tensor, weight_ih: Tensor, bias: Tensor | None) -> Tensor:
    """The input's share of the gates for every step at once: one GEMM over the sequence.

    Args:
        x: ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
        weight_ih: ``(4*H_cell, H_in)``.
        bias: ``b_ih + b_hh``, ``(4*H_cell,)``, or None.

    Returns:
        ``(L, N, 4*H_cell)`` or ``(sum(batch_sizes), 4*H_cell)``.
    """
    return F.linear(x, weight_ih, bias)


def scan(
    gates_x: Tensor,
    batch_sizes: Sequence[int] | None,
    h0: Tensor,
    c0: Tensor,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the recurrence over time in one direction.

    Args:
        gates_x: the input's share of the gates, from :func:`input_gates`:
            ``(L, N, 4*H_cell)`` dense, or ``(sum(batch_sizes), 4*H_cell)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        h0: initial hidden state ``(N, H_out)``.
        c0: initial cell state ``(N, H_cell)``.
        weight_hh: ``(4*H_cell, H_out)``.
        weight_hr: ``(H_out, H_cell)`` or None.
        reverse: run from the last step to the first.

    Returns:
        ``(output, h_n, c_n)``: output in the layout of ``gates_x`` with ``H_out`` features,
        final states ``(N, H_out)`` and ``(N, H_cell)``.
    """
    if batch_sizes is None:
        steps = gates_x.unbind(0)  # L x (N, 4*H_cell)
        sizes = [gates_x.size(1)] * len(steps)
    else:
        steps = gates_x.split(list(batch_sizes), 0)  # L x (B_t, 4*H_cell)
        sizes = list(batch_sizes)
    order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))

    full = h0.size(0)
    h, c = h0, c0
    outputs: list[Tensor] = [h0] * len(steps)
    for t in order:
        active = sizes[t]
        if active == full:
            h, c = lstm_step(steps[t], h, c, weight_hh, weight_hr)
            outputs[t] = h
        else:
            h_t, c_t = lstm_step(steps[t], h[:active], c[:active], weight_hh, weight_hr)
            outputs[t] = h_t
            h = torch.cat((h_t, h[active:]), 0)
            c = torch.cat((c_t, c[active:]), 0)

    if batch_sizes is None:
        output = torch.stack(outputs, 0)  # (L, N, H_out)
    else:
        output = torch.cat(outputs, 0)  # (sum(batch_sizes), H_out)
    return output, h, c


def run_direction(
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    h0: Tensor,
    c0: Tensor,
    weights: DirectionWeights,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one layer: the input GEMM for the whole sequence, then the time loop.

    Args:
        x: ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        h0, c0: initial states ``(N, H_out)`` and ``(N, H_cell)``.
        weights: this layer's and direction's parameters.
        reverse: run from the last step to the first.

    Returns:
        ``(output, h_n, c_n)`` as :func:`scan`.
    """
    bias = None
    if weights.bias_ih is not None and weights.bias_hh is not None:
        bias = weights.bias_ih + weights.bias_hh  # (4*H_cell,)
    gates_x = input_gates(x, weights.weight_ih, bias)
    return scan(gates_x, batch_sizes, h0, c0, weights.weight_hh, weights.weight_hr, reverse)
