"""Exact per-sample gradients (and their norms) from HandLSTM's own backward pass.

Knows nothing about opacus: :mod:`handlstm.opacus` supplies a :class:`Sink` that says when to
record and what to do with the results.

How it works, for one forward call of a module:

* the whole call is one autograd node (:class:`BlockRun`): its forward runs the composed path on
  detached copies of the inputs and parameters with grad enabled (an inner graph), its backward
  differentiates that inner graph once with every incoming gradient (output, h_n, c_n, any
  subset, packed or not), so it is the one place that sees the whole backward of this call;
* every linear op of the composed path (the sequence-wide input GEMM, each step's recurrent and
  projection GEMM) goes through a :class:`_Tap`: ``F.linear`` forward, and a backward that records
  the gradient of its output next to the (detached) input it saw, and skips the weight gradient;
* after the inner backward each weight's per-sample gradient is one batched contraction over
  time, ``einsum("kng,kni->ngi", d_out, x)`` (biases: the sum over time of ``d_gates``), its sum
  over the batch is the ordinary gradient, and ghost norms come from per-sample Gram matrices:
  ``||sum_k g_k x_k^T||^2 = sum_{k,j} (g_k . g_j)(x_k . x_j)``;
* a second backward through the same forward (ghost clipping's clipped pass) whose incoming
  gradient is a per-sample multiple of the first one's is replayed from the first pass's
  records (:meth:`BlockRun.backward`): one GEMM per weight, no second pass through time.

Shapes: N batch, K records (time steps) of one op, G output features, I input features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence

from . import _variants
from ._cell import layer_norm, lstm_step
from ._options import LAYER_NORM_EPS
from ._scan import DirectionWeights, ScanVariant, input_gates

#: What the module's backward is asked for: per-sample gradients, their squared norms, or
#: only the ordinary summed gradient (hooks disabled, e.g. ghost clipping's second backward).
SAMPLES, NORMS, NOTHING = "samples", "norms", "nothing"

#: Variant options whose own parameters (or weight transform) the tape does not cover yet.
UNSUPPORTED_OPTIONS = ("weight_drop",)

#: Above this many records per op, ghost norms materialise one weight's per-sample gradients
#: instead of the (N, K, K) Gram matrices (when K*K exceeds the weight's size).
_GRAM_RATIO = 1.0


#: The parameters whose per-sample gradients each recorded op gives (biases: ``b_ih + b_hh`` is
#: the input GEMM's bias).
_USERS = {
    "ih": ("weight_ih", "bias_ih", "bias_hh"),
    "hh": ("weight_hh",),
    "hr": ("weight_hr",),
    "ci": ("weight_ci",),  # peepholes: elementwise, ``sum_k d_out[k, n] * c[k, n]``
    "cf": ("weight_cf",),
    "co": ("weight_co",),
    # layer norm: ``LN(y) * gain + shift`` recorded as ``(d_out, LN(y))``; with it the GEMM
    # biases are the input norm's shift (registered under ln_bias_ih / ln_bias_hh)
    "ln_ih": ("ln_weight_ih", "ln_bias_ih", "ln_bias_hh"),
    "ln_hh": ("ln_weight_hh",),
    "ln_c": ("ln_weight_c", "ln_bias_c"),
}

#: CellVariant field -> (record kind, parameter name) of the peepholes.
_PEEPHOLES = {
    "peephole_i": ("ci", "weight_ci"),
    "peephole_f": ("cf", "weight_cf"),
    "peephole_o": ("co", "weight_co"),
}


class Plan(NamedTuple):
    """What the integration asks of one backward pass through one forward call."""

    want: str  #: SAMPLES, NORMS or NOTHING
    scale: float  #: per-sample results are for ``scale`` times the loss (opacus: N for a mean)
    sums: bool = True  #: return the ordinary (summed) gradient; False: the caller discards it
    keep: bool = False  #: keep the records for a second backward through the same forward


class Sink(Protocol):
    """The integration's side: when to record, and where the results go."""

    def plan(self, tape: ModuleTape) -> Plan:
        """Asked in the module's backward."""
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
    bias's) gradient to the tape's owner (:meth:`ModuleTape.finish`)."""

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


class _DiagonalTap(torch.autograd.Function):
    """``weight * x`` (a peephole) whose backward records the output gradient and leaves the
    weight's gradient to the tape's owner."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, x: Tensor, slot: _Slot) -> Tensor:  # type: ignore[override]
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
        ctx: Any, z: Tensor, gain: Tensor, shift: Tensor | None, slot: _Slot
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


