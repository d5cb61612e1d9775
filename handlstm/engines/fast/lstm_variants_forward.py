"""The fast path's variant recurrence forward: zoneout, peepholes and layer norm stepped in
lockstep over the directions of one layer, into preallocated buffers (autograd off). The entry
points and the autograd Function are in :mod:`handlstm.engines.fast.lstm_variants`.

Shapes: D directions, L sequence, N batch, H_in input size, H hidden (cell) size, H_out output
size. Per-step views drop the D axis for one direction (see
:func:`handlstm.engines.fast.layout._one`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from ...core.options import LAYER_NORM_EPS
from .layout import (
    Ends,
    _one,
    _steps,
    _transposed,
    _weights,
)


class Extras(NamedTuple):
    """The variant's parameters, stacked over directions (None where the option is off); the
    Function's differentiable inputs after the weights."""

    ln_ih: Tensor | None  # (D, 4H) gain of the input norm
    ln_hh: Tensor | None  # (D, 4H) gain of the recurrent norm
    ln_c_w: Tensor | None  # (D, H) gain of the cell norm
    ln_c_b: Tensor | None  # (D, H) shift of the cell norm
    peep: Tensor | None  # (D, 3, H): into i and f from c_{t-1}, into o from c~


class Noise(NamedTuple):
    """The call's masks in processing order (no gradient; None where off)."""

    mask: Tensor | None  # (D, N, H_out) recurrent dropout on h before W_hh
    zone_h: Tensor | None  # (D, L, N, H_out) 1 = keep h_{t-1}; eval: p, expanded
    zone_c: Tensor | None  # (D, L, N, H)



def _norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, count: int) -> tuple[Tensor, ...]:
    """``LN(x) * weight + bias`` over the last axis of ``([D,] rows, F)``, and its mean and rstd;
    ``weight``, ``bias``: ``(D, F)``. For one direction torch's kernel applies the affine part;
    for two (a gain per direction) it is applied here."""
    size = [x.size(-1)]
    if count == 1:
        weight = None if weight is None else weight[0]
        bias = None if bias is None else bias[0]
        return torch.native_layer_norm(x, size, weight, bias, LAYER_NORM_EPS)
    y, mean, rstd = torch.native_layer_norm(x, size, None, None, LAYER_NORM_EPS)
    if weight is not None:
        y.mul_(weight.unsqueeze(1))
    if bias is not None:
        y.add_(bias.unsqueeze(1))
    return y, mean, rstd


