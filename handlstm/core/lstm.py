"""The LSTM kind: its gate equations for one time step (the only place they are written),
its variants' per-step types, and :data:`LSTM`, the :class:`~handlstm.core.kinds.CellKind`
that the engines run.

Everything here is a pure function of tensors; it knows nothing about modules, layers,
directions or sequences. Gate order is torch's: input, forget, cell, output (i, f, g, o).

Shapes: L sequence, N batch, H_in input size, H_cell hidden (cell) size, H_out output size
(``proj_size`` or H_cell).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .kinds import CellKind, DirectionWeights, State
from .options import LAYER_NORM_EPS


class CellVariant(NamedTuple):
    """What a variant changes in one step, resolved to tensors for one layer and direction.

    The defaults are nn.LSTM's step. Built by :mod:`handlstm.core.variants` from the options.
    """

    gate_activation: Callable[[Tensor], Tensor] = torch.sigmoid
    cell_activation: Callable[[Tensor], Tensor] = torch.tanh
    peephole_i: Tensor | None = None  # (H_cell,) from c_{t-1} into i
    peephole_f: Tensor | None = None  # (H_cell,) from c_{t-1} into f
    peephole_o: Tensor | None = None  # (H_cell,) from c_t into o
    ln_hh: Tensor | None = None  # (4*H_cell,) gain of the recurrent layer norm
    ln_c_weight: Tensor | None = None  # (H_cell,) gain of the cell layer norm
    ln_c_bias: Tensor | None = None  # (H_cell,) shift of the cell layer norm
    cell_clip: float | None = None
    proj_clip: float | None = None
    zoneout_h: float = 0.0  # used as the expectation when no zoneout mask is given (eval)
    zoneout_c: float = 0.0
    ln_eps: float = LAYER_NORM_EPS  # the layer norms' epsilon (a field: see python_floats)
    linear: Callable[..., Tensor] = F.linear  # per-sample gradients swap in a recording linear
    diagonal: Callable[[Tensor, Tensor], Tensor] = torch.mul  # peephole * c, recorded likewise
    norm: Callable[..., Tensor] | None = None  # the cell layer norm (None: layer_norm), likewise


class StepNoise(NamedTuple):
    """The random masks of one step (None where the option is off or in eval mode)."""

    h_mask: Tensor | None = None  # (N, H_out) recurrent dropout, scaled by 1/(1-p)
    zone_h: Tensor | None = None  # (N, H_out) 1 = keep the previous h
    zone_c: Tensor | None = None  # (N, H_cell) 1 = keep the previous c

    def rows(self, active: int) -> StepNoise:
        """The masks of the first ``active`` rows (packed steps)."""
        return StepNoise(*(None if m is None else m[:active] for m in self))


DEFAULT_VARIANT = CellVariant()
NO_NOISE = StepNoise()


def layer_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = LAYER_NORM_EPS
) -> Tensor:
    """Normalise the last dimension to zero mean and unit variance, then ``* weight + bias``."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def _zoneout(previous: Tensor, new: Tensor, mask: Tensor | None, p: float) -> Tensor:
    """Keep ``previous`` where ``mask`` is 1 (training) or mix by the expectation ``p`` (eval)."""
    if mask is not None:
        return torch.lerp(new, previous, mask)
    if p > 0:
        return torch.lerp(new, previous, p)
    return new


