"""Every validation of constructor arguments and forward inputs, with nn.LSTM's exception classes.

Each check raises the class torch raises for the same mistake, with a message that says what was
expected, what was got and, where there is one, the fix. Nothing here uses ``assert``.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import torch
from torch import Tensor


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


def check_dropout(dropout: Any, num_layers: int) -> float:
    """Validate nn.LSTM's ``dropout`` and warn, like torch, when it cannot take effect."""
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, numbers.Real)
        or not 0 <= float(dropout) <= 1
    ):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            f"element being zeroed, got {dropout!r}"
        )
    if float(dropout) > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
            f"expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=4,  # check_dropout < check_lstm_args < __init__ < caller
        )
    return float(dropout)


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
    """Validate HandLSTM's constructor arguments in nn.LSTM's order; returns dropout as float.

    ``bidirectional`` is not checked: nn.LSTM takes any value and uses its truth.
    """
    dropout_f = check_dropout(dropout, num_layers)
    check_bool("bias", bias)
    check_bool("batch_first", batch_first)
    check_int("input_size", input_size, 1)
    check_int("hidden_size", hidden_size, 1)
    check_int("num_layers", num_layers, 1)
    if not isinstance(proj_size, int):
        raise TypeError(f"proj_size should be of type int, got: {_type_name(proj_size)}")
    if proj_size < 0:
        raise ValueError(
            "proj_size should be a positive integer or zero to disable projections, "
            f"got {proj_size}"
        )
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
            f"hidden_size={hidden_size}"
        )
    return dropout_f


def check_input(
    input: Tensor,
    expected_dim: int,
    input_size: int,
    weight_dtype: torch.dtype,
    dtype_error: type[Exception] = ValueError,
) -> None:
    """Input dtype, rank and feature size, as nn.LSTM checks them.

    ``expected_dim`` is 3 for (possibly unsqueezed) dense input and 2 for packed data. A dtype
    mismatch is a ValueError for dense input (torch's Python check) and a RuntimeError for
    packed data (torch skips its Python checks there and fails in the GEMM).
    """
    if input.dtype != weight_dtype and not torch.is_autocast_enabled(input.device.type):
        raise dtype_error(
            f"RNN input dtype does not match weight dtype: expected {weight_dtype}, got "
            f"{input.dtype}. Convert input: input.to({weight_dtype}), or convert model: "
            f"model.to({input.dtype})"
        )
    if input.dim() != expected_dim:
        raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
    if input.size(-1) != input_size:
        raise RuntimeError(
            "input.size(-1) must be equal to input_size. "
            f"Expected {input_size}, got {input.size(-1)}"
        )


def check_input_rank(input: Tensor) -> None:
    if input.dim() not in (2, 3):
        raise ValueError(
            f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead: pass "
            "(L, H_in) unbatched, (L, N, H_in), or (N, L, H_in) with batch_first=True"
        )


def check_sequence_length(length: int) -> None:
    if length == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN, got 0")


def check_hx_pair(hx: Any) -> tuple[Tensor, Tensor]:
    """``hx`` must be a pair ``(h_0, c_0)`` of tensors (a tuple or a list)."""
    if isinstance(hx, Tensor):
        raise RuntimeError(
            "LSTM expects hx to be a tuple (h_0, c_0) of two tensors, got a single Tensor"
        )
    if not isinstance(hx, tuple | list):
        raise TypeError(f"LSTM expects hx to be a tuple (h_0, c_0), got {_type_name(hx)}")
    if len(hx) != 2:
        raise RuntimeError(f"lstm expects two hidden states (h_0, c_0), got {len(hx)}")
    h, c = hx
    for name, value in (("h_0", h), ("c_0", c)):
        if not isinstance(value, Tensor):
            raise TypeError(f"LSTM expects {name} to be a Tensor, got {_type_name(value)}")
    return h, c


def check_hx_rank(hx: tuple[Tensor, Tensor], batched: bool) -> None:
    rank = 3 if batched else 2
    if hx[0].dim() != rank or hx[1].dim() != rank:
        kind = "batched 3-D" if batched else "unbatched 2-D"
        raise RuntimeError(
            f"For {kind} input, hx and cx should also be {rank}-D but got "
            f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
        )