class _Block(torch.autograd.Function):
    """A module's whole forward call as one autograd node (:class:`BlockRun` does the work)."""

    @staticmethod
    def forward(ctx: Any, run: BlockRun, *inputs: Tensor | None) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.run = run
        return run.forward(inputs)

    @staticmethod
    @once_differentiable  # double backward: autograd's clear error, never a silent zero
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return (None, *ctx.run.backward(grads))


def _keep_graph() -> bool:
    """Does the running backward retain the graph (``retain_graph=True``)? True if unknown."""
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if probe is None else bool(probe())


class Rows:
    """Which sample (in the tape's row order) each slice of a tensor along ``dim`` is.

    ``index`` ``(size along dim,)``; None for unbatched tensors (all of it is sample 0).
    ``ordered``: ``index`` is ``arange(N)`` (slice i is sample i; no gather or scatter needed).
    """

    __slots__ = ("index", "dim", "ordered")

    def __init__(self, index: Tensor | None, dim: int = 0, ordered: bool = False) -> None:
        self.index = index
        self.dim = dim
        self.ordered = ordered

    def spread(self, values: Tensor, like: Tensor) -> Tensor:
        """Per-sample ``values`` ``(N,)`` as a factor that broadcasts against ``like``."""
        if self.index is None:
            return values.reshape(())
        shape = [1] * like.dim()
        shape[self.dim] = -1
        return (values if self.ordered else values.index_select(0, self.index)).view(shape)

    def per_sample(self, t: Tensor, n: int) -> Tensor:
        """``t`` summed over everything but its sample axis: ``(n,)``."""
        if self.index is None:
            return t.sum().reshape(1)
        if self.ordered:
            return t.sum([d for d in range(t.dim()) if d != self.dim]) if t.dim() > 1 else t
        rows = t.movedim(self.dim, 0).reshape(t.size(self.dim), -1).sum(1)
        return rows.new_zeros(n).index_add_(0, self.index, rows)


