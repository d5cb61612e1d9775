"""The fast path's layouts and buffers: processing order, per-step views, stacked weights.

Every direction of a layer is laid out in its own processing order (a reverse direction's input
flipped in time; for packed input, each sequence read from its own last step), in
``(D, L, N, *)`` buffers: step ``s`` of every direction is one ``(D, N, *)`` slice. For one
direction the per-step views drop the D axis, so the per-step products are plain ``mm``.

The inference loops write into results allocated here, outside ``torch.inference_mode``
(:func:`_inference`), so callers get ordinary tensors.

Shapes: D directions, L sequence, N batch, H_in input size, H_cell hidden size, H_out output size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

#: Rows ``[lo, hi)`` whose sequences end at step ``s`` (packed input only), keyed by ``s``.
Ends = dict[int, tuple[int, int]]


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


def _time_index(batch_sizes: Sequence[int], reverses: tuple[bool, ...], device: Any) -> Tensor:
    """Packed input: ``(D*L*N,)``, for each processing-order position ``(d, s, n)``, the entry
    ``t*N + n`` of a ``(L, N, *)`` per-time-step tensor (a zoneout mask) that it reads: ``t = s``
    forward, ``t = L_n - 1 - s`` reversed (padded positions read a valid entry)."""
    length, batch = len(batch_sizes), batch_sizes[0]
    sizes = torch.tensor(list(batch_sizes), device=device)  # (L,)
    rows = torch.arange(batch, device=device)  # (N,)
    steps = torch.arange(length, device=device).unsqueeze(1)  # (L, 1)
    lengths = (rows < sizes.unsqueeze(1)).sum(0)  # (N,)
    forward = steps * batch + rows  # (L, N)
    backward = (lengths - 1 - steps).clamp_(min=0) * batch + rows
    return torch.stack([backward if r else forward for r in reverses]).view(-1)


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


def _out_shape(inputs: Tensor, flat: Sequence[Tensor | None]) -> tuple[int, ...]:
    """``(D, L, N, H_out)``."""
    weight_hh = cast(Tensor, flat[1])
    return (*inputs.shape[:3], weight_hh.size(1))


def _inference(
    loop: Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Any]],
    like: Tensor,
    shape: tuple[int, ...],
    h0: Tensor,
    c0: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run an inference loop under ``torch.inference_mode`` (measured about 20% less per-op
    overhead than ``no_grad`` for small layers), writing into results allocated outside it, so
    the caller gets ordinary tensors (usable later in recorded computations).

    Returns ``(out, h_n, c_n)``, ``out`` without the D axis for one direction."""
    out = like.new_empty(shape)  # (D, L, N, H_out)
    h_n, c_n = h0.new_empty(h0.shape), c0.new_empty(c0.shape)
    with torch.inference_mode():
        _, h, c, _ = loop(out)
        h_n.copy_(h)
        c_n.copy_(c)
    return _one(out, out.size(0)), h_n, c_n
