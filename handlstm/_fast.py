"""The fast path: every direction of one default LSTM layer, stepped in lockstep.

The composed path (:func:`handlstm._scan.scan` over :func:`handlstm._cell.lstm_step_gates`)
records every per-step op on the autograd tape and allocates fresh tensors at every step. This
module computes the same function with fewer, in-place ops into preallocated buffers, and, when
gradients are needed, as one :class:`torch.autograd.Function` with a hand-written backward through
time. The ``D`` directions of a layer (1, or 2 when bidirectional) run in lockstep: each is laid
out in its own processing order (a reverse direction's input flipped in time), so step ``s`` of
every direction is one ``(D, N, *)`` slice and one batched product (``baddbmm``) serves all of
them.

* forward: the input's share of all gates as one GEMM per direction; per step one in-place
  product of the recurrent term into that step's slice, in-place activations, the cell update
  written into the step's slot of a preallocated buffer, and h written into its slot of the
  output;
* inference (no input needs a gradient): the same loop, saving nothing;
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

Of the variants, the fast path serves those whose steps stay nn.LSTM's but for recurrent
dropout's mask on h (weight drop and input dropout act on its inputs; in eval mode all three are
off); the others (layer norm, peepholes, zoneout, clipping, other activations) and
:meth:`~handlstm.HandLSTM.forward_with_states` take the composed path.

The fast path is a pure optimisation: :func:`can_serve` sends everything it does not handle to the
composed path (those variants, single-step sequences (measured faster composed: the setup costs
more than the steps), tensor subclasses, non-CPU devices, dtypes other than float32/float64,
autocast, forward-mode AD, ``torch.func`` transforms, ``torch.compile`` / ``torch.export`` /
``torch.jit`` tracing, Python dispatch or function modes, empty tensors).
Nothing is cached between calls, so a changed parameter can never be served stale.

Gate order is torch's (i, f, g, o) throughout. Shapes: D directions, L sequence, N batch, H_in
input size, H_cell hidden size, H_out output size (``proj_size`` or H_cell).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ._cell import DEFAULT_VARIANT

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("handlstm_fast", default=True)

#: How often each path ran, by name: "inference" and "train" (fast path, one count per direction
#: served), "lockstep" (calls that ran two directions together), "packed" (calls on packed input)
#: and "recompute" (a fast-path backward that fell back to the composed path for
#: ``create_graph=True``). For tests and benchmarks; not part of the public API.
counts: Counter[str] = Counter()

_DTYPES = (torch.float32, torch.float64)
#: Device types served. Only CPU is measured and tested; benchmarks/cuda_check.py adds "cuda"
#: temporarily to check and time the fast path on a GPU.
_DEVICE_TYPES = {"cpu"}
_TENSOR_TYPES = (Tensor, nn.Parameter)

#: Rows ``[lo, hi)`` whose sequences end at step ``s`` (packed input only), keyed by ``s``.
Ends = dict[int, tuple[int, int]]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this context (and thread/task), every call takes the composed path."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _transforms_active() -> bool:
    """True under forward-mode AD, torch.func transforms, jit tracing or Python modes.

    (compile/export are refused first thing in :func:`can_serve`.)
    """
    if forward_ad._current_level >= 0:  # inside forward_ad.dual_level()
        return True
    if torch._C._are_functorch_transforms_active():
        return True
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if torch._C._is_torch_function_mode_enabled():
        return True
    return _get_current_dispatch_mode() is not None


def _plain_variant(variant: Any) -> bool:
    """True for None and for a variant the fast path computes: every step nn.LSTM's but for
    recurrent dropout's mask on h (weight drop and input dropout are already in the inputs;
    dropouts in eval mode are off)."""
    if variant is None:
        return True
    if variant.record or variant.ln_ih is not None:
        return False
    if variant.zone_h is not None or variant.zone_c is not None:
        return False
    return all(
        mine is neutral or (isinstance(mine, float) and mine == neutral)
        for mine, neutral in zip(variant.cell, DEFAULT_VARIANT, strict=True)
    )


def can_serve(
    x: Tensor,
    batch_sizes: Any,
    h0: Tensor,
    c0: Tensor,
    weights: Sequence[Tensor | None],
    options: Any = None,
) -> bool:
    """Whether the fast path computes this direction (or layer); otherwise the composed path must.

    Args:
        x: the input, ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        h0, c0: initial states ``(N, H_out)`` and ``(N, H_cell)`` (or ``(D, N, *)``).
        weights: ``(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)`` of each direction, one
            after the other, None where absent.
        options: the variant (see :class:`handlstm._scan.ScanVariant`), or a sequence of them
            (one per direction); served only where every step stays nn.LSTM's.
    """
    # First, before anything dynamo cannot trace (a ContextVar read graph-breaks).
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    steps = x.size(0) if batch_sizes is None else len(batch_sizes)
    if steps < 2 or not _ENABLED.get():
        return False  # one step: the composed path measured faster (fewer ops than the setup)
    variants = options if isinstance(options, list | tuple) else (options,)
    if not all(_plain_variant(v) for v in variants):
        return False
    if x.dim() != (3 if batch_sizes is None else 2) or x.numel() == 0 or h0.numel() == 0:
        return False
    dtype, device = x.dtype, x.device
    if dtype not in _DTYPES or device.type not in _DEVICE_TYPES:
        return False
    for t in (x, h0, c0, *weights):
        if t is None:
            continue
        if type(t) not in _TENSOR_TYPES or t.dtype != dtype or t.device != device:
            return False
    for k in range(0, len(weights), 5):
        if (weights[k + 2] is None) != (weights[k + 3] is None):
            return False
    if torch.is_autocast_enabled(device.type):
        return False
    return not _transforms_active()


# -- layouts: from the caller's time-major (or packed) tensors to processing order and back -------


class _Layout(NamedTuple):
    """Where each direction's steps live: ``(D, L, N, *)`` in processing order."""

    steps: int  # L
    batch: int  # N
    reverses: tuple[bool, ...]  # per direction
    gather_in: Tensor | None  # packed: (D*L*N,) row of the packed data at each (d, s, n)
    gather_out: Tensor | None  # packed: (sum(B_t), D) row of (D*L*N, H_out) per packed row
    ends: Ends | None  # packed: which rows end at which step; dense: all at the last step