class BlockRun:
    """One forward call run as a single autograd node over an inner graph.

    The forward runs ``fn`` (the composed path, its linear ops on the tape) with grad enabled on
    detached copies of its inputs and of the module's parameters. The backward differentiates
    that inner graph (the taps record), turns the tape into gradients and returns them: the
    parameters' sums from the tape, the inputs' from the inner graph.

    Why one node: a second backward through the same forward whose incoming gradient is, sample
    by sample, a multiple ``alpha_n`` of the first one's (opacus ghost clipping's clipped pass:
    ``sum_n coeff_n loss_n`` after ``mean_n loss_n``) needs no second pass through time. The
    module's backward is linear in its incoming gradient and never mixes samples, so every
    recorded gate gradient of sample n is ``alpha_n`` times the first pass's: the summed weight
    gradients are one GEMM over the recorded rows scaled by ``alpha``, the input and initial
    state gradients the first pass's scaled by ``alpha``. ``alpha`` is measured from the two
    incoming gradients (least squares per sample) and the replay is taken only when they agree
    with it to ``sqrt(eps)`` relative, sample by sample; otherwise the inner graph is
    differentiated again. Only when the plan of the first pass says ``keep``.

    Args:
        tape: the forward's tape (its ``params`` are the node's last inputs).
        fn: the forward on the (detached) tensor inputs; returns the tensor outputs.
        rows_in, rows_out: each tensor input's and output's :class:`Rows`.
    """

    def __init__(
        self,
        tape: ModuleTape,
        fn: Callable[..., tuple[Tensor, ...]],
        rows_in: Sequence[Rows],
        rows_out: Sequence[Rows],
    ) -> None:
        self.tape = tape
        self.fn = fn
        self.rows_in = rows_in
        self.rows_out = rows_out
        self.leaves: list[Tensor | None] = []
        self.outputs: tuple[Tensor, ...] | None = None
        #: a first pass kept for a replay: (incoming gradients, input gradients)
        self.first: tuple[tuple[Tensor, ...], list[Tensor | None]] | None = None
        self.replays = 0  # how many backward passes were replayed (tests read it)

    def apply(self, inputs: Sequence[Tensor | None]) -> tuple[Tensor, ...]:
        return _Block.apply(self, *inputs, *self.tape.params)

    def forward(self, inputs: Sequence[Tensor | None]) -> tuple[Tensor, ...]:
        count = len(self.rows_in)
        with torch.enable_grad():
            self.leaves = [
                None if t is None else t.detach().requires_grad_(t.requires_grad)
                for t in inputs[:count]
            ]
            params = [p.detach().requires_grad_() for p in inputs[count:] if p is not None]
            self.tape.bind(params)
            self.leaves += params
            self.outputs = tuple(self.fn(*self.leaves[:count]))
        return tuple(o.detach() for o in self.outputs)

    def backward(self, grads: tuple[Tensor, ...]) -> list[Tensor | None]:
        tape = self.tape
        plan = tape.sink.plan(tape)
        keep = _keep_graph()
        if plan.want == NOTHING and self.first is not None:
            alpha = self._ratio(grads)
            if alpha is not None:
                self.replays += 1
                replayed = self._replay(alpha)
                if not keep:
                    self._release()
                return replayed
        if self.outputs is None:
            raise RuntimeError(
                "Trying to backward through the graph a second time (or directly access saved "
                "tensors after they have already been freed); specify retain_graph=True"
            )
        wanted = [(i, t) for i, t in enumerate(self.leaves) if t is not None and t.requires_grad]
        found = torch.autograd.grad(
            self.outputs, [t for _, t in wanted], grads, retain_graph=keep, allow_unused=True
        )
        result: list[Tensor | None] = [None] * len(self.leaves)
        for (i, _), g in zip(wanted, found, strict=True):
            result[i] = g
        count = len(self.rows_in)
        extra = any(g is not None for g in result[count:])  # a parameter used outside the taps
        sums = tape.finish(plan)
        for i, s in enumerate(sums):
            if s is not None:
                extra_grad = result[count + i]
                result[count + i] = s if extra_grad is None else extra_grad + s
        if plan.keep and keep and not extra:
            self.first = (grads, result[:count])
        else:
            self.first = None
            tape.recorded.clear()
        if not keep:
            self._release()
        return result

    def _release(self) -> None:
        self.outputs = None
        self.leaves = []
        self.first = None
        self.tape.recorded.clear()

    def _ratio(self, grads: tuple[Tensor, ...]) -> Tensor | None:
        """``alpha`` ``(N,)`` with ``grads = alpha * first`` sample by sample, or None."""
        assert self.first is not None
        n = self.tape.batch
        first = self.first[0]
        pairs = [
            (rows, g, f)
            for rows, g, f in zip(self.rows_out, grads, first, strict=True)
            if g is not None and f is not None
        ]
        if not pairs or len(pairs) != len(self.rows_out):
            return None

        def total(terms: list[Tensor]) -> Tensor:
            return torch.stack(terms).sum(0)

        cross = total([rows.per_sample(g * f, n) for rows, g, f in pairs])
        base = total([rows.per_sample(f * f, n) for rows, _, f in pairs])
        alpha = torch.where(base > 0, cross / base.clamp_min(torch.finfo(base.dtype).tiny), 0.0)
        off = total(
            [rows.per_sample((g - rows.spread(alpha, f) * f).square(), n) for rows, g, f in pairs]
        )
        size = total([rows.per_sample(g.square(), n) for rows, g, _ in pairs])
        if bool((off > torch.finfo(base.dtype).eps * size).any()):
            return None
        return alpha

    def _replay(self, alpha: Tensor) -> list[Tensor | None]:
        """The backward of ``alpha`` times the first pass's incoming gradient, from records."""
        assert self.first is not None
        tape = self.tape
        result: list[Tensor | None] = [
            None if g is None else g * rows.spread(alpha, g)
            for rows, g in zip(self.rows_in, self.first[1], strict=True)
        ]
        sums: list[Tensor | None] = [None] * len(tape.params)
        for index, blocks in tape.recorded:
            memo = _Memo()
            for kind, (d_out, x) in blocks.items():
                for name in _USERS[kind]:
                    if name not in index:
                        continue
                    if name in _DIAGONAL:  # sum_n alpha_n sum_k d_out[k, n] * x[k, n]
                        g = alpha @ memo.get("diag", d_out, partial(_diagonal_sum, d_out, x))
                    elif name.startswith("bias") or name in _SHIFTS:  # sum_n alpha_n sum_k d_out
                        g = alpha @ memo.get("bias", d_out, partial(Tensor.sum, d_out, 0))
                    else:  # sum_{k,n} d_out[k, n] (alpha_n x[k, n])^T: alpha on the smaller x
                        ax = x * alpha.view(1, -1, 1)  # (K, N, I)
                        g = d_out.reshape(-1, d_out.size(-1)).t().mm(ax.reshape(-1, x.size(-1)))
                    before = sums[index[name]]
                    sums[index[name]] = g if before is None else before + g
        return result + sums


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
        self.diagonals: dict[int, list[_Slot]] = {}  # id(peephole leaf) -> its records
        self.diagonal_kinds: dict[int, str] = {}  # id(peephole leaf) -> "ci", "cf" or "co"
        #: layer norm gains (None: off) and the records of the affine parts
        self.ln_ih: Tensor | None = None
        self.ln_hh: Tensor | None = None
        self.ln_c: Tensor | None = None
        self.affine: dict[str, list[_Slot]] = {"ln_ih": [], "ln_hh": [], "ln_c": []}

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
        slot = _Slot(x.detach())
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
        slot = _Slot(z.detach())
        self.affine[kind].append(slot)
        return _AffineTap.apply(z, gain, shift, slot)

    def diagonal(self, weight: Tensor, x: Tensor) -> Tensor:
        """The recording ``weight * x`` of the peepholes (other weights: plain ``torch.mul``)."""
        slots = self.diagonals.get(id(weight))
        if slots is None:
            return torch.mul(weight, x)
        slot = _Slot(x.detach())
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


