"""handlstm: a hand-written, transformable, exact drop-in for ``torch.nn.LSTM``."""

from . import _quiet_torch  # noqa: F401  (first: torch without its numpy warning)
from ._cell_module import HandLSTMCell
from ._lstm import HandLSTM, LSTMStates
from ._options import LSTMOptions
from .convert import SwapReport, swap_lstms

__all__ = ["HandLSTM", "HandLSTMCell", "LSTMOptions", "LSTMStates", "SwapReport", "swap_lstms"]
__version__ = "0.1.0"
