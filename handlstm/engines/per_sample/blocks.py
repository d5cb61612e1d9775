"""A module's whole forward call as one autograd node over an inner graph (:class:`BlockRun`),
and the replay of a second backward whose incoming gradient is a per-sample multiple of the
first one's (ghost clipping's clipped pass) from the first pass's records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .norms import DIAGONAL, NOTHING, SHIFTS, USERS, Memo, diagonal_sum
from .tape import ModuleTape


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
            memo = Memo()
            for kind, (d_out, x) in blocks.items():
                for name in USERS[kind]:
                    if name not in index:
                        continue
                    if name in DIAGONAL:  # sum_n alpha_n sum_k d_out[k, n] * x[k, n]
                        g = alpha @ memo.get("diag", d_out, partial(diagonal_sum, d_out, x))
                    elif name.startswith("bias") or name in SHIFTS:  # sum_n alpha_n sum_k d_out
                        g = alpha @ memo.get("bias", d_out, partial(Tensor.sum, d_out, 0))
                    else:  # sum_{k,n} d_out[k, n] (alpha_n x[k, n])^T: alpha on the smaller x
                        ax = x * alpha.view(1, -1, 1)  # (K, N, I)
                        g = d_out.reshape(-1, d_out.size(-1)).t().mm(ax.reshape(-1, x.size(-1)))
                    before = sums[index[name]]
                    sums[index[name]] = g if before is None else before + g
        return result + sums
