"""The Elman RNN kinds: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` (the only place it is
written), with ``act`` tanh (:data:`RNN_TANH`) or ReLU (:data:`RNN_RELU`), as nn.RNN's
``nonlinearity``.

Shapes: L sequence, N batch, H_in input size, H hidden size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .kinds import CellKind, DirectionWeights, State


def rnn_step(
    gates_x: Tensor, h: Tensor, weight_hh: Tensor, activation: Callable[[Tensor], Tensor]
) -> Tensor:
    """One Elman step given the input's share ``W_ih x + b_ih + b_hh``, ``(N, H)``."""
    return activation(gates_x + F.linear(h, weight_hh))  # (N, H)


def rnn_project(x: Tensor, weights: DirectionWeights, variant: Any) -> Tensor:
    """The Elman kinds' ``project``: ``W_ih x + b_ih + b_hh`` for every step (one GEMM)."""
    bias = None
    if weights.bias_ih is not None and weights.bias_hh is not None:
        bias = weights.bias_ih + weights.bias_hh  # (H,)
    return F.linear(x, weights.weight_ih, bias)  # (L, N, H) or packed


def _elman(name: str, activation: Callable[[Tensor], Tensor]) -> CellKind:
    def step(
        gates_x: Tensor, state: State, weights: DirectionWeights, cell: Any, noise: Any
    ) -> tuple[State, tuple[Tensor, ...]]:
        (h,) = state
        h_next = rnn_step(gates_x, h, weights.weight_hh, activation)
        return (h_next,), (h_next,)

    return CellKind(name=name, gates=1, states=("h",), project=rnn_project, step=step)


#: nn.RNN with ``nonlinearity='tanh'``: 1 gate, state (h,).
RNN_TANH = _elman("rnn_tanh", torch.tanh)
#: nn.RNN with ``nonlinearity='relu'``.
RNN_RELU = _elman("rnn_relu", torch.relu)
#: The kinds by nn.RNN's ``nonlinearity``.
RNN_KINDS: dict[str, CellKind] = {"tanh": RNN_TANH, "relu": RNN_RELU}
