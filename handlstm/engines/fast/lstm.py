"""The fast path: every direction of one default LSTM layer, stepped in lockstep.

The composed path (:func:`handlstm.engines.composed.scan` over
:func:`handlstm.core.lstm.lstm_step_gates`) records every per-step op on the autograd tape and
allocates fresh tensors at every step. This module computes the same function with fewer, in-place
ops into preallocated buffers, and, when gradients are needed, as one
:class:`torch.autograd.Function` with a hand-written backward through time. The ``D`` directions of
a layer (1, or 2 when bidirectional) run in lockstep: each is laid out in its own processing order
(a reverse direction's input flipped in time), so step ``s`` of every direction is one ``(D, N, *)``
slice and one batched product (``baddbmm``) serves all of them.

* forward: the input's share of all gates as one GEMM per direction; per step one in-place
  product of the recurrent term into that step's slice, in-place activations, the cell update
  written into the step's slot of a preallocated buffer, and h written into its slot of the
  output;
* inference (no input needs a gradient): the same loop, saving nothing;
* the per-step loops (forward, inference and backward) run under ``torch.inference_mode``
  (measured ~13-20% less per-op overhead than ``no_grad`` at small sizes); every buffer they
  write is allocated outside it, so what they hand back are ordinary tensors;
* backward: the derivative factors of every gate are computed for all steps at once (large
  elementwise ops), so a step only does one product for dh and four small elementwise ops; dW_ih,
  dW_hh, dW_hr, the biases and dx are each one large GEMM (or sum) after the loop;
* double backward (``create_graph=True``): the backward then recomputes the composed path from
  the saved inputs and differentiates it with ``create_graph=True``, so higher derivatives are
  exact and ``gradgradcheck`` passes.

Packed input runs on the same loop: every sequence is laid out padded, in its own processing
order (``data`` gathered by one ``index_select``), the padded steps compute harmless values that
nothing reads, each sequence's final state is captured at its own last step, and the output is
gathered back into the packed layout. Padded steps get exactly zero gradient, so nothing leaks.

Of the variants, recurrent dropout (a mask on h) runs in the loops here, weight drop and input
dropout act on the inputs; zoneout, peepholes and layer norm run in the loops of
:mod:`handlstm.engines.fast.lstm_variants` (same layout, its own backward). Clipping, other
activations, per-sample-gradient taps and :meth:`~handlstm.HandLSTM.forward_with_states` take the
composed path.

The fast path is a pure optimisation: :func:`handlstm.engines.fast.serves.serves` sends everything
it does not handle to the composed path (those variants, single-step sequences (measured faster
composed: the setup costs more than the steps), tensor subclasses, non-CPU devices, dtypes other
than float32/float64, autocast, forward-mode AD, ``torch.func`` transforms, ``torch.compile`` /
``torch.export`` / ``torch.jit`` tracing, Python dispatch or function modes, empty tensors). Nothing
is cached between calls, so a changed parameter can never be served stale.

Gate order is torch's (i, f, g, o) throughout. Shapes: D directions, L sequence, N batch, H_in
input size, H_cell hidden size, H_out output size (``proj_size`` or H_cell).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from . import lstm_variants as _fast_variants
from .counts import counts
from .layout import (
    Ends,
    _active_rows,
    _dense_layout,
    _from_steps,
    _gate_steps,
    _inference,
    _one,
    _out_shape,
    _packed_layout,
    _steps,
    _to_steps,
    _transposed,
    _weights,
)
from .lstm_backward import _backward, _backward_by_recompute

# -- entry points ------------------------------------------------------------------------------


def run_layer(
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    h0: Tensor,
    c0: Tensor,
    weights: Sequence[Sequence[Tensor | None]],
    reverses: tuple[bool, ...] | None = None,
    variants: Sequence[Any] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The directions of one layer in lockstep; same contract as
    :func:`handlstm.engines.choose.run_layer`. Call only where
    :func:`~handlstm.engines.fast.serves.serves` said yes.

    Args:
        weights: per direction ``(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)``.
        reverses: per direction, whether it runs from the last step; default forward, then
            reverse.
        variants: per direction, the :class:`handlstm.core.lstm.ScanVariant` (or None): recurrent
            dropout's mask on h, zoneout's masks, peepholes and layer norm.

    Returns:
        ``(output, h_n, c_n)``: ``(L, N, D*H_out)`` (or packed rows), ``(D, N, H_out)``,
        ``(D, N, H_cell)``.
    """
    count = len(weights)
    if reverses is None:
        reverses = (False, True)[:count]
    if batch_sizes is None:
        layout = _dense_layout(x, reverses)
    else:
        layout = _packed_layout(batch_sizes, x, reverses)
        counts["packed"] += 1
    if count > 1:
        counts["lockstep"] += 1
    flat = [t for direction in weights for t in direction]
    variants = [None] * count if variants is None else list(variants)
    masks = [None if v is None else v.h_mask for v in variants]
    mask = None
    if any(m is not None for m in masks):
        mask = torch.stack([torch.ones_like(h0[0]) if m is None else m for m in masks])
    inputs = _to_steps(x, layout)  # (D, L, N, H_in)
    plain = all(_fast_variants.is_plain(v) for v in variants)
    extras = () if plain else _fast_variants.extras_of(variants)
    train = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *flat, *extras)
    )
    counts["train" if train else "inference"] += count
    if not plain:
        out, h_n, c_n = _fast_variants.run_layer(
            inputs, h0, c0, mask, flat, variants, extras, layout, batch_sizes, train
        )
    elif train:
        out, h_n, c_n = _FastLayer.apply(inputs, h0, c0, mask, layout.ends, *flat)
    else:
        out, h_n, c_n = _inference(
            lambda into: _forward(inputs, h0, c0, mask, flat, layout.ends, False, into),
            inputs,
            _out_shape(inputs, flat),
            h0,
            c0,
        )
    return _from_steps(out, layout), h_n, c_n


