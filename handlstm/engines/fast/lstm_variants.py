"""The fast path's variant steps: zoneout, peepholes and layer norm (see
:mod:`handlstm.engines.fast.lstm`).

The same function as :func:`handlstm.core.lstm.lstm_step_gates` with those options (the equations
are written there; this is a second, optimised computation of them, tested equal to it), stepped
in lockstep over the directions of one layer with preallocated buffers and a hand-written
backward through time:

* zoneout (training: a 0/1 mask per step, gathered into processing order; eval: the expectation
  ``p``, an expanded constant): ``h_t = lerp(h~, h_{t-1}, z_h)``, ``c_t = lerp(c~, c_{t-1}, z_c)``;
* peepholes: ``i, f += p_{i,f} * c_{t-1}`` before their activation, ``o += p_o * c~``;
* layer norm: the input norm over the whole sequence at once (``LN(W_ih x) * g_x + b``), the
  recurrent norm of ``W_hh h`` and the cell norm of ``c~`` per step (torch's ``native_layer_norm``
  and its backward, the kernels ``F.layer_norm`` runs).

In the backward, everything that does not depend on the incoming gradients (the gates' derivative
factors, with peepholes folded into the carry factors) is computed for all steps at once; a step
then does the products for ``dh`` and a few elementwise ops (two layer-norm backwards with layer
norm). Parameter gradients are large reductions after the loop. Double backward recomputes the
composed path, as for the default cell.

Shapes: D directions, L sequence, N batch, H_in input size, H hidden (cell) size, H_out output
size. Per-step views drop the D axis for one direction (see
:func:`handlstm.engines.fast.layout._one`). The forward recurrence is in
:mod:`handlstm.engines.fast.lstm_variants_forward`, the backward through time in
:mod:`handlstm.engines.fast.lstm_variants_backward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor

from ...core.lstm import DEFAULT_VARIANT, CellVariant, ScanVariant
from .counts import counts
from .layout import (
    Ends,
    _active_rows,
    _inference,
    _one,
    _out_shape,
    _time_index,
)
from .lstm_backward import recompute_gradients
from .lstm_variants_backward import variant_backward
from .lstm_variants_forward import Extras, Noise, forward

#: The step options the fast path computes; every other CellVariant field must be neutral.
_SERVED = frozenset(
    ("peephole_i", "peephole_f", "peephole_o", "ln_hh", "ln_c_weight", "ln_c_bias")
    + ("zoneout_h", "zoneout_c")
)


def serves(variant: Any) -> bool:
    """Whether the fast path computes this variant's steps: no per-step recording, and every
    step option other than peepholes, layer norm and zoneout at its default (nn.LSTM's
    activations, no clipping, the plain linear: per-sample gradients swap in a recording one;
    the default layer-norm epsilon; any field added later keeps the fast path off until it is
    handled here)."""
    if variant is None:
        return True
    if variant.record:
        return False
    cell = variant.cell
    for name in cell._fields:
        if name in _SERVED:
            continue
        mine, neutral = getattr(cell, name), getattr(DEFAULT_VARIANT, name)
        if not (mine is neutral or (isinstance(mine, float) and mine == neutral)):
            return False
    return True


def is_plain(variant: Any) -> bool:
    """True where the step is nn.LSTM's but for recurrent dropout (the default loops serve it)."""
    if variant is None:
        return True
    cell = variant.cell
    return (
        variant.ln_ih is None
        and cell.peephole_i is None
        and cell.ln_hh is None
        and cell.ln_c_weight is None
        and variant.zone_h is None
        and variant.zone_c is None
        and not cell.zoneout_h
        and not cell.zoneout_c
    )


def extras_of(variants: Sequence[Any]) -> Extras:
    """Stack each direction's variant parameters (differentiable; a view for one direction)."""
    first = variants[0]

    def stack(parts: list[Tensor | None]) -> Tensor | None:
        if parts[0] is None:
            return None
        tensors = cast(list[Tensor], parts)
        return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)

    peep = None
    if first.cell.peephole_i is not None:
        peep = stack(
            [
                torch.stack((v.cell.peephole_i, v.cell.peephole_f, v.cell.peephole_o))
                for v in variants
            ]
        )
    return Extras(
        stack([v.ln_ih for v in variants]),
        stack([v.cell.ln_hh for v in variants]),
        stack([v.cell.ln_c_weight for v in variants]),
        stack([v.cell.ln_c_bias for v in variants]),
        peep,
    )


def noise_of(
    variants: Sequence[Any],
    mask: Tensor | None,
    shape: tuple[int, int, int],
    sizes: tuple[int, int],
    like: Tensor,
    reverses: Sequence[bool],
    order: Tensor | None,
) -> Noise:
    """Each direction's zoneout masks in its processing order (eval: the expectation).

    Args:
        shape: ``(D, L, N)``; sizes: ``(H_out, H)``.
        order: packed input: ``(D*L*N,)`` index of the ``(L*N)`` (time, row) entry each
            processing-order position reads; None for dense (a reverse direction flips time).
    """
    zones: list[Tensor | None] = []
    for which, size in (("h", sizes[0]), ("c", sizes[1])):
        given = [getattr(v, f"zone_{which}") for v in variants]
        p = getattr(variants[0].cell, f"zoneout_{which}")
        if given[0] is not None:
            if order is not None:
                parts = [
                    m.reshape(-1, size).index_select(0, index)
                    for m, index in zip(given, order.view(len(given), -1), strict=True)
                ]
                joined = torch.stack(parts) if len(parts) > 1 else parts[0].unsqueeze(0)
                zones.append(joined.view(*shape, size))
            else:
                parts = [m.flip(0) if r else m for m, r in zip(given, reverses, strict=True)]
                zones.append(torch.stack(parts) if len(parts) > 1 else parts[0].unsqueeze(0))
        elif p:
            zones.append(
                torch.full((1, 1, 1, 1), p, dtype=like.dtype, device=like.device).expand(
                    *shape, size
                )
            )
        else:
            zones.append(None)
    return Noise(mask, zones[0], zones[1])


