"""handlstm: a hand-written, transformable, exact drop-in for ``torch.nn.LSTM``."""

import sys as _sys

from . import _quiet_torch  # noqa: F401  (first: torch without its numpy warning)
from ._cell_module import HandLSTMCell
from ._lstm import HandLSTM, LSTMStates
from ._options import LSTMOptions
from ._traced import time_loop
from .convert import SwapReport, swap_lstms

__all__ = [
    "HandLSTM",
    "HandLSTMCell",
    "LSTMOptions",
    "LSTMStates",
    "SwapReport",
    "swap_lstms",
    "time_loop",
]
__version__ = "0.2.0"

if "opacus" in _sys.modules:  # opacus already loaded: teach it HandLSTM (never imports opacus)
    from . import opacus as _opacus  # noqa: F401
