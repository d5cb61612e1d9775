"""handlstm: a hand-written, transformable, exact drop-in for ``torch.nn.LSTM``.

The package is laid out in layers, each importing only the ones below it (``lint-imports``
checks it): :mod:`handlstm.core` (each cell kind's equations, options, checks) <
:mod:`handlstm.engines` (how a direction runs over time) < :mod:`handlstm.modules` (the
nn.Modules) < :mod:`handlstm.interop` (swapping, opacus) < :mod:`handlstm.tools` (the command,
checkpoints, the testing toolkit). The public names are re-exported here and in
``handlstm.convert``, ``handlstm.testing``, ``handlstm.opacus`` and ``handlstm.cli``.
"""

from .core import quiet_torch as _quiet_torch  # noqa: F401  (first: torch without its numpy warning)
from .core.options import LSTMOptions
from .core.version import __version__ as __version__
from .engines.tracing import time_loop
from .interop.opacus_hook import install_with_opacus as _install_with_opacus
from .interop.swap import SwapReport, swap_lstms
from .modules.cell import HandLSTMCell
from .modules.gru import HandGRU
from .modules.lstm import HandLSTM, LSTMStates
from .modules.recurrent_cells import HandGRUCell, HandRNNCell
from .modules.rnn import HandRNN

__all__ = [
    "HandGRU",
    "HandGRUCell",
    "HandLSTM",
    "HandLSTMCell",
    "HandRNN",
    "HandRNNCell",
    "LSTMOptions",
    "LSTMStates",
    "SwapReport",
    "swap_lstms",
    "time_loop",
]

# opacus imported before or after handlstm, in either order: it learns HandLSTM's grad samplers
# when both are loaded (a one-shot import hook; handlstm itself never imports opacus).
_install_with_opacus()
