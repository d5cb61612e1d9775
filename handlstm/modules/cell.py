"""HandLSTMCell: nn.LSTMCell's parameters and forward contract over the shared cell math."""

from __future__ import annotations

import math
from typing import Any, NoReturn, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import check_args, check_inputs
from ..core import variants as _variants
from ..core.lstm import layer_norm, lstm_step
from ..core.options import CELL_OPTIONS, Activation, LSTMOptions, refuse_unknown_options
from . import conversion

__all__ = ["CELL_OPTIONS", "HandLSTMCell"]


class HandLSTMCell(nn.Module):
    r"""One LSTM step written from the gate equations: an exact drop-in for ``nn.LSTMCell``.

    Shapes: N batch, H_in = ``input_size``, H = ``hidden_size``.

    The arguments up to ``dtype`` are nn.LSTMCell's. Every one after is a keyword-only variant
    option that acts within one step, neutral by default (then the cell is exactly
    nn.LSTMCell), kept in ``self.options`` (a ``handlstm.LSTMOptions``). Input and
    recurrent dropout and weight drop keep one mask per sequence, which one step cannot: use
    HandLSTM; ``proj_clip`` needs a projection, which nn.LSTMCell does not have.

    Args:
        input_size: H_in, features of the input.
        hidden_size: H, features of h and c.
        bias: use ``bias_ih`` and ``bias_hh``. Default True.
        device: where the parameters are created.
        dtype: the parameters' dtype.
        layer_norm: as in ``handlstm.HandLSTM`` (parameters without the layer suffix:
            ``ln_weight_ih``, ...). Default False.
        peepholes: as in HandLSTM (``weight_ci``, ``weight_cf``, ``weight_co``). Default False.
        zoneout_h: keep the previous h per unit with this probability: a fresh mask per call
            in training, the expectation in eval. Default 0.
        zoneout_c: the same for c. Default 0.
        forget_bias: as in HandLSTM (init only). Default None.
        gate_activation: for i, f, o. Default ``torch.sigmoid``.
        cell_activation: for g and for c in ``h_1``. Default ``torch.tanh``.
        cell_clip: clip ``c_1`` to ``[-cell_clip, cell_clip]``. Default None.
        **not_an_option: nothing: any other keyword raises TypeError saying why.

    Inputs: input, (h_0, c_0)
        - **input**: ``(N, H_in)`` or unbatched ``(H_in,)``.
        - **h_0**, **c_0**: ``(N, H)`` or ``(H,)``; zeros when omitted.

    Outputs: (h_1, c_1)
        - **h_1**, **c_1**: ``(N, H)`` or ``(H,)``.

    Parameters, all drawn from U(-1/sqrt(H), 1/sqrt(H)) in this order:

    Attributes:
        weight_ih: ``(4*H, H_in)``.
        weight_hh: ``(4*H, H)``.
        bias_ih: ``(4*H,)`` (None without bias).
        bias_hh: ``(4*H,)`` (None without bias).

    Example:
        >>> import torch
        >>> from handlstm import HandLSTMCell
        >>> cell = HandLSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))                 # (N, H_in) -> (N, H) x 2
        >>> h.shape, c.shape
        (torch.Size([3, 20]), torch.Size([3, 20]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool = False,
        peepholes: bool = False,
        zoneout_h: float = 0.0,
        zoneout_c: float = 0.0,
        forget_bias: float | None = None,
        gate_activation: Activation = torch.sigmoid,
        cell_activation: Activation = torch.tanh,
        cell_clip: float | None = None,
        **not_an_option: NoReturn,
    ) -> None:
        super().__init__()
        refuse_unknown_options("HandLSTMCell", not_an_option, CELL_OPTIONS)
        self.options = LSTMOptions.from_arguments(locals(), CELL_OPTIONS)
        self.options.check_module(bias)
        check_args.check_cell_args(input_size, hidden_size, bias)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._variant_weights_names: list[str] = []  # after nn.LSTMCell's parameters
        for kind, size in _variants.variant_param_shapes(self.options, hidden_size):
            self.register_parameter(kind, nn.Parameter(torch.empty(size, **factory)))
            self._variant_weights_names.append(kind)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)) in nn.LSTMCell's order."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for weight in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if weight is not None:
                nn.init.uniform_(weight, -stdv, stdv)
        for kind in getattr(self, "_variant_weights_names", []):
            _variants.init_variant_param(kind, getattr(self, kind))
        if self.options.forget_bias is not None:
            _variants.init_forget_bias(self.bias_ih, self.bias_hh, self.options.forget_bias)

    # -- conversion (helpers in conversion.py) ---------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.LSTMCell) -> HandLSTMCell:
        """A HandLSTMCell equal to ``module``: same configuration, device, dtype, training flag,
        ``requires_grad`` flags and (copied) parameter values."""
        if not isinstance(module, nn.LSTMCell):
            raise TypeError(f"expected an nn.LSTMCell, got {type(module).__name__}")
        return conversion.copy_module(module, cls, conversion.cell_config(module))

    def to_torch(self) -> nn.LSTMCell:
        """The ``nn.LSTMCell`` equal to this module (refused for variant options)."""
        conversion.refuse_variants(self, "nn.LSTMCell")
        return conversion.copy_module(self, nn.LSTMCell, conversion.cell_config(self))

    def variant_options(self) -> dict[str, Any]:
        """Options beyond ``nn.LSTMCell`` that change what forward computes and are not at their
        neutral value (empty by default). ``forget_bias`` only initialises and is not listed."""
        return self.options.non_neutral()

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        variants = self.options.describe()
        return f"{s}, {variants}" if variants else s

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """One step, as ``nn.LSTMCell.forward``.

        Shapes: N batch, H_in = ``input_size``, H = ``hidden_size``.

        Args:
            input: ``(N, H_in)``, or unbatched ``(H_in,)``.
            hx: ``(h_0, c_0)``, each ``(N, H)`` (``(H,)`` unbatched). Zeros when None.

        Returns:
            ``(h_1, c_1)``, each ``(N, H)`` (``(H,)`` unbatched).

        Raises:
            RuntimeError, ValueError, TypeError: for bad input, the class ``nn.LSTMCell``
                raises, with a message saying what was expected and what was got.

        Example:
            >>> cell = HandLSTMCell(4, 3)
            >>> h, c = cell(torch.randn(2, 4))                      # (N, H_in)
            >>> h, c = cell(torch.randn(2, 4), (h, c))              # (N, H) x 2 -> (N, H) x 2
            >>> h.shape
            torch.Size([2, 3])
        """
        params = self._parameters  # read once per call (a name not there: through getattr)
        try:
            w_ih, w_hh = cast(Tensor, params["weight_ih"]), cast(Tensor, params["weight_hh"])
            b_ih, b_hh = params["bias_ih"], params["bias_hh"]
        except KeyError:  # parametrized, or a replica's plain attribute
            w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        x, h0, c0, batched = self._batched_inputs(input, hx, w_ih)
        bias = None
        if b_ih is not None and b_hh is not None:
            bias = b_ih + b_hh  # (4*H,)
        if self.options.is_default:
            gates_x = F.linear(x, w_ih, bias)  # (N, 4*H)
            h1, c1 = lstm_step(gates_x, h0, c0, w_hh, None)
        else:
            h1, c1 = self._variant_step(x, h0, c0, bias)
        if not batched:
            return h1.squeeze(0), c1.squeeze(0)
        return h1, c1

    def _batched_inputs(
        self, input: Tensor, hx: Any, weight_ih: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, bool]:
        """Check ``input`` and ``hx`` as nn.LSTMCell does; ``(x, h_0, c_0, batched)`` with a batch
        axis, ``(N, H_in)``, ``(N, H)``, ``(N, H)`` (zeros when ``hx`` is None).

        ``weight_ih``: this call's ``self.weight_ih`` if the caller has read it already."""
        weight = self.weight_ih if weight_ih is None else weight_ih
        h0, c0 = check_inputs.check_cell_forward(
            input, hx, self.input_size, self.hidden_size, weight.dtype, weight
        )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)  # (N, H_in)
        if h0 is None or c0 is None:
            h0 = c0 = x.new_zeros(x.size(0), self.hidden_size)  # (N, H)
        elif not batched:
            h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
        return x, h0, c0, batched

    def _variant_step(
        self, x: Tensor, h0: Tensor, c0: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """One step with the variant options: layer norm, peepholes, zoneout, ..."""
        options = self.options

        def get(kind: str) -> Tensor | None:
            return getattr(self, kind)

        if options.layer_norm:
            gates_x = layer_norm(F.linear(x, self.weight_ih), get("ln_weight_ih"), bias)
        else:
            gates_x = F.linear(x, self.weight_ih, bias)  # (N, 4*H)
        variant = _variants.cell_variant(options, get)
        noise = _variants.cell_noise(options, x.size(0), self.hidden_size, x, self.training)
        return lstm_step(gates_x, h0, c0, self.weight_hh, None, variant, noise)
