"""HandLSTM: nn.LSTM's parameters, constructor and forward contract over the functional core."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple, NoReturn, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _checks, _traced, _variants
from ._options import LSTM_OPTIONS, Activation, LSTMOptions, refuse_unknown_options
from ._scan import DirectionWeights, ScanVariant, run_layer


class LSTMStates(NamedTuple):
    """What ``HandLSTM.forward_with_states`` returns: forward's results plus every step.

    ``hiddens``, ``cells`` and ``gates`` have a leading ``D*num_layers`` axis (nn.LSTM's h_n
    order) and then the output's layout: ``(L, N, *)``, ``(N, L, *)`` with ``batch_first``,
    ``(L, *)`` unbatched, or the packed data layout ``(sum(batch_sizes), *)`` of ``output``.
    Features: ``H_out`` for hiddens, ``H_cell`` for cells, ``4*H_cell`` for gates (the
    activations of i, f, g, o, in that order).
    """

    output: Tensor | PackedSequence
    h_n: Tensor
    c_n: Tensor
    hiddens: Tensor
    cells: Tensor
    gates: Tensor


class HandLSTM(nn.Module):
    r"""A multi-layer LSTM written from the gate equations: an exact drop-in for ``nn.LSTM``.

    For each step and layer, with gates in torch's order::

        i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)            (then h_t = W_hr h_t if proj_size > 0)

    Parameters, their names, shapes, order and initialisation are nn.LSTM's, so state dicts load
    both ways with ``strict=True``. No fused LSTM kernel (cuDNN, oneDNN, ``torch._VF.lstm``) is
    called: the computation is ordinary tensor ops, so it can be vmapped, compiled, differentiated
    twice and changed.

    Shapes: N batch, L sequence length, D = 2 if bidirectional else 1, H_in = ``input_size``,
    H_cell = ``hidden_size``, H_out = ``proj_size`` if it is > 0 else ``hidden_size``.

    The arguments up to ``dtype`` are nn.LSTM's. Every one after is a keyword-only variant
    option, neutral by default (with all of them neutral the module is exactly nn.LSTM, state
    dict included); they compose with each other and with every configuration, and are kept in
    ``self.options``, a frozen ``handlstm.LSTMOptions``. Variant parameters are registered
    after nn.LSTM's under its naming (``ln_weight_ih_l0``, ``weight_ci_l1_reverse``, ...), so an
    nn.LSTM checkpoint loads with ``strict=False``.

    Args:
        input_size: H_in, features of the input.
        hidden_size: H_cell, features of the cell state.
        num_layers: stacked layers. Default 1.
        bias: use ``b_ih`` and ``b_hh``. Default True.
        batch_first: input and output are ``(N, L, *)`` instead of ``(L, N, *)``. Default False.
        dropout: dropout probability on each layer's output but the last, in training. Default 0.
        bidirectional: run a second, reversed direction per layer. Default False.
        proj_size: if > 0, project h to this size with ``weight_hr`` (LSTMP). Default 0.
        device: where the parameters are created.
        dtype: the parameters' dtype.
        layer_norm: layer-normalise ``W_ih x`` and ``W_hh h`` separately (gains
            ``ln_weight_ih``, ``ln_weight_hh``; the biases are the shifts) and ``c_t`` where it
            enters ``h_t`` (``ln_weight_c``, ``ln_bias_c``). Default False.
        peepholes: diagonal weights ``weight_ci``, ``weight_cf`` from ``c_{t-1}`` into i and f,
            ``weight_co`` from ``c_t`` into o. Default False.
        input_dropout: variational dropout on each layer's input, one mask per sequence.
            Default 0 (like every probability here, applied in training only).
        recurrent_dropout: variational dropout on the ``h_{t-1}`` fed to ``W_hh``, one mask
            per sequence, layer and direction. Default 0.
        weight_drop: DropConnect on ``weight_hh``, one mask per forward call. Default 0.
        zoneout_h: probability of keeping the previous h per unit and step (in eval, the
            expectation). Default 0.
        zoneout_c: the same for c. Default 0.
        forget_bias: if not None, initialise the forget block of ``b_ih`` to it and that of
            ``b_hh`` to 0 (init only; needs ``bias``). Default None.
        gate_activation: for i, f, o. Default ``torch.sigmoid``.
        cell_activation: for g and for c in ``h_t``. Default ``torch.tanh``.
        cell_clip: clip ``c_t`` to ``[-cell_clip, cell_clip]``. Default None (no clipping).
        proj_clip: clip the projected ``h_t`` likewise (needs ``proj_size > 0``). Default None.
        **not_an_option: nothing: a misspelt option raises TypeError listing the valid ones
            (and a type checker rejects it).

    Inputs: input, (h_0, c_0)
        - **input**: ``(L, H_in)`` unbatched, ``(L, N, H_in)``, ``(N, L, H_in)`` with
          ``batch_first``, or a ``torch.nn.utils.rnn.PackedSequence``.
        - **h_0**: ``(D*num_layers, H_out)`` unbatched or ``(D*num_layers, N, H_out)``.
        - **c_0**: ``(D*num_layers, H_cell)`` unbatched or ``(D*num_layers, N, H_cell)``.
          Both default to zeros.

    Outputs: output, (h_n, c_n)
        - **output**: ``(L, D*H_out)``, ``(L, N, D*H_out)``, ``(N, L, D*H_out)`` or a
          PackedSequence, the last layer's h at every step.
        - **h_n**, **c_n**: final states, shaped like h_0 and c_0; for packed input, each
          sequence's own last valid step.

    Parameters of layer k (each with a ``_reverse`` twin when bidirectional), all drawn from
    U(-1/sqrt(H_cell), 1/sqrt(H_cell)) in nn.LSTM's order:

    Attributes:
        weight_ih_l{k}: ``(4*H_cell, H_in)`` for k = 0, else ``(4*H_cell, D*H_out)``.
        weight_hh_l{k}: ``(4*H_cell, H_out)``.
        bias_ih_l{k}: ``(4*H_cell,)``, if ``bias``.
        bias_hh_l{k}: ``(4*H_cell,)``, if ``bias``.
        weight_hr_l{k}: ``(H_out, H_cell)``, if ``proj_size > 0``.

    Example:
        >>> import torch
        >>> from handlstm import HandLSTM
        >>> lstm = HandLSTM(10, 20, num_layers=2)
        >>> x = torch.randn(5, 3, 10)                       # (L, N, H_in)
        >>> output, (h_n, c_n) = lstm(x)
        >>> output.shape, h_n.shape, c_n.shape              # (L, N, H_out), (2, N, H_out) x 2
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]), torch.Size([2, 3, 20]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool = False,
        peepholes: bool = False,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        zoneout_h: float = 0.0,
        zoneout_c: float = 0.0,
        forget_bias: float | None = None,
        gate_activation: Activation = torch.sigmoid,
        cell_activation: Activation = torch.tanh,
        cell_clip: float | None = None,
        proj_clip: float | None = None,
        **not_an_option: NoReturn,
    ) -> None:
        super().__init__()
        refuse_unknown_options("HandLSTM", not_an_option, LSTM_OPTIONS)
        self.options = LSTMOptions.from_arguments(locals(), LSTM_OPTIONS)
        self.options.check_module(bias, proj_size)
        self.dropout = _checks.check_lstm_args(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
        )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self._all_weights: list[list[str]] = []
        self._flat_weights_names: list[str] = []
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        for layer, direction in self._layers_and_directions():
            names = self._param_names(layer, direction)
            for name in names:
                shape = self._param_shape(name.split("_l")[0], layer)
                self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
            self._all_weights.append(names)
            self._flat_weights_names.extend(names)
        self._variant_weights_names: list[tuple[str, str]] = []  # (kind, name), after nn.LSTM's
        for layer, direction in self._layers_and_directions():
            suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            for kind, size in _variants.variant_param_shapes(self.options, hidden_size):
                self.register_parameter(kind + suffix, nn.Parameter(torch.empty(size, **factory)))
                self._variant_weights_names.append((kind, kind + suffix))
        self.reset_parameters()

    # -- structure ------------------------------------------------------------------------------

    @property
    def num_directions(self) -> int:
        """D: 2 if ``bidirectional`` else 1."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """H_out: ``proj_size`` if it is > 0, else ``hidden_size``."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

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
        gate_size = 4 * self.hidden_size
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

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(H_cell), 1/sqrt(H_cell)) in nn.LSTM's order.

        Then, without drawing from the generator: variant parameters (layer-norm gains 1,
        shifts 0, peepholes 0) and, with ``forget_bias``, the forget blocks of the biases.
        """
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self._flat_weights:
            nn.init.uniform_(weight, -stdv, stdv)
        for kind, name in getattr(self, "_variant_weights_names", []):
            _variants.init_variant_param(kind, getattr(self, name))
        if self.options.forget_bias is not None:
            for layer, direction in self._layers_and_directions():
                weights = self._direction_weights(layer, direction)
                _variants.init_forget_bias(
                    weights.bias_ih, weights.bias_hh, self.options.forget_bias
                )

    # -- conversion (implemented in convert.py) ---------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.LSTM) -> HandLSTM:
        """A HandLSTM equal to ``module``: same configuration, device, dtype, training flag,
        ``requires_grad`` flags and (copied) parameter values."""
        from .convert import lstm_from_torch

        return lstm_from_torch(module, cls)

    def to_torch(self) -> nn.LSTM:
        """The ``nn.LSTM`` equal to this module (refused for variant options)."""
        from .convert import lstm_to_torch

        return lstm_to_torch(self)

    def variant_options(self) -> dict[str, Any]:
        """Options beyond ``nn.LSTM`` that change what forward computes and are not at their
        neutral value (empty by default). ``forget_bias`` only initialises and is not listed."""
        return self.options.non_neutral()

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        variants = self.options.describe()
        return f"{s}, {variants}" if variants else s

    # -- forward --------------------------------------------------------------------------------

    @overload
    def forward(
        self,
        input: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]: ...

    @overload
    def forward(
        self, input: PackedSequence, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]: ...

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        """Run every layer and direction over ``input``, as ``nn.LSTM.forward`` does.

        Shapes: N batch, L sequence length, D = 2 if bidirectional else 1, H_in =
        ``input_size``, H_cell = ``hidden_size``, H_out = ``proj_size`` or ``hidden_size``.

        Args:
            input: ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, unbatched
                ``(L, H_in)``, or a ``torch.nn.utils.rnn.PackedSequence`` of
                ``(sum(batch_sizes), H_in)`` data (sorted or not).
            hx: ``(h_0, c_0)`` of shapes ``(D*num_layers, N, H_out)`` and
                ``(D*num_layers, N, H_cell)`` (without the N axis for unbatched input; for
                packed input in the original, unsorted batch order). Zeros when None.
            lengths: keyword only, beyond nn.LSTM: a ``(N,)`` integer tensor of each
                sequence's valid steps in a padded, batched ``input``. The result equals
                nn.LSTM on ``pack_padded_sequence(input, lengths, enforce_sorted=False)``
                padded back with ``pad_packed_sequence(..., total_length=L)``: zeros in the
                output past each length, ``h_n`` and ``c_n`` at each sequence's own last step
                (the first, in reverse). Unlike a PackedSequence it traces into one graph for
                any lengths (torch.compile, torch.export, ONNX).

        Returns:
            ``(output, (h_n, c_n))``: ``output`` is the last layer's h at every step,
            ``(L, N, D*H_out)`` (``(N, L, D*H_out)`` with ``batch_first``, ``(L, D*H_out)``
            unbatched, or a PackedSequence with the input's batch sizes and indices);
            ``h_n`` and ``c_n`` are every layer's and direction's final states, shaped like
            ``h_0`` and ``c_0``; for packed input each sequence's own last valid step.

        Raises:
            RuntimeError, ValueError, TypeError, IndexError: for bad input, the class
                ``nn.LSTM`` raises, with a message saying what was expected and what was got.

        Example:
            >>> lstm = HandLSTM(4, 3, batch_first=True)
            >>> output, (h_n, c_n) = lstm(torch.randn(2, 5, 4))     # (N, L, H_in)
            >>> output.shape, h_n.shape                             # (N, L, H_out), (1, N, H_out)
            (torch.Size([2, 5, 3]), torch.Size([1, 2, 3]))
        """
        _traced.check_not_torchscript()
        if lengths is None:
            return self._forward(input, hx, None)
        return self._forward(input, hx, None, _traced.check_lengths(input, lengths))

    def __prepare_scriptable__(self) -> HandLSTM:
        """``torch.jit.script`` calls this first: refuse with an error that names torch.export."""
        _traced.refuse_script()
        return self

    def forward_with_states(
        self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
    ) -> LSTMStates:
        """Forward, plus every layer's h, c and gate activations at every step.

        Same inputs, same ``output``, ``h_n``, ``c_n`` (and, in training, the same kind of
        random masks) as ``forward``; the extra tensors are laid out as described in
        ``LSTMStates``. Gradients flow through all of them.

        Example:
            >>> lstm = HandLSTM(4, 3, num_layers=2)
            >>> states = lstm.forward_with_states(torch.randn(5, 2, 4))   # (L, N, H_in)
            >>> states.cells.shape, states.gates.shape          # (2, L, N, H_cell), 4*H_cell
            (torch.Size([2, 5, 2, 3]), torch.Size([2, 5, 2, 12]))
        """
        records: list[tuple[Tensor, ScanVariant]] = []
        output, (h_n, c_n) = self._forward(input, hx, records)
        stacked = [
            torch.stack([getter(record) for record in records], 0)
            for getter in (lambda r: r[0], lambda r: r[1].cells[0], lambda r: r[1].gates[0])
        ]
        if not isinstance(input, PackedSequence):
            if input.dim() == 2:
                stacked = [t.squeeze(2) for t in stacked]  # (D*num_layers, L, *)
            elif self.batch_first:
                stacked = [t.transpose(1, 2) for t in stacked]  # (D*num_layers, N, L, *)
        return LSTMStates(output, h_n, c_n, *stacked)

    def _forward(
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None,
        records: list[tuple[Tensor, ScanVariant]] | None,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, records)
        batched = input.dim() == 3
        if not batched:
            _checks.check_input_rank(input)
            x = input.unsqueeze(1)  # (L, N, H_in)
        elif self.batch_first:
            x = input.transpose(0, 1)  # (L, N, H_in)
        else:
            x = input
        weights = self._layer_weights()
        steps, batch = x.shape[:2]
        weight = weights[0][0].weight_ih
        if (  # the common case, tested without calls (else _initial_state checks, and raises)
            hx is None
            and self.proj_size == 0
            and x.dtype == weight.dtype
            and x.size(2) == self.input_size
            and x.device == weight.device
        ):
            states = self.num_layers * (2 if self.bidirectional else 1)
            # two tensors: a scan (compile/export) refuses initial states that alias each other
            h0 = x.new_zeros((states, batch, self.hidden_size))
            c0 = x.new_zeros((states, batch, self.hidden_size))
        else:
            h0, c0 = self._initial_state(hx, x, batch, batched, 3, weight)
        if steps == 0:
            _checks.check_sequence_length(steps)
        if lengths is not None:
            _traced.check_length_values(lengths, steps, batch)
        output, h_n, c_n = self._run_layers(x, None, h0, c0, weights, records, lengths)
        if not batched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)  # (N, L, D*H_out)
        return output, (h_n, c_n)

    def _forward_packed(
        self,
        input: PackedSequence,
        hx: tuple[Tensor, Tensor] | None,
        records: list[tuple[Tensor, ScanVariant]] | None = None,
    ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        weights = self._layer_weights()
        first = weights[0][0].weight_ih
        sizes = _checks.check_packed(input, hx, self.input_size, first.dtype)
        h0, c0 = self._initial_state(hx, data, sizes[0], True, 2, first)
        if sorted_indices is not None:
            h0 = h0.index_select(1, sorted_indices)
            c0 = c0.index_select(1, sorted_indices)
        output, h_n, c_n = self._run_layers(data, sizes, h0, c0, weights, records)
        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
            c_n = c_n.index_select(1, unsorted_indices)
        packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        return packed, (h_n, c_n)

    def _initial_state(
        self, hx: Any, x: Tensor, batch: int, batched: bool, input_dim: int, weight: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Validate ``hx`` and ``x`` in nn.LSTM's order; zeros when ``hx`` is None.

        ``weight`` is ``weight_ih_l0`` (what the dtype and device checks compare with).
        Returns ``(h_0, c_0)`` of shapes ``(D*num_layers, N, H_out)`` and
        ``(D*num_layers, N, H_cell)``.
        """
        if hx is not None:
            h0, c0 = _checks.check_hx_pair(hx)
            _checks.check_hx_rank((h0, c0), batched)
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if x.dtype != weight.dtype or x.dim() != input_dim or x.size(-1) != self.input_size:
            _checks.check_input(x, input_dim, self.input_size, weight.dtype)  # raises (or autocast)
        states = self.num_layers * (2 if self.bidirectional else 1)
        expected_h = (states, batch, self.proj_size if self.proj_size > 0 else self.hidden_size)
        if hx is None:
            if x.device != weight.device:
                _checks.check_devices(x, (), weight)  # raises
            # two tensors even without projection: a scan refuses initial states that alias
            return x.new_zeros(expected_h), x.new_zeros((states, batch, self.hidden_size))
        _checks.check_hidden_size(h0, expected_h, 0)
        _checks.check_hidden_size(c0, (states, batch, self.hidden_size), 1)
        _checks.check_hx_structure(hx, batched)
        _checks.check_devices(x, (h0, c0), weight)
        _checks.check_hx_dtype(h0, x.dtype)
        return h0, c0

    def _run_layers(
        self,
        x: Tensor,
        batch_sizes: list[int] | None,
        h0: Tensor,
        c0: Tensor,
        weights: list[list[DirectionWeights]],
        records: list[tuple[Tensor, ScanVariant]] | None = None,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Every layer and direction over the time-major (or packed) input.

        Args:
            x: ``(L, N, H_in)`` or packed ``(sum(B_t), H_in)``.
            batch_sizes: packed batch sizes or None.
            h0, c0: ``(D*num_layers, N, H_out)``, ``(D*num_layers, N, H_cell)``.
            weights: ``_layer_weights()``, read once for this call.
            records: if a list, each (layer, direction) appends its output and its recorded
                :class:`ScanVariant` (per-step cells and gates).
            lengths: dense input only, ``(N,)`` valid steps per sequence, or None.

        Returns:
            ``(output, h_n, c_n)``: the last layer's output in ``x``'s layout with ``D*H_out``
            features, and the stacked final states.
        """
        count = self.num_directions
        tape = self.__dict__.get("_per_sample_tape")  # set by _per_sample for one opacus call
        with_variant = records is not None or not self._options_default() or tape is not None
        if self.num_layers == 1 and not with_variant:  # the loop below for one plain layer
            return run_layer(x, batch_sizes, h0, c0, weights[0], [None] * count, lengths)
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        layer_input = x
        for layer in range(self.num_layers):
            variants: list[ScanVariant | None] = [None] * count
            layer_weights = weights[layer]
            if with_variant:
                layer_weights = list(layer_weights)
                layer_input = _variants.input_dropout(
                    layer_input,
                    batch_sizes,
                    self.options.input_dropout,
                    self.training,
                    f"_l{layer}",
                )
                for d in range(count):
                    layer_weights[d], variants[d] = self._direction_variant(
                        layer_weights[d], layer, d, layer_input, batch_sizes, records is not None
                    )
                    if tape is not None:
                        layer_weights[d], variants[d] = tape.direction(
                            layer_weights[d], variants[d], batch_sizes
                        )
            if self.num_layers == 1:  # this layer's states are all of them: no slicing
                layer_h0, layer_c0 = h0, c0
            else:
                first = layer * count
                layer_h0, layer_c0 = h0[first : first + count], c0[first : first + count]
            out, h, c = run_layer(
                layer_input, batch_sizes, layer_h0, layer_c0, layer_weights, variants, lengths
            )
            if records is not None:
                for part, variant in zip(out.chunk(count, -1), variants, strict=True):
                    records.append((part, variant))  # type: ignore[arg-type]
            h_n.append(h)
            c_n.append(c)
            layer_input = out
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        if len(h_n) == 1:
            return layer_input, h_n[0], c_n[0]
        return layer_input, torch.cat(h_n, 0), torch.cat(c_n, 0)

    def _options_default(self) -> bool:
        """``self.options.is_default``, worked out once per options object (they are frozen)."""
        known = self.__dict__.get("_options_default_for")
        if known is None or known[0] is not self.options:
            known = (self.options, self.options.is_default)
            self.__dict__["_options_default_for"] = known
        return known[1]

    def _direction_variant(
        self,
        weights: DirectionWeights,
        layer: int,
        direction: int,
        x: Tensor,
        batch_sizes: list[int] | None,
        record: bool,
    ) -> tuple[DirectionWeights, ScanVariant]:
        """The variant's parameters and this call's masks for one layer and direction.

        Weight drop replaces ``weight_hh`` by a dropped copy for this call only (the Parameter
        and its name are untouched).
        """
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        options = self.options
        weight_hh = _variants.drop_weight(
            weights.weight_hh, options.weight_drop, self.training, suffix
        )
        steps, batch = (
            (x.size(0), x.size(1))
            if batch_sizes is None
            else (
                len(batch_sizes),
                batch_sizes[0],
            )
        )
        variant = _variants.direction_variant(
            options,
            lambda kind: getattr(self, kind + suffix),
            self.training,
            steps,
            batch,
            (self.output_size, self.hidden_size),
            x,
            suffix,
            record,
        )
        return weights._replace(weight_hh=weight_hh), variant
