"""handlstm: a hand-written, transformable, exact drop-in for ``torch.nn.LSTM``."""

from ._cell_module import HandLSTMCell
from ._lstm import HandLSTM

__all__ = ["HandLSTM", "HandLSTMCell"]
__version__ = "0.1.0"
