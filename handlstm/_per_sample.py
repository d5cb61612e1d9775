"""Exact per-sample gradients (and their norms) from HandLSTM's own backward pass.

Knows nothing about opacus: :mod:`handlstm.opacus` supplies a :class:`Sink` that says when to
record and what to do with the results.

How it works, for one forward call of a module:

* a :class:`_Collect` node hands the module's trainable parameters to the forward as identity
  views; autograd runs its backward only after every use of every parameter has been
  differentiated, so it is the one place that sees the whole backward pass of this call;
* every linear op of the composed path (the sequence-wide input GEMM, each step's recurrent and
  projection GEMM) goes through a :class:`_Tap`: ``F.linear`` forward, and a backward that records
  the gradient of its output next to the (detached) input it saw, and skips the weight gradient;
* in the collector's backward each weight's per-sample gradient is one batched contraction over
  time, ``einsum("kng,kni->ngi", d_out, x)`` (biases: the sum over time of ``d_gates``), its sum
  over the batch is the ordinary gradient, and ghost norms come from per-sample Gram matrices:
  ``||sum_k g_k x_k^T||^2 = sum_{k,j} (g_k . g_j)(x_k . x_j)``.

Shapes: N batch, K records (time steps) of one op, G output features, I input features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _variants
from ._cell import lstm_step
from ._scan import DirectionWeights, ScanVariant, input_gates

#: What the collector's backward is asked for: per-sample gradients, their squared norms, or
#: only the ordinary summed gradient (hooks disabled, e.g. ghost clipping's second backward).
SAMPLES, NORMS, NOTHING = "samples", "norms", "nothing"

#: Variant options whose own parameters (or weight transform) the tape does not cover yet.
UNSUPPORTED_OPTIONS = ("layer_norm", "peepholes", "weight_drop")

#: Above this many records per op, ghost norms materialise one weight's per-sample gradients
#: instead of the (N, K, K) Gram matrices (when K*K exceeds the weight's size).
_GRAM_RATIO = 1.0


#: The parameters whose per-sample gradients each recorded op gives (biases: ``b_ih + b_hh`` is
#: the input GEMM's bias).
_USERS = {
    "ih": ("weight_ih", "bias_ih", "bias_hh"),
    "hh": ("weight_hh",),
    "hr": ("weight_hr",),
}


class Sink(Protocol):
    """The integration's side: when to record, and where the results go."""

    def want(self, tape: ModuleTape) -> tuple[str, float]:
        """``(SAMPLES, NORMS or NOTHING, scale)``, asked in the collector's backward; per-sample
        results are for ``scale`` times the loss (opacus: the batch size for a mean loss)."""
        ...

    def deliver(self, tape: ModuleTape, results: dict[int, Tensor]) -> None:
        """``results[i]``: per-sample gradients ``(N, *shape)`` (SAMPLES) or squared norms
        ``(N,)`` (NORMS) of ``tape.params[i]``, for ``scale`` times the loss."""
        ...


class _Slot:
    """One recorded use of a linear op: its input and, after backward, its output gradient."""

    __slots__ = ("x", "grad")

    def __init__(self, x: Tensor) -> None:
        self.x = x
        self.grad: Tensor | None = None


