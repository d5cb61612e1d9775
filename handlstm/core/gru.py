"""The GRU kind: its gate equations for one time step (the only place they are written) and
:data:`GRU`, the :class:`~handlstm.core.kinds.CellKind` that the engines run.

Gate order is torch's: reset, update, new (r, z, n), stacked in ``weight_ih``'s rows. ``b_hn``
stays inside the reset product, so it cannot be folded into the input's share::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

Shapes: L sequence, N batch, H_in input size, H hidden size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .kinds import CellKind, DirectionWeights, State


def gru_cell(gates_x: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> Tensor:
    """One GRU step given the input's share ``W_ih x + b_ih``, ``(N, 3*H)``; returns ``h'``."""
    h_next, _ = gru_step_gates(gates_x, h, weight_hh, bias_hh)
    return h_next


def gru_step_gates(
    gates_x: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One GRU step, also returning the gate activations ``(r, z, n)``, each ``(N, H)``."""
    gates_h = F.linear(h, weight_hh, bias_hh)  # (N, 3*H)
    x_reset, x_update, x_new = gates_x.chunk(3, -1)  # 3 x (N, H)
    h_reset, h_update, h_new = gates_h.chunk(3, -1)  # 3 x (N, H)
    resetgate = torch.sigmoid(x_reset + h_reset)
    updategate = torch.sigmoid(x_update + h_update)
    newgate = torch.tanh(x_new + resetgate * h_new)
    h_next = (1 - updategate) * newgate + updategate * h  # (N, H)
    return h_next, (resetgate, updategate, newgate)


def gru_project(x: Tensor, weights: DirectionWeights, variant: Any) -> Tensor:
    """The GRU kind's ``project``: ``W_ih x + b_ih`` for every step at once (one GEMM)."""
    return F.linear(x, weights.weight_ih, weights.bias_ih)  # (L, N, 3*H) or packed


def _gru_kind_step(
    gates_x: Tensor, state: State, weights: DirectionWeights, cell: Any, noise: Any
) -> tuple[State, tuple[Tensor, ...]]:
    """The GRU kind's ``step`` on the state ``(h,)``."""
    (h,) = state
    h_next, acts = gru_step_gates(gates_x, h, weights.weight_hh, weights.bias_hh)
    return (h_next,), acts


#: The GRU as the engines run it: 3 gates (r, z, n), state (h,).
GRU = CellKind(name="gru", gates=3, states=("h",), project=gru_project, step=_gru_kind_step)