def _dense_layout(x: Tensor, reverses: tuple[bool, ...]) -> _Layout:
    return _Layout(x.size(0), x.size(1), reverses, None, None, None)


def _packed_layout(batch_sizes: Sequence[int], x: Tensor, reverses: tuple[bool, ...]) -> _Layout:
    """Index maps between packed data and the padded processing-order layout.

    Padded positions (step ``s`` of a sequence shorter than ``s + 1``) read a valid row, so they
    compute finite values; nothing reads their results and their gradients are exactly zero.
    """
    length, batch, device = len(batch_sizes), batch_sizes[0], x.device
    sizes = torch.tensor(list(batch_sizes), device=device)  # (L,)
    offsets = sizes.cumsum(0) - sizes  # (L,) first packed row of each time step
    rows = torch.arange(batch, device=device)  # (N,)
    valid = rows < sizes.unsqueeze(1)  # (L, N)
    lengths = valid.sum(0)  # (N,)
    forward = torch.where(valid, offsets.unsqueeze(1) + rows, rows)  # (L, N)
    times = (lengths - 1 - torch.arange(length, device=device).unsqueeze(1)).clamp_(min=0)
    backward = torch.where(valid, offsets[times] + rows, rows)  # processing step s = time L_n-1-s
    gather_in = torch.stack([backward if r else forward for r in reverses]).view(-1)
    step_of, row_of = valid.nonzero(as_tuple=True)  # every packed row's (time, sequence)
    gather_out = torch.stack(
        [
            (d * length + (lengths[row_of] - 1 - step_of if r else step_of)) * batch + row_of
            for d, r in enumerate(reverses)
        ],
        1,
    )  # (sum(B_t), D)
    ends: Ends = {}
    for s, size in enumerate(batch_sizes):
        following = batch_sizes[s + 1] if s + 1 < length else 0
        if following < size:
            ends[s] = (following, size)
    return _Layout(length, batch, reverses, gather_in, gather_out, ends)


def _to_steps(x: Tensor, layout: _Layout) -> Tensor:
    """The input of every direction in processing order, ``(D, L, N, H_in)`` (differentiable)."""
    if layout.gather_in is not None:
        return x.index_select(0, layout.gather_in).view(
            len(layout.reverses), layout.steps, layout.batch, x.size(-1)
        )
    parts = [x.flip(0) if r else x for r in layout.reverses]
    return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)