def run_layer(
    inputs: Tensor,
    h0: Tensor,
    c0: Tensor,
    mask: Tensor | None,
    flat: Sequence[Tensor | None],
    variants: Sequence[Any],
    extras: Sequence[Tensor | None],
    layout: Any,
    batch_sizes: Sequence[int] | None,
    train: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """A layer with zoneout, peepholes or layer norm: the masks in processing order, then the
    Function (training) or the inference loop. Called by
    :func:`handlstm.engines.fast.lstm.run_layer`."""
    count, length, batch, _ = inputs.shape
    order = None
    if batch_sizes is not None:
        order = _time_index(batch_sizes, layout.reverses, inputs.device)
    sizes = (h0.size(-1), c0.size(-1))
    noise = noise_of(variants, mask, (count, length, batch), sizes, inputs, layout.reverses, order)
    ends = layout.ends
    rows = None if not ends else _active_rows(ends, length)
    if train:
        return FastVariantLayer.apply(  # type: ignore[no-any-return]
            inputs, h0, c0, noise, ends, rows, *flat, *extras
        )
    parameters = Extras(*extras)
    return _inference(
        lambda into: forward(inputs, h0, c0, noise, flat, parameters, ends, rows, False, into),
        inputs,
        _out_shape(inputs, flat),
        h0,
        c0,
    )


# -- training: one autograd Function per layer ---------------------------------------------------

_SAVED = ("a_x", "mean_x", "rstd_x", "gates", "out", "cells", "cnew", "tanh", "hcell", "q")
_STATS = ("mean_q", "rstd_q", "mean_c", "rstd_c")


class FastVariantLayer(torch.autograd.Function):
    """The directions of one variant layer with a hand-written backward through time.

    Inputs: ``inputs`` ``(D, L, N, H_in)``, ``h0``, ``c0``, ``noise`` (:class:`Noise`, no
    gradient), ``ends`` and ``sizes`` (packed; None for dense), the five weights of each direction,
    then the five :class:`Extras` (None where off). Outputs ``(out, h_n, c_n)`` with ``out``
    ``(D, L, N, H_out)`` (``(L, N, H_out)`` for one direction).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        inputs: Tensor,
        h0: Tensor,
        c0: Tensor,
        noise: Noise,
        ends: Ends | None,
        sizes: Sequence[int] | None,
        *args: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        flat, extras = args[:-5], Extras(*args[-5:])
        out, h_n, c_n, saved = forward(inputs, h0, c0, noise, flat, extras, ends, sizes, True)
        assert saved is not None
        ctx.ends, ctx.sizes, ctx.count = ends, sizes, len(flat) // 5
        ctx.save_for_backward(
            inputs,
            h0,
            c0,
            *noise,
            *args,
            *(saved.get(name) for name in _SAVED),
            *(saved.get(name) for name in _STATS),
        )
        return _one(out, out.size(0)), h_n, c_n

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_out: Tensor, d_h_n: Tensor, d_c_n: Tensor
    ) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: differentiate the composed path
            counts["recompute"] += 1
            return _recompute(ctx, d_out, d_h_n, d_c_n)
        head, noise, flat, extras, saved = _unpack(ctx)
        return variant_backward(
            ctx.needs_input_grad, ctx.ends, head, noise, flat, extras, saved, (d_out, d_h_n, d_c_n)
        )


def _unpack(ctx: Any) -> tuple[list[Tensor], Noise, list[Tensor | None], Extras, dict[str, Any]]:
    saved = list(ctx.saved_tensors)
    n_flat = 5 * ctx.count
    head, noise = saved[:3], Noise(*saved[3:6])
    flat = saved[6 : 6 + n_flat]
    extras = Extras(*saved[6 + n_flat : 11 + n_flat])
    rest = saved[11 + n_flat :]
    buffers = dict(zip(_SAVED + _STATS, rest, strict=True))
    return head, noise, flat, extras, buffers


def _recompute(ctx: Any, d_out: Tensor, d_h_n: Tensor, d_c_n: Tensor) -> tuple[Tensor | None, ...]:
    """Double backward: the composed path from the saved inputs, differentiated."""
    (x, h0, c0), noise, flat, extras, _ = _unpack(ctx)
    differentiable = [x, h0, c0, *flat, *extras]
    positions = [0, 1, 2, *range(6, 6 + len(flat) + 5)]

    def variant_of(d: int, args: Sequence[Tensor | None]) -> Any:
        ln_ih, ln_hh, ln_c_w, ln_c_b, peep = (None if e is None else e[d] for e in args[-5:])
        cell = CellVariant(
            peephole_i=None if peep is None else peep[0],
            peephole_f=None if peep is None else peep[1],
            peephole_o=None if peep is None else peep[2],
            ln_hh=ln_hh,
            ln_c_weight=ln_c_w,
            ln_c_bias=ln_c_b,
        )
        mask, zone_h, zone_c = (None if m is None else m[d] for m in noise)
        return ScanVariant(
            cell=cell,
            ln_ih=ln_ih,
            h_mask=mask,
            zone_h=zone_h,
            zone_c=zone_c,
            record=bool(ctx.ends),
        )

    return recompute_gradients(
        ctx.needs_input_grad,
        differentiable,
        positions,
        (d_out, d_h_n, d_c_n),
        ctx.ends,
        ctx.count,
        variant_of,
    )