def run_direction(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: Sequence[Tensor | None],
    reverse: bool,
    batch_sizes: Sequence[int] | None = None,
    variant: Any = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one layer, same contract as :func:`handlstm.engines.composed.run_direction`.

    Call only where :func:`~handlstm.engines.fast.serves.serves` said yes.

    Returns:
        ``(output, h_n, c_n)``: ``(L, N, H_out)`` (or packed rows), ``(N, H_out)``,
        ``(N, H_cell)``.
    """
    output, h_n, c_n = run_layer(
        x, batch_sizes, h0.unsqueeze(0), c0.unsqueeze(0), [weights], (reverse,), [variant]
    )
    return output, h_n[0], c_n[0]


# -- the forward recurrence --------------------------------------------------------------------


def _forward(
    inputs: Tensor,
    h0: Tensor,
    c0: Tensor,
    mask: Tensor | None,
    flat: Sequence[Tensor | None],
    ends: Ends | None,
    save: bool,
    into: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """The forward recurrence into preallocated buffers (autograd must be off).

    Args:
        inputs: ``(D, L, N, H_in)`` in processing order.
        h0, c0: ``(D, N, H_out)``, ``(D, N, H_cell)``.
        mask: recurrent dropout's ``(D, N, H_out)`` mask on every h fed to ``W_hh``, or None.
        flat: the weights of every direction, 5 per direction.
        into: where to write ``out`` (allocated here if None).

    Returns:
        ``(out, h_n, c_n, saved)`` with ``out`` ``(D, L, N, H_out)``; with ``save``, ``saved`` is
        ``(gates, cells, hcell)``: the activated gates ``(D, L, N, 4*H_cell)``, every ``c_t``
        ``(D, L, N, H_cell)`` and every unprojected ``h_t`` (``out`` itself without projection).
    """
    count, length, batch, input_size = inputs.shape
    w_ih, w_hh = cast(list[Tensor], _weights(flat, 0)), cast(list[Tensor], _weights(flat, 1))
    b_ih, b_hh, w_hr = _weights(flat, 2), _weights(flat, 3), _weights(flat, 4)
    hidden, out_size = w_hh[0].size(0) // 4, w_hh[0].size(1)
    x2d = inputs.reshape(count, length * batch, input_size)  # (D, L*N, H_in)
    gates = inputs.new_empty(count, length, batch, 4 * hidden)  # (D, L, N, 4*H)
    for d in range(count):  # one large GEMM per direction (a batched one measured far slower)
        by_row = gates[d].view(length * batch, 4 * hidden)  # (L*N, 4*H)
        if b_ih is not None and b_hh is not None:
            torch.addmm(b_ih[d] + b_hh[d], x2d[d], w_ih[d].t(), out=by_row)
        else:
            torch.mm(x2d[d], w_ih[d].t(), out=by_row)
    whh_t = _one(_transposed(w_hh), count)  # ([D,] H_out, 4*H)
    whr_t = None if w_hr is None else _one(_transposed(w_hr), count)
    out = inputs.new_empty(count, length, batch, out_size) if into is None else into
    h_n = h0.new_empty(h0.shape) if ends else None
    c_n = c0.new_empty(c0.shape) if ends else None
    loop = _Loop(
        count,
        _one(h0, count),
        whh_t,
        whr_t,
        ends,
        None if h_n is None else _one(h_n, count),
        None if c_n is None else _one(c_n, count),
        None if mask is None else _one(mask, count),
        None if not ends else _active_rows(ends, length),
    )
    if not save:
        h_last, c_last = loop.infer(gates, out, _one(c0, count).clone())
        saved = None
    else:
        # Packed: rows past a sequence's end stay zero, so the backward (over all rows) reads
        # finite values there and gives them exactly zero gradient.
        if ends:
            out.zero_()
        empty = inputs.new_zeros if ends else inputs.new_empty
        hcell = out if w_hr is None else empty(count, length, batch, hidden)
        cells = empty(count, length, batch, hidden)  # (D, L, N, H)
        with torch.inference_mode():  # less per-op overhead; every buffer was allocated above
            h_last, c_last = loop.train(gates, out, hcell, cells, _one(c0, count))
        h_last, c_last = h_last.clone(), c_last.clone()  # ordinary tensors
        saved = (gates, cells, hcell)
    if h_n is not None and c_n is not None:
        return out, h_n, c_n, saved
    if count == 1:
        return out, h_last.unsqueeze(0), c_last.unsqueeze(0), saved
    return out, h_last, c_last, saved


class _Loop(NamedTuple):
    """What both forward loops share: the products, the initial h and where final states go."""

    directions: int  # D
    h0: Tensor  # ([D,] N, H_out)
    whh_t: Tensor  # ([D,] H_out, 4*H)
    whr_t: Tensor | None  # ([D,] H_cell, H_out)
    ends: Ends | None
    h_n: Tensor | None  # (D, N, H_out), filled at each sequence's last step (packed)
    c_n: Tensor | None
    mask: Tensor | None  # ([D,] N, H_out) recurrent dropout on h before W_hh
    sizes: Sequence[int] | None  # packed: the active rows of each step (a prefix), else None

    def rows(self, views: Sequence[Tensor], dim: int = -2) -> Sequence[Tensor]:
        """Per-step views narrowed to each step's active rows (axis ``dim``) for packed input;
        unchanged for dense input.

        Rows past a sequence's end are neither computed nor read: their buffers stay as they
        were (zeros where the backward reads them)."""
        if self.sizes is None:
            return views
        full = views[0].size(dim)
        return [
            v if b == full else v.narrow(dim, 0, b) for v, b in zip(views, self.sizes, strict=True)
        ]

    def recurrent_input(self, length: int) -> tuple[Sequence[Tensor | None], Sequence[Any]]:
        """Per step: a buffer for ``h * mask`` and the mask's rows (None without dropout)."""
        if self.mask is None:
            return [None] * length, [None] * length
        into = torch.empty_like(self.mask)
        return self.rows([into] * length), self.rows([self.mask] * length)

    def capture(self, t: int, h: Tensor, c: Tensor) -> None:
        """Copy the rows whose sequences end at step ``t`` into h_n and c_n (packed input)."""
        if self.ends is None or t not in self.ends or self.h_n is None or self.c_n is None:
            return
        lo, hi = self.ends[t]
        self.h_n.narrow(-2, lo, hi - lo).copy_(h.narrow(-2, lo, hi - lo))
        self.c_n.narrow(-2, lo, hi - lo).copy_(c.narrow(-2, lo, hi - lo))

    def infer(self, gates: Tensor, out: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The recurrence keeping only the running state ``c`` (updated in place); fills
        ``out``, returns the last step's (h, c)."""
        views = _gate_steps(gates, self.directions)[:5]
        steps, ingate, forgetgate, cellgate, outgate = (self.rows(v) for v in views)
        outputs = _steps(out, self.directions)
        length = len(steps)
        add_product = Tensor.addmm_ if self.directions == 1 else Tensor.baddbmm_
        product = torch.mm if self.directions == 1 else torch.bmm
        g = torch.empty_like(c)  # tanh(cell gate) of the step
        tanh_c = torch.empty_like(c)
        prev = self.rows([self.h0, *outputs[:-1]])  # the h each step reads
        outputs, cs, gs, tanh_cs = (
            self.rows(v) for v in (outputs, [c] * length, [g] * length, [tanh_c] * length)
        )
        into, masks = self.recurrent_input(length)
        h, ends = self.h0, self.ends
        whh_t, whr_t = self.whh_t, self.whr_t
        for t in range(length):
            h_in = prev[t] if masks[t] is None else torch.mul(prev[t], masks[t], out=into[t])
            add_product(steps[t], h_in, whh_t)  # ([D,] N, 4*H)
            torch.tanh(cellgate[t], out=gs[t])
            steps[t].sigmoid_()  # i, f and o are right; g was taken before
            cs[t].mul_(forgetgate[t]).addcmul_(ingate[t], gs[t])
            torch.tanh(cs[t], out=tanh_cs[t])
            if whr_t is None:
                h = torch.mul(outgate[t], tanh_cs[t], out=outputs[t])  # ([D,] N, H)
            else:
                h = product(tanh_cs[t].mul_(outgate[t]), whr_t, out=outputs[t])  # ([D,] N, H_out)
            if ends is not None:
                self.capture(t, h, cs[t])
        return h.clone(), c

    def train(
        self, gates: Tensor, out: Tensor, hcell: Tensor, cells: Tensor, c0: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The recurrence saving activated gates, every c_t and every unprojected h_t."""
        count = self.directions
        views = _gate_steps(gates, count)
        steps, ingate, forgetgate, cellgate, outgate = (self.rows(v) for v in views[:5])
        inforget = self.rows(views[5], -3)  # ([D,] N, 2, H)
        outputs, cell_steps = _steps(out, count), _steps(cells, count)
        length = len(steps)
        prev_h = self.rows([self.h0, *outputs[:-1]])  # the h and c each step reads
        prev_c = self.rows([c0, *cell_steps[:-1]])
        tanh_c = torch.empty_like(c0)  # ([D,] N, H)
        hcells, outputs, cell_steps, tanh_cs = (
            self.rows(v) for v in (_steps(hcell, count), outputs, cell_steps, [tanh_c] * length)
        )
        add_product = Tensor.addmm_ if count == 1 else Tensor.baddbmm_
        product = torch.mm if count == 1 else torch.bmm
        into, masks = self.recurrent_input(length)
        h, c, ends = self.h0, c0, self.ends
        whh_t, whr_t = self.whh_t, self.whr_t
        for t in range(length):
            h_in = prev_h[t] if masks[t] is None else torch.mul(prev_h[t], masks[t], out=into[t])
            add_product(steps[t], h_in, whh_t)
            inforget[t].sigmoid_()
            cellgate[t].tanh_()
            outgate[t].sigmoid_()
            c = torch.mul(forgetgate[t], prev_c[t], out=cell_steps[t])
            c.addcmul_(ingate[t], cellgate[t])
            torch.tanh(c, out=tanh_cs[t])
            h = torch.mul(outgate[t], tanh_cs[t], out=hcells[t])  # ([D,] N, H)
            if whr_t is not None:
                h = product(h, whr_t, out=outputs[t])  # ([D,] N, H_out)
            if ends is not None:
                self.capture(t, h, c)
        return h.clone(), c.clone()


# -- training: one autograd Function per layer ----------------------------------------------------


class _FastLayer(torch.autograd.Function):
    """The directions of one layer with a hand-written backward through time.

    Inputs: ``inputs`` ``(D, L, N, H_in)`` in processing order, ``h0`` ``(D, N, H_out)``,
    ``c0`` ``(D, N, H_cell)``, ``mask`` (recurrent dropout's ``(D, N, H_out)``, or None; no
    gradient), ``ends`` (packed: rows ending at each step; None for dense), then the five
    weights of each direction (None where absent). Outputs ``(out, h_n, c_n)`` with ``out``
    ``(D, L, N, H_out)`` (``(L, N, H_out)`` for one direction).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        inputs: Tensor,
        h0: Tensor,
        c0: Tensor,
        mask: Tensor | None,
        ends: Ends | None,
        *flat: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        out, h_n, c_n, saved = _forward(inputs, h0, c0, mask, flat, ends, save=True)
        gates, cells, hcell = saved  # type: ignore[misc]
        ctx.ends = ends
        ctx.projected = flat[4] is not None
        ctx.save_for_backward(
            inputs, h0, c0, mask, out, gates, cells, hcell if ctx.projected else None, *flat
        )
        return _one(out, out.size(0)), h_n, c_n  # one direction: no view node after this

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_out: Tensor, d_h_n: Tensor, d_c_n: Tensor
    ) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: differentiate the composed path
            counts["recompute"] += 1
            return _backward_by_recompute(ctx, d_out, d_h_n, d_c_n)
        return _backward(ctx, d_out, d_h_n, d_c_n)
