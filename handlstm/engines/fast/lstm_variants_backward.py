"""The hand-written backward of the variant fast path (see
:mod:`handlstm.engines.fast.lstm_variants`).

Per step ``t`` (processing order), with ``h~`` the cell's h before projection and zoneout and
``c~`` the new cell before zoneout (``c~' = LN(c~)`` with layer norm, else ``c~``)::

    dh_t   = d_out_t + m * (R_{t+1} W_hh) + z_h,{t+1} dh_{t+1}      R = dgates (or d(W_hh h))
    dh~_t  = ((1 - z_h,t) dh_t) [W_hr]
    dc~_t  = (1 - z_c,t) dc_t + LN'(dh~_t B_t) + dh~_t p_o K_o,t      B = o (1 - tanh(c~')^2)
    dgates = [dc~ K_i, dc~ K_f, dc~ K_g, dh~ K_o]
    dc_t-1 = z_c,t dc_t + dc~_t (f + p_i K_i + p_f K_f)

The factors ``K``, ``B`` and the forget carry are computed for all steps at once; without
projection the ``(1 - z_h)`` factor is folded into them too. Without the cell norm ``p_o K_o``
is folded into ``B``. Parameter gradients are large reductions after the loop; for one direction
the layer norms' gains come from torch's layer-norm backward of each step (it computes them in
the same pass).

Shapes: D directions, L sequence, N batch, H_in input size, H hidden size, H_out output size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from .layout import Ends, _bmm, _by_direction, _one, _stacked, _steps, _weights

_LN_BACKWARD = torch.ops.aten.native_layer_norm_backward


def _with_previous(grad: Tensor, cells: Tensor, c0: Tensor) -> Tensor:
    """``sum_{t, n} grad[t] * c_{t-1}`` per direction, ``(D, H)`` (``c_{-1}`` = c0)."""
    return (grad[:, 1:] * cells[:, :-1]).sum((1, 2)) + (grad[:, 0] * c0).sum(1)


def variant_backward(
    needs: Sequence[bool],
    ends: Ends | None,
    head: Sequence[Tensor],
    noise: Sequence[Tensor | None],
    flat: Sequence[Tensor | None],
    extras: Sequence[Tensor | None],
    saved: dict[str, Any],
    grads: tuple[Tensor, Tensor, Tensor],
) -> tuple[Tensor | None, ...]:
    """Backward through time with autograd off; the gradients of every Function input."""
    inputs, h0, c0 = head
    d_out, d_h_n, d_c_n = grads
    if d_out.dim() == 3:  # one direction: forward returned out[0]
        d_out = d_out.unsqueeze(0)
    count, length, batch, input_size = inputs.shape
    w_ih, w_hh = cast(list[Tensor], _weights(flat, 0)), cast(list[Tensor], _weights(flat, 1))
    w_hr = _weights(flat, 4)
    ln_ih, ln_hh, ln_c_w, ln_c_b, peep = extras
    mask, zone_h, zone_c = noise
    gates, out, cells, cnew, tanh_c = (saved[k] for k in ("gates", "out", "cells", "cnew", "tanh"))
    hid = w_hh[0].size(0) // 4
    out_size = w_hh[0].size(1)
    i, f, g, o = (gates[..., k * hid : (k + 1) * hid] for k in range(4))

    # The factors, all steps at once, in the gate-gradient buffer (see the module docstring).
    d_gates = torch.empty_like(gates)  # (D, L, N, 4H)
    k_i, k_f, k_g, k_o = (d_gates[..., k * hid : (k + 1) * hid] for k in range(4))
    torch.mul(i, g, out=k_i).mul_(1 - i)
    torch.mul(f, 1 - f, out=k_f)
    k_f[:, 1:].mul_(cells[:, :-1])
    k_f[:, 0].mul_(c0)
    torch.addcmul(i, i, g.square(), value=-1, out=k_g)
    torch.mul(o, 1 - o, out=k_o).mul_(tanh_c)
    carry = tanh_c.square().neg_().add_(1).mul_(o)  # B, (D, L, N, H)
    fold_h = zone_h is not None and w_hr is None  # dh~ = (1 - z_h) dh, folded into K_o and B
    if fold_h and zone_h is not None:
        keep = 1 - zone_h
        k_o.mul_(keep)
        carry.mul_(keep)
    forget = f  # dc~_t -> dc_{t-1}
    po_ko = None
    if peep is not None:
        p_i, p_f, p_o = (peep[:, k, None, None] for k in range(3))  # (D, 1, 1, H)
        forget = torch.addcmul(f, p_i, k_i).addcmul_(p_f, k_f)
        po_ko = k_o * p_o
        if ln_c_w is None:
            carry.add_(po_ko)
            po_ko = None

    d_h_all = d_out.new_empty(d_out.shape)  # every dh_t, (D, L, N, H_out)
    d_hnew_all = None  # (1 - z_h) dh_t where it is not folded (projection)
    if zone_h is not None and not fold_h:
        d_hnew_all = torch.empty_like(d_h_all)
    d_hc_all = None if w_hr is None else gates.new_empty(cells.shape)  # dh~ (projected back)
    prev, first = out[:, :-1], h0  # h_{t-1} as W_hh saw it
    if mask is not None:
        prev, first = prev * mask.unsqueeze(1), h0 * mask
    d_w_hh = None  # with the recurrent norm: accumulated step by step (no (D, L, N, 4H) buffer)
    h_ins = None
    if ln_hh is not None:
        d_w_hh = gates.new_zeros(count, 4 * hid, out_size)
        h_ins = [_one(first, count), *_steps(prev, count)]
    loop = _BackwardLoop(
        count,
        ends,
        d_gates,
        forget,
        carry,
        po_ko,
        mask,
        None if zone_h is None else zone_h,
        None if zone_h is None or fold_h else 1 - zone_h,
        zone_c,
        _one(_stacked(w_hh), count),
        None if w_hr is None else _one(_stacked(w_hr), count),
        ln_hh,
        ln_c_w,
        ln_c_b,
        saved["q"],
        {k: saved[k] for k in ("mean_q", "rstd_q", "mean_c", "rstd_c")},
        cnew if ln_c_w is not None else None,
        h_ins,
        None if d_w_hh is None else _one(d_w_hh, count),
    )
    with torch.inference_mode():  # less per-op overhead; it writes into buffers made above
        d_c, d_cnew, d_q0, gains = loop.run((d_out, d_h_n, d_c_n), d_h_all, d_hnew_all, d_hc_all)

    # Gradients of the initial state: dh_{-1} = m (R_0 W_hh) + z_h dh_0, dc_{-1} likewise.
    recurrent_0 = _one(d_gates[:, 0], count) if d_q0 is None else d_q0  # into W_hh at step 0
    product = torch.mm if count == 1 else torch.bmm
    d_h0 = d_c0 = None
    if needs[1]:
        d_h0 = product(recurrent_0, loop.w_hh)
        if mask is not None:
            d_h0.mul_(_one(mask, count))
        if zone_h is not None:
            d_h0.addcmul_(_one(zone_h[:, 0], count), _one(d_h_all[:, 0], count))
        d_h0 = d_h0.unsqueeze(0) if count == 1 else d_h0
    if needs[2]:
        d_c0 = d_cnew * _one(forget[:, 0], count)
        if zone_c is not None:
            d_c0.addcmul_(_one(zone_c[:, 0], count), d_c)
        d_c0 = d_c0.unsqueeze(0) if count == 1 else d_c0

    d_g = _by_direction(d_gates)  # (D, L*N, 4H)
    d_bias = d_g.sum(1)  # (D, 4H)
    d_ln: list[Tensor | None] = [None] * 5
    d_in = d_g  # the gradient of W_ih x
    if ln_ih is not None:
        a_x, mean_x, rstd_x = saved["a_x"], saved["mean_x"], saved["rstd_x"]
        parts, d_gain = [], []
        for d in range(count):
            d_a, d_w, _ = _LN_BACKWARD(
                d_g[d], a_x[d], [4 * hid], mean_x[d], rstd_x[d], ln_ih[d], None, [True, True, False]
            )
            parts.append(d_a)
            d_gain.append(d_w)
        d_in = parts[0].unsqueeze(0) if count == 1 else torch.stack(parts)
        d_ln[0] = torch.stack(d_gain)
    d_x = None
    if needs[0]:
        d_x = _bmm(d_in, _stacked(w_ih)).view(count, length, batch, input_size)
    d_w_ih = _bmm(d_in.transpose(1, 2), inputs.reshape(count, length * batch, input_size))
    if d_w_hh is None:
        r_all = _by_direction(d_gates)
        prev = prev.reshape(count, -1, out_size)  # (D, (L-1)*N, H_out)
        d_w_hh = _bmm(r_all[:, batch:].transpose(1, 2), prev)  # (D, 4H, H_out)
        d_w_hh.baddbmm_(r_all[:, :batch].transpose(1, 2), first)
    if ln_hh is not None:
        if gains["hh"]:  # one direction: summed from each step's layer-norm backward
            d_ln[1] = torch.stack(gains["hh"]).sum(0).unsqueeze(0)
        else:
            q, mean, rstd = saved["q"], saved["mean_q"], saved["rstd_q"]
            d_ln[1] = (q - mean).mul_(rstd).mul_(d_gates).sum((1, 2))
    if ln_c_w is not None:
        if gains["c_w"]:
            d_ln[2] = torch.stack(gains["c_w"]).sum(0).unsqueeze(0)
            d_ln[3] = torch.stack(gains["c_b"]).sum(0).unsqueeze(0)
        else:
            d_hc = d_h_all if d_hc_all is None else d_hc_all
            d_co = d_hc * carry  # dc~' (B folded with (1 - z_h) when d_hc is dh)
            normed = (cnew - saved["mean_c"]).mul_(saved["rstd_c"])
            d_ln[2] = normed.mul_(d_co).sum((1, 2))
            d_ln[3] = d_co.sum((1, 2))
    if peep is not None:
        d_ln[4] = torch.stack(
            (
                _with_previous(d_gates[..., :hid], cells, c0),
                _with_previous(d_gates[..., hid : 2 * hid], cells, c0),
                (d_gates[..., 3 * hid :] * cnew).sum((1, 2)),
            ),
            1,
        )  # (D, 3, H)
    d_w_hr = None
    if w_hr is not None:
        d_h_new = d_h_all if d_hnew_all is None else d_hnew_all
        d_w_hr = _bmm(_by_direction(d_h_new).transpose(1, 2), _by_direction(saved["hcell"]))
    result: list[Tensor | None] = [d_x, d_h0, d_c0, None, None, None]
    for d in range(count):
        at = 6 + 5 * d
        per = [d_w_ih[d], d_w_hh[d], d_bias[d], d_bias[d].clone(), None]
        per[4] = None if d_w_hr is None else d_w_hr[d]
        result += [gr if needs[at + k] else None for k, gr in enumerate(per)]
    at = 6 + 5 * count
    result += [gr if needs[at + k] else None for k, gr in enumerate(d_ln)]
    return tuple(result)


def _norm_backward(
    grad: Tensor,
    x: Tensor,
    means: Sequence[Tensor] | None,
    rstds: Sequence[Tensor] | None,
    t: int,
    gain: Tensor | None,
    shift: Tensor | None,
    one: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Step ``t``'s layer-norm backward: ``(dx, d_gain, d_shift)`` of ``LN(x) * gain + shift``.

    For one direction torch's kernel takes the gain and also returns the gain's (and, given a
    shift, the shift's) gradient for this step; for two (a gain per direction, ``(D, 1, F)``)
    the gain is applied to ``grad`` here and the gains' gradients are left to the caller."""
    assert means is not None and rstds is not None and gain is not None
    if one:
        mask = [True, True, shift is not None]
        d_x, d_gain, d_shift = _LN_BACKWARD(
            grad, x, [x.size(-1)], means[t], rstds[t], gain, shift, mask
        )
        return d_x, d_gain, d_shift if shift is not None else None
    d_x = _LN_BACKWARD(
        grad * gain, x, [x.size(-1)], means[t], rstds[t], None, None, [True, False, False]
    )[0]
    return d_x, None, None


