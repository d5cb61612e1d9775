"""HandGRUCell and HandRNNCell: nn.GRUCell's and nn.RNNCell's parameters and forward contract
over the GRU and Elman steps (:mod:`handlstm.core.gru`, :mod:`handlstm.core.rnn`).

Shapes: N batch, H_in = ``input_size``, H = ``hidden_size``, G gate blocks (3 GRU, 1 Elman).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import check_args, check_states
from ..core.gru import gru_cell
from ..core.rnn import RNN_KINDS, rnn_step


class _OneStateCell(nn.Module):
    """nn.RNNCellBase for a one-state cell: ``weight_ih (G*H, H_in)``, ``weight_hh (G*H, H)``,
    ``bias_ih``, ``bias_hh (G*H,)`` (None without bias), drawn from U(-1/sqrt(H), 1/sqrt(H))."""

    _gates: int
    _name: str

    def _build(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        check_args.check_cell_args(input_size, hidden_size, bias, self._gates)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        rows = self._gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **factory))
            self.bias_hh = nn.Parameter(torch.empty(rows, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)) in torch's order."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        nonlinearity = self.__dict__.get("nonlinearity", "tanh")
        if nonlinearity != "tanh":
            s += f", nonlinearity={nonlinearity}"
        return s

    def _weights(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        params = self._parameters  # read once per call (a name not there: through getattr)
        try:
            w_ih, w_hh = cast(Tensor, params["weight_ih"]), cast(Tensor, params["weight_hh"])
            return w_ih, w_hh, params["bias_ih"], params["bias_hh"]
        except KeyError:  # parametrized
            return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def _batched(self, input: Tensor, hx: Any, weight: Tensor) -> tuple[Tensor, Tensor, bool]:
        """Checks in torch's order; ``(x, h_0, batched)`` as ``(N, H_in)``, ``(N, H)``."""
        h0 = check_states.check_cell_forward(
            input, hx, self.input_size, self.hidden_size, weight, self._name
        )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)  # (N, H_in)
        if h0 is None:
            h0 = x.new_zeros(x.size(0), self.hidden_size)  # (N, H)
        elif not batched:
            h0 = h0.unsqueeze(0)
        return x, h0, batched


class HandGRUCell(_OneStateCell):
    r"""One GRU step written from the gate equations: an exact drop-in for ``nn.GRUCell``.

    ``r, z = sigmoid(...)``, ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``,
    ``h' = (1 - z) * n + z * h``, gates in torch's order (r, z, n).

    Args:
        input_size: H_in, features of the input.
        hidden_size: H, features of h.
        bias: use ``bias_ih`` and ``bias_hh``. Default True.
        device: where the parameters are created.
        dtype: the parameters' dtype.

    Inputs: input, hx
        - **input**: ``(N, H_in)`` or unbatched ``(H_in,)``.
        - **hx**: ``(N, H)`` or ``(H,)``; zeros when omitted.

    Outputs: h'
        - **h'**: ``(N, H)`` or ``(H,)``.

    Attributes:
        weight_ih: ``(3*H, H_in)``. weight_hh: ``(3*H, H)``.
        bias_ih, bias_hh: ``(3*H,)`` (None without bias).

    Example:
        >>> import torch
        >>> from handlstm.modules.recurrent_cells import HandGRUCell
        >>> cell = HandGRUCell(10, 20)
        >>> cell(torch.randn(3, 10)).shape                  # (N, H_in) -> (N, H)
        torch.Size([3, 20])
    """

    _gates = 3
    _name = "GRUCell"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._build(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        """One step, as ``nn.GRUCell.forward``: ``(N, H_in), (N, H) -> (N, H)`` (or 1-D)."""
        w_ih, w_hh, b_ih, b_hh = self._weights()
        x, h0, batched = self._batched(input, hx, w_ih)
        h1 = gru_cell(F.linear(x, w_ih, b_ih), h0, w_hh, b_hh)  # (N, H)
        return h1 if batched else h1.squeeze(0)


class HandRNNCell(_OneStateCell):
    r"""One Elman step, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``: an exact drop-in for
    ``nn.RNNCell`` (``act`` tanh or ReLU).

    Like nn.RNNCell, an unknown ``nonlinearity`` is accepted by the constructor and refused by
    forward (RuntimeError).

    Args:
        input_size: H_in, features of the input.
        hidden_size: H, features of h.
        bias: use ``bias_ih`` and ``bias_hh``. Default True.
        nonlinearity: ``'tanh'`` or ``'relu'``. Default ``'tanh'``.
        device: where the parameters are created.
        dtype: the parameters' dtype.

    Inputs: input, hx
        - **input**: ``(N, H_in)`` or unbatched ``(H_in,)``.
        - **hx**: ``(N, H)`` or ``(H,)``; zeros when omitted.

    Outputs: h'
        - **h'**: ``(N, H)`` or ``(H,)``.

    Attributes:
        weight_ih: ``(H, H_in)``. weight_hh: ``(H, H)``.
        bias_ih, bias_hh: ``(H,)`` (None without bias).

    Example:
        >>> import torch
        >>> from handlstm.modules.recurrent_cells import HandRNNCell
        >>> cell = HandRNNCell(10, 20, nonlinearity="relu")
        >>> cell(torch.randn(10)).shape                     # (H_in,) -> (H,)
        torch.Size([20])
    """

    _gates = 1
    _name = "RNNCell"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._build(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        """One step, as ``nn.RNNCell.forward``: ``(N, H_in), (N, H) -> (N, H)`` (or 1-D)."""
        w_ih, w_hh, b_ih, b_hh = self._weights()
        x, h0, batched = self._batched(input, hx, w_ih)
        if self.nonlinearity not in RNN_KINDS:
            raise RuntimeError(
                f"Unknown nonlinearity: {self.nonlinearity} (expected 'tanh' or 'relu')"
            )
        activation = torch.tanh if self.nonlinearity == "tanh" else torch.relu
        bias = None if b_ih is None or b_hh is None else b_ih + b_hh  # (H,)
        h1 = rnn_step(F.linear(x, w_ih, bias), h0, w_hh, activation)  # (N, H)
        return h1 if batched else h1.squeeze(0)
