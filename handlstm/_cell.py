"""The LSTM gate equations for one time step: the only place they are written.

Everything here is a pure function of tensors; it knows nothing about modules, layers,
directions or sequences. Gate order is torch's: input, forget, cell, output (i, f, g, o).

Shapes: N batch, H_cell hidden (cell) size, H_out output size (``proj_size`` or H_cell).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the gate nonlinearities and the cell update for one step.

    Args:
        gates: pre-activations ``W_ih x + b_ih + W_hh h + b_hh``, shape ``(N, 4*H_cell)``.
        c: previous cell state, shape ``(N, H_cell)``.

    Returns:
        ``(h, c_next)``: the unprojected hidden state and the new cell state, both ``(N, H_cell)``.
    """
    ingate, forgetgate, cellgate, outgate = gates.chunk(4, -1)  # 4 x (N, H_cell)
    ingate = torch.sigmoid(ingate)
    forgetgate = torch.sigmoid(forgetgate)
    cellgate = torch.tanh(cellgate)
    outgate = torch.sigmoid(outgate)
    c_next = forgetgate * c + ingate * cellgate  # (N, H_cell)
    h = outgate * torch.tanh(c_next)  # (N, H_cell)
    return h, c_next


def lstm_step(
    gates_x: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """One full LSTM step given the input's share of the gates.

    Args:
        gates_x: ``W_ih x + b_ih + b_hh`` for this step, shape ``(N, 4*H_cell)``.
        h: previous hidden state, shape ``(N, H_out)``.
        c: previous cell state, shape ``(N, H_cell)``.
        weight_hh: recurrent weights, shape ``(4*H_cell, H_out)``.
        weight_hr: projection weights ``(H_out, H_cell)``, or None without projection.

    Returns:
        ``(h_next, c_next)`` with shapes ``(N, H_out)`` and ``(N, H_cell)``.
    """
    gates = gates_x + F.linear(h, weight_hh)  # (N, 4*H_cell)
    h_next, c_next = lstm_cell(gates, c)
    if weight_hr is not None:
        h_next = F.linear(h_next, weight_hr)  # (N, H_out)
    return h_next, c_next
