"""One direction of one LSTM layer over a whole sequence: the only time loop in handlstm.

A sequence arrives in one of two layouts and both go through the same loop:

* dense: ``x`` is ``(L, N, H_in)`` and every step has all ``N`` rows;
* packed: ``x`` is a PackedSequence's ``data``, ``(sum(batch_sizes), H_in)``, and step ``t`` has
  the first ``batch_sizes[t]`` rows (batch sizes never grow with ``t``).

The state is kept for the whole batch. A step updates only its active rows, so after the forward
pass each row holds its own last valid step, and in the reverse pass a row still holds its initial
state until its sequence starts. That is exactly nn.LSTM's packed semantics.

Shapes: L sequence, N batch, H_in input size, H_cell hidden size, H_out output size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _fast, _traced
from ._cell import DEFAULT_VARIANT, NO_NOISE, CellVariant, StepNoise, layer_norm, lstm_step_gates


class DirectionWeights(NamedTuple):
    """One layer's and direction's parameters under nn.LSTM's meaning (None where absent)."""

    weight_ih: Tensor  # (4*H_cell, H_in)
    weight_hh: Tensor  # (4*H_cell, H_out)
    bias_ih: Tensor | None  # (4*H_cell,)
    bias_hh: Tensor | None  # (4*H_cell,)
    weight_hr: Tensor | None  # (H_out, H_cell)


@dataclass
class ScanVariant:
    """A variant's share of one direction of one layer: parameters, masks, what to record.

    Built per forward call by :mod:`handlstm._variants`; None in :func:`scan` means nn.LSTM.
    """

    cell: CellVariant = DEFAULT_VARIANT
    ln_ih: Tensor | None = None  # (4*H_cell,) gain of the input layer norm
    h_mask: Tensor | None = None  # (N, H_out) recurrent dropout mask, one per sequence
    zone_h: Tensor | None = None  # (L, N, H_out) zoneout masks of h, one per step
    zone_c: Tensor | None = None  # (L, N, H_cell) zoneout masks of c, one per step
    record: bool = False  # keep every step's c and gate activations in cells / gates
    cells: list[Tensor] = field(default_factory=list)
    gates: list[Tensor] = field(default_factory=list)

    def noise(self, t: int) -> StepNoise:
        """Step ``t``'s masks for the whole batch."""
        return StepNoise(
            self.h_mask,
            None if self.zone_h is None else self.zone_h[t],
            None if self.zone_c is None else self.zone_c[t],
        )


def input_gates(
    x: Tensor,
    weight_ih: Tensor,
    bias: Tensor | None,
    ln_ih: Tensor | None = None,
    linear: Callable[..., Tensor] = F.linear,
) -> Tensor:
    """The input's share of the gates for every step at once: one GEMM over the sequence.

    Args:
        x: ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
        weight_ih: ``(4*H_cell, H_in)``.
        bias: ``b_ih + b_hh``, ``(4*H_cell,)``, or None.
        ln_ih: with layer norm, the gain of the input norm: ``LN(W_ih x) * ln_ih + bias``.
        linear: ``F.linear`` or a variant's recording linear (per-sample gradients).

    Returns:
        ``(L, N, 4*H_cell)`` or ``(sum(batch_sizes), 4*H_cell)``.
    """
    if ln_ih is not None:
        return layer_norm(linear(x, weight_ih), ln_ih, bias)
    return linear(x, weight_ih, bias)