def cell_update(
    gates: Tensor, c: Tensor, variant: CellVariant = DEFAULT_VARIANT
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Apply the gate nonlinearities and the cell update for one step (the only copy).

    Args:
        gates: pre-activations ``W_ih x + b_ih + W_hh h + b_hh``, shape ``(N, 4*H_cell)``.
        c: previous cell state, shape ``(N, H_cell)``.
        variant: peepholes, activations, cell clipping and the cell layer norm.

    Returns:
        ``(h, c_next, (i, f, g, o))``: the unprojected hidden state and the new cell state, both
        ``(N, H_cell)``, and the four gate activations.
    """
    v = variant
    ingate, forgetgate, cellgate, outgate = gates.chunk(4, -1)  # 4 x (N, H_cell)
    if v.peephole_i is not None and v.peephole_f is not None:
        ingate = ingate + v.diagonal(v.peephole_i, c)
        forgetgate = forgetgate + v.diagonal(v.peephole_f, c)
    ingate = v.gate_activation(ingate)
    forgetgate = v.gate_activation(forgetgate)
    cellgate = v.cell_activation(cellgate)
    c_next = forgetgate * c + ingate * cellgate  # (N, H_cell)
    if v.cell_clip is not None:
        c_next = c_next.clamp(-v.cell_clip, v.cell_clip)
    if v.peephole_o is not None:
        outgate = outgate + v.diagonal(v.peephole_o, c_next)
    outgate = v.gate_activation(outgate)
    c_out = c_next
    if v.ln_c_weight is not None:
        norm = layer_norm if v.norm is None else v.norm
        c_out = norm(c_next, v.ln_c_weight, v.ln_c_bias, v.ln_eps)
    h = outgate * v.cell_activation(c_out)  # (N, H_cell)
    return h, c_next, (ingate, forgetgate, cellgate, outgate)


def lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """nn.LSTM's gate nonlinearities and cell update: ``(gates, c) -> (h, c_next)``."""
    h, c_next, _ = cell_update(gates, c)
    return h, c_next


def lstm_step_gates(
    gates_x: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
    variant: CellVariant = DEFAULT_VARIANT,
    noise: StepNoise = NO_NOISE,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """One full LSTM step, also returning the gate activations (see :func:`lstm_step`)."""
    v = variant
    h_in = h if noise.h_mask is None else h * noise.h_mask  # (N, H_out)
    recurrent = v.linear(h_in, weight_hh)  # (N, 4*H_cell)
    if v.ln_hh is not None:
        recurrent = layer_norm(recurrent, v.ln_hh, None, v.ln_eps)
    gates = gates_x + recurrent  # (N, 4*H_cell)
    h_next, c_next, acts = cell_update(gates, c, v)
    if weight_hr is not None:
        h_next = v.linear(h_next, weight_hr)  # (N, H_out)
        if v.proj_clip is not None:
            h_next = h_next.clamp(-v.proj_clip, v.proj_clip)
    h_next = _zoneout(h, h_next, noise.zone_h, v.zoneout_h)
    c_next = _zoneout(c, c_next, noise.zone_c, v.zoneout_c)
    return h_next, c_next, acts


def lstm_step(
    gates_x: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
    variant: CellVariant = DEFAULT_VARIANT,
    noise: StepNoise = NO_NOISE,
) -> tuple[Tensor, Tensor]:
    """One full LSTM step given the input's share of the gates.

    Args:
        gates_x: ``W_ih x + b_ih + b_hh`` for this step (layer-normalised first with
            ``layer_norm``), shape ``(N, 4*H_cell)``.
        h: previous hidden state, shape ``(N, H_out)``.
        c: previous cell state, shape ``(N, H_cell)``.
        weight_hh: recurrent weights, shape ``(4*H_cell, H_out)``.
        weight_hr: projection weights ``(H_out, H_cell)``, or None without projection.
        variant: the variant's per-step parameters; the default is nn.LSTM's step.
        noise: this step's random masks (recurrent dropout, zoneout).

    Returns:
        ``(h_next, c_next)`` with shapes ``(N, H_out)`` and ``(N, H_cell)``.
    """
    h_next, c_next, _ = lstm_step_gates(gates_x, h, c, weight_hh, weight_hr, variant, noise)
    return h_next, c_next


def python_floats(cell: CellVariant) -> CellVariant:
    """The variant with its float options as Python floats (for a scan's body).

    Under ``dynamic=True`` Dynamo reads them as symbolic floats, and the scan op refuses a
    symbolic float among the combine function's inputs; these are configuration, not data.
    ``float()`` keeps a symbolic float symbolic; ``math.fsum`` of one float is that float,
    exactly, and Dynamo specializes it (a guard on the value, so a change recompiles).
    """

    def constant(value: float | None) -> float | None:
        return None if value is None else math.fsum([value])

    return cell._replace(
        zoneout_h=math.fsum([cell.zoneout_h]),
        zoneout_c=math.fsum([cell.zoneout_c]),
        ln_eps=math.fsum([cell.ln_eps]),
        cell_clip=constant(cell.cell_clip),
        proj_clip=constant(cell.proj_clip),
    )


@dataclass
class ScanVariant:
    """A variant's share of one direction of one layer: parameters, masks, what to record.

    Built per forward call by :mod:`handlstm.core.variants`; None in the engines means nn.LSTM.
    What the engines read of it is :class:`~handlstm.core.kinds.DirectionVariant`.
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

    def step_inputs(self) -> dict[str, Tensor]:
        """The per-step masks, ``(L, N, *)`` each, by name (for a scan over the steps)."""
        xs = {}
        if self.zone_h is not None:
            xs["zone_h"] = self.zone_h
        if self.zone_c is not None:
            xs["zone_c"] = self.zone_c
        return xs

    def noise_of(self, step: Mapping[str, Tensor]) -> StepNoise:
        """One step's masks from one step's slice of :meth:`step_inputs`."""
        return StepNoise(self.h_mask, step.get("zone_h"), step.get("zone_c"))

    def keep(self, records: tuple[Tensor, ...]) -> None:
        """Keep a recorded direction's ``(cells, gates)`` (see :func:`lstm_records`)."""
        cells, gates = records
        self.cells.append(cells)
        self.gates.append(gates)


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


def lstm_project(x: Tensor, weights: DirectionWeights, variant: ScanVariant | None) -> Tensor:
    """The LSTM kind's ``project``: :func:`input_gates` with both biases folded in."""
    bias = None
    if weights.bias_ih is not None and weights.bias_hh is not None:
        bias = weights.bias_ih + weights.bias_hh  # (4*H_cell,)
    ln_ih = None if variant is None else variant.ln_ih
    linear = F.linear if variant is None else variant.cell.linear
    return input_gates(x, weights.weight_ih, bias, ln_ih, linear)


def _lstm_kind_step(
    gates_x: Tensor,
    state: State,
    weights: DirectionWeights,
    cell: CellVariant,
    noise: StepNoise,
) -> tuple[State, tuple[Tensor, ...]]:
    """The LSTM kind's ``step``: :func:`lstm_step_gates` on the state ``(h, c)``."""
    h, c = state
    h_next, c_next, acts = lstm_step_gates(
        gates_x, h, c, weights.weight_hh, weights.weight_hr, cell, noise
    )
    return (h_next, c_next), acts


def lstm_records(state: State, acts: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """What a recording LSTM direction keeps of a step: ``c_t`` and the gates ``(N, 4*H_cell)``."""
    return state[1], torch.cat(acts, -1)


def _lstm_for_trace(cell: Any) -> Any:
    return python_floats(cell)


#: The LSTM as the engines run it: 4 gates (i, f, g, o), state (h, c).
LSTM = CellKind(
    name="lstm",
    gates=4,
    states=("h", "c"),
    project=lstm_project,
    step=_lstm_kind_step,
    records=lstm_records,
    default_cell=DEFAULT_VARIANT,
    no_noise=NO_NOISE,
    for_trace=_lstm_for_trace,
)
