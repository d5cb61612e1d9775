"""The recording ops of the tape: ``F.linear``, the peepholes' ``weight * x`` and the layer
norms' affine parts as autograd Functions whose backward records the output gradient next to
the input and leaves the parameter's gradient to the tape's owner; and the records of one layer
and direction (:class:`DirectionTape`).

Shapes: N batch, K records (time steps) of one op, G output features, I input features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.kinds import DirectionWeights
from ...core.lstm import layer_norm
from ...core.options import LAYER_NORM_EPS


class Slot:
    """One recorded use of a linear op: its input and, after backward, its output gradient."""

    __slots__ = ("x", "grad")

    def __init__(self, x: Tensor) -> None:
        self.x = x
        self.grad: Tensor | None = None


class _Tap(torch.autograd.Function):
    """``F.linear`` whose backward records the output gradient and leaves the weight's (and
    bias's) gradient to the tape's owner (:meth:`ModuleTape.finish`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, slot: Slot
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


class _DiagonalTap(torch.autograd.Function):
    """``weight * x`` (a peephole) whose backward records the output gradient and leaves the
    weight's gradient to the tape's owner."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, x: Tensor, slot: Slot) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        ctx.slot = slot
        return weight * x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor | None, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        ctx.slot.grad = grad
        return None, (grad * weight if ctx.needs_input_grad[1] else None), None


class _AffineTap(torch.autograd.Function):
    """``z * gain (+ shift)`` (a layer norm's affine part) whose backward records the output
    gradient and leaves the gain's and shift's gradients to the tape's owner."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, z: Tensor, gain: Tensor, shift: Tensor | None, slot: Slot
    ) -> Tensor:
        ctx.save_for_backward(gain)
        ctx.slot = slot
        out = z * gain
        return out if shift is None else out + shift

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        (gain,) = ctx.saved_tensors
        ctx.slot.grad = grad
        return (grad * gain if ctx.needs_input_grad[0] else None), None, None, None


class DirectionTape:
    """The records of one layer and direction (or one HandLSTMCell call)."""

    def __init__(
        self, weights: DirectionWeights, batch_sizes: Sequence[int] | None, batch: int
    ) -> None:
        self.weights = weights
        self.batch_sizes = batch_sizes
        self.batch = batch
        self.ih: list[Slot] = []
        self.hh: list[Slot] = []
        self.hr: list[Slot] = []
        self.diagonals: dict[int, list[Slot]] = {}  # id(peephole leaf) -> its records
        self.diagonal_kinds: dict[int, str] = {}  # id(peephole leaf) -> "ci", "cf" or "co"
        #: layer norm gains (None: off) and the records of the affine parts
        self.ln_ih: Tensor | None = None
        self.ln_hh: Tensor | None = None
        self.ln_c: Tensor | None = None
        self.affine: dict[str, list[Slot]] = {"ln_ih": [], "ln_hh": [], "ln_c": []}

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
        gain = self.ln_ih if slots is self.ih else self.ln_hh if slots is self.hh else None
        slot = Slot(x.detach())
        slots.append(slot)
        if gain is None:
            return _Tap.apply(x, weight, bias, slot)
        kind = "ln_ih" if slots is self.ih else "ln_hh"  # LN(W x) * gain + bias
        return self._affine(
            kind, layer_norm(_Tap.apply(x, weight, None, slot), None, None), gain, bias
        )

    def norm(
        self, c: Tensor, gain: Tensor | None, shift: Tensor | None, eps: float = LAYER_NORM_EPS
    ) -> Tensor:
        """The recording cell layer norm (``CellVariant.norm``)."""
        if gain is None or gain is not self.ln_c:
            return layer_norm(c, gain, shift, eps)
        return self._affine("ln_c", layer_norm(c, None, None, eps), gain, shift)

    def _affine(self, kind: str, z: Tensor, gain: Tensor, shift: Tensor | None) -> Tensor:
        slot = Slot(z.detach())
        self.affine[kind].append(slot)
        return _AffineTap.apply(z, gain, shift, slot)

    def diagonal(self, weight: Tensor, x: Tensor) -> Tensor:
        """The recording ``weight * x`` of the peepholes (other weights: plain ``torch.mul``)."""
        slots = self.diagonals.get(id(weight))
        if slots is None:
            return torch.mul(weight, x)
        slot = Slot(x.detach())
        slots.append(slot)
        return _DiagonalTap.apply(weight, x, slot)

    def blocks(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``kind -> (d_out, x)`` padded to ``(K, N, G)`` and ``(K, N, I)``; rows a packed step
        lacks are zeros. Kinds whose op got no gradient in this backward are left out."""
        found: dict[str, tuple[Tensor, Tensor]] = {}
        ih = self.ih[0] if self.ih else None
        if ih is not None and ih.grad is not None:
            found["ih"] = (self._pad_input(ih.grad), self._pad_input(ih.x))
        ln_ih = self.affine["ln_ih"][0] if self.affine["ln_ih"] else None
        if ln_ih is not None and ln_ih.grad is not None:
            found["ln_ih"] = (self._pad_input(ln_ih.grad), self._pad_input(ln_ih.x))
        diagonals = [(self.diagonal_kinds[key], slots) for key, slots in self.diagonals.items()]
        steps = [("ln_hh", self.affine["ln_hh"]), ("ln_c", self.affine["ln_c"])]
        for kind, slots in (("hh", self.hh), ("hr", self.hr), *diagonals, *steps):
            done = [s for s in slots if s.grad is not None]
            if done:
                grads = [s.grad for s in done if s.grad is not None]
                found[kind] = (self._stack(grads), self._stack([s.x for s in done]))
            for slot in slots:
                slot.grad = None  # a later backward through the same graph records afresh
        for slot in (*self.ih, *self.affine["ln_ih"]):
            slot.grad = None
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