def scan(
    gates_x: Tensor,
    batch_sizes: Sequence[int] | None,
    h0: Tensor,
    c0: Tensor,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
    reverse: bool,
    variant: ScanVariant | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the recurrence over time in one direction.

    Args:
        gates_x: the input's share of the gates, from :func:`input_gates`:
            ``(L, N, 4*H_cell)`` dense, or ``(sum(batch_sizes), 4*H_cell)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        h0: initial hidden state ``(N, H_out)``.
        c0: initial cell state ``(N, H_cell)``.
        weight_hh: ``(4*H_cell, H_out)``.
        weight_hr: ``(H_out, H_cell)`` or None.
        reverse: run from the last step to the first.
        variant: the variant's parameters and masks; None is nn.LSTM. With ``variant.record``,
            every step's c and gate activations (i, f, g, o) are appended, in ``gates_x``'s
            layout, to ``variant.cells`` ``(L, N, H_cell)`` and ``variant.gates``
            ``(L, N, 4*H_cell)`` (packed: ``(sum(batch_sizes), *)``).

    Returns:
        ``(output, h_n, c_n)``: output in the layout of ``gates_x`` with ``H_out`` features,
        final states ``(N, H_out)`` and ``(N, H_cell)``.
    """
    if batch_sizes is None:
        steps = gates_x.unbind(0)  # L x (N, 4*H_cell)
        sizes = None  # every step has all rows
    else:
        steps = gates_x.split(list(batch_sizes), 0)  # L x (B_t, 4*H_cell)
        sizes = list(batch_sizes)
    length = len(steps)
    order = range(length - 1, -1, -1) if reverse else range(length)

    full = h0.size(0)
    h, c = h0, c0
    cell, record = (DEFAULT_VARIANT, False) if variant is None else (variant.cell, variant.record)
    outputs: list[Tensor] = [h0] * length
    cells: list[Tensor] = [c0] * length if record else []
    gates: list[Tensor] = [c0] * length if record else []
    for t in order:
        noise = NO_NOISE if variant is None else variant.noise(t)
        active = full if sizes is None else sizes[t]
        if active == full:
            h, c, acts = lstm_step_gates(steps[t], h, c, weight_hh, weight_hr, cell, noise)
            h_t, c_t = h, c
        else:
            h_t, c_t, acts = lstm_step_gates(
                steps[t], h[:active], c[:active], weight_hh, weight_hr, cell, noise.rows(active)
            )
            h = torch.cat((h_t, h[active:]), 0)
            c = torch.cat((c_t, c[active:]), 0)
        outputs[t] = h_t
        if record:
            cells[t] = c_t
            gates[t] = torch.cat(acts, -1)  # (B_t, 4*H_cell)

    join = torch.stack if sizes is None else torch.cat
    output = join(outputs, 0)  # (L, N, H_out) or (sum(batch_sizes), H_out)
    if record and variant is not None:
        variant.cells.append(join(cells, 0))
        variant.gates.append(join(gates, 0))
    return output, h, c


def run_direction(
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    h0: Tensor,
    c0: Tensor,
    weights: DirectionWeights,
    reverse: bool,
    variant: ScanVariant | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one layer: the input GEMM for the whole sequence, then the time loop.

    Args:
        x: ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        h0, c0: initial states ``(N, H_out)`` and ``(N, H_cell)``.
        weights: this layer's and direction's parameters.
        reverse: run from the last step to the first.
        variant: the variant's parameters and masks (see :func:`scan`); None is nn.LSTM.
        lengths: dense input only: ``(N,)`` valid steps per sequence (PackedSequence
            semantics over a padded batch), or None.

    Returns:
        ``(output, h_n, c_n)`` as :func:`scan`.
    """
    # The one choice: the traced loop (compile/export, or lengths), the fast path, or composed.
    if batch_sizes is None and _traced.use_opaque_op(x, variant, lengths):  # compiled training
        return _traced.opaque_direction(x, h0, c0, weights, reverse)
    traced = batch_sizes is None and _traced.wanted(x.size(0), lengths)
    if not traced and _fast.can_serve(x, batch_sizes, h0, c0, weights, variant):
        return _fast.run_direction(x, h0, c0, weights, reverse, batch_sizes, variant)
    bias = None
    if weights.bias_ih is not None and weights.bias_hh is not None:
        bias = weights.bias_ih + weights.bias_hh  # (4*H_cell,)
    ln_ih = None if variant is None else variant.ln_ih
    linear = F.linear if variant is None else variant.cell.linear
    gates_x = input_gates(x, weights.weight_ih, bias, ln_ih, linear)
    if traced:
        return _traced.scan_direction(
            gates_x, h0, c0, weights.weight_hh, weights.weight_hr, reverse, variant, lengths
        )
    return scan(
        gates_x, batch_sizes, h0, c0, weights.weight_hh, weights.weight_hr, reverse, variant
    )


def run_layer(
    x: Tensor,
    batch_sizes: Sequence[int] | None,
    h0: Tensor,
    c0: Tensor,
    weights: Sequence[DirectionWeights],
    variants: Sequence[ScanVariant | None],
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Every direction of one layer: direction 0 forward, direction 1 (if any) reversed.

    The one place that picks between the directions in lockstep (the fast path, one batched
    product per step for all of them) and each direction on its own through
    :func:`run_direction`.

    Args:
        x: ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        h0, c0: initial states ``(D, N, H_out)`` and ``(D, N, H_cell)``.
        weights, variants: per direction, as for :func:`run_direction`.
        lengths: dense input only: ``(N,)`` valid steps per sequence, or None (see
            :func:`run_direction`; such a layer runs each direction on its own).

    Returns:
        ``(output, h_n, c_n)``: the directions' outputs concatenated on the last axis
        (``D*H_out`` features, in ``x``'s layout), and states ``(D, N, H_out)``, ``(D, N, H_cell)``.
    """
    flat = [t for direction in weights for t in direction]
    if lengths is None and _fast.can_serve(x, batch_sizes, h0, c0, flat, list(variants)):
        return _fast.run_layer(x, batch_sizes, h0, c0, weights, variants=variants)
    outputs, h_n, c_n = [], [], []
    for direction, (direction_weights, variant) in enumerate(zip(weights, variants, strict=True)):
        out, h, c = run_direction(
            x,
            batch_sizes,
            h0[direction],
            c0[direction],
            direction_weights,
            direction == 1,
            variant,
            lengths,
        )
        outputs.append(out)
        h_n.append(h)
        c_n.append(c)
    if len(outputs) == 1:
        return outputs[0], h_n[0].unsqueeze(0), c_n[0].unsqueeze(0)
    return torch.cat(outputs, -1), torch.stack(h_n, 0), torch.stack(c_n, 0)