def _unit_samples(t: Tensor) -> tuple[Tensor, Tensor]:
    """``t`` ``(K, N, F)`` scaled per sample by a power of two (exact) so that each sample's
    largest entry is in ``[0.5, 1)``, entries below ``eps**2`` set to zero; and the exponents
    ``(N,)``: ``t[:, n] ~= scaled[:, n] * 2**exp[n]``.

    Why: gate gradients shrink geometrically back in time (about 1e-31 after 128 steps in
    float32), and products of two such entries (a Gram matrix) fall into the subnormal range,
    which x86 runs through microcode assists: a (64, 128, 2048) Gram took 2-3 s instead of
    0.12 s. A dropped entry is below ``eps**2`` of the sample's largest one: far below the
    rounding of the sums it enters. Every other entry is kept exactly.
    """
    info = torch.finfo(t.dtype)
    peak = torch.maximum(t.amax(dim=(0, 2)), -t.amin(dim=(0, 2)))  # (N,)
    low, high = math.log2(info.tiny) + 4, math.log2(info.max) - 4  # 2**-exp stays normal
    exp = torch.frexp(peak).exponent.clamp(int(low), int(high))  # (N,)
    scaled = t * torch.pow(2.0, -exp.to(t.dtype)).view(1, -1, 1)
    return torch.hardshrink(scaled, info.eps * info.eps, out=scaled), exp  # in place


class _Memo:
    """Results shared within one backward: the input GEMM's and the recurrent GEMM's output
    gradients are the same gate gradients (compared with ``torch.equal``, then shared), so
    their Gram matrix, bias sums and unit scaling are computed once."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, int], Any] = {}

    def get(self, what: str, t: Tensor, make: Callable[[], Any]) -> Any:
        key = (what, id(t))
        if key not in self._found:
            self._found[key] = (t, make())  # t kept: its id stays unique while memoised
        return self._found[key][1]


def share_gate_gradients(blocks: dict[str, tuple[Tensor, Tensor]]) -> None:
    """Make ``blocks["hh"]`` use ``blocks["ih"]``'s gate-gradient tensor when equal."""
    if "ih" in blocks and "hh" in blocks:
        d_ih, d_hh = blocks["ih"][0], blocks["hh"][0]
        if d_ih is not d_hh and d_ih.shape == d_hh.shape and torch.equal(d_ih, d_hh):
            blocks["hh"] = (d_ih, blocks["hh"][1])


