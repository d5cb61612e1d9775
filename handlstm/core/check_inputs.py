"""Validation of forward inputs (input, hx, PackedSequence), with nn.LSTM's exception classes.

Each check raises the class torch raises for the same mistake, with a message that says what was
expected, what was got and, where there is one, the fix. Nothing here uses ``assert``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _type_name(value: object) -> str:
    return type(value).__name__


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


class StateTypeError(TypeError, AttributeError):
    """``hx`` holds something that is not a tensor.

    nn.LSTM fails on such an ``hx`` with an AttributeError (``'NoneType' object has no attribute
    'dim'``) on some paths and a TypeError on others; this error is both, so ``except`` clauses
    written for either keep working.
    """


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a Tensor of shape {list(value.shape)}"
    if isinstance(value, tuple | list):
        inner = ", ".join(_describe(v) if isinstance(v, Tensor) else _type_name(v) for v in value)
        return f"a {_type_name(value)} of {len(value)} ({inner})"
    return f"a {_type_name(value)}"


_HX_EXPECTED = "LSTM expects hx to be a tuple (h_0, c_0) of two tensors"


def _require_tensors(states: Any) -> None:
    for index, value in enumerate(states):
        if not isinstance(value, Tensor):
            raise StateTypeError(
                f"{_HX_EXPECTED}, got {_type_name(value)} as hx[{index}]: pass "
                "(h_0, c_0) tensors, or hx=None for zeros"
            )


def _state(hx: Any, index: int) -> Tensor:
    """``hx[index]`` as torch reads it, with torch's exception class and a clearer message."""
    if not hasattr(type(hx), "__getitem__"):
        raise TypeError(f"{_HX_EXPECTED}, got {_describe(hx)}")
    try:
        value = hx[index]
    except (IndexError, KeyError, TypeError) as error:
        raise type(error)(f"{_HX_EXPECTED}, got {_describe(hx)}") from error
    if not isinstance(value, Tensor):
        raise StateTypeError(
            f"{_HX_EXPECTED}, got {_type_name(value)} as hx[{index}]: pass (h_0, c_0) tensors, "
            "or hx=None for zeros"
        )
    return value


def check_hx_pair(hx: Any) -> tuple[Tensor, Tensor]:
    """Read ``(h_0, c_0)`` as nn.LSTM does, by indexing ``hx[0]`` and then ``hx[1]``.

    Raises the class that indexing raises in torch (IndexError for fewer than two entries,
    TypeError for an object that cannot be indexed, KeyError for a mapping without 0 and 1) and
    :class:`StateTypeError` for an entry that is not a tensor. A tuple of the wrong length and
    a single tensor pass here; :func:`check_hx_structure` rejects them after the shape checks,
    where torch does.
    """
    h = _state(hx, 0)
    return h, _state(hx, 1)


def check_hx_structure(hx: Any, batched: bool) -> None:
    """After the shape checks: ``hx`` must be a tuple or list of exactly two tensors.

    Not checked for unbatched input: nn.LSTM rebuilds ``(hx[0], hx[1])`` there, so it accepts
    any indexable ``hx`` whose first two entries are the right tensors (for example ``h`` and
    ``c`` stacked in one tensor), and computes the right result from them.
    """
    if not batched:
        return
    if not isinstance(hx, tuple | list):
        raise TypeError(f"{_HX_EXPECTED}, got {_describe(hx)}")
    _require_tensors(hx)
    if len(hx) != 2:
        raise RuntimeError(f"lstm expects two hidden states (h_0, c_0), got {_describe(hx)}")


def check_devices(input: Tensor, states: tuple[Tensor, ...], weight: Tensor) -> None:
    """Input on the parameters' device, states on the input's (RuntimeError, as torch)."""
    if input.device != weight.device:
        raise RuntimeError(
            "Input and parameter tensors are not at the same device, found input tensor at "
            f"{input.device} and parameter tensor at {weight.device}: move one with .to()"
        )
    for index, state in enumerate(states):
        if state.device != input.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and hidden[{index}] at {state.device}: move it with .to()"
            )


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


def _packed_error(message: str) -> RuntimeError:
    return RuntimeError(
        f"Invalid PackedSequence: {message}. Build PackedSequences with pack_padded_sequence or "
        "pack_sequence rather than by hand"
    )


