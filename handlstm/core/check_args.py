"""Validation of constructor arguments, with torch's exception classes (torch 2.13's rules).

Each check raises the class torch raises for the same mistake, with a message that says what was
expected, what was got and, where there is one, the fix. Nothing here uses ``assert``.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import Any

import torch


def _type_name(value: object) -> str:
    return type(value).__name__


def check_int(name: str, value: Any, minimum: int) -> None:
    """Require an ``int`` (bools count, as in torch) that is at least ``minimum``.

    TypeError for a non-int, ValueError for a value below ``minimum``.
    """
    if not isinstance(value, int):
        raise TypeError(f"{name} should be of type int, got: {_type_name(value)}")
    if value < minimum:
        bound = "greater than zero" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {_type_name(value)}")


def _truth(name: str, value: Any) -> bool:
    """``bool(value)``, as torch takes ``bidirectional`` and the cell's ``bias``; a value without
    one truth (a tensor of several elements) raises bool()'s class with the name in the message."""
    try:
        return bool(value)
    except Exception as error:  # noqa: BLE001 - re-raised with the same class
        raise type(error)(f"{name} is taken by its truth value, got {value!r}: {error}") from None


_DIMENSION = "an int, a numpy integer or an integer tensor of one element"


def _probe(shape: tuple[Any, ...], arguments: str) -> None:
    """Create the meta tensor torch creates for ``shape``: the same acceptance, no memory.

    torch does not check these sizes itself; ``torch.empty`` does, so its exception class is
    torch's answer. The message names the constructor ``arguments`` the shape is made of.
    """
    try:
        torch.empty(shape, device="meta")
    except (TypeError, RuntimeError) as error:
        reason = str(error).splitlines()[0].split("  (Could this")[0] if str(error) else ""
        raise type(error)(
            f"expected {arguments} to be sizes torch accepts ({_DIMENSION}, at least 0), "
            f"got a weight shape torch cannot make: {shape!r} ({reason or type(error).__name__})"
        ) from None


def _check_dropout_range(dropout: Any, message: str) -> None:
    if (
        not isinstance(dropout, numbers.Number)
        or isinstance(dropout, bool)
        or not 0 <= dropout <= 1  # type: ignore[operator]
    ):
        raise ValueError(message)


def _warn_dropout(dropout: Any, num_layers: Any) -> None:
    if dropout > 0 and num_layers == 1:  # torch's very expression (a tensor num_layers included)
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
            f"expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=4,  # _warn_dropout < check_lstm_args < __init__ < caller
        )


def _compared(name: str, value: Any, comparison: Callable[[], Any]) -> bool:
    """torch's comparison of ``value``, whose failure (a str, None, a tensor of several
    elements) raises the same class with a message naming the argument."""
    try:
        return bool(comparison())
    except (TypeError, RuntimeError) as error:
        raise type(error)(
            f"{name} should be {_DIMENSION}, got: {_type_name(value)} {value!r} ({error})"
        ) from None


