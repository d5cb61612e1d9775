"""The tape of one forward call of one module: which detached parameter copy stands for which
parameter, each direction's records, and in backward the gradients (:meth:`ModuleTape.finish`)
handed to the integration's :class:`Sink`.

Knows nothing about opacus: :mod:`handlstm.interop.opacus` supplies the sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor, nn

from ...core.kinds import DirectionWeights
from ...core.lstm import ScanVariant
from .norms import NORMS, NOTHING, USERS, Memo, Plan, parameter_gradients, share_gate_gradients
from .taps import DirectionTape

#: CellVariant field -> (record kind, parameter name) of the peepholes.
_PEEPHOLES = {
    "peephole_i": ("ci", "weight_ci"),
    "peephole_f": ("cf", "weight_cf"),
    "peephole_o": ("co", "weight_co"),
}



class Sink(Protocol):
    """The integration's side: when to record, and where the results go."""

    def plan(self, tape: ModuleTape) -> Plan:
        """Asked in the module's backward."""
        ...

    def deliver(self, tape: ModuleTape, results: dict[int, Tensor]) -> None:
        """``results[i]``: per-sample gradients ``(N, *shape)`` (SAMPLES) or squared norms
        ``(N,)`` (NORMS) of ``tape.params[i]``, for ``scale`` times the loss."""
        ...


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
            memo = Memo()
            for kind, (d_out, x) in blocks.items():
                for name in USERS[kind]:
                    if name in index:
                        i = index[name]
                        sums[i], results[i] = parameter_gradients(
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