def forward(
    inputs: Tensor,
    h0: Tensor,
    c0: Tensor,
    noise: Noise,
    flat: Sequence[Tensor | None],
    extras: Extras,
    ends: Ends | None,
    sizes: Sequence[int] | None,
    save: bool,
    into: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any] | None]:
    """The variant recurrence into preallocated buffers (autograd must be off).

    Args:
        inputs: ``(D, L, N, H_in)`` in processing order; h0, c0: ``(D, N, H_out)``, ``(D, N, H)``.
        ends, sizes: packed input: the rows ending at each step and each step's active rows.
        into: where to write ``out`` (allocated here if None).

    Returns:
        ``(out, h_n, c_n, saved)``: ``out`` ``(D, L, N, H_out)``; with ``save``, what the backward
        reads, by name.
    """
    count, length, batch, input_size = inputs.shape
    w_ih, w_hh = cast(list[Tensor], _weights(flat, 0)), cast(list[Tensor], _weights(flat, 1))
    b_ih, b_hh, w_hr = _weights(flat, 2), _weights(flat, 3), _weights(flat, 4)
    hidden, out_size = w_hh[0].size(0) // 4, w_hh[0].size(1)
    ln_ih, ln_hh, ln_c_w, ln_c_b, peep = extras
    packed = ends is not None
    new = inputs.new_zeros if packed and save else inputs.new_empty  # packed: finite padding
    x2d = inputs.reshape(count, length * batch, input_size)  # (D, L*N, H_in)
    saved: dict[str, Any] = {}

    # The input's share of the gates, one GEMM per direction (then the input norm, all steps).
    biases = (
        None if b_ih is None or b_hh is None else [a + b for a, b in zip(b_ih, b_hh, strict=True)]
    )
    if ln_ih is None:
        gates = inputs.new_empty(count, length, batch, 4 * hidden)  # (D, L, N, 4H)
        for d in range(count):
            by_row = gates[d].view(length * batch, 4 * hidden)
            if biases is not None:
                torch.addmm(biases[d], x2d[d], w_ih[d].t(), out=by_row)
            else:
                torch.mm(x2d[d], w_ih[d].t(), out=by_row)
    else:
        a_x = inputs.new_empty(count, length * batch, 4 * hidden)  # W_ih x, (D, L*N, 4H)
        for d in range(count):
            torch.mm(x2d[d], w_ih[d].t(), out=a_x[d])
        bias = None if biases is None else torch.stack(biases)  # (D, 4H)
        y, mean_x, rstd_x = _norm(_one(a_x, count), ln_ih, bias, count)
        gates = y.view(count, length, batch, 4 * hidden)
        saved.update(a_x=a_x, mean_x=mean_x.view(count, -1, 1), rstd_x=rstd_x.view(count, -1, 1))

    whh_t = _one(_transposed(w_hh), count)  # ([D,] H_out, 4H)
    whr_t = None if w_hr is None else _one(_transposed(w_hr), count)
    add_product = Tensor.addmm_ if count == 1 else Tensor.baddbmm_
    product = torch.mm if count == 1 else torch.bmm

    def rows(views: Sequence[Tensor], dim: int = -2) -> Sequence[Tensor]:
        if sizes is None:
            return views
        full = views[0].size(dim)
        return [v if b == full else v.narrow(dim, 0, b) for v, b in zip(views, sizes, strict=True)]

    def per_step(buffer: Tensor | None, shape_of: Tensor) -> Sequence[Tensor]:
        """Per-step views of a saved ``(D, L, N, F)`` buffer, or one scratch buffer repeated."""
        if buffer is not None:
            return rows(_steps(buffer, count))
        return rows([torch.empty_like(shape_of)] * length)

    def buffer(features: int, keep: bool = True) -> Tensor | None:
        return new(count, length, batch, features) if save and keep else None

    h_like = _one(h0, count)
    c_like = _one(c0, count)
    out = new(count, length, batch, out_size) if into is None else into  # (D, L, N, H_out)
    out_steps = _steps(out, count)
    steps = rows(_steps(gates, count))  # ([D,] N, 4H)
    by_gate = (gates[0] if count == 1 else gates).unflatten(-1, (4, hidden))  # ([D,] L, N, 4, H)
    time_axis = 0 if count == 1 else 1
    ingate, forgetgate, cellgate, outgate = (rows(g.unbind(time_axis)) for g in by_gate.unbind(-2))
    inforget = rows(by_gate[..., :2, :].unbind(time_axis), -3)  # ([D,] N, 2, H)
    prev_h = rows([h_like, *out_steps[:-1]])
    outputs = rows(out_steps)

    # The cell state: saved per step in training; one running buffer in inference.
    zone_h, zone_c = noise.zone_h, noise.zone_c
    if save:
        cells = new(count, length, batch, hidden)
        cell_steps = _steps(cells, count)
        prev_c, states = rows([c_like, *cell_steps[:-1]]), rows(cell_steps)
        cnew_buf = cells if zone_c is None else new(count, length, batch, hidden)
        cnews = rows(_steps(cnew_buf, count))
        saved.update(cells=cells, cnew=cnew_buf)
    else:
        running = c_like.clone()
        prev_c = states = rows([running] * length)
        cnews = states if zone_c is None else per_step(None, running)
    tanh_buf = buffer(hidden)
    tanh_outs = per_step(tanh_buf, c_like)  # tanh of the (normalised) cell, per step
    hcell_buf = buffer(hidden, w_hr is not None)
    if w_hr is not None or zone_h is not None:
        hcells = per_step(hcell_buf, c_like)  # o * tanh(...) before projection / zoneout
    else:
        hcells = outputs
    projected = None if w_hr is None else (outputs if zone_h is None else per_step(None, h_like))
    zhs = None if zone_h is None else rows(_steps(zone_h, count))
    zcs = None if zone_c is None else rows(_steps(zone_c, count))
    q_buf = buffer(4 * hidden, ln_hh is not None)
    qs = None if ln_hh is None else per_step(q_buf, _one(gates[:, 0], count))
    mask = None if noise.mask is None else _one(noise.mask, count)
    masked = masks = None  # h * mask per step, and the mask's rows
    if mask is not None:
        masked, masks = rows([torch.empty_like(mask)] * length), rows([mask] * length)
    p_if = p_o = None
    if peep is not None:
        p_if, p_o = _one(peep[:, None, :2], count), _one(peep[:, None, 2], count)
    stats: dict[str, list[Tensor]] = {"mean_q": [], "rstd_q": [], "mean_c": [], "rstd_c": []}
    one_sigmoid = not save and peep is None  # (training keeps the activated g in ``gates``)
    g_aside: Sequence[Tensor] = per_step(None, c_like) if one_sigmoid else ()
    h_n = h0.new_empty(h0.shape) if packed else None
    c_n = c0.new_empty(c0.shape) if packed else None

    h = c = h_like
    with torch.inference_mode():  # less per-op overhead; every buffer was allocated above
        for t in range(length):
            h_in = (
                prev_h[t]
                if masks is None or masked is None
                else torch.mul(prev_h[t], masks[t], out=masked[t])
            )
            if qs is None:
                add_product(steps[t], h_in, whh_t)  # ([D,] N, 4H)
            else:
                r, mean, rstd = _norm(product(h_in, whh_t, out=qs[t]), ln_hh, None, count)
                steps[t].add_(r)
                if save:
                    stats["mean_q"].append(mean)
                    stats["rstd_q"].append(rstd)
            if one_sigmoid:  # inference without peepholes: g aside, then i, f, o at once
                g_t = torch.tanh(cellgate[t], out=g_aside[t])
                steps[t].sigmoid_()
            else:
                if p_if is not None:
                    inforget[t].addcmul_(prev_c[t].unsqueeze(-2), p_if)
                inforget[t].sigmoid_()
                g_t = cellgate[t].tanh_()
            c = torch.mul(forgetgate[t], prev_c[t], out=cnews[t]).addcmul_(ingate[t], g_t)
            if not one_sigmoid:
                if p_o is not None:
                    outgate[t].addcmul_(c, p_o)
                outgate[t].sigmoid_()
            if ln_c_w is None:
                torch.tanh(c, out=tanh_outs[t])
            else:
                normed, mean, rstd = _norm(c, ln_c_w, ln_c_b, count)
                torch.tanh(normed, out=tanh_outs[t])
                if save:
                    stats["mean_c"].append(mean)
                    stats["rstd_c"].append(rstd)
            h = torch.mul(outgate[t], tanh_outs[t], out=hcells[t])  # ([D,] N, H)
            if projected is not None and whr_t is not None:
                h = product(h, whr_t, out=projected[t])  # ([D,] N, H_out)
            if zhs is not None:
                h = torch.lerp(h, prev_h[t], zhs[t], out=outputs[t])
            if zcs is not None:
                c = torch.lerp(c, prev_c[t], zcs[t], out=states[t])
            if ends is not None and t in ends and h_n is not None and c_n is not None:
                lo, hi = ends[t]
                _one(h_n, count).narrow(-2, lo, hi - lo).copy_(h.narrow(-2, lo, hi - lo))
                _one(c_n, count).narrow(-2, lo, hi - lo).copy_(c.narrow(-2, lo, hi - lo))

    if save:
        for name, parts in stats.items():
            if parts:
                saved[name] = _stacked_stats(parts, count, length, batch, sizes, name[:4] == "rstd")
        saved.update(gates=gates, out=out, tanh=tanh_buf, hcell=hcell_buf, q=q_buf)
    if h_n is None or c_n is None:
        h_n, c_n = h.clone(), c.clone()
        if count == 1:
            h_n, c_n = h_n.unsqueeze(0), c_n.unsqueeze(0)
    return out, h_n, c_n, saved if save else None


def _stacked_stats(
    parts: list[Tensor],
    count: int,
    length: int,
    batch: int,
    sizes: Sequence[int] | None,
    rstd: bool,
) -> Tensor:
    """Per-step layer-norm statistics ``([D,] N_t, 1)`` as one ``(D, L, N, 1)`` view of a
    time-major buffer, so each step's slice stays contiguous (torch's layer-norm backward reads
    its mean and rstd as contiguous). Padded rows of packed input: mean 0, rstd 1 (finite values
    that get zero gradient)."""
    if sizes is None:
        stacked = torch.stack(parts)  # (L, [D,] N, 1)
    else:
        stacked = parts[0].new_full((length, *parts[0].shape), 1.0 if rstd else 0.0)
        for t, part in enumerate(parts):
            stacked[t].narrow(-2, 0, part.size(-2)).copy_(part)
    return stacked.unsqueeze(0) if count == 1 else stacked.transpose(0, 1)