def check_hidden_size(hx: Tensor, expected: tuple[int, int, int], index: int) -> None:
    if tuple(hx.shape) != expected:
        raise RuntimeError(
            f"Expected hidden[{index}] size {expected}, got {list(hx.shape)} "
            "(num_layers * num_directions, batch, hidden features)"
        )


def check_hx_dtype(h0: Tensor, dtype: torch.dtype) -> None:
    """h_0 must match the input's dtype (torch fails in its GEMM with a RuntimeError).

    Like nn.LSTM, c_0 is not checked: a c_0 of another floating dtype is promoted.
    """
    if h0.dtype != dtype and not torch.is_autocast_enabled(h0.device.type):
        raise RuntimeError(
            f"Expected hidden[0] dtype {dtype} (the input's), got {h0.dtype}: pass h_0.to({dtype})"
        )


def check_batch_sizes(batch_sizes: Tensor, total: int) -> list[int]:
    """A PackedSequence's batch sizes: positive, non-increasing, summing to the data's rows."""
    sizes = [int(b) for b in batch_sizes.tolist()]
    if not sizes:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN, got 0")
    if any(b <= 0 for b in sizes) or any(a < b for a, b in zip(sizes, sizes[1:], strict=False)):
        raise RuntimeError(
            f"PackedSequence batch_sizes must be positive and non-increasing, got {sizes}"
        )
    if sum(sizes) != total:
        raise RuntimeError(
            f"PackedSequence batch_sizes sum to {sum(sizes)} but its data has {total} rows"
        )
    return sizes


def check_cell_args(input_size: Any, hidden_size: Any, bias: Any) -> None:
    """Validate HandLSTMCell's constructor arguments like nn.LSTMCell.

    TypeError for a non-int size; RuntimeError for a negative one (torch fails creating the
    weight); ``bias`` is taken by its truth, as torch does.
    """
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {_type_name(value)}")
        if value < 0:
            raise RuntimeError(f"{name} must be zero or positive, got {value}")


def check_cell_forward(
    input: Tensor, hx: Any, input_size: int, hidden_size: int, weight_dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """Validate an LSTMCell call in nn.LSTMCell's order; returns ``(h_0, c_0)`` or Nones."""
    if input.dim() not in (1, 2):
        raise ValueError(
            f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead: pass "
            "(N, H_in) or unbatched (H_in,)"
        )
    h0: Tensor | None = None
    c0: Tensor | None = None
    if hx is not None:
        if isinstance(hx, Tensor):  # nn.LSTMCell: a TypeError from lstm_cell's signature
            raise TypeError(
                "LSTMCell expects hx to be a tuple (h_0, c_0) of two tensors, got a single Tensor"
            )
        h0, c0 = check_hx_pair(hx)
        for index, state in enumerate((h0, c0)):
            if state.dim() not in (1, 2):
                raise ValueError(
                    f"LSTMCell: Expected hx[{index}] to be 1D or 2D, got {state.dim()}D instead"
                )
    if input.size(-1) != input_size:
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(-1)} expected {input_size}"
        )
    for index, value in enumerate((h0, c0)):
        if value is None:
            continue
        if value.dim() != input.dim():
            raise RuntimeError(
                f"LSTMCell: Expected hx[{index}] to be {input.dim()}D like the input, "
                f"got {value.dim()}D"
            )
        if input.dim() == 2 and value.size(0) != input.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden{index} batch size "
                f"{value.size(0)}"
            )
        if value.size(-1) != hidden_size:
            raise RuntimeError(
                f"hidden{index} has inconsistent hidden_size: got {value.size(-1)}, "
                f"expected {hidden_size}"
            )
    mismatched = [t.dtype for t in (input, h0) if t is not None and t.dtype != weight_dtype]
    if mismatched and not torch.is_autocast_enabled(input.device.type):
        raise RuntimeError(
            f"LSTMCell expected input and hidden states of dtype {weight_dtype} (the "
            f"weights'), got {mismatched[0]}: convert the input or call model.to({mismatched[0]})"
        )
    return h0, c0