def check_lstm_args(
    input_size: Any,
    hidden_size: Any,
    num_layers: Any,
    bias: Any,
    batch_first: Any,
    dropout: Any,
    bidirectional: Any,
    proj_size: Any,
) -> float:
    """Validate HandLSTM's constructor arguments with nn.LSTM's rules, in its order.

    Returns ``dropout`` as a float. torch 2.13's rules, copied: ``float(dropout)``, the truth of
    ``bidirectional`` (any value), dropout a number in [0, 1], ``bias`` and ``batch_first``
    bools, ``input_size`` and ``hidden_size`` ints (bools count) above 0, ``num_layers`` above 0
    and usable as ``range(num_layers)`` (so numpy integers and integer tensors of one element
    pass), ``proj_size`` not negative, below ``hidden_size`` and, unless it equals 0, a size
    ``torch.empty`` accepts. Values are stored as given, as torch stores them.
    """
    message = (
        "dropout should be a number in range [0, 1] representing the probability of an "
        f"element being zeroed, got {dropout!r}"
    )
    try:
        dropout_f = float(dropout)
    except TypeError as error:
        raise TypeError(message) from error
    except ValueError as error:
        raise ValueError(message) from error
    num_directions = 2 if _truth("bidirectional", bidirectional) else 1
    _check_dropout_range(dropout, message)
    _warn_dropout(dropout, num_layers)
    check_bool("bias", bias)
    check_bool("batch_first", batch_first)
    check_int("input_size", input_size, 1)
    check_int("hidden_size", hidden_size, 1)
    if _compared("num_layers", num_layers, lambda: num_layers <= 0):
        raise ValueError(f"num_layers must be greater than zero, got {num_layers!r}")
    if _compared("proj_size", proj_size, lambda: proj_size < 0):
        raise ValueError(
            "proj_size should be a positive integer or zero to disable projections, "
            f"got {proj_size!r}"
        )
    if _compared("proj_size", proj_size, lambda: proj_size >= hidden_size):
        raise ValueError(
            f"proj_size has to be smaller than hidden_size, got proj_size={proj_size!r} and "
            f"hidden_size={hidden_size}"
        )
    try:
        layers = range(num_layers)
    except TypeError:
        raise TypeError(
            f"num_layers should be {_DIMENSION}, got: {_type_name(num_layers)} {num_layers!r}"
        ) from None
    _probe_lstm_shapes(layers, hidden_size, input_size, num_directions, proj_size)
    return dropout_f


def _probe_lstm_shapes(
    layers: range, hidden_size: int, input_size: int, num_directions: int, proj_size: Any
) -> None:
    """nn.LSTM's weight shapes for its first two layers (the others repeat the second)."""
    gate_size = 4 * hidden_size
    real_hidden_size = proj_size if proj_size > 0 else hidden_size
    for layer in layers[:2]:
        layer_input = input_size if layer == 0 else real_hidden_size * num_directions
        _probe((gate_size, layer_input), "input_size, proj_size")
        _probe((gate_size, real_hidden_size), "hidden_size, proj_size")
        if not proj_size == 0:  # noqa: SIM201 - torch's test, for values that are neither
            _probe((proj_size, hidden_size), "proj_size")


def check_cell_args(input_size: Any, hidden_size: Any, bias: Any, gates: int = 4) -> None:
    """Validate HandLSTMCell's constructor arguments with nn.LSTMCell's rules (torch 2.13).

    nn.LSTMCell checks nothing itself: it creates ``(4*hidden_size, input_size)`` and
    ``(4*hidden_size, hidden_size)`` weights, so any size ``torch.empty`` takes is accepted
    (ints, bools, numpy integers, integer tensors of one element such as
    ``torch.prod(torch.tensor(shape))``, zero), a negative one is a RuntimeError, a float a
    TypeError; ``bias`` is taken by its truth. Values are stored as given, as torch stores them.
    ``gates``: the gate blocks of the cell kind (4 LSTM, 3 GRU, 1 Elman), as nn.RNNCellBase's
    ``num_chunks``.
    """
    try:
        gate_size = gates * hidden_size
    except TypeError:
        raise TypeError(
            f"hidden_size should be {_DIMENSION}, got: {_type_name(hidden_size)} {hidden_size!r}"
        ) from None
    sizes = f"input_size={input_size!r}, hidden_size={hidden_size!r}"
    _probe((gate_size, input_size), sizes)
    _probe((gate_size, hidden_size), sizes)
    if _truth("bias", bias):
        _probe((gate_size,), sizes)


def check_single_state_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Keywords nn.GRU and nn.RNN do not take: ``proj_size`` (any value, even 0) is a
    ValueError, as torch says it; anything else a TypeError, as an unknown keyword is."""
    if "proj_size" in kwargs:
        raise ValueError(
            "proj_size argument is only supported for LSTM, not RNN or GRU: got "
            f"proj_size={kwargs['proj_size']!r} for {name}; use HandLSTM for a projection"
        )
    if kwargs:
        unknown = ", ".join(sorted(kwargs))
        raise TypeError(f"{name}.__init__() got an unexpected keyword argument: {unknown}")


def check_nonlinearity(nonlinearity: Any) -> None:
    """nn.RNN's ``nonlinearity``: ``'tanh'`` or ``'relu'`` (ValueError otherwise)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
