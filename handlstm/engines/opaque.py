"""Compiled training: one dense direction as an opaque custom op at any length.

The scan's backward is slow on CPU (weight gradients accumulated step by step), and the
unrolled loop as well (measured ~3x the eager fast path at medium size). Under torch.compile
with gradients, a dense default LSTM direction is instead one custom op whose implementation
is the eager direction (the fast path where it serves): Dynamo and inductor see a single node
with symbolic shapes, so one graph still serves every length. Its backward is a second opaque
op that recomputes the forward with autograd and differentiates it (the fast path's
hand-written backward), so a compiled step costs about one extra forward over the eager step.
torch.export never takes it: an exported program must not depend on handlstm's ops.

The eager direction is handed in by the chooser (:func:`serve_with`): this engine never calls
the chooser itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.kinds import DirectionWeights

EagerDirection = Callable[..., tuple[Tensor, Tensor, Tensor]]
_eager: list[EagerDirection] = []


def serve_with(eager: EagerDirection) -> None:
    """Run the op's kernel with ``eager(x, batch_sizes, h0, c0, weights, reverse)``: the chooser
    hands in its eager (fast or composed) LSTM direction once, at import."""
    _eager[:] = [eager]


def _run_eager(*args: Any) -> tuple[Tensor, Tensor, Tensor]:
    if not _eager:
        raise RuntimeError(
            "handlstm::direction has no eager implementation: import handlstm.engines.choose"
        )
    return _eager[0](*args)


_EXCLUDED_AT_IMPORT = torch._C._dispatch_tls_local_exclude_set()


def _with_autograd() -> Any:
    """Dispatch with the keys excluded at import (autograd on) inside a custom op's kernel."""
    include = torch._C._dispatch_tls_local_include_set()
    return torch._C._ForceDispatchKeyGuard(include, _EXCLUDED_AT_IMPORT)


def _weights(
    w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None
) -> DirectionWeights:
    return DirectionWeights(w_ih, w_hh, b_ih, b_hh, w_hr)


@torch.library.custom_op("handlstm::direction", mutates_args=())
def _direction_op(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        out, h, c = _run_eager(x, None, h0, c0, _weights(w_ih, w_hh, b_ih, b_hh, w_hr), reverse)
    return out.clone(), h.clone(), c.clone()  # a custom op's outputs may not alias its inputs


@_direction_op.register_fake
def _(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return (
        x.new_empty(x.size(0), x.size(1), h0.size(-1)),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
    )


@torch.library.custom_op("handlstm::direction_backward", mutates_args=())
def _direction_backward_op(
    d_out: Tensor,
    d_h: Tensor,
    d_c: Tensor,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> list[Tensor]:
    present = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]
    leaves = [t.detach().requires_grad_() for t in present]
    it = iter(leaves)
    args: list[Any] = [
        None if t is None else next(it) for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    ]
    # A custom op runs below autograd (its dispatch keys excluded): restore them to record the
    # recomputation (the fast path's autograd.Function records regardless; the composed path not).
    with torch.enable_grad(), _with_autograd():
        out, h, c = _run_eager(args[0], None, args[1], args[2], _weights(*args[3:]), reverse)
        grads = torch.autograd.grad((out, h, c), leaves, (d_out, d_h, d_c), allow_unused=True)
    # a custom op's outputs may not alias its inputs or each other (e.g. dc0 is d_c at L=1)
    taken = {t.untyped_storage().data_ptr() for t in (d_out, d_h, d_c, *present)}
    result = []
    for g, t in zip(grads, leaves, strict=True):
        if g is None:
            g = torch.zeros_like(t)
        elif g.untyped_storage().data_ptr() in taken:
            g = g.clone()
        taken.add(g.untyped_storage().data_ptr())
        result.append(g)
    return result


@_direction_backward_op.register_fake
def _(
    d_out: Tensor,
    d_h: Tensor,
    d_c: Tensor,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> list[Tensor]:
    return [
        t.new_empty(t.shape) for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None
    ]


def _setup_context(ctx: object, inputs: tuple[object, ...], output: object) -> None:
    ctx.save_for_backward(*[t for t in inputs[:8] if t is not None])  # type: ignore[attr-defined]
    ctx.present = [t is not None for t in inputs[:8]]  # type: ignore[attr-defined]
    ctx.reverse = inputs[8]  # type: ignore[attr-defined]


def _backward(ctx: object, d_out: Tensor, d_h: Tensor, d_c: Tensor) -> tuple[object, ...]:
    saved = iter(ctx.saved_tensors)  # type: ignore[attr-defined]
    args = [next(saved) if p else None for p in ctx.present]  # type: ignore[attr-defined]
    grads = iter(_direction_backward_op(d_out, d_h, d_c, *args, ctx.reverse))  # type: ignore[attr-defined]
    return (*(next(grads) if p else None for p in ctx.present), None)  # type: ignore[attr-defined]


_direction_op.register_autograd(_backward, setup_context=_setup_context)


def opaque_direction(
    x: Tensor, h0: Tensor, c0: Tensor, weights: tuple[Tensor | None, ...], reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One dense default direction as the opaque op (see above)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    assert w_ih is not None and w_hh is not None  # noqa: S101 - DirectionWeights always has them
    out, h, c = _direction_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return out, h, c
