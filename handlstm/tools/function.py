"""FunctionLSTM: a module face for an LSTM that is not an ``nn.Module``, for the comparator."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from .compare import HX, LSTMInput


class FunctionLSTM(nn.Module):
    """A module face for an LSTM that is not an ``nn.Module``, so it can be compared.

    ``fn(weights, input, hx)`` gets the weights as a dict of tensors under nn.LSTM's
    state-dict names (Parameters of this module, so gradients reach them), the input and the
    initial states (or None), and returns what ``nn.LSTM`` returns, ``(output, (h_n, c_n))``
    (or ``(h, c)`` for a cell). It can wrap a function written with torch ops, a
    ``torch.func.functional_call`` of another module, an ``ExportedProgram`` (call
    ``program.module()`` inside), or an onnxruntime session (convert to and from numpy inside;
    compare with ``check_grad=False`` and ``requires_grad=False``).

    Args:
        fn: the implementation under test.
        state_dict: the weights, e.g. ``nn.LSTM(...).state_dict()``; copied.
        requires_grad: make the weights Parameters that require grad (set False when ``fn``
            cannot differentiate, so no gradient is expected of it).

    Example:
        >>> import torch
        >>> from handlstm.testing import FunctionLSTM, assert_lstm_close
        >>> oracle = torch.nn.LSTM(3, 4).double()
        >>> def mine(weights, input, hx):         # here: torch's functional call
        ...     return torch.func.functional_call(oracle, weights, (input, hx))
        >>> wrapped = FunctionLSTM(mine, oracle.state_dict())
        >>> assert_lstm_close(wrapped, oracle, torch.randn(5, 2, 3, dtype=torch.float64))
    """

    def __init__(
        self,
        fn: Callable[[dict[str, Tensor], LSTMInput, HX], Any],
        state_dict: Mapping[str, Tensor],
        requires_grad: bool = True,
    ) -> None:
        super().__init__()
        self.fn = fn
        for name, value in state_dict.items():
            grad = requires_grad and value.is_floating_point()
            self.register_parameter(name, nn.Parameter(value.detach().clone(), grad))

    def forward(self, input: LSTMInput, hx: HX = None) -> Any:
        """``fn(weights, input, hx)`` with the current weights."""
        return self.fn(dict(self.named_parameters()), input, hx)
