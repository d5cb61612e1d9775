"""The gradient math of the tape: from recorded ``(d_out, x)`` blocks to summed gradients,
per-sample gradients and their squared norms (ghost clipping's Gram matrices).

Shapes: N batch, K records (time steps) of one op, G output features, I input features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor

#: What the module's backward is asked for: per-sample gradients, their squared norms, or
#: only the ordinary summed gradient (hooks disabled, e.g. ghost clipping's second backward).
SAMPLES, NORMS, NOTHING = "samples", "norms", "nothing"

#: Above this many records per op, ghost norms materialise one weight's per-sample gradients
#: instead of the (N, K, K) Gram matrices (when K*K exceeds the weight's size).
_GRAM_RATIO = 1.0


#: The parameters whose per-sample gradients each recorded op gives (biases: ``b_ih + b_hh`` is
#: the input GEMM's bias).
USERS = {
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

#: elementwise gains (``sum_k d_out * x``) and shifts (``sum_k d_out``) besides the biases
DIAGONAL = ("weight_ci", "weight_cf", "weight_co", "ln_weight_ih", "ln_weight_hh", "ln_weight_c")
SHIFTS = ("ln_bias_ih", "ln_bias_hh", "ln_bias_c")


class Plan(NamedTuple):
    """What the integration asks of one backward pass through one forward call."""

    want: str  #: SAMPLES, NORMS or NOTHING
    scale: float  #: per-sample results are for ``scale`` times the loss (opacus: N for a mean)
    sums: bool = True  #: return the ordinary (summed) gradient; False: the caller discards it
    keep: bool = False  #: keep the records for a second backward through the same forward



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


class Memo:
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


def gram_norm2(d_out: Tensor, x: Tensor, memo: Memo | None = None) -> Tensor:
    """``||sum_k d_out[k, n] x[k, n]^T||^2`` for every n, without the ``(N, G, I)`` tensor."""
    memo = memo or Memo()
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



def diagonal_sum(d_out: Tensor, x: Tensor) -> Tensor:
    return (d_out * x).sum(0)


def parameter_gradients(
    name: str,
    d_out: Tensor,
    x: Tensor,
    want: str,
    scale: float,
    sums: bool = True,
    memo: Memo | None = None,
) -> tuple[Tensor | None, Tensor]:
    """``(summed gradient or None, per-sample result for scale * loss)`` of one parameter."""
    memo = memo or Memo()
    sums = sums or want == NOTHING
    if name.startswith("bias") or name in DIAGONAL or name in SHIFTS:
        if name in DIAGONAL:  # a peephole: sum_k d_out[k, n] * x[k, n]
            per_sample = memo.get("diag", d_out, partial(diagonal_sum, d_out, x))  # (N, G)
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
        return summed, gram_norm2(d_out, x, memo) * scale**2
    assert summed is not None
    return summed, summed