class _Tap(torch.autograd.Function):
    """``F.linear`` whose backward records the output gradient and leaves the weight's (and
    bias's) gradient to the collector."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, slot: _Slot
    ) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.slot = slot
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        ctx.slot.grad = grad
        grad_x = grad.matmul(weight) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


class _Collect(torch.autograd.Function):
    """Identity on the parameters; its backward turns the tape into gradients."""

    @staticmethod
    def forward(ctx: Any, tape: ModuleTape, *params: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.tape = tape
        return tuple(p.view_as(p) for p in params)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        sums = ctx.tape.finish()
        return (None, *(g if s is None else g + s for g, s in zip(grads, sums, strict=True)))


class DirectionTape:
    """The records of one layer and direction (or one HandLSTMCell call)."""

    def __init__(
        self, weights: DirectionWeights, batch_sizes: Sequence[int] | None, batch: int
    ) -> None:
        self.weights = weights
        self.batch_sizes = batch_sizes
        self.batch = batch
        self.ih: list[_Slot] = []
        self.hh: list[_Slot] = []
        self.hr: list[_Slot] = []

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The recording ``F.linear`` that the composed path calls through the variant."""
        w = self.weights
        if weight is w.weight_ih:
            slots = self.ih
        elif weight is w.weight_hh:
            slots = self.hh
        elif weight is w.weight_hr:
            slots = self.hr
        else:  # pragma: no cover - a linear op the tape was not told about
            raise RuntimeError("per-sample gradients: a linear op with an unknown weight")
        slot = _Slot(x.detach())
        slots.append(slot)
        return _Tap.apply(x, weight, bias, slot)

    def blocks(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``kind -> (d_out, x)`` padded to ``(K, N, G)`` and ``(K, N, I)``; rows a packed step
        lacks are zeros. Kinds whose op got no gradient in this backward are left out."""
        found: dict[str, tuple[Tensor, Tensor]] = {}
        ih = self.ih[0] if self.ih else None
        if ih is not None and ih.grad is not None:
            found["ih"] = (self._pad_input(ih.grad), self._pad_input(ih.x))
        for kind, slots in (("hh", self.hh), ("hr", self.hr)):
            done = [s for s in slots if s.grad is not None]
            if done:
                grads = [s.grad for s in done if s.grad is not None]
                found[kind] = (self._stack(grads), self._stack([s.x for s in done]))
        for slot in (*self.ih, *self.hh, *self.hr):
            slot.grad = None  # a later backward through the same graph records afresh
        return found

    def _pad_input(self, t: Tensor) -> Tensor:
        """The input GEMM's ``(L, N, *)``, ``(N, *)`` (a cell) or packed rows, as (K, N, *)."""
        if self.batch_sizes is None:
            return t if t.dim() == 3 else t.unsqueeze(0)
        steps = len(self.batch_sizes)
        rows = torch.cat(
            [
                torch.arange(size, device=t.device) + step * self.batch
                for step, size in enumerate(self.batch_sizes)
            ]
        )
        padded = t.new_zeros(steps * self.batch, t.size(-1))
        return padded.index_copy_(0, rows, t).view(steps, self.batch, t.size(-1))

    def _stack(self, steps: list[Tensor]) -> Tensor:
        """Per-step ``(B_t, *)`` (``B_t <= N``, the first rows) as ``(K, N, *)``."""
        if all(s.size(0) == self.batch for s in steps):
            return torch.stack(steps, 0)
        out = steps[0].new_zeros(len(steps), self.batch, steps[0].size(-1))
        for k, s in enumerate(steps):
            out[k, : s.size(0)] = s
        return out


def _unit_samples(t: Tensor) -> tuple[Tensor, Tensor]:
    """``t`` ``(K, N, F)`` scaled per sample by a power of two (exact) so that each sample's
    largest entry is in ``[0.5, 1)``, entries below ``eps**2`` of it set to zero; and the
    exponents ``(N,)``: ``t[:, n] ~= scaled[:, n] * 2**exp[n]``.

    Why: gate gradients shrink geometrically back in time (about 1e-31 after 128 steps in
    float32), and products of two such entries (a Gram matrix) fall into the subnormal range,
    which x86 runs through microcode assists: a (64, 128, 2048) Gram took 2-3 s instead of
    0.12 s. A dropped entry's share of any product is below ``eps**2`` of the largest one,
    far below the rounding of the sum it enters.
    """
    info = torch.finfo(t.dtype)
    peak = t.abs().amax(dim=(0, 2))  # (N,)
    low, high = math.log2(info.tiny) + 4, math.log2(info.max) - 4  # 2**-exp stays normal
    exp = torch.frexp(peak).exponent.clamp(int(low), int(high))  # (N,)
    scaled = t * torch.pow(2.0, -exp.to(t.dtype)).view(1, -1, 1)
    return scaled.masked_fill(scaled.abs() < info.eps * info.eps, 0.0), exp


def _gram_norm2(d_out: Tensor, x: Tensor) -> Tensor:
    """``||sum_k d_out[k, n] x[k, n]^T||^2`` for every n, without the ``(N, G, I)`` tensor."""
    k, g, i = d_out.size(0), d_out.size(-1), x.size(-1)
    d_out, d_exp = _unit_samples(d_out)
    x, x_exp = _unit_samples(x)
    back = torch.pow(2.0, (2 * (d_exp + x_exp)).to(d_out.dtype))  # (N,), undoes the scaling
    if k * k > _GRAM_RATIO * g * i:  # a long record: one weight's per-sample gradients are smaller
        return torch.einsum("kng,kni->ngi", d_out, x).pow(2).sum((1, 2)) * back
    dn, xn = d_out.transpose(0, 1), x.transpose(0, 1)  # (N, K, G), (N, K, I)
    gram_g = torch.bmm(dn, dn.transpose(1, 2))  # (N, K, K)
    gram_x = torch.bmm(xn, xn.transpose(1, 2))  # (N, K, K)
    return (gram_g * gram_x).sum((1, 2)) * back


class ModuleTape:
    """Everything one forward call of one module records, and its gradients in backward.

    Args:
        params: the module's trainable parameters (the collector's inputs, in this order).
        batch: N, the number of samples.
        unsorted: a PackedSequence's ``unsorted_indices`` (per-sample results are returned in
            the caller's order), or None.
        sink: the integration.
    """

    def __init__(
        self, params: list[nn.Parameter], batch: int, unsorted: Tensor | None, sink: Sink
    ) -> None:
        self.params = params
        self.batch = batch
        self.unsorted = unsorted
        self.sink = sink
        self.directions: list[tuple[DirectionTape, dict[str, int]]] = []
        outputs = _Collect.apply(self, *params) if params else ()
        self._views = {id(p): (i, v) for i, (p, v) in enumerate(zip(params, outputs, strict=True))}

    def direction(
        self,
        weights: DirectionWeights,
        variant: ScanVariant,
        batch_sizes: Sequence[int] | None,
    ) -> tuple[DirectionWeights, ScanVariant]:
        """Route one layer's and direction's parameters and linear ops through the tape."""
        index: dict[str, int] = {}
        swapped: list[Tensor | None] = []
        for kind, w in zip(DirectionWeights._fields, weights, strict=True):
            found = None if w is None else self._views.get(id(w))
            if found is not None:
                index[kind] = found[0]
            swapped.append(w if found is None else found[1])
        tape = DirectionTape(DirectionWeights(*swapped), batch_sizes, self.batch)  # type: ignore[arg-type]
        self.directions.append((tape, index))
        variant.cell = variant.cell._replace(linear=tape.linear)
        return tape.weights, variant

    def finish(self) -> list[Tensor | None]:
        """The collector's backward: hand per-sample results to the sink, return the sums."""
        want, scale = self.sink.want(self)
        scale = scale or 1.0  # an empty batch: nothing to scale
        sums: list[Tensor | None] = [None] * len(self.params)
        results: dict[int, Tensor] = {}
        for tape, index in self.directions:
            blocks = tape.blocks()
            for kind, (d_out, x) in blocks.items():
                for name in _USERS[kind]:
                    if name in index:
                        i = index[name]
                        sums[i], results[i] = _gradients(name, d_out, x, want, scale)
        if want != NOTHING:
            for i, p in enumerate(self.params):
                if i not in results:  # not reached by this loss: its per-sample gradient is 0
                    shape = (self.batch,) if want == NORMS else (self.batch, *p.shape)
                    results[i] = p.new_zeros(shape)
                elif self.unsorted is not None:
                    results[i] = results[i].index_select(0, self.unsorted)
            self.sink.deliver(self, results)
        return sums


def _gradients(
    name: str, d_out: Tensor, x: Tensor, want: str, scale: float
) -> tuple[Tensor, Tensor]:
    """``(summed gradient, per-sample result for scale * loss)`` of one parameter."""
    if name.startswith("bias"):
        per_sample = d_out.sum(0)  # (N, G)
        summed = per_sample.sum(0)
        if want == NORMS:
            return summed, per_sample.pow(2).sum(1) * scale**2
        return summed, per_sample * scale
    if want == SAMPLES:  # the scale on the small factor, not on the (N, G, I) result
        per_sample = torch.einsum("kng,kni->ngi", d_out * scale, x)  # (N, G, I)
        return per_sample.sum(0) / scale, per_sample
    summed = d_out.reshape(-1, d_out.size(-1)).t().mm(x.reshape(-1, x.size(-1)))  # (G, I)
    result = _gram_norm2(d_out, x) * scale**2 if want == NORMS else summed
    return summed, result


# -- the forward calls in per-sample mode ---------------------------------------------------------


def check_options(module: nn.Module) -> None:
    """NotImplementedError for the variant options the tape does not cover."""
    options = module.options  # type: ignore[union-attr]
    used = [name for name in UNSUPPORTED_OPTIONS if getattr(options, name, None)]
    if used:
        raise NotImplementedError(
            f"{type(module).__name__}: per-sample gradients (opacus) support every option but "
            f"{', '.join(UNSUPPORTED_OPTIONS)}; got {', '.join(used)}. Use grad_sample_mode "
            "'hooks', 'functorch' or 'ghost' without them, or torch.func.vmap(grad(...))."
        )


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def lstm_forward(
    module: nn.Module, input: Tensor | PackedSequence, hx: Any, sink: Sink
) -> tuple[ModuleTape, Any]:
    """HandLSTM.forward with every linear op on a tape (returns the tape and forward's result)."""
    check_options(module)
    unsorted = None
    if isinstance(input, PackedSequence):
        batch = int(input.batch_sizes[0]) if input.batch_sizes.numel() else 0
        unsorted = input.unsorted_indices
    elif input.dim() == 3:
        batch = input.size(0) if module.batch_first else input.size(1)  # type: ignore[union-attr]
    else:
        batch = 1
    tape = ModuleTape(trainable(module), batch, unsorted, sink)
    module.__dict__["_per_sample_tape"] = tape  # read by HandLSTM._run_layers for this call
    try:
        result = type(module).forward(module, input, hx)
    finally:
        del module.__dict__["_per_sample_tape"]
    return tape, result


def cell_forward(
    module: nn.Module, input: Tensor, hx: Any, sink: Sink
) -> tuple[ModuleTape, tuple[Tensor, Tensor]]:
    """HandLSTMCell.forward with its two linear ops on a tape."""
    check_options(module)
    m: Any = module
    x, h0, c0, batched = m._batched_inputs(input, hx)  # (N, H_in), (N, H) x 2
    tape = ModuleTape(trainable(module), x.size(0), None, sink)
    weights = DirectionWeights(m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh, None)
    variant = ScanVariant(cell=_variants.cell_variant(m.options, lambda kind: None))
    weights, variant = tape.direction(weights, variant, None)
    bias = None
    if weights.bias_ih is not None and weights.bias_hh is not None:
        bias = weights.bias_ih + weights.bias_hh  # (4*H,)
    gates_x = input_gates(x, weights.weight_ih, bias, None, variant.cell.linear)  # (N, 4*H)
    noise = _variants.cell_noise(m.options, x.size(0), m.hidden_size, x, m.training)
    h1, c1 = lstm_step(gates_x, h0, c0, weights.weight_hh, None, variant.cell, noise)
    if not batched:
        return tape, (h1.squeeze(0), c1.squeeze(0))
    return tape, (h1, c1)
