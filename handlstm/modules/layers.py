"""The layer/direction loop of a stacked recurrent module, for any cell kind.

Each layer's input is the previous layer's output (dropout between layers in training, never
after the last, exactly where torch places it); the chooser (:func:`handlstm.engines.choose.
run_layer`) runs every direction of a layer. A module with variants hands in ``prepare``, which
turns one layer's input and parameters into what this call runs (input dropout, per-direction
variants, per-sample taps); without it every direction is the plain cell.

Shapes: L sequence, N batch, D directions, H_out output size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.kinds import CellKind, DirectionVariant, DirectionWeights, State
from ..engines.choose import run_layer

#: ``(layer, layer_input, layer_weights) -> (layer_input, layer_weights, variants)``.
Prepare = Callable[
    [int, Tensor, list[DirectionWeights]],
    tuple[Tensor, list[DirectionWeights], list[DirectionVariant | None]],
]


def run_layers(
    kind: CellKind,
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    state0: State,
    weights: Sequence[Sequence[DirectionWeights]],
    *,
    dropout: float,
    training: bool,
    prepare: Prepare | None = None,
    records: list[tuple[Tensor, DirectionVariant | None]] | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Every layer and direction over the time-major (or packed) input.

    Args:
        kind: the cell kind of every layer.
        x: ``(L, N, H_in)`` or packed ``(sum(B_t), H_in)``.
        batch_sizes: packed batch sizes or None.
        state0: the initial state, ``(D*num_layers, N, *)`` each, in torch's h_n order.
        weights: per layer, per direction, read once for this call.
        dropout: the probability of dropout between layers (applied only in ``training``).
        training: the module's training flag.
        prepare: a variant module's per-layer preparation, or None for the plain cell.
        records: if a list, each (layer, direction) appends its output and its variant.
        lengths: dense input only, ``(N,)`` valid steps per sequence, or None.

    Returns:
        ``(output, state_n)``: the last layer's output in ``x``'s layout with ``D*H_out``
        features, and the final states stacked as ``state0``.
    """
    count = len(weights[0])
    num_layers = len(weights)
    if num_layers == 1 and prepare is None:  # the loop below for one plain layer
        return run_layer(kind, x, batch_sizes, state0, weights[0], [None] * count, lengths)
    finals: list[State] = []
    layer_input = x
    for layer in range(num_layers):
        layer_weights = list(weights[layer])
        variants: list[DirectionVariant | None] = [None] * count
        if prepare is not None:
            layer_input, layer_weights, variants = prepare(layer, layer_input, layer_weights)
        if num_layers == 1:  # this layer's states are all of them: no slicing
            layer_state = state0
        else:
            first = layer * count
            layer_state = tuple(s[first : first + count] for s in state0)
        out, state = run_layer(
            kind, layer_input, batch_sizes, layer_state, layer_weights, variants, lengths
        )
        if records is not None:
            for part, variant in zip(out.chunk(count, -1), variants, strict=True):
                records.append((part, variant))
        finals.append(state)
        layer_input = out
        if training and dropout > 0 and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    if len(finals) == 1:
        return layer_input, finals[0]
    return layer_input, tuple(torch.cat(column, 0) for column in zip(*finals, strict=True))
