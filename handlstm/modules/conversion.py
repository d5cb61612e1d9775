"""Conversion of one module to and from its torch twin: configurations and the copy.

``HandLSTM.from_torch`` / ``HandLSTMCell.from_torch`` build an equal, independent copy (same
configuration, device, dtype, ``training`` flag, ``requires_grad`` flags and parameter values)
with :func:`copy_module`; ``.to_torch()`` goes back, refusing modules with variant options torch
does not have (:func:`refuse_variants`). Swapping inside a whole model is
:mod:`handlstm.interop.swap`; the public functions are in :mod:`handlstm.convert`.

New modules are built on the ``meta`` device first, so a conversion neither allocates throwaway
weights nor consumes the global random number generator.
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

import torch
from torch import nn

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


def build_on_meta(cls: type[M], config: dict[str, Any], dtype: torch.dtype) -> M:
    """``cls(**config)`` with meta tensors: no memory, no draw from the random generator."""
    with warnings.catch_warnings():  # the source module already warned about its own config
        warnings.filterwarnings("ignore", message="dropout option adds dropout")
        return cls(**config, device="meta", dtype=dtype)


def copy_module(module: nn.Module, cls: type[M], config: dict[str, Any]) -> M:
    """``cls(**config)`` on ``module``'s device and dtype, holding copies of its parameters."""
    reference = _first_parameter(module)
    new = build_on_meta(cls, config, reference.dtype)
    new = new.to_empty(device=reference.device)
    # strict: every parameter and buffer of `new` is overwritten, none keeps to_empty's garbage.
    new.load_state_dict(module.state_dict(), strict=True)
    params = dict(module.named_parameters())
    for name, param in new.named_parameters():
        param.requires_grad_(params[name].requires_grad)
    new.train(module.training)
    return new


def refuse_variants(module: nn.Module, target: str) -> None:
    options = module.variant_options()  # type: ignore[operator]
    if options:
        listed = ", ".join(f"{key}={value!r}" for key, value in options.items())
        raise ValueError(
            f"{type(module).__name__} with variant options ({listed}) has no {target} "
            "equivalent: to_torch() would silently change its behaviour. Build it without "
            "these options to convert it."
        )