def check_batch_sizes(batch_sizes: Tensor, total: int, hx_given: bool = False) -> list[int]:
    """A PackedSequence's batch sizes: 1-D int64 on the CPU, non-empty, non-increasing, not
    negative, the first positive, summing to the data's rows.

    An empty or 0-d tensor is an IndexError, as in torch. Where nn.LSTM uses ``batch_sizes[0]``
    in Python (to build zero states when ``hx`` is None), a floating one, or a 2-D one whose
    first row is not a single size, is a TypeError, as there; everything else torch rejects in
    C++ with a RuntimeError.
    """
    if batch_sizes.dim() == 0 or batch_sizes.numel() == 0:
        raise IndexError(
            "Invalid PackedSequence: batch_sizes must be a non-empty 1-D tensor, got "
            f"shape {list(batch_sizes.shape)}"
        )
    if not hx_given and (batch_sizes[0].numel() != 1 or not _is_integer(batch_sizes.dtype)):
        raise TypeError(
            "Invalid PackedSequence: batch_sizes must be a 1-D int64 tensor, got "
            f"{batch_sizes.dtype} of shape {list(batch_sizes.shape)}"
        )
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64:
        raise _packed_error(
            f"batch_sizes must be a 1-D int64 tensor, got {batch_sizes.dtype} of shape "
            f"{list(batch_sizes.shape)}"
        )
    sizes = [int(b) for b in batch_sizes.tolist()]
    if not sizes or sizes[0] <= 0:
        raise _packed_error(f"batch_sizes must start with a positive size, got {sizes}")
    if any(b < 0 for b in sizes) or any(a < b for a, b in zip(sizes, sizes[1:], strict=False)):
        raise _packed_error(f"batch_sizes must be non-increasing and >= 0, got {sizes}")
    if sum(sizes) != total:
        raise _packed_error(f"batch_sizes sum to {sum(sizes)} but the data has {total} rows")
    return sizes


def _is_integer(dtype: torch.dtype) -> bool:
    """Whether torch.zeros takes a 0-d tensor of ``dtype`` as a size (bool included)."""
    return not (dtype.is_floating_point or dtype.is_complex)


def check_permutation(name: str, indices: Tensor | None, batch: int) -> None:
    """``sorted_indices``/``unsorted_indices``: None or a permutation of ``range(batch)``."""
    if indices is None:
        return
    if indices.dtype not in (torch.int64, torch.int32):
        raise _packed_error(f"{name} must be an int64 tensor, got {indices.dtype}")
    if indices.dim() != 1 or indices.numel() != batch:
        raise _packed_error(
            f"{name} must be 1-D with one entry per sequence ({batch}), got shape "
            f"{list(indices.shape)}"
        )
    if not torch.equal(indices.sort().values.cpu(), torch.arange(batch, dtype=indices.dtype)):
        raise _packed_error(
            f"{name} must be a permutation of 0..{batch - 1}, got {indices.tolist()}"
        )


def check_packed_hx(hx: Any, sorted_indices: Tensor | None) -> None:
    """``hx`` for packed input, where nn.LSTM has no Python checks.

    With ``sorted_indices`` torch first permutes ``hx[0]`` and then ``hx[1]`` along dim 1
    (indexing errors as in :func:`check_hx_pair`, IndexError for a state of fewer than 2
    dimensions, RuntimeError for an index past its batch); without, it hands ``hx`` to C++, which
    wants a tuple or list of tensors (TypeError) of length two (RuntimeError). In C++, states of
    fewer than 3 dimensions are an IndexError, more a RuntimeError.
    """
    if sorted_indices is not None:
        pair = []
        for index in (0, 1):
            state = _state(hx, index)
            if state.dim() < 2:
                raise IndexError(
                    f"For packed input, hx[{index}] must be 3-D (num_layers * num_directions, "
                    f"batch, hidden), got {state.dim()}-D"
                )
            if sorted_indices.numel() and int(sorted_indices.max()) >= state.size(1):
                raise RuntimeError(
                    f"For packed input, hx[{index}] must have one column per sequence, got "
                    f"shape {list(state.shape)} for sorted_indices {sorted_indices.tolist()}"
                )
            pair.append(state)
        h, c = pair
    else:
        if not isinstance(hx, tuple | list):
            raise TypeError(f"{_HX_EXPECTED}, got {_describe(hx)}")
        _require_tensors(hx)
        if len(hx) != 2:
            raise RuntimeError(f"lstm expects two hidden states (h_0, c_0), got {_describe(hx)}")
        h, c = hx
    for index, state in enumerate((h, c)):
        if state.dim() < 3:
            raise IndexError(
                f"For packed input, hx[{index}] must be 3-D (num_layers * num_directions, "
                f"batch, hidden), got {state.dim()}-D"
            )
    for index, state in enumerate((h, c)):
        if state.dim() > 3:
            raise RuntimeError(
                f"For packed input, hx[{index}] must be 3-D (num_layers * num_directions, "
                f"batch, hidden), got {state.dim()}-D"
            )


