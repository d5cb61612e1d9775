"""The fast path's hand-written backward through time (see :mod:`handlstm.engines.fast.lstm`).

The derivative factors of every gate are computed for all steps at once (large elementwise
ops), so a step only does one product for dh and four small elementwise ops; dW_ih, dW_hh,
dW_hr, the biases and dx are each one large GEMM (or sum) per direction after the loop. Under
``create_graph=True`` the gradients are instead recomputed through the composed path and
differentiated, so higher derivatives are exact.

Shapes: D directions, L sequence, N batch, H_in input size, H_cell hidden size, H_out output size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from ...core.kinds import DirectionWeights
from ...core.lstm import LSTM, ScanVariant
from ..composed import run_direction as composed
from .layout import Ends, _bmm, _by_direction, _one, _stacked, _steps, _weights


def _backward_by_recompute(
    ctx: Any, d_out: Tensor, d_h_n: Tensor, d_c_n: Tensor
) -> tuple[Tensor | None, ...]:
    """Gradients as a differentiable function of the inputs: recompute, then autograd.grad."""
    saved = ctx.saved_tensors
    mask = saved[3]
    differentiable = [saved[0], saved[1], saved[2], *saved[8:]]  # the Function's inputs
    positions = [0, 1, 2, *range(5, 5 + len(saved) - 8)]  # their places in forward's arguments
    ends: Ends | None = ctx.ends

    def variant_of(d: int, rest: Sequence[Tensor | None]) -> Any:
        if not ends and mask is None:
            return None
        return ScanVariant(h_mask=None if mask is None else mask[d], record=bool(ends))

    count = saved[0].size(0)
    grads = (d_out, d_h_n, d_c_n)
    return recompute_gradients(
        ctx.needs_input_grad, differentiable, positions, grads, ends, count, variant_of
    )


def recompute_gradients(
    needs: Sequence[bool],
    differentiable: Sequence[Tensor | None],
    positions: Sequence[int],
    grads: tuple[Tensor, Tensor, Tensor],
    ends: Ends | None,
    count: int,
    variant_of: Callable[[int, Sequence[Tensor | None]], Any],
) -> tuple[Tensor | None, ...]:
    """Double backward of a fast-path Function: each direction recomputed on the composed path
    (in processing order, from the saved inputs), then differentiated with ``create_graph``.

    Args:
        needs: the Function's ``ctx.needs_input_grad``.
        differentiable: ``(inputs, h0, c0, *weights, *rest)``: the Function's tensor inputs
            (``inputs`` ``(D, L, N, H_in)``, 5 weights per direction, then anything else).
        positions: each one's place in the Function's arguments.
        variant_of: ``(direction, differentiable[3:]) -> ScanVariant or None``.
    """
    wanted = [k for k, at in enumerate(positions) if needs[at]]
    with torch.enable_grad():
        x, h0, c0, *rest = differentiable
        assert x is not None and h0 is not None and c0 is not None
        outs, hs, cs = [], [], []
        for d in range(count):
            variant = variant_of(d, rest)
            weights = DirectionWeights(*rest[5 * d : 5 * d + 5])  # type: ignore[arg-type]
            out, (h, c) = composed(LSTM, x[d], None, (h0[d], c0[d]), weights, False, variant)
            if ends and variant is not None:  # each sequence's state at its own last step
                order = sorted(ends.items(), key=lambda item: item[1][0])
                cells = variant.cells[0]
                h = torch.cat([out[t, lo:hi] for t, (lo, hi) in order])
                c = torch.cat([cells[t, lo:hi] for t, (lo, hi) in order])
            outs.append(out)
            hs.append(h)
            cs.append(c)
        joined = outs[0] if len(outs) == 1 else torch.stack(outs)  # as forward returned it
        results = (joined, torch.stack(hs), torch.stack(cs))
        found = torch.autograd.grad(
            results,
            [cast(Tensor, differentiable[k]) for k in wanted],
            grads,
            create_graph=True,
            allow_unused=True,
        )
    result: list[Tensor | None] = [None] * len(needs)
    for k, grad in zip(wanted, found, strict=True):
        leaf = differentiable[k]
        assert leaf is not None
        result[positions[k]] = grad if grad is not None else torch.zeros_like(leaf)
    return tuple(result)


def _backward(ctx: Any, d_out: Tensor, d_h_n: Tensor, d_c_n: Tensor) -> tuple[Tensor | None, ...]:
    """Backward through time with autograd off: per step only what the recurrence needs."""
    inputs, h0, c0, mask, out, gates, cells, hcell, *flat = ctx.saved_tensors
    if hcell is None:
        hcell = out
    if d_out.dim() == 3:  # one direction: forward returned out[0]
        d_out = d_out.unsqueeze(0)
    count, length, batch, input_size = inputs.shape
    w_ih, w_hh = cast(list[Tensor], _weights(flat, 0)), cast(list[Tensor], _weights(flat, 1))
    w_hr = _weights(flat, 4)
    h = w_hh[0].size(0) // 4
    out_size = w_hh[0].size(1)
    ingate, forgetgate = gates[..., :h], gates[..., h : 2 * h]
    cellgate, outgate = gates[..., 2 * h : 3 * h], gates[..., 3 * h :]

    # Derivative factors for every step at once, laid out in the gate-gradient buffer:
    # d_gates[t] = [dc * K_i, dc * K_f, dc * K_g, dh * K_o] with
    # K_i = g i (1-i), K_f = c_prev f (1-f), K_g = i (1-g^2), K_o = tanh(c) o (1-o),
    # and B = o (1 - tanh(c)^2) carries dh into dc. Processing order: c_prev[t] = c[t-1].
    d_gates = torch.empty_like(gates)  # (D, L, N, 4*H)
    k_i, k_f = d_gates[..., :h], d_gates[..., h : 2 * h]
    k_g, k_o = d_gates[..., 2 * h : 3 * h], d_gates[..., 3 * h :]
    torch.mul(ingate, cellgate, out=k_i)
    k_i.mul_(1 - ingate)
    torch.mul(forgetgate, 1 - forgetgate, out=k_f)
    k_f[:, 1:].mul_(cells[:, :-1])
    k_f[:, 0].mul_(c0)
    torch.addcmul(ingate, ingate, cellgate.square(), value=-1, out=k_g)
    tanh_c = cells.tanh()  # (D, L, N, H), becomes B below
    torch.mul(outgate, 1 - outgate, out=k_o)
    k_o.mul_(tanh_c)
    b_carry = tanh_c.square_().neg_().add_(1).mul_(outgate)  # (D, L, N, H)

    w_hh_all = _one(_stacked(w_hh), count)  # ([D,] 4*H, H_out)
    w_hr_all = None if w_hr is None else _one(_stacked(w_hr), count)  # ([D,] H_out, H)
    d_h_all = d_out.new_empty(d_out.shape) if w_hr is not None else None
    step_mask = None if mask is None else _one(mask, count)
    with torch.inference_mode():  # less per-op overhead; it writes into buffers made above
        d_c = _bptt(
            ctx.ends,
            d_gates,
            forgetgate,
            b_carry,
            (d_out, d_h_n, d_c_n),
            d_h_all,
            step_mask,
            w_hh_all,
            w_hr_all,
        )
    needs = ctx.needs_input_grad
    product = torch.mm if count == 1 else torch.bmm
    d_h0 = None
    if needs[1]:
        d_h0 = product(_one(d_gates[:, 0], count), w_hh_all)
        if step_mask is not None:
            d_h0.mul_(step_mask)
    d_c0 = d_c * _one(forgetgate[:, 0], count) if needs[2] else None  # an ordinary tensor

    d_g = _by_direction(d_gates)  # (D, L*N, 4*H)
    d_x = None
    if needs[0]:
        d_x = _bmm(d_g, _stacked(w_ih)).view(count, length, batch, input_size)
    d_w_ih = _bmm(d_g.transpose(1, 2), inputs.reshape(count, length * batch, input_size))
    prev, first = out[:, :-1], h0  # h_prev of steps 1.. and of step 0, as W_hh saw them
    if mask is not None:
        prev, first = prev * mask.unsqueeze(1), h0 * mask
    prev = prev.reshape(count, -1, out_size)  # (D, (L-1)*N, H_out)
    d_w_hh = _bmm(d_g[:, batch:].transpose(1, 2), prev)  # (D, 4*H, H_out)
    d_w_hh.baddbmm_(d_g[:, :batch].transpose(1, 2), first)
    d_bias = d_g.sum(1)  # (D, 4*H)
    d_w_hr = None
    if d_h_all is not None:
        d_w_hr = _bmm(_by_direction(d_h_all).transpose(1, 2), _by_direction(hcell))
    grads: list[Tensor | None] = [
        d_x,
        None if d_h0 is None else (d_h0.unsqueeze(0) if count == 1 else d_h0),
        None if d_c0 is None else (d_c0.unsqueeze(0) if count == 1 else d_c0),
        None,
        None,
    ]
    for d in range(count):
        at = 5 + 5 * d
        per = [d_w_ih[d], d_w_hh[d], d_bias[d], d_bias[d].clone(), d_w_hr]
        per[4] = None if d_w_hr is None else d_w_hr[d]
        grads += [g if needs[at + k] else None for k, g in enumerate(per)]
    return tuple(grads)


def _bptt(
    ends: Ends | None,
    d_gates: Tensor,
    forgetgate: Tensor,
    b_carry: Tensor,
    grads: tuple[Tensor, Tensor, Tensor],
    d_h_all: Tensor | None,
    mask: Tensor | None,
    w_hh: Tensor,
    w_hr: Tensor | None,
) -> Tensor:
    """The backward time loop: turns the factors in ``d_gates`` into gate gradients in place.

    Args:
        grads: ``(d_out, d_h_n, d_c_n)``, ``(D, L, N, H_out)``, ``(D, N, H_out)``, ``(D, N, H)``.
        d_h_all: with projections, receives every step's gradient of h ``(D, L, N, H_out)``.
        mask: recurrent dropout's ``([D,] N, H_out)`` mask, or None.

    Returns the gradient of the cell state before the first step's forget gate.
    """
    d_out, d_h_n, d_c_n = grads
    count = d_gates.size(0)
    h = d_gates.size(-1) // 4
    ifg = _steps(d_gates[..., : 3 * h].unflatten(-1, (3, h)), count)  # L x ([D,] N, 3, H)
    og = _steps(d_gates[..., 3 * h :], count)
    steps = _steps(d_gates, count)
    forgets = _steps(forgetgate, count)
    carries = _steps(b_carry, count)
    d_outs = _steps(d_out, count)
    d_h_steps = None if d_h_all is None else _steps(d_h_all, count)
    d_h = _one(d_h_n, count).new_empty(_one(d_h_n, count).shape)  # ([D,] N, H_out)
    d_c = _one(d_c_n, count).clone() if ends is None else torch.zeros_like(_one(d_c_n, count))
    addmm = torch.addmm if count == 1 else torch.baddbmm
    product = torch.mm if count == 1 else torch.bmm
    injected_h, injected_c = _one(d_h_n, count), _one(d_c_n, count)
    recurrent = None if mask is None else torch.empty_like(mask)  # dh through W_hh, unmasked
    previous = -1
    for t in range(len(steps) - 1, -1, -1):
        target = d_h if d_h_steps is None else d_h_steps[t]
        if previous < 0:
            if ends is None:
                torch.add(d_outs[t], injected_h, out=target)
            else:
                target.copy_(d_outs[t])
        elif recurrent is None or mask is None:
            addmm(d_outs[t], steps[previous], w_hh, out=target)
            d_c.mul_(forgets[previous])
        else:
            product(steps[previous], w_hh, out=recurrent)
            torch.addcmul(d_outs[t], recurrent, mask, out=target)
            d_c.mul_(forgets[previous])
        if ends is not None and t in ends:  # sequences ending here get d_h_n, d_c_n
            lo, hi = ends[t]
            target.narrow(-2, lo, hi - lo).add_(injected_h.narrow(-2, lo, hi - lo))
            d_c.narrow(-2, lo, hi - lo).add_(injected_c.narrow(-2, lo, hi - lo))
        d_hc = target if w_hr is None else product(target, w_hr)  # ([D,] N, H)
        d_c.addcmul_(d_hc, carries[t])
        ifg[t].mul_(d_c.unsqueeze(-2))
        og[t].mul_(d_hc)
        previous = t
    return d_c
