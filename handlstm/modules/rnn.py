"""HandRNN: nn.RNN's parameters, constructor and forward contract over the Elman kinds."""

from __future__ import annotations

from typing import Any, overload

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from ..core import check_args
from ..core.rnn import RNN_KINDS
from .recurrent import SingleStateRecurrent


class HandRNN(SingleStateRecurrent):
    r"""A multi-layer Elman RNN, ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``: an exact
    drop-in for ``nn.RNN`` (``act`` is tanh or ReLU, by ``nonlinearity``).

    Parameters, names, shapes, order and initialisation are nn.RNN's, so state dicts load both
    ways with ``strict=True``; no fused RNN kernel runs, so it can be vmapped and compiled.

    Shapes: N batch, L sequence length, D = 2 if bidirectional else 1, H_in = ``input_size``,
    H = ``hidden_size``.

    Args:
        input_size: H_in, features of the input.
        hidden_size: H, features of the hidden state.
        num_layers: stacked layers. Default 1.
        nonlinearity: ``'tanh'`` or ``'relu'``. Default ``'tanh'``.
        bias: use ``b_ih`` and ``b_hh``. Default True.
        batch_first: input and output are ``(N, L, *)`` instead of ``(L, N, *)``. Default False.
        dropout: dropout probability on each layer's output but the last, in training. Default 0.
        bidirectional: run a second, reversed direction per layer. Default False.
        device: where the parameters are created.
        dtype: the parameters' dtype.
        **not_an_argument: nothing: ``proj_size`` is a ValueError (as in torch), any other
            keyword a TypeError.

    Inputs: input, h_0
        - **input**: ``(L, H_in)`` unbatched, ``(L, N, H_in)``, ``(N, L, H_in)`` with
          ``batch_first``, or a ``torch.nn.utils.rnn.PackedSequence``.
        - **h_0**: ``(D*num_layers, H)`` unbatched or ``(D*num_layers, N, H)``; zeros if omitted.

    Outputs: output, h_n
        - **output**: ``(L, D*H)``, ``(L, N, D*H)``, ``(N, L, D*H)`` or a PackedSequence.
        - **h_n**: shaped like h_0; for packed input, each sequence's own last valid step.

    Attributes:
        weight_ih_l{k}: ``(H, H_in)`` for k = 0, else ``(H, D*H)``.
        weight_hh_l{k}: ``(H, H)``.
        bias_ih_l{k}: ``(H,)``, if ``bias``.
        bias_hh_l{k}: ``(H,)``, if ``bias``. Each with a ``_reverse`` twin when bidirectional,
        all drawn from U(-1/sqrt(H), 1/sqrt(H)) in nn.RNN's order.

    Example:
        >>> import torch
        >>> from handlstm.modules.rnn import HandRNN
        >>> rnn = HandRNN(10, 20, nonlinearity="relu", batch_first=True)
        >>> output, h_n = rnn(torch.randn(3, 5, 10))        # (N, L, H_in)
        >>> output.shape, h_n.shape                         # (N, L, H), (1, N, H)
        (torch.Size([3, 5, 20]), torch.Size([1, 3, 20]))
    """

    _name = "RNN"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **not_an_argument: Any,
    ) -> None:
        check_args.check_single_state_kwargs("HandRNN", not_an_argument)
        check_args.check_nonlinearity(nonlinearity)
        super().__init__()
        self.nonlinearity = nonlinearity
        self.kind = RNN_KINDS[nonlinearity]
        self._build(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
        )

    @overload
    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward(
        self, input: PackedSequence, hx: Tensor | None = None
    ) -> tuple[PackedSequence, Tensor]: ...

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        """Run every layer and direction over ``input``, as ``nn.RNN.forward`` does.

        Args:
            input: ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, unbatched
                ``(L, H_in)``, or a PackedSequence (sorted or not).
            hx: ``h_0``, ``(D*num_layers, N, H)`` (``(D*num_layers, H)`` unbatched; for packed
                input in the caller's batch order). Zeros when None.

        Returns:
            ``(output, h_n)`` in nn.RNN's layout.

        Raises:
            RuntimeError, ValueError, AttributeError, IndexError, TypeError: for bad input,
                the class ``nn.RNN`` raises, with a message saying expected and got.
        """
        return self._forward(input, hx)
