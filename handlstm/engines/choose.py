"""The one choice: which engine runs a layer, or one direction of it.

Read top to bottom, each function is a table of conditions -> engine; the first row that holds
wins. Every engine computes the same function (tested against the composed engine and torch on
everything both serve), so a row only decides speed and what a trace can hold.

:func:`run_layer`, for every direction of one layer:

============================================================  ===================================
condition                                                     engine
============================================================  ===================================
no ``lengths=``, and :func:`fast_wanted` for the whole layer  fast path, directions in lockstep
otherwise                                                     :func:`run_direction` per direction
============================================================  ===================================

:func:`run_direction`, for one direction:

============================================================  ===================================
condition                                                     engine
============================================================  ===================================
dense, and :func:`opaque_wanted` (compiled training of a      :mod:`~handlstm.engines.opaque`
plain LSTM direction)
dense, and ``lengths=`` or a trace that wants one scan        :mod:`~handlstm.engines.traced`
:func:`fast_wanted`                                           the kind's fast path
otherwise                                                     :mod:`~handlstm.engines.composed`
============================================================  ===================================

Engines never call back in here: the opaque op is handed this module's eager direction
(:func:`eager_direction`) once, at import; the fast path's double backward imports the composed
engine directly.

Shapes: D directions, L sequence, N batch, H_in input size, H_out output size.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from types import ModuleType

import torch
from torch import Tensor

from ..core.kinds import CellKind, DirectionVariant, DirectionWeights, State
from ..core.lstm import LSTM
from . import composed, opaque, traced, tracing
from .fast import lstm as fast_lstm
from .fast import serves as fast_lstm_serves

#: Each kind's fast path, by kind name: (its entry points, its capability check).
FAST: dict[str, tuple[ModuleType, ModuleType]] = {LSTM.name: (fast_lstm, fast_lstm_serves)}

#: Kinds whose plain dense direction compiles for training as the opaque op.
OPAQUE: frozenset[str] = frozenset({LSTM.name})

_FAST_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("handlstm_fast", default=True)


@contextlib.contextmanager
def fast_disabled() -> Iterator[None]:
    """Within this context (and thread/task), no fast path runs: every call is composed."""
    token = _FAST_ON.set(False)
    try:
        yield
    finally:
        _FAST_ON.reset(token)


def fast_wanted(
    kind: CellKind,
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    state0: State,
    weights: Sequence[DirectionWeights],
    variants: Sequence[DirectionVariant | None],
) -> bool:
    """Eager, two steps or more, the fast path switched on, and the kind's fast path serves it."""
    # First, before anything Dynamo cannot trace (a ContextVar read graph-breaks).
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    steps = x.size(0) if batch_sizes is None else len(batch_sizes)
    if steps < 2 or not _FAST_ON.get():
        return False  # one step: the composed path measured faster (fewer ops than the setup)
    fast = FAST.get(kind.name)
    if fast is None:
        return False
    flat = [t for direction in weights for t in direction]
    return bool(fast[1].serves(x, batch_sizes, *state0, flat, list(variants)))


def opaque_wanted(
    kind: CellKind, x: Tensor, variant: DirectionVariant | None, lengths: Tensor | None
) -> bool:
    """Compiled training (not export) of a plain dense direction, "auto" loop, no autocast."""
    if kind.name not in OPAQUE or variant is not None or lengths is not None:
        return False
    if tracing.loop_setting() != "auto":
        return False
    if not torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    if torch.is_autocast_enabled(x.device.type):  # a custom op's kernel runs without autocast
        return False
    return torch.is_grad_enabled() and tracing.dynamo_tracing()


def run_layer(
    kind: CellKind,
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    state0: State,
    weights: Sequence[DirectionWeights],
    variants: Sequence[DirectionVariant | None],
    lengths: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Every direction of one layer: direction 0 forward, direction 1 (if any) reversed.

    Args:
        kind: the cell kind.
        x: ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        state0: the initial state, ``(D, N, *)`` each.
        weights, variants: per direction.
        lengths: dense input only: ``(N,)`` valid steps per sequence (PackedSequence
            semantics over a padded batch), or None.

    Returns:
        ``(output, state_n)``: the directions' outputs concatenated on the last axis
        (``D*H_out`` features, in ``x``'s layout), and the final state, ``(D, N, *)`` each.
    """
    if lengths is None and fast_wanted(kind, x, batch_sizes, state0, weights, variants):
        fast = FAST[kind.name][0]
        out, *state_n = fast.run_layer(x, batch_sizes, *state0, weights, variants=variants)
        return out, tuple(state_n)
    outputs: list[Tensor] = []
    finals: list[State] = []
    for direction, (direction_weights, variant) in enumerate(zip(weights, variants, strict=True)):
        out, state = run_direction(
            kind,
            x,
            batch_sizes,
            tuple(s[direction] for s in state0),
            direction_weights,
            direction == 1,
            variant,
            lengths,
        )
        outputs.append(out)
        finals.append(state)
    if len(outputs) == 1:
        return outputs[0], tuple(s.unsqueeze(0) for s in finals[0])
    stacked = tuple(torch.stack(column, 0) for column in zip(*finals, strict=True))
    return torch.cat(outputs, -1), stacked


def run_direction(
    kind: CellKind,
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    state0: State,
    weights: DirectionWeights,
    reverse: bool,
    variant: DirectionVariant | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, State]:
    """One direction of one layer, on the first engine of the table above that wants it.

    Args:
        kind: the cell kind.
        x: ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        state0: the initial state, ``(N, *)`` each.
        weights: this layer's and direction's parameters.
        reverse: run from the last step to the first.
        variant: the variant's parameters and masks; None is the plain cell.
        lengths: dense input only: ``(N,)`` valid steps per sequence, or None.

    Returns:
        ``(output, state_n)``: ``(L, N, H_out)`` (or packed rows) and the final state.
    """
    dense = batch_sizes is None
    if dense and opaque_wanted(kind, x, variant, lengths):
        h0, c0 = state0  # the opaque op has the LSTM's signature (OPAQUE holds only the LSTM)
        out, h_n, c_n = opaque.opaque_direction(x, h0, c0, weights, reverse)
        return out, (h_n, c_n)
    if dense and tracing.scan_wanted(x.size(0), lengths):
        return traced.run_direction(kind, x, state0, weights, reverse, variant, lengths)
    if fast_wanted(kind, x, batch_sizes, state0, [weights], [variant]):
        fast = FAST[kind.name][0]
        out, *state_n = fast.run_direction(x, *state0, weights, reverse, batch_sizes, variant)
        return out, tuple(state_n)
    return composed.run_direction(kind, x, batch_sizes, state0, weights, reverse, variant)


def eager_direction(
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    h0: Tensor,
    c0: Tensor,
    weights: DirectionWeights,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """A plain LSTM direction, eagerly (what the opaque op's kernels run)."""
    out, (h, c) = run_direction(LSTM, x, batch_sizes, (h0, c0), weights, reverse)
    return out, h, c


opaque.serve_with(eager_direction)
