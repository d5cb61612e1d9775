"""The fast path: one direction of one default LSTM layer over a dense sequence.

The composed path (:func:`handlstm._scan.scan` over :func:`handlstm._cell.lstm_step`) records every
per-step op on the autograd tape and allocates fresh tensors at every step. This module computes
the same function with fewer, in-place ops into preallocated buffers, and, when gradients are
needed, as one :class:`torch.autograd.Function` with a hand-written backward through time:

* forward: the input's share of all gates as one GEMM; per step one in-place ``addmm_`` of the
  recurrent product into that step's slice, in-place activations (``sigmoid_`` on i and f, which
  are adjacent, ``tanh_`` on g, ``sigmoid_`` on o), the cell update written into the step's slot
  of a preallocated ``(L, N, H_cell)`` buffer, and h written into its slot of the output;
* inference (no input needs a gradient): the same loop, saving nothing;
* backward: the derivative factors of every gate are computed for all steps at once (large
  elementwise ops), so a step only does one GEMM for dh and four small elementwise ops; dW_ih,
  dW_hh, dW_hr, the biases and dx are each one large GEMM (or sum) after the loop;
* double backward (``create_graph=True``): the backward then recomputes the composed path from
  the saved inputs and differentiates it with ``create_graph=True``, so higher derivatives are
  exact and ``gradgradcheck`` passes.

The fast path is a pure optimisation: :func:`can_serve` sends everything it does not handle to the
composed path (packed input, variants, tensor subclasses, non-CPU devices, dtypes other than
float32/float64, single-step sequences (measured faster composed), autocast, forward-mode AD,
``torch.func`` transforms, ``torch.compile`` /
``torch.export`` / ``torch.jit`` tracing, Python dispatch or function modes, empty tensors).
Nothing is cached between calls, so a changed parameter can never be served stale.

Gate order is torch's (i, f, g, o) throughout. Shapes: L sequence, N batch, H_in input size,
H_cell hidden size, H_out output size (``proj_size`` or H_cell).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("handlstm_fast", default=True)

#: How often each path ran, by name: "inference" and "train" (fast path) and "recompute"
#: (a fast-path backward that fell back to the composed path for ``create_graph=True``).
#: For tests and benchmarks; not part of the public API.
counts: Counter[str] = Counter()

_DTYPES = (torch.float32, torch.float64)
#: Device types served. Only CPU is measured and tested; benchmarks/cuda_check.py adds "cuda"
#: temporarily to check and time the fast path on a GPU.
_DEVICE_TYPES = {"cpu"}
_TENSOR_TYPES = (Tensor, nn.Parameter)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this context (and thread/task), every call takes the composed path."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _transforms_active() -> bool:
    """True under forward-mode AD, torch.func transforms, compile/export/jit tracing or modes."""
    if forward_ad._current_level >= 0:  # inside forward_ad.dual_level()
        return True
    if torch._C._are_functorch_transforms_active():
        return True
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return True
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if torch._C._is_torch_function_mode_enabled():
        return True
    return _get_current_dispatch_mode() is not None


def can_serve(
    x: Tensor,
    batch_sizes: Any,
    h0: Tensor,
    c0: Tensor,
    weights: tuple[Tensor | None, ...],
    options: Any = None,
) -> bool:
    """Whether the fast path computes this direction; otherwise the composed path must.

    Args:
        x: the direction's input, ``(L, N, H_in)`` dense (packed input is not served).
        batch_sizes: None for dense input.
        h0, c0: initial states ``(N, H_out)`` and ``(N, H_cell)``.
        weights: ``(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)``, None where absent.
        options: the variant (see :class:`handlstm._scan.ScanVariant`); only None is served.
    """
    # First, before anything dynamo cannot trace (a ContextVar read graph-breaks).
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    if not _ENABLED.get() or batch_sizes is not None or options is not None:
        return False
    if x.dim() != 3 or x.size(0) < 2 or x.numel() == 0 or h0.numel() == 0:
        return False  # one step: the composed path measured faster (fewer ops than the setup)
    dtype, device = x.dtype, x.device
    if dtype not in _DTYPES or device.type not in _DEVICE_TYPES:
        return False
    for t in (x, h0, c0, *weights):
        if t is None:
            continue
        if type(t) not in _TENSOR_TYPES or t.dtype != dtype or t.device != device:
            return False
    if (weights[2] is None) != (weights[3] is None):
        return False
    if torch.is_autocast_enabled(device.type):
        return False
    return not _transforms_active()


def run_direction(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: tuple[Tensor | None, ...],
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one layer, same contract as :func:`handlstm._scan.run_direction`.

    Call only where :func:`can_serve` said yes.

    Returns:
        ``(output, h_n, c_n)``: ``(L, N, H_out)``, ``(N, H_out)``, ``(N, H_cell)``.
    """
    weight_ih, weight_hh = cast(Tensor, weights[0]), cast(Tensor, weights[1])
    bias_ih, bias_hh, weight_hr = weights[2], weights[3], weights[4]
    inputs = (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        counts["train"] += 1
        output, h_n, c_n = _FastLSTMDirection.apply(*inputs, reverse)
        return output, h_n, c_n
    counts["inference"] += 1
    with torch.no_grad():
        output, h_n, c_n, _ = _forward(
            x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, reverse, save=False
        )
    return output, h_n, c_n


def _forward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    weight_hr: Tensor | None,
    reverse: bool,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """The forward recurrence into preallocated buffers (autograd must be off).

    Returns:
        ``(output, h_n, c_n, saved)``; with ``save``, ``saved`` is ``(gates, cells, hcell)``:
        ``gates`` holds the
        activated gates ``(L, N, 4*H_cell)``, ``cells`` every ``c_t`` ``(L, N, H_cell)`` and
        ``hcell`` every unprojected ``h_t`` (the output itself without projection).
    """
    length, batch, input_size = x.shape
    hidden = weight_hh.size(0) // 4
    out_size = weight_hh.size(1)
    x2d = x.reshape(length * batch, input_size)  # (L*N, H_in)
    if bias_ih is not None and bias_hh is not None:
        gates = torch.addmm(bias_ih + bias_hh, x2d, weight_ih.t())  # (L*N, 4*H)
    else:
        gates = torch.mm(x2d, weight_ih.t())
    gates = gates.view(length, batch, 4 * hidden)  # (L, N, 4*H)
    whh_t = weight_hh.t()  # (H_out, 4*H)
    whr_t = None if weight_hr is None else weight_hr.t()  # (H_cell, H_out)
    output = x.new_empty(length, batch, out_size)  # (L, N, H_out)
    order = range(length - 1, -1, -1) if reverse else range(length)
    if not save:
        h_n, c_n = _infer_loop(gates, output, h0, c0, whh_t, whr_t, order)
        return output, h_n, c_n, None
    hcell = output if weight_hr is None else x.new_empty(length, batch, hidden)
    cells = x.new_empty(length, batch, hidden)  # (L, N, H)
    h_n, c_n = _train_loop(gates, output, hcell, cells, h0, c0, whh_t, whr_t, order)
    return output, h_n, c_n, (gates, cells, hcell)


def _per_step(tensor: Tensor) -> tuple[Tensor, ...] | list[Tensor]:
    """Views of each step ``tensor[t]``: one C++ unbind (a single index when L = 1)."""
    return [tensor[0]] if tensor.size(0) == 1 else tensor.unbind(0)


def _gate_steps(gates: Tensor) -> tuple[Any, ...]:
    """Per-step views ``(all, i, f, g, o, i and f)`` of ``(L, N, 4*H)`` gates.

    A constant number of view ops whatever L (slicing per step costs a few microseconds each).
    """
    length, batch, four_h = gates.shape
    if length == 1:
        step = gates[0]  # (N, 4*H)
        by_gate = step.view(batch, 4, four_h // 4)  # (N, 4, H)
        i, f, g, o = by_gate.unbind(1)
        return [step], [i], [f], [g], [o], [by_gate[:, :2]]
    by_gate = gates.view(length, batch, 4, four_h // 4)  # (L, N, 4, H)
    per_gate = [gate.unbind(0) for gate in by_gate.unbind(2)]  # 4 x L x (N, H)
    return (gates.unbind(0), *per_gate, by_gate[:, :, :2].unbind(0))


def _infer_loop(
    gates: Tensor,
    output: Tensor,
    h0: Tensor,
    c0: Tensor,
    whh_t: Tensor,
    whr_t: Tensor | None,
    order: range,
) -> tuple[Tensor, Tensor]:
    """The recurrence keeping only the running state; fills ``output``, returns (h_n, c_n)."""
    batch, hidden = c0.shape
    steps, ingate, forgetgate, cellgate, outgate, _ = _gate_steps(gates)
    outputs = _per_step(output)
    c = c0.clone()  # (N, H), updated in place
    g = c0.new_empty(batch, hidden)  # tanh(cell gate) of the step
    tanh_c = c0.new_empty(batch, hidden)
    h = h0
    for t in order:
        steps[t].addmm_(h, whh_t)  # (N, 4*H)
        torch.tanh(cellgate[t], out=g)
        steps[t].sigmoid_()  # i, f and o are right; g was taken before
        c.mul_(forgetgate[t]).addcmul_(ingate[t], g)
        torch.tanh(c, out=tanh_c)
        if whr_t is None:
            h = torch.mul(outgate[t], tanh_c, out=outputs[t])  # (N, H)
        else:
            h = torch.mm(tanh_c.mul_(outgate[t]), whr_t, out=outputs[t])  # (N, H_out)
    return h.clone(), c


def _train_loop(
    gates: Tensor,
    output: Tensor,
    hcell: Tensor,
    cells: Tensor,
    h0: Tensor,
    c0: Tensor,
    whh_t: Tensor,
    whr_t: Tensor | None,
    order: range,
) -> tuple[Tensor, Tensor]:
    """The recurrence saving activated gates, every c_t and every unprojected h_t."""
    steps, ingate, forgetgate, cellgate, outgate, inforget = _gate_steps(gates)
    hcells, outputs, cell_steps = _per_step(hcell), _per_step(output), _per_step(cells)
    tanh_c = c0.new_empty(c0.shape)  # (N, H)
    h, c = h0, c0
    for t in order:
        steps[t].addmm_(h, whh_t)
        inforget[t].sigmoid_()
        cellgate[t].tanh_()
        outgate[t].sigmoid_()
        c = torch.mul(forgetgate[t], c, out=cell_steps[t]).addcmul_(ingate[t], cellgate[t])
        torch.tanh(c, out=tanh_c)
        h = torch.mul(outgate[t], tanh_c, out=hcells[t])  # (N, H)
        if whr_t is not None:
            h = torch.mm(h, whr_t, out=outputs[t])  # (N, H_out)
    return h.clone(), c.clone()


class _FastLSTMDirection(torch.autograd.Function):
    """One direction of one layer with a hand-written backward through time."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        weight_hr: Tensor | None,
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        output, h_n, c_n, saved = _forward(
            x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, reverse, save=True
        )
        gates, cells, hcell = saved  # type: ignore[misc]
        ctx.reverse = reverse
        ctx.save_for_backward(
            x,
            h0,
            c0,
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
            weight_hr,
            output,
            gates,
            cells,
            None if weight_hr is None else hcell,
        )
        return output, h_n, c_n

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_output: Tensor, d_h_n: Tensor, d_c_n: Tensor
    ) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: differentiate the composed path
            counts["recompute"] += 1
            return _backward_by_recompute(ctx, d_output, d_h_n, d_c_n)
        return _backward(ctx, d_output, d_h_n, d_c_n)


def _backward_by_recompute(
    ctx: Any, d_output: Tensor, d_h_n: Tensor, d_c_n: Tensor
) -> tuple[Tensor | None, ...]:
    """Gradients as a differentiable function of the inputs: recompute, then autograd.grad."""
    from ._scan import DirectionWeights, run_direction

    saved = ctx.saved_tensors
    inputs = saved[:8]
    wanted = [k for k in range(8) if ctx.needs_input_grad[k]]
    with torch.enable_grad(), disabled():
        x, h0, c0, *weights = inputs
        outs = run_direction(x, None, h0, c0, DirectionWeights(*weights), ctx.reverse)
        grads = torch.autograd.grad(
            outs,
            [inputs[k] for k in wanted],
            (d_output, d_h_n, d_c_n),
            create_graph=True,
            allow_unused=True,
        )
    result: list[Tensor | None] = [None] * 9
    for k, grad in zip(wanted, grads, strict=True):
        result[k] = grad if grad is not None else torch.zeros_like(inputs[k])
    return tuple(result)


def _backward(
    ctx: Any, d_output: Tensor, d_h_n: Tensor, d_c_n: Tensor
) -> tuple[Tensor | None, ...]:
    """Backward through time with autograd off: per step only what the recurrence needs."""
    (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, output, gates, cells, hcell) = ctx.saved_tensors
    if hcell is None:
        hcell = output
    length, batch, input_size = x.shape
    hidden = w_hh.size(0) // 4
    out_size = w_hh.size(1)
    h = hidden
    ingate, forgetgate = gates[..., :h], gates[..., h : 2 * h]
    cellgate, outgate = gates[..., 2 * h : 3 * h], gates[..., 3 * h :]
    reverse = ctx.reverse
    first, last = (length - 1, 0) if reverse else (0, length - 1)  # in forward time order

    # Derivative factors for every step at once, laid out in the gate-gradient buffer:
    # d_gates[t] = [dc * K_i, dc * K_f, dc * K_g, dh * K_o] with
    # K_i = g i (1-i), K_f = c_prev f (1-f), K_g = i (1-g^2), K_o = tanh(c) o (1-o),
    # and B = o (1 - tanh(c)^2) carries dh into dc.
    d_gates = gates.new_empty(length, batch, 4 * h)  # (L, N, 4*H)
    k_i, k_f = d_gates[..., :h], d_gates[..., h : 2 * h]
    k_g, k_o = d_gates[..., 2 * h : 3 * h], d_gates[..., 3 * h :]
    torch.mul(ingate, cellgate, out=k_i)
    k_i.mul_(1 - ingate)
    torch.mul(forgetgate, 1 - forgetgate, out=k_f)
    if reverse:  # c_prev[t] = c[t+1], c0 at t = L-1
        k_f[:-1].mul_(cells[1:])
    else:  # c_prev[t] = c[t-1], c0 at t = 0
        k_f[1:].mul_(cells[:-1])
    k_f[first].mul_(c0)
    torch.addcmul(ingate, ingate, cellgate.square(), value=-1, out=k_g)
    tanh_c = cells.tanh()  # (L, N, H), becomes B below
    torch.mul(outgate, 1 - outgate, out=k_o)
    k_o.mul_(tanh_c)
    b_carry = tanh_c.square_().neg_().add_(1).mul_(outgate)  # (L, N, H)

    ifg = d_gates[..., : 3 * h].unflatten(-1, (3, h)).unbind(0)  # L x (N, 3, H)
    og = k_o.unbind(0)
    steps = d_gates.unbind(0)
    forgets = forgetgate.unbind(0)
    carries = b_carry.unbind(0)
    d_outs = d_output.unbind(0)
    projected = w_hr is not None
    d_h_all = d_output.new_empty(length, batch, out_size) if projected else None
    d_h_steps = d_h_all.unbind(0) if d_h_all is not None else None
    d_h = d_output.new_empty(batch, out_size)  # (N, H_out)
    d_c = d_c_n.clone()  # (N, H)
    order = range(length) if reverse else range(length - 1, -1, -1)
    previous = -1
    for t in order:
        target = d_h if d_h_steps is None else d_h_steps[t]
        if previous < 0:
            torch.add(d_outs[t], d_h_n, out=target)
        else:
            torch.addmm(d_outs[t], steps[previous], w_hh, out=target)
            d_c.mul_(forgets[previous])
        d_hc = target if w_hr is None else torch.mm(target, w_hr)  # (N, H)
        d_c.addcmul_(d_hc, carries[t])
        ifg[t].mul_(d_c.unsqueeze(1))
        og[t].mul_(d_hc)
        previous = t
    d_h0 = torch.mm(steps[first], w_hh) if ctx.needs_input_grad[1] else None
    d_c0 = d_c.mul_(forgets[first]) if ctx.needs_input_grad[2] else None

    d_g2d = d_gates.view(length * batch, 4 * h)  # (L*N, 4*H)
    needs = ctx.needs_input_grad
    d_x = torch.mm(d_g2d, w_ih).view(length, batch, input_size) if needs[0] else None
    d_w_ih = torch.mm(d_g2d.t(), x.reshape(length * batch, input_size)) if needs[3] else None
    d_w_hh = None
    if needs[4]:
        if reverse:  # h_prev[t] = out[t+1], h0 at t = L-1
            body_g, body_h = d_gates[:-1], output[1:]
        else:  # h_prev[t] = out[t-1], h0 at t = 0
            body_g, body_h = d_gates[1:], output[:-1]
        d_w_hh = torch.mm(d_gates[first].t(), h0)  # (4*H, H_out)
        if length > 1:
            d_w_hh.addmm_(body_g.reshape(-1, 4 * h).t(), body_h.reshape(-1, out_size))
    d_bias = d_g2d.sum(0) if (needs[5] or needs[6]) else None
    d_w_hr = None
    if projected and needs[7] and d_h_all is not None:
        d_w_hr = torch.mm(d_h_all.view(-1, out_size).t(), hcell.view(-1, hidden))  # (H_out, H)
    return (
        d_x,
        d_h0,
        d_c0,
        d_w_ih,
        d_w_hh,
        d_bias if needs[5] else None,
        (d_bias.clone() if needs[5] else d_bias) if needs[6] and d_bias is not None else None,
        d_w_hr,
        None,
    )
