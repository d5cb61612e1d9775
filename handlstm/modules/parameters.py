"""Parameters under torch's names: the (layer, direction) iterator, names, shapes and reading.

:class:`TorchParameters` is a mixin of the stacked modules (``HandLSTM``): it registers nothing
itself, it knows how torch names, shapes and orders a recurrent module's parameters
(``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``,
``weight_hr_l{k}``, each with a ``_reverse`` twin) for the module's cell kind (``self.kind``,
whose ``gates`` sizes the rows), and reads them afresh on every call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..core.kinds import CellKind, DirectionWeights


class TorchParameters:
    """The parameter structure of a torch recurrent module (a mixin of ``nn.Module``s).

    Expects ``kind``, ``input_size``, ``hidden_size``, ``num_layers``, ``bias``,
    ``bidirectional``, ``proj_size``, ``_flat_weights_names`` and ``_parameters``.
    """

    kind: CellKind
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    bidirectional: bool
    proj_size: int
    _flat_weights_names: list[str]
    _all_weights: list[list[str]]
    _parameters: dict[str, Any]

    @property
    def num_directions(self) -> int:
        """D: 2 if ``bidirectional`` else 1."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """H_out: ``proj_size`` if it is > 0, else ``hidden_size``."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def _register_torch_parameters(self, device: Any, dtype: Any) -> None:
        """Register torch's parameters (uninitialised), in torch's names and order."""
        self._all_weights: list[list[str]] = []
        self._flat_weights_names: list[str] = []
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        for layer, direction in self._layers_and_directions():
            names = self._param_names(layer, direction)
            for name in names:
                shape = self._param_shape(name.split("_l")[0], layer)
                module = cast(nn.Module, self)  # the mixin is used on nn.Modules only
                module.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
            self._all_weights.append(names)
            self._flat_weights_names.extend(names)

    def _layers_and_directions(self) -> Iterator[tuple[int, int]]:
        """The one (layer, direction) iterator, in nn.LSTM's parameter order."""
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                yield layer, direction

    def _param_names(self, layer: int, direction: int) -> list[str]:
        kinds = ["weight_ih", "weight_hh"]
        if self.bias:
            kinds += ["bias_ih", "bias_hh"]
        if self.proj_size > 0:
            kinds.append("weight_hr")
        suffix = "_reverse" if direction == 1 else ""
        return [f"{kind}_l{layer}{suffix}" for kind in kinds]

    def _param_shape(self, kind: str, layer: int) -> tuple[int, ...]:
        gate_size = self.kind.gates * self.hidden_size
        layer_input = self.input_size if layer == 0 else self.output_size * self.num_directions
        return {
            "weight_ih": (gate_size, layer_input),
            "weight_hh": (gate_size, self.output_size),
            "bias_ih": (gate_size,),
            "bias_hh": (gate_size,),
            "weight_hr": (self.proj_size, self.hidden_size),
        }[kind]

    def _direction_weights(self, layer: int, direction: int) -> DirectionWeights:
        """This layer's and direction's parameters, None where absent (see ``_layer_weights``)."""
        return self._read_weights(self._weight_names()[layer][direction])

    def _weight_names(self) -> list[list[tuple[str | None, ...]]]:
        """Per layer and direction, the names of its ``DirectionWeights`` fields (None for a
        kind the configuration does not have: no bias, no projection), as registered by
        ``__init__``. Structure only (like ``_flat_weights_names``), so it is kept once."""
        table = self.__dict__.get("_weight_names_table")
        if table is None:
            registered = set(self._flat_weights_names)
            table = [[] for _ in range(self.num_layers)]
            for layer, direction in self._layers_and_directions():
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                names = [kind + suffix for kind in DirectionWeights._fields]
                table[layer].append(tuple(n if n in registered else None for n in names))
            self.__dict__["_weight_names_table"] = table
        return table  # type: ignore[no-any-return]

    def _read_weights(self, names: tuple[str | None, ...]) -> DirectionWeights:
        """The parameters named ``names``, read afresh: from ``self._parameters`` (where
        ``Module.__getattr__`` finds them, and where ``torch.func.functional_call`` and
        ``load_state_dict(assign=True)`` put their tensors), else through ``getattr`` (a
        parametrized weight is a property of the class; a deleted one is None)."""
        params = self._parameters
        try:
            found = [None if name is None else params[name] for name in names]
        except KeyError:
            found = [None if name is None else getattr(self, name, None) for name in names]
        return DirectionWeights(*found)  # type: ignore[arg-type]

    @property
    def _first_weight(self) -> Tensor:
        """``weight_ih_l0``: what dtype and device checks compare with."""
        return self._direction_weights(0, 0).weight_ih

    def _layer_weights(self) -> list[list[DirectionWeights]]:
        """Every layer's parameters, per direction, read once per forward call (nothing
        derived from them is kept across calls).

        All of them come out of ``self._parameters`` in one pass over
        ``_flat_weights_names`` (nn.LSTM's order, which is ``DirectionWeights``' order with
        absent kinds left out); a name not there (a parametrized weight) falls back to
        :meth:`_read_weights`.
        """
        params = self._parameters
        try:  # a list, not a kept operator.itemgetter: Dynamo cannot call one it did not build
            values = cast(list[Tensor], [params[name] for name in self._flat_weights_names])
        except KeyError:
            return [
                [self._read_weights(names) for names in layer] for layer in self._weight_names()
            ]
        total = len(values)
        if total == 4 and self.bias:  # one layer and direction, no projection: the common case
            return [[DirectionWeights(values[0], values[1], values[2], values[3], None)]]
        count = self.num_directions
        kinds = total // (self.num_layers * count)  # per direction: 2 to 5
        if kinds == 5:
            found = [DirectionWeights._make(values[i : i + 5]) for i in range(0, total, 5)]
        elif kinds == 4:  # bias, no projection
            found = [DirectionWeights._make((*values[i : i + 4], None)) for i in range(0, total, 4)]
        elif kinds == 2:  # no bias, no projection
            found = [
                DirectionWeights(values[i], values[i + 1], None, None, None)
                for i in range(0, total, 2)
            ]
        else:  # no bias, projection
            found = [
                DirectionWeights(values[i], values[i + 1], None, None, values[i + 2])
                for i in range(0, total, 3)
            ]
        if len(found) == 1:
            return [found]
        return [found[first : first + count] for first in range(0, len(found), count)]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters grouped per (layer, direction), as ``nn.LSTM.all_weights``."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    def flatten_parameters(self) -> None:
        """A no-op, for code written against nn.LSTM (there is no cuDNN weight buffer)."""