def _gram_norm2(d_out: Tensor, x: Tensor, memo: _Memo | None = None) -> Tensor:
    """``||sum_k d_out[k, n] x[k, n]^T||^2`` for every n, without the ``(N, G, I)`` tensor."""
    memo = memo or _Memo()
    k, g, i = d_out.size(0), d_out.size(-1), x.size(-1)
    d_unit, d_exp = memo.get("unit", d_out, lambda: _unit_samples(d_out))
    x_unit, x_exp = _unit_samples(x)
    back = torch.pow(2.0, (2 * (d_exp + x_exp)).to(d_out.dtype))  # (N,), undoes the scaling
    if k * k > _GRAM_RATIO * g * i:  # a long record: one weight's per-sample gradients are smaller
        return torch.einsum("kng,kni->ngi", d_unit, x_unit).pow(2).sum((1, 2)) * back

    def gram(t: Tensor) -> Tensor:
        tn = t.transpose(0, 1)  # (N, K, F)
        return torch.bmm(tn, tn.transpose(1, 2))  # (N, K, K)

    gram_g = memo.get("gram", d_out, lambda: gram(d_unit))
    return (gram_g * gram(x_unit)).sum((1, 2)) * back


class ModuleTape:
    """Everything one forward call of one module records, and its gradients in backward.

    Args:
        params: the module's trainable parameters (the node's last inputs, in this order).
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
        #: with ``Plan.keep``: each direction's parameter index and blocks, for a replay
        self.recorded: list[tuple[dict[str, int], dict[str, tuple[Tensor, Tensor]]]] = []
        self._views: dict[int, tuple[int, Tensor]] = {}

    def bind(self, leaves: Sequence[Tensor]) -> None:
        """The forward uses ``leaves[i]`` (a detached copy) wherever it uses ``params[i]``."""
        self._views = {
            id(p): (i, v) for i, (p, v) in enumerate(zip(self.params, leaves, strict=True))
        }

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
        peepholes: dict[str, Tensor] = {}
        for field, (kind, name) in _PEEPHOLES.items():
            w = getattr(variant.cell, field)
            found = None if w is None else self._views.get(id(w))
            if found is not None:
                index[name] = found[0]
                peepholes[field] = found[1]
                tape.diagonals[id(found[1])] = []
                tape.diagonal_kinds[id(found[1])] = kind
        # layer norm: the tape applies the gains itself (recorded), the variant's are cleared
        leaf = self._leaf
        if variant.ln_ih is not None:
            tape.ln_ih = leaf(variant.ln_ih, "ln_weight_ih", index)
            variant.ln_ih = None
            for name in ("bias_ih", "bias_hh"):  # the GEMM biases are the input norm's shift
                if name in index:
                    index["ln_" + name] = index.pop(name)
        if variant.cell.ln_hh is not None:
            tape.ln_hh = leaf(variant.cell.ln_hh, "ln_weight_hh", index)
        if variant.cell.ln_c_weight is not None:
            tape.ln_c = leaf(variant.cell.ln_c_weight, "ln_weight_c", index)
            peepholes["ln_c_weight"] = tape.ln_c
        if variant.cell.ln_c_bias is not None:
            peepholes["ln_c_bias"] = leaf(variant.cell.ln_c_bias, "ln_bias_c", index)
        self.directions.append((tape, index))
        cell = variant.cell._replace(
            linear=tape.linear, diagonal=tape.diagonal, norm=tape.norm, ln_hh=None
        )
        variant.cell = cell._replace(**peepholes)  # type: ignore[arg-type]
        return tape.weights, variant

    def _leaf(self, w: Tensor, name: str, index: dict[str, int]) -> Tensor:
        """``w``'s detached copy (registered in ``index`` under ``name``), or ``w`` itself when
        it is not one of the trainable parameters."""
        found = self._views.get(id(w))
        if found is None:
            return w
        index[name] = found[0]
        return found[1]

    def finish(self, plan: Plan) -> list[Tensor | None]:
        """After the module's backward: hand per-sample results to the sink, return the sums
        (None where ``plan.sums`` is False or the loss did not reach a parameter)."""
        want, scale = plan.want, plan.scale or 1.0  # an empty batch: nothing to scale
        sums: list[Tensor | None] = [None] * len(self.params)
        results: dict[int, Tensor] = {}
        self.recorded.clear()
        for tape, index in self.directions:
            blocks = tape.blocks()
            share_gate_gradients(blocks)
            if plan.keep:
                self.recorded.append((index, blocks))
            memo = _Memo()
            for kind, (d_out, x) in blocks.items():
                for name in _USERS[kind]:
                    if name in index:
                        i = index[name]
                        sums[i], results[i] = _gradients(
                            name, d_out, x, want, scale, plan.sums, memo
                        )
        if want != NOTHING:
            for i, p in enumerate(self.params):
                if i not in results:  # not reached by this loss: its per-sample gradient is 0
                    shape = (self.batch,) if want == NORMS else (self.batch, *p.shape)
                    results[i] = p.new_zeros(shape)
                elif self.unsorted is not None:
                    results[i] = results[i].index_select(0, self.unsorted)
            self.sink.deliver(self, results)
        return sums


#: elementwise gains (``sum_k d_out * x``) and shifts (``sum_k d_out``) besides the biases
_DIAGONAL = ("weight_ci", "weight_cf", "weight_co", "ln_weight_ih", "ln_weight_hh", "ln_weight_c")
_SHIFTS = ("ln_bias_ih", "ln_bias_hh", "ln_bias_c")


def _diagonal_sum(d_out: Tensor, x: Tensor) -> Tensor:
    return (d_out * x).sum(0)


def _gradients(
    name: str,
    d_out: Tensor,
    x: Tensor,
    want: str,
    scale: float,
    sums: bool = True,
    memo: _Memo | None = None,
) -> tuple[Tensor | None, Tensor]:
    """``(summed gradient or None, per-sample result for scale * loss)`` of one parameter."""
    memo = memo or _Memo()
    sums = sums or want == NOTHING
    if name.startswith("bias") or name in _DIAGONAL or name in _SHIFTS:
        if name in _DIAGONAL:  # a peephole: sum_k d_out[k, n] * x[k, n]
            per_sample = memo.get("diag", d_out, partial(_diagonal_sum, d_out, x))  # (N, G)
        else:
            per_sample = memo.get("bias", d_out, partial(Tensor.sum, d_out, 0))  # (N, G)
        summed = per_sample.sum(0) if sums else None
        if want == NORMS:
            return summed, per_sample.pow(2).sum(1) * scale**2
        return summed, per_sample * scale
    if want == SAMPLES:  # the scale on the smaller factor, not on the (N, G, I) result
        if x.size(-1) < d_out.size(-1):
            per_sample = torch.einsum("kng,kni->ngi", d_out, x * scale)  # (N, G, I)
        else:
            per_sample = torch.einsum("kng,kni->ngi", d_out * scale, x)
        return (per_sample.sum(0) / scale if sums else None), per_sample
    summed = None
    if sums:
        summed = d_out.reshape(-1, d_out.size(-1)).t().mm(x.reshape(-1, x.size(-1)))  # (G, I)
    if want == NORMS:
        return summed, _gram_norm2(d_out, x, memo) * scale**2
    assert summed is not None
    return summed, summed


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


def _pair(hx: Any) -> bool:
    return isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(t, Tensor) for t in hx)


def lstm_forward(
    module: nn.Module, input: Tensor | PackedSequence, hx: Any, sink: Sink, **kwargs: Any
) -> tuple[ModuleTape, BlockRun, Any]:
    """HandLSTM.forward as one :class:`BlockRun`, every linear op on a tape (returns the tape,
    the run and forward's result)."""
    check_options(module)
    m: Any = module
    packed = isinstance(input, PackedSequence)
    data: Tensor
    if isinstance(input, PackedSequence):
        sizes = input.batch_sizes
        batch = int(sizes[0]) if sizes.numel() else 0
        unsorted = input.unsorted_indices
        data = input.data
        steps = torch.arange(batch, device=data.device)
        rows_data = Rows(torch.cat([steps[: int(b)] for b in sizes]) if batch else steps, 0)
        if unsorted is None:
            rows_state = Rows(steps, 1, ordered=True)
        else:
            rows_state = Rows(unsorted.to(data.device), 1)
    else:
        unsorted, data = None, input
        batched = data.dim() == 3
        batch = (data.size(0) if m.batch_first else data.size(1)) if batched else 1
        steps = torch.arange(batch, device=data.device)
        rows_data = Rows(steps if batched else None, 0 if m.batch_first else 1, ordered=True)
        rows_state = Rows(steps if batched else None, 1, ordered=True)
    tape = ModuleTape(trainable(module), batch, unsorted, sink)
    differentiable = _pair(hx)
    h0, c0 = hx if differentiable else (None, None)

    def fn(data: Tensor, h0: Tensor | None, c0: Tensor | None) -> tuple[Tensor, ...]:
        x: Any = data
        if packed:
            assert isinstance(input, PackedSequence)
            x = PackedSequence(
                data, input.batch_sizes, input.sorted_indices, input.unsorted_indices
            )
        state = (h0, c0) if differentiable else hx
        module.__dict__["_per_sample_tape"] = tape  # read by HandLSTM._run_layers for this call
        try:
            out, (h_n, c_n) = type(module).forward(module, x, state, **kwargs)
        finally:
            del module.__dict__["_per_sample_tape"]
        return (out.data if packed else out, h_n, c_n)

    run = BlockRun(
        tape, fn, (rows_data, rows_state, rows_state), (rows_data, rows_state, rows_state)
    )
    out, h_n, c_n = run.apply((data, h0, c0))
    if isinstance(input, PackedSequence):
        sequence = PackedSequence(
            out, input.batch_sizes, input.sorted_indices, input.unsorted_indices
        )
        return tape, run, (sequence, (h_n, c_n))
    return tape, run, (out, (h_n, c_n))


def cell_forward(
    module: nn.Module, input: Tensor, hx: Any, sink: Sink
) -> tuple[ModuleTape, BlockRun, tuple[Tensor, Tensor]]:
    """HandLSTMCell.forward as one :class:`BlockRun`, its two linear ops on a tape."""
    check_options(module)
    m: Any = module
    batched = input.dim() == 2
    n = input.size(0) if batched else 1
    tape = ModuleTape(trainable(module), n, None, sink)
    rows = Rows(torch.arange(n, device=input.device) if batched else None, 0, ordered=True)
    differentiable = _pair(hx)
    h0, c0 = hx if differentiable else (None, None)

    def fn(input: Tensor, h0: Tensor | None, c0: Tensor | None) -> tuple[Tensor, ...]:
        x, h0, c0, batched = m._batched_inputs(input, (h0, c0) if differentiable else hx)
        weights = DirectionWeights(m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh, None)
        ln_ih = m.ln_weight_ih if m.options.layer_norm else None
        variant = ScanVariant(
            cell=_variants.cell_variant(m.options, lambda kind: getattr(m, kind)), ln_ih=ln_ih
        )
        weights, variant = tape.direction(weights, variant, None)
        bias = None
        if weights.bias_ih is not None and weights.bias_hh is not None:
            bias = weights.bias_ih + weights.bias_hh  # (4*H,)
        gates_x = input_gates(x, weights.weight_ih, bias, None, variant.cell.linear)  # (N, 4*H)
        noise = _variants.cell_noise(m.options, x.size(0), m.hidden_size, x, m.training)
        h1, c1 = lstm_step(gates_x, h0, c0, weights.weight_hh, None, variant.cell, noise)
        if not batched:
            return h1.squeeze(0), c1.squeeze(0)
        return h1, c1

    run = BlockRun(tape, fn, (rows, rows, rows), (rows, rows))
    h1, c1 = run.apply((input, h0, c0))
    return tape, run, (h1, c1)
