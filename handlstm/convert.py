"""Conversion between torch's LSTMs and handlstm's, one module at a time or a whole model at once.

* :func:`lstm_from_torch` / :func:`cell_from_torch` (``HandLSTM.from_torch``,
  ``HandLSTMCell.from_torch``) build an equal, independent copy: same configuration, device,
  dtype, ``training`` flag, ``requires_grad`` flags and parameter values.
* :func:`lstm_to_torch` / :func:`cell_to_torch` (``.to_torch()``) go back, refusing modules with
  variant options nn.LSTM does not have.
* :func:`swap_lstms` replaces every LSTM inside a model in place, handing the *same*
  ``nn.Parameter`` objects to the new modules, so optimizers and checkpoints keep working.

New modules are built on the ``meta`` device first, so a conversion neither allocates throwaway
weights nor consumes the global random number generator.
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

import torch
from torch import nn

from ._cell_module import HandLSTMCell
from ._lstm import HandLSTM

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
]

M = TypeVar("M", bound=nn.Module)

LSTM_KEYS = (
    "input_size",
    "hidden_size",
    "num_layers",
    "bias",
    "batch_first",
    "dropout",
    "bidirectional",
    "proj_size",
)
CELL_KEYS = ("input_size", "hidden_size", "bias")


def lstm_config(module: nn.Module) -> dict[str, Any]:
    """The constructor arguments of an ``nn.LSTM`` or ``HandLSTM`` (no device, no dtype)."""
    return {key: getattr(module, key) for key in LSTM_KEYS}


def cell_config(module: nn.Module) -> dict[str, Any]:
    """The constructor arguments of an ``nn.LSTMCell`` or ``HandLSTMCell``."""
    return {key: getattr(module, key) for key in CELL_KEYS}


def _first_parameter(module: nn.Module) -> torch.Tensor:
    for param in module.parameters():
        return param
    raise ValueError(f"{type(module).__name__} has no parameters to take a device and dtype from")


def _build_on_meta(cls: type[M], config: dict[str, Any], dtype: torch.dtype) -> M:
    """``cls(**config)`` with meta tensors: no memory, no draw from the random generator."""
    with warnings.catch_warnings():  # the source module already warned about its own config
        warnings.filterwarnings("ignore", message="dropout option adds dropout")
        return cls(**config, device="meta", dtype=dtype)


def _copy(module: nn.Module, cls: type[M], config: dict[str, Any]) -> M:
    """``cls(**config)`` on ``module``'s device and dtype, holding copies of its parameters."""
    reference = _first_parameter(module)
    new = _build_on_meta(cls, config, reference.dtype)
    new = new.to_empty(device=reference.device)
    # strict: every parameter and buffer of `new` is overwritten, none keeps to_empty's garbage.
    new.load_state_dict(module.state_dict(), strict=True)
    params = dict(module.named_parameters())
    for name, param in new.named_parameters():
        param.requires_grad_(params[name].requires_grad)
    new.train(module.training)
    return new


def _refuse_variants(module: nn.Module, target: str) -> None:
    options = module.variant_options()  # type: ignore[operator]
    if options:
        listed = ", ".join(f"{key}={value!r}" for key, value in options.items())
        raise ValueError(
            f"{type(module).__name__} with variant options ({listed}) has no {target} "
            "equivalent: to_torch() would silently change its behaviour. Build it without "
            "these options to convert it."
        )


def lstm_from_torch(module: nn.LSTM, cls: type[HandLSTM] = HandLSTM) -> HandLSTM:
    """A ``cls`` equal to the ``nn.LSTM`` ``module`` (copied parameters, same flags)."""
    if not isinstance(module, nn.LSTM):
        raise TypeError(f"expected an nn.LSTM, got {type(module).__name__}")
    return _copy(module, cls, lstm_config(module))


def lstm_to_torch(hand: HandLSTM) -> nn.LSTM:
    """The ``nn.LSTM`` equal to ``hand`` (copied parameters, same flags).

    Raises:
        ValueError: if ``hand`` uses variant options that nn.LSTM does not have.
    """
    _refuse_variants(hand, "nn.LSTM")
    return _copy(hand, nn.LSTM, lstm_config(hand))


def cell_from_torch(module: nn.LSTMCell, cls: type[HandLSTMCell] = HandLSTMCell) -> HandLSTMCell:
    """A ``cls`` equal to the ``nn.LSTMCell`` ``module`` (copied parameters, same flags)."""
    if not isinstance(module, nn.LSTMCell):
        raise TypeError(f"expected an nn.LSTMCell, got {type(module).__name__}")
    return _copy(module, cls, cell_config(module))


def cell_to_torch(hand: HandLSTMCell) -> nn.LSTMCell:
    """The ``nn.LSTMCell`` equal to ``hand`` (copied parameters, same flags).

    Raises:
        ValueError: if ``hand`` uses variant options that nn.LSTMCell does not have.
    """
    _refuse_variants(hand, "nn.LSTMCell")
    return _copy(hand, nn.LSTMCell, cell_config(hand))


# Checkpoint groups and swapping live in their own modules; these names stay importable here.
from ._checkpoint import LSTMGroup, find_lstm_groups  # noqa: E402
from ._swap import Skipped, Swapped, SwapReport, swap_lstms  # noqa: E402