def check_packed(input: Any, hx: Any, input_size: int, weight_dtype: torch.dtype) -> list[int]:
    """Validate a PackedSequence (and ``hx`` against it) in nn.LSTM's order.

    Returns the batch sizes as a list of ints.
    """
    data, batch_sizes, sorted_indices, unsorted_indices = input
    if hx is None:
        check_batch_sizes(batch_sizes, data.size(0) if data.dim() else 0, hx_given=False)
    else:
        check_packed_hx(hx, sorted_indices)
    check_input(data, 2, input_size, weight_dtype, dtype_error=RuntimeError)
    sizes = check_batch_sizes(batch_sizes, data.size(0), hx_given=True)
    check_permutation("sorted_indices", sorted_indices, sizes[0])
    check_permutation("unsorted_indices", unsorted_indices, sizes[0])
    if (
        sorted_indices is not None
        and unsorted_indices is not None
        and not torch.equal(sorted_indices[unsorted_indices].cpu(), torch.arange(sizes[0]))
    ):
        raise _packed_error("unsorted_indices must be the inverse of sorted_indices")
    return sizes


def check_cell_forward(
    input: Tensor,
    hx: Any,
    input_size: int,
    hidden_size: int,
    weight_dtype: torch.dtype,
    weight: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Validate an LSTMCell call in nn.LSTMCell's order; returns ``(h_0, c_0)`` or Nones.

    nn.LSTMCell iterates ``hx`` checking each entry's rank (TypeError for something that cannot
    be iterated, :class:`StateTypeError` for a non-tensor entry, ValueError for a bad rank),
    reads ``hx[0]`` and ``hx[1]`` for unbatched input (IndexError), then hands ``hx`` to C++:
    a tuple or list (TypeError) of two tensors (RuntimeError) whose batch and hidden sizes, dtype
    and device match (RuntimeError).
    """
    if input.dim() not in (1, 2):
        raise ValueError(
            f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead: pass "
            "(N, H_in) or unbatched (H_in,)"
        )
    h0: Tensor | None = None
    c0: Tensor | None = None
    batched = input.dim() == 2
    if hx is not None:
        if not hasattr(type(hx), "__iter__"):
            raise TypeError(f"{_HX_EXPECTED}, got {_describe(hx)}")
        for index, state in enumerate(hx):
            if not isinstance(state, Tensor):
                raise StateTypeError(
                    f"{_HX_EXPECTED}, got {_type_name(state)} as hx[{index}]: pass (h_0, c_0) "
                    "tensors, or hx=None for zeros"
                )
            if state.dim() not in (1, 2):
                raise ValueError(
                    f"LSTMCell: Expected hx[{index}] to be 1D or 2D, got {state.dim()}D instead"
                )
        if batched:
            if not isinstance(hx, tuple | list):
                raise TypeError(f"{_HX_EXPECTED}, got {_describe(hx)}")
            if len(hx) != 2:
                raise RuntimeError(f"LSTMCell expects two hidden states, got {_describe(hx)}")
        h0, c0 = check_hx_pair(hx)
    if input.size(-1) != input_size:
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(-1)} expected {input_size}"
        )
    for index, value in enumerate((h0, c0)):
        if value is None:
            continue
        if batched and value.dim() == 1 and value.size(0) == input.size(0):
            # torch compares batch sizes first, then reads size(1): an IndexError for 1-D hx
            raise IndexError(
                f"LSTMCell: hx[{index}] must be 2-D ({input.size(0)}, {hidden_size}) for batched "
                f"input, got 1-D of shape {tuple(value.shape)}"
            )
        if batched and value.size(0) != input.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden{index} batch size "
                f"{value.size(0)}"
            )
        if value.dim() != input.dim():
            # torch: a 1-D state for batched input fails on size(1) (IndexError)
            error = IndexError if batched else RuntimeError
            raise error(
                f"LSTMCell: Expected hx[{index}] to be {input.dim()}D like the input, "
                f"got {value.dim()}D"
            )
        if value.size(-1) != hidden_size:
            raise RuntimeError(
                f"hidden{index} has inconsistent hidden_size: got {value.size(-1)}, "
                f"expected {hidden_size}"
            )
    if weight is not None:
        check_devices(input, tuple(t for t in (h0, c0) if t is not None), weight)
    mismatched = [t.dtype for t in (input, h0) if t is not None and t.dtype != weight_dtype]
    if mismatched and not torch.is_autocast_enabled(input.device.type):
        raise RuntimeError(
            f"LSTMCell expected input and hidden states of dtype {weight_dtype} (the "
            f"weights'), got {mismatched[0]}: convert the input or call model.to({mismatched[0]})"
        )
    return h0, c0
