"""handlstm: a hand-written, transformable, exact drop-in for ``torch.nn.LSTM``."""

from ._lstm import HandLSTM

__all__ = ["HandLSTM"]
__version__ = "0.1.0"
