"""What HandGRU and HandRNN share: nn.RNNBase's parameters, init and forward contract for a
kind whose state is one tensor ``h``, over the layer loop.

:class:`SingleStateRecurrent` owns no equations: a subclass names its cell kind (``kind``), its
constructor signature and its docstring. Parameters are registered under torch's names, shapes
and order (through :class:`~handlstm.modules.parameters.TorchParameters`, sized by
``kind.gates``); forward checks input and ``hx`` in torch's order with its exception classes
(:mod:`handlstm.core.check_states`), then runs :func:`~handlstm.modules.layers.run_layers`.

Shapes: N batch, L sequence length, D = 2 if bidirectional else 1, H_in = ``input_size``,
H = ``hidden_size``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..core import check_args, check_inputs, check_states, check_tracing
from ..core.kinds import CellKind
from .layers import run_layers
from .parameters import TorchParameters


class SingleStateRecurrent(TorchParameters, nn.Module):
    """The stacked module of a one-state cell kind (nn.GRU, nn.RNN): see the module docstring.

    A subclass sets ``kind`` (in ``__init__`` or as a class attribute) and ``_name`` (torch's
    class name, for messages), then calls :meth:`_build`.
    """

    kind: CellKind
    _name: str

    def _build(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
        bidirectional: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        """nn.RNNBase's checks (its order and classes), attributes and parameters, then init."""
        self.dropout = check_args.check_lstm_args(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0
        )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.bidirectional = bidirectional
        self.proj_size = 0  # as nn.GRU and nn.RNN: no projection
        self._register_torch_parameters(device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)) in torch's order."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self._flat_weights:
            nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
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
        return s

    def _forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        check_tracing.check_not_torchscript()
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        return self._forward_dense(input, hx)

    def _states(self) -> int:
        return self.num_layers * self.num_directions

    def _forward_dense(self, input: Tensor, hx: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(L, N, H_in)``, ``(N, L, H_in)`` (batch_first) or unbatched ``(L, H_in)``."""
        check_states.check_input_rank(input, self._name)
        batched = input.dim() == 3
        h0 = None if hx is None else check_states.check_hx_rank(hx, batched, self._name)
        if not batched:
            x = input.unsqueeze(1)  # (L, 1, H_in)
            h0 = None if h0 is None else h0.unsqueeze(1)
        else:
            x = input.transpose(0, 1) if self.batch_first else input  # (L, N, H_in)
        weights = self._layer_weights()
        weight = weights[0][0].weight_ih
        if x.dtype != weight.dtype or x.size(-1) != self.input_size:
            check_inputs.check_input(x, 3, self.input_size, weight.dtype)  # raises (or autocast)
        steps, batch = x.shape[:2]
        expected = (self._states(), batch, self.hidden_size)
        if h0 is None:
            h0 = x.new_zeros(expected)
        else:
            check_states.check_hidden_size(h0, expected)
        check_inputs.check_devices(x, (h0,), weight)
        if steps == 0:
            check_inputs.check_sequence_length(steps)
        check_states.check_hx_dtype(h0, x.dtype)
        output, (h_n,) = self._run_layers(x, None, h0, weights)
        if not batched:
            return output.squeeze(1), h_n.squeeze(1)
        if self.batch_first:
            output = output.transpose(0, 1)  # (N, L, D*H)
        return output, h_n

    def _forward_packed(
        self, input: PackedSequence, hx: Tensor | None
    ) -> tuple[PackedSequence, Tensor]:
        """A PackedSequence, sorted or not: ``h_0`` and ``h_n`` in the caller's batch order."""
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is None:
            check_inputs.check_batch_sizes(batch_sizes, data.size(0) if data.dim() else 0)
            h0 = None
        else:
            h0 = check_states.sorted_packed_hx(hx, sorted_indices, self._name)
        weights = self._layer_weights()
        weight = weights[0][0].weight_ih
        check_inputs.check_input(data, 2, self.input_size, weight.dtype)
        sizes = check_inputs.check_batch_sizes(batch_sizes, data.size(0), hx_given=True)
        expected = (self._states(), sizes[0], self.hidden_size)
        if h0 is None:
            h0 = data.new_zeros(expected)
        else:
            check_states.check_hidden_size(h0, expected)
        check_inputs.check_permutation("sorted_indices", sorted_indices, sizes[0])
        check_inputs.check_permutation("unsorted_indices", unsorted_indices, sizes[0])
        check_inputs.check_devices(data, (h0,), weight)
        check_states.check_hx_dtype(h0, data.dtype)
        output, (h_n,) = self._run_layers(data, sizes, h0, weights)
        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), h_n

    def _run_layers(
        self, x: Tensor, batch_sizes: list[int] | None, h0: Tensor, weights: Any
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        return run_layers(
            self.kind,
            x,
            batch_sizes,
            (h0,),
            weights,
            dropout=self.dropout,
            training=self.training,
        )

    def __prepare_scriptable__(self) -> SingleStateRecurrent:
        """``torch.jit.script`` calls this first: refuse with an error that names torch.export."""
        check_tracing.refuse_script()
        return self
