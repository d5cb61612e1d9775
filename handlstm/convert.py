"""Conversion between torch's LSTMs and handlstm's, one module at a time or a whole model at once.

* :func:`lstm_from_torch` / :func:`cell_from_torch` (``HandLSTM.from_torch``,
  ``HandLSTMCell.from_torch``) build an equal, independent copy: same configuration, device,
  dtype, ``training`` flag, ``requires_grad`` flags and parameter values.
* :func:`lstm_to_torch` / :func:`cell_to_torch` (``.to_torch()``) go back, refusing modules with
  variant options nn.LSTM does not have.
* :func:`swap_lstms` replaces every LSTM inside a model in place, handing the *same*
  ``nn.Parameter`` objects to the new modules, so optimizers and checkpoints keep working.

New modules are built on the ``meta`` device first, so a conversion neither allocates throwaway
weights nor consumes the global random number generator. (The implementation lives in
:mod:`handlstm.modules.conversion`, :mod:`handlstm.interop.swap` and
:mod:`handlstm.tools.checkpoint_groups`; this module is the public path.)
"""

from __future__ import annotations

from torch import nn

from .interop.swap import Skipped, Swapped, SwapReport, swap_lstms
from .modules.cell import HandLSTMCell
from .modules.conversion import CELL_KEYS, LSTM_KEYS, cell_config, lstm_config
from .modules.lstm import HandLSTM
from .tools.checkpoint_groups import LSTMGroup, find_lstm_groups

__all__ = [
    "LSTMGroup",
    "find_lstm_groups",
    "SwapReport",
    "Swapped",
    "Skipped",
    "cell_from_torch",
    "cell_to_torch",
    "lstm_config",
    "cell_config",
    "lstm_from_torch",
    "lstm_to_torch",
    "swap_lstms",
    "LSTM_KEYS",
    "CELL_KEYS",
]


def lstm_from_torch(module: nn.LSTM, cls: type[HandLSTM] = HandLSTM) -> HandLSTM:
    """A ``cls`` equal to the ``nn.LSTM`` ``module`` (copied parameters, same flags)."""
    return cls.from_torch(module)


def lstm_to_torch(hand: HandLSTM) -> nn.LSTM:
    """The ``nn.LSTM`` equal to ``hand`` (copied parameters, same flags).

    Raises:
        ValueError: if ``hand`` uses variant options that nn.LSTM does not have.
    """
    return HandLSTM.to_torch(hand)


def cell_from_torch(module: nn.LSTMCell, cls: type[HandLSTMCell] = HandLSTMCell) -> HandLSTMCell:
    """A ``cls`` equal to the ``nn.LSTMCell`` ``module`` (copied parameters, same flags)."""
    return cls.from_torch(module)


def cell_to_torch(hand: HandLSTMCell) -> nn.LSTMCell:
    """The ``nn.LSTMCell`` equal to ``hand`` (copied parameters, same flags).

    Raises:
        ValueError: if ``hand`` uses variant options that nn.LSTMCell does not have.
    """
    return HandLSTMCell.to_torch(hand)