class _BackwardLoop(NamedTuple):
    """The backward time loop's inputs (factors for all steps; per-step work in :meth:`run`)."""

    directions: int
    ends: Ends | None
    d_gates: Tensor  # (D, L, N, 4H): factors in, gate gradients out
    forget: Tensor  # (D, L, N, H): dc~_t -> dc_{t-1}
    carry: Tensor  # (D, L, N, H): dh~_t -> dc~_t' (the normalised cell with layer norm)
    po_ko: Tensor | None  # with the cell norm and peepholes: dh~_t -> dc~_t through o
    mask: Tensor | None  # (D, N, H_out)
    zone_h: Tensor | None  # (D, L, N, H_out)
    keep_h: Tensor | None  # (D, L, N, H_out): 1 - z_h where not folded into the factors
    zone_c: Tensor | None  # (D, L, N, H)
    w_hh: Tensor  # ([D,] 4H, H_out)
    w_hr: Tensor | None  # ([D,] H_out, H)
    ln_hh: Tensor | None  # (D, 4H) gain of the recurrent norm
    ln_c_w: Tensor | None  # (D, H) gain of the cell norm
    ln_c_b: Tensor | None  # (D, H) its shift (torch's backward computes its gradient if given)
    q: Tensor | None  # (D, L, N, 4H) W_hh h before the recurrent norm
    stats: dict[str, Tensor | None]  # the norms' per-step mean and rstd, (D, L, N, 1)
    cnew: Tensor | None  # (D, L, N, H) with the cell norm: its input c~
    h_ins: Sequence[Tensor] | None  # with the recurrent norm: per step the h W_hh saw
    d_w_hh: Tensor | None  # ([D,] 4H, H_out) with the recurrent norm: accumulated here

    def run(
        self,
        grads: tuple[Tensor, Tensor, Tensor],
        d_h_all: Tensor,
        d_hnew_all: Tensor | None,
        d_hc_all: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None, dict[str, list[Tensor]]]:
        """Turns the factors in ``d_gates`` into gate gradients in place, storing every dh_t
        (and (1 - z_h) dh_t and the projected-back dh~_t where they differ).

        Returns ``(dc_0, dc~_0, dq_0, gains)``: the gradients of the first state and new cell,
        step 0's gradient of ``W_hh h`` (recurrent norm only, else None; the norm's steps also
        accumulate ``dW_hh`` into ``self.d_w_hh``), and for one direction each step's gradient
        of the norms' gains (``hh``, ``c_w``, ``c_b``)."""
        count, ends = self.directions, self.ends
        d_out, d_h_n, d_c_n = grads
        hid = self.d_gates.size(-1) // 4
        ifg = _steps(self.d_gates[..., : 3 * hid].unflatten(-1, (3, hid)), count)
        og = _steps(self.d_gates[..., 3 * hid :], count)
        steps = _steps(self.d_gates, count)
        forget, carry = _steps(self.forget, count), _steps(self.carry, count)
        po_ko = None if self.po_ko is None else _steps(self.po_ko, count)
        d_outs, d_hs = _steps(d_out, count), _steps(d_h_all, count)
        d_hnews = None if d_hnew_all is None else _steps(d_hnew_all, count)
        d_hcs = None if d_hc_all is None else _steps(d_hc_all, count)
        zhs = None if self.zone_h is None else _steps(self.zone_h, count)
        keep_h = None if self.keep_h is None else _steps(self.keep_h, count)
        zcs = None if self.zone_c is None else _steps(self.zone_c, count)
        keep_c = None if self.zone_c is None else _steps(1 - self.zone_c, count)
        qs = None if self.q is None else _steps(self.q, count)
        stat = {k: None if v is None else _steps(v, count) for k, v in self.stats.items()}
        cnews = None if self.cnew is None else _steps(self.cnew, count)
        one = count == 1  # the norms' gains go to torch's backward (one gain per call)
        g_hh = None if self.ln_hh is None else (self.ln_hh[0] if one else self.ln_hh.unsqueeze(1))
        g_c = None if self.ln_c_w is None else (self.ln_c_w[0] if one else self.ln_c_w.unsqueeze(1))
        b_c = None if self.ln_c_b is None or not one else self.ln_c_b[0]
        injected_h, injected_c = _one(d_h_n, count), _one(d_c_n, count)
        d_c = injected_c.clone() if ends is None else torch.zeros_like(injected_c)
        d_cnew = d_c if zcs is None else torch.empty_like(d_c)
        scratch = None if self.mask is None else torch.empty_like(injected_h)
        mask = None if self.mask is None else _one(self.mask, count)
        product = torch.mm if one else torch.bmm
        addmm = torch.addmm if one else torch.baddbmm
        d_q: Tensor | None = None
        accumulate = Tensor.addmm_ if one else Tensor.baddbmm_
        gains: dict[str, list[Tensor]] = {"hh": [], "c_w": [], "c_b": []}
        for t in range(len(steps) - 1, -1, -1):
            target = d_hs[t]
            if t == len(steps) - 1:
                if ends is None:
                    torch.add(d_outs[t], injected_h, out=target)
                else:
                    target.copy_(d_outs[t])
            else:
                later = steps[t + 1] if d_q is None else d_q
                if mask is None or scratch is None:
                    addmm(d_outs[t], later, self.w_hh, out=target)
                else:
                    recurrent = product(later, self.w_hh, out=scratch)
                    torch.addcmul(d_outs[t], recurrent, mask, out=target)
                if zhs is not None:
                    target.addcmul_(zhs[t + 1], d_hs[t + 1])
                if zcs is None:
                    d_c = d_cnew.mul_(forget[t + 1])
                else:
                    d_c.mul_(zcs[t + 1]).addcmul_(forget[t + 1], d_cnew)
            if ends is not None and t in ends:  # sequences ending here get d_h_n, d_c_n
                lo, hi = ends[t]
                target.narrow(-2, lo, hi - lo).add_(injected_h.narrow(-2, lo, hi - lo))
                d_c.narrow(-2, lo, hi - lo).add_(injected_c.narrow(-2, lo, hi - lo))
            d_hc = target  # dh~ (with (1 - z_h) folded into the factors without projection)
            if d_hnews is not None and keep_h is not None:
                d_hc = torch.mul(target, keep_h[t], out=d_hnews[t])
            if d_hcs is not None and self.w_hr is not None:
                d_hc = product(d_hc, self.w_hr, out=d_hcs[t])  # ([D,] N, H)
            d_cnew = d_c if keep_c is None else torch.mul(d_c, keep_c[t], out=d_cnew)
            if cnews is None:
                d_cnew.addcmul_(d_hc, carry[t])
            else:
                d_norm, d_w, d_b = _norm_backward(
                    d_hc * carry[t], cnews[t], stat["mean_c"], stat["rstd_c"], t, g_c, b_c, one
                )
                gains["c_w"] += [] if d_w is None else [d_w]
                gains["c_b"] += [] if d_b is None else [d_b]
                d_cnew.add_(d_norm)
                if po_ko is not None:
                    d_cnew.addcmul_(d_hc, po_ko[t])
            ifg[t].mul_(d_cnew.unsqueeze(-2))
            og[t].mul_(d_hc)
            if qs is not None and self.h_ins is not None and self.d_w_hh is not None:
                d_q, d_w, _ = _norm_backward(
                    steps[t], qs[t], stat["mean_q"], stat["rstd_q"], t, g_hh, None, one
                )
                gains["hh"] += [] if d_w is None else [d_w]
                accumulate(self.d_w_hh, d_q.transpose(-1, -2), self.h_ins[t])
        return d_c, d_cnew, d_q, gains
