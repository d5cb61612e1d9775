"""HandLSTM: nn.LSTM's parameters, constructor and forward contract over the functional core."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, NoReturn, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..core import check_args, check_tracing
from ..core import variants as _variants
from ..core.kinds import CellKind, DirectionWeights
from ..core.lstm import LSTM, ScanVariant
from ..core.options import LSTM_OPTIONS, Activation, LSTMOptions, refuse_unknown_options
from . import conversion, lstm_inputs, lstm_variants
from .layers import run_layers
from .parameters import TorchParameters


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


class HandLSTM(TorchParameters, nn.Module):
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

    kind: CellKind = LSTM  # the cell kind its engines run (see handlstm.core.kinds)

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
        self.dropout = check_args.check_lstm_args(
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
        self._register_torch_parameters(device, dtype)
        self._variant_weights_names: list[tuple[str, str]] = []  # (kind, name), after nn.LSTM's
        for layer, direction in self._layers_and_directions():
            suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            for kind, size in _variants.variant_param_shapes(self.options, hidden_size):
                empty = torch.empty(size, device=device, dtype=dtype)
                self.register_parameter(kind + suffix, nn.Parameter(empty))
                self._variant_weights_names.append((kind, kind + suffix))
        self.reset_parameters()

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

    # -- conversion (helpers in conversion.py) ---------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.LSTM) -> HandLSTM:
        """A HandLSTM equal to ``module``: same configuration, device, dtype, training flag,
        ``requires_grad`` flags and (copied) parameter values."""
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"expected an nn.LSTM, got {type(module).__name__}")
        return conversion.copy_module(module, cls, conversion.lstm_config(module))

    def to_torch(self) -> nn.LSTM:
        """The ``nn.LSTM`` equal to this module (refused for variant options)."""
        conversion.refuse_variants(self, "nn.LSTM")
        return conversion.copy_module(self, nn.LSTM, conversion.lstm_config(self))

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
        check_tracing.check_not_torchscript()
        if lengths is None:
            return self._forward(input, hx, None)
        return self._forward(input, hx, None, check_tracing.check_lengths(input, lengths))

    def __prepare_scriptable__(self) -> HandLSTM:
        """``torch.jit.script`` calls this first: refuse with an error that names torch.export."""
        check_tracing.refuse_script()
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
            return lstm_inputs.forward_packed(self, input, hx, records)
        return lstm_inputs.forward_dense(self, input, hx, records, lengths)

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
        """Every layer and direction over the time-major (or packed) input (see
        :func:`handlstm.modules.layers.run_layers`); ``records``, if a list, receives each
        (layer, direction)'s output and its recorded :class:`ScanVariant`."""
        prepare = lstm_variants.preparation(self, batch_sizes, records is not None)
        output, (h_n, c_n) = run_layers(
            LSTM,
            x,
            batch_sizes,
            (h0, c0),
            weights,
            dropout=self.dropout,
            training=self.training,
            prepare=prepare,
            records=records,  # type: ignore[arg-type]
            lengths=lengths,
        )
        return output, h_n, c_n