def _from_steps(out: Tensor, layout: _Layout) -> Tensor:
    """``(D, L, N, H_out)`` (``(L, N, H_out)`` for one direction) in processing order to the
    caller's layout with ``D*H_out`` features."""
    count = len(layout.reverses)
    if layout.gather_out is not None:
        flat = out.reshape(-1, out.size(-1))  # (D*L*N, H_out)
        return flat.index_select(0, layout.gather_out.view(-1)).view(-1, count * out.size(-1))
    if count == 1:
        return out.flip(0) if layout.reverses[0] else out
    parts = [out[d].flip(0) if r else out[d] for d, r in enumerate(layout.reverses)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


# -- entry points ------------------------------------------------------------------------------


def run_layer(
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    h0: Tensor,
    c0: Tensor,
    weights: Sequence[Sequence[Tensor | None]],
    reverses: tuple[bool, ...] | None = None,
    masks: Sequence[Tensor | None] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The directions of one layer in lockstep; same contract as
    :func:`handlstm._scan.run_layer`. Call only where :func:`can_serve` said yes.

    Args:
        weights: per direction ``(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)``.
        reverses: per direction, whether it runs from the last step; default forward, then
            reverse.
        masks: per direction, recurrent dropout's ``(N, H_out)`` mask on h (scaled), or None.

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
    mask = None
    if masks is not None and any(m is not None for m in masks):
        mask = torch.stack([torch.ones_like(h0[0]) if m is None else m for m in masks])
    inputs = _to_steps(x, layout)  # (D, L, N, H_in)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *flat)
    ):
        counts["train"] += count
        out, h_n, c_n = _FastLayer.apply(inputs, h0, c0, mask, layout.ends, *flat)
    else:
        counts["inference"] += count
        with torch.no_grad():
            out, h_n, c_n, _ = _forward(inputs, h0, c0, mask, flat, layout.ends, save=False)
            out = _one(out, count)
    return _from_steps(out, layout), h_n, c_n


def run_direction(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: Sequence[Tensor | None],
    reverse: bool,
    batch_sizes: Sequence[int] | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one layer, same contract as :func:`handlstm._scan.run_direction`.

    Call only where :func:`can_serve` said yes.

    Returns:
        ``(output, h_n, c_n)``: ``(L, N, H_out)`` (or packed rows), ``(N, H_out)``,
        ``(N, H_cell)``.
    """
    output, h_n, c_n = run_layer(
        x, batch_sizes, h0.unsqueeze(0), c0.unsqueeze(0), [weights], (reverse,), [mask]
    )
    return output, h_n[0], c_n[0]


# -- the forward recurrence --------------------------------------------------------------------


def _steps(buffer: Tensor, count: int) -> Sequence[Tensor]:
    """Per-step views of a ``(D, L, N, *)`` buffer: ``(N, *)`` for one direction (so the
    per-step products are plain ``mm``), ``(D, N, *)`` for two; one C++ ``unbind``."""
    return buffer[0].unbind(0) if count == 1 else buffer.unbind(1)


def _gate_steps(gates: Tensor, count: int) -> tuple[Sequence[Tensor], ...]:
    """Per-step views ``(all, i, f, g, o, i and f)`` of ``(D, L, N, 4*H)`` gates.

    A constant number of view ops whatever L (slicing per step costs a few microseconds each).
    """
    steps, time = (gates[0], 0) if count == 1 else (gates, 1)  # ([D,] L, N, 4*H)
    by_gate = steps.unflatten(-1, (4, gates.size(-1) // 4))  # ([D,] L, N, 4, H)
    per_gate = [gate.unbind(time) for gate in by_gate.unbind(-2)]  # 4 x L x ([D,] N, H)
    return (steps.unbind(time), *per_gate, by_gate[..., :2, :].unbind(time))


def _one(t: Tensor, count: int) -> Tensor:
    """A ``(D, ...)`` tensor as the loop sees it: without the D axis for one direction."""
    return t[0] if count == 1 else t


def _stacked(tensors: Sequence[Tensor], transpose: bool = False) -> Tensor:
    """``(D, *)`` weights, each transposed if asked: a view for D = 1, else a fresh copy."""
    stacked = tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(list(tensors))
    return stacked.transpose(1, 2) if transpose else stacked


def _transposed(tensors: Sequence[Tensor]) -> Tensor:
    """``(D, cols, rows)``: each weight transposed into contiguous memory, a fresh copy per call
    (nothing cached). The per-step product with a contiguous right operand measured up to 1.6x
    faster than with the transposed view at small and medium sizes; the copy costs about one
    step's saving."""
    first = tensors[0]
    result = first.new_empty(len(tensors), first.size(1), first.size(0))
    for d, weight in enumerate(tensors):
        result[d].copy_(weight.t())
    return result


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` per direction for ``(D, *, *)`` operands (plain ``mm`` when D = 1)."""
    return torch.mm(a[0], b[0]).unsqueeze(0) if a.size(0) == 1 else torch.bmm(a, b)


def _by_direction(buffer: Tensor) -> Tensor:
    """``(D, L, N, F)`` to ``(D, L*N, F)`` (a view of the buffers made here)."""
    count, length, batch, features = buffer.shape
    return buffer.reshape(count, length * batch, features)


def _active_rows(ends: Ends, length: int) -> list[int]:
    """Each step's active rows (a prefix, as packed data sorts sequences by length) from the
    steps at which sequences end."""
    sizes, active = [0] * length, 0
    for t in range(length - 1, -1, -1):
        if t in ends:
            active = ends[t][1]
        sizes[t] = active
    return sizes


def _weights(flat: Sequence[Tensor | None], kind: int) -> list[Tensor] | None:
    found = [flat[k] for k in range(kind, len(flat), 5)]
    return None if found[0] is None else [t for t in found if t is not None]


def _forward(
    inputs: Tensor,
    h0: Tensor,
    c0: Tensor,
    mask: Tensor | None,
    flat: Sequence[Tensor | None],
    ends: Ends | None,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """The forward recurrence into preallocated buffers (autograd must be off).

    Args:
        inputs: ``(D, L, N, H_in)`` in processing order.
        h0, c0: ``(D, N, H_out)``, ``(D, N, H_cell)``.
        mask: recurrent dropout's ``(D, N, H_out)`` mask on every h fed to ``W_hh``, or None.
        flat: the weights of every direction, 5 per direction.

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
    out = inputs.new_empty(count, length, batch, out_size)  # (D, L, N, H_out)
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
        h_last, c_last = loop.train(gates, out, hcell, cells, _one(c0, count))
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


def _backward_by_recompute(
    ctx: Any, d_out: Tensor, d_h_n: Tensor, d_c_n: Tensor
) -> tuple[Tensor | None, ...]:
    """Gradients as a differentiable function of the inputs: recompute, then autograd.grad."""
    from ._scan import DirectionWeights, ScanVariant
    from ._scan import run_direction as composed

    saved = ctx.saved_tensors
    mask = saved[3]
    inputs = [saved[0], saved[1], saved[2], *saved[8:]]  # the Function's differentiable inputs
    index = [0, 1, 2, *range(5, 5 + len(saved) - 8)]  # their positions in forward's arguments
    wanted = [k for k, at in enumerate(index) if ctx.needs_input_grad[at]]
    ends: Ends | None = ctx.ends
    with torch.enable_grad(), disabled():
        x, h0, c0, *flat = inputs
        outs, hs, cs = [], [], []
        for d in range(x.size(0)):
            variant = None
            if ends or mask is not None:
                variant = ScanVariant(h_mask=None if mask is None else mask[d], record=bool(ends))
            weights = DirectionWeights(*flat[5 * d : 5 * d + 5])
            out, h, c = composed(x[d], None, h0[d], c0[d], weights, False, variant)
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
        grads = torch.autograd.grad(
            results,
            [inputs[k] for k in wanted],
            (d_out, d_h_n, d_c_n),
            create_graph=True,
            allow_unused=True,
        )
    result: list[Tensor | None] = [None] * (5 + len(flat))
    for k, grad in zip(wanted, grads, strict=True):
        result[index[k]] = grad if grad is not None else torch.zeros_like(inputs[k])
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
    d_c0 = d_c.mul_(_one(forgetgate[:, 0], count)) if needs[2] else None

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
