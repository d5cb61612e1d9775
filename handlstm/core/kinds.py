"""What a kind of recurrent cell is, as the engines see it, and one direction's parameters.

A cell kind is one small immutable object: its name, its number of gate blocks, the names of
its state tensors (the first is the output, h), how the input's share of every step is computed
at once, and its step. The composed and traced engines and the layer/direction loop take a
:class:`CellKind` and hold no line specific to any kind; a new kind is a new module in this
package with its equations and its :class:`CellKind`, never a branch in an engine.

Shapes: L sequence, N batch, H_in input size, H hidden size, G gate blocks (4 for the LSTM).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from torch import Tensor

State = tuple[Tensor, ...]  # a cell's state: (h,) or (h, c), each (N, *)


class DirectionWeights(NamedTuple):
    """One layer's and direction's parameters under torch's meaning (None where absent)."""

    weight_ih: Tensor  # (G*H, H_in)
    weight_hh: Tensor  # (G*H, H_out)
    bias_ih: Tensor | None  # (G*H,)
    bias_hh: Tensor | None  # (G*H,)
    weight_hr: Tensor | None  # (H_out, H) (the LSTM's projection; None for the others)


class DirectionVariant(Protocol):
    """What an engine reads of one direction's per-call variant (None for the plain cell).

    ``cell`` is the step's variant argument, ``record`` asks for every step's records;
    :meth:`noise` gives step ``t``'s masks (an object with ``rows(active)`` for packed steps),
    :meth:`step_inputs` the per-step masks as ``(L, ...)`` tensors for a scan, and
    :meth:`noise_of` a step's masks from one slice of them; :meth:`keep` receives the
    recorded tensors of the whole direction.
    """

    cell: Any
    record: bool

    def noise(self, t: int) -> Any: ...

    def step_inputs(self) -> dict[str, Tensor]: ...

    def noise_of(self, step: Mapping[str, Tensor]) -> Any: ...

    def keep(self, records: tuple[Tensor, ...]) -> None: ...


class NoNoise(NamedTuple):
    """The masks of a step without any: what a kind without random masks passes its step."""

    def rows(self, active: int) -> NoNoise:
        """The masks of the first ``active`` rows: still none."""
        return self


NO_NOISE = NoNoise()


def _identity(cell: Any) -> Any:
    return cell


def _state_records(state: State, acts: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return state


class CellKind(NamedTuple):
    """A kind of recurrent cell: everything an engine needs to run it over a sequence.

    Attributes:
        name: a short name (``"lstm"``), for messages and the engines' tables.
        gates: G, gate blocks stacked in ``weight_ih``'s rows (4 for the LSTM, 1 for Elman).
        states: names of the state tensors, in the order of ``(h_0, c_0)``; ``states[0]`` is h,
            the output of every step.
        project: ``(x, weights, variant) -> projected``: the input's share of every step at
            once, ``(L, N, G*H)`` dense or ``(sum(batch_sizes), G*H)`` packed (one GEMM).
        step: ``(projected_t, state, weights, cell, noise) -> (state_next, acts)``: one step
            for ``N`` rows; ``acts`` are the gate activations (what ``records`` may keep).
        records: ``(state_next, acts) -> tensors`` a recording direction keeps for each step.
        default_cell: the ``cell`` argument of the plain step (no variant).
        no_noise: the ``noise`` argument of a step without random masks (an object with
            ``rows(active)``, for packed steps).
        for_trace: the ``cell`` argument made fit for a scan's body (float options as Python
            floats); the identity for a kind without float options.
    """

    name: str
    gates: int
    states: tuple[str, ...]
    project: Callable[[Tensor, DirectionWeights, Any], Tensor]
    step: Callable[[Tensor, State, DirectionWeights, Any, Any], tuple[State, tuple[Tensor, ...]]]
    records: Callable[[State, tuple[Tensor, ...]], tuple[Tensor, ...]] = _state_records
    default_cell: Any = None
    no_noise: Any = NO_NOISE
    for_trace: Callable[[Any], Any] = _identity
