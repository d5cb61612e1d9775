"""handlstm: a hand-written, transformable, exact drop-in for ``torch.nn.LSTM``.

The package is laid out in layers, each importing only the ones below it (``lint-imports``
checks it): :mod:`handlstm.core` (each cell kind's equations, options, checks) <
:mod:`handlstm.engines` (how a direction runs over time) < :mod:`handlstm.modules` (the
nn.Modules) < :mod:`handlstm.interop` (swapping, opacus) < :mod:`handlstm.tools` (the command,
checkpoints, the testing toolkit). The public names are re-exported here and in
``handlstm.convert``, ``handlstm.testing``, ``handlstm.opacus`` and ``handlstm.cli``.
"""

import sys as _sys

from .core import quiet_torch as _quiet_torch  # noqa: F401  (first: torch without its numpy warning)
from .core.options import LSTMOptions
from .core.version import __version__ as __version__
from .engines.tracing import time_loop
from .interop.swap import SwapReport, swap_lstms
from .modules.cell import HandLSTMCell
from .modules.lstm import HandLSTM, LSTMStates

__all__ = [
    "HandLSTM",
    "HandLSTMCell",
    "LSTMOptions",
    "LSTMStates",
    "SwapReport",
    "swap_lstms",
    "time_loop",
]

if "opacus" in _sys.modules:  # opacus already loaded: teach it HandLSTM (never imports opacus)
    from . import opacus as _opacus  # noqa: F401
