"""Validation of forward inputs of the one-state kinds (nn.GRU, nn.RNN and their cells), with
torch's exception classes, in torch's order.

The input checks torch shares with nn.LSTM (dtype, rank, feature size, devices, batch sizes)
are :mod:`handlstm.core.check_inputs`'; this module holds what differs: ``hx`` is one tensor.
Each message says what was expected and what was got. Nothing here uses ``assert``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .check_inputs import StateTypeError


def _require_tensor(hx: Any, name: str, what: str) -> Tensor:
    """``hx`` must be a tensor: torch calls ``hx.<what>()`` on it (an AttributeError)."""
    if not isinstance(hx, Tensor):
        raise StateTypeError(
            f"{name} expects hx to be one tensor h_0, got a {type(hx).__name__} (torch calls "
            f"hx.{what}() on it): pass a tensor, or hx=None for zeros"
        )
    return hx


def check_input_rank(input: Tensor, name: str) -> None:
    """Dense input must be 2-D (unbatched) or 3-D (ValueError)."""
    if input.dim() not in (2, 3):
        raise ValueError(
            f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead: pass "
            "(L, H_in) unbatched, (L, N, H_in), or (N, L, H_in) with batch_first=True"
        )


def check_hx_rank(hx: Any, batched: bool, name: str) -> Tensor:
    """``h_0`` for dense input: a tensor of the input's rank (RuntimeError)."""
    h0 = _require_tensor(hx, name, "dim")
    rank = 3 if batched else 2
    if h0.dim() != rank:
        kind = "batched 3-D" if batched else "unbatched 2-D"
        raise RuntimeError(
            f"For {kind} input, hx should also be {rank}-D but got {h0.dim()}-D tensor"
        )
    return h0


def check_hidden_size(hx: Tensor, expected: tuple[int, int, int]) -> None:
    if tuple(hx.shape) != expected:
        raise RuntimeError(
            f"Expected hidden size {expected}, got {list(hx.shape)} "
            "(num_layers * num_directions, batch, hidden_size)"
        )


def sorted_packed_hx(hx: Any, sorted_indices: Tensor | None, name: str) -> Tensor:
    """``h_0`` for packed input, permuted into the packed (sorted) batch order as torch does:
    ``hx.index_select(1, sorted_indices)`` (an IndexError for fewer than 2 dimensions, a
    RuntimeError for an index past its batch)."""
    h0 = _require_tensor(hx, name, "index_select" if sorted_indices is not None else "size")
    if sorted_indices is None:
        return h0
    if h0.dim() < 2:
        raise IndexError(
            f"For packed input, hx must be 3-D (num_layers * num_directions, batch, "
            f"hidden_size), got {h0.dim()}-D of shape {list(h0.shape)}"
        )
    if sorted_indices.numel() and int(sorted_indices.max()) >= h0.size(1):
        raise RuntimeError(
            f"For packed input, hx must have one column per sequence, got shape "
            f"{list(h0.shape)} for sorted_indices {sorted_indices.tolist()}"
        )
    return h0.index_select(1, sorted_indices)


def check_hx_dtype(h0: Tensor, dtype: torch.dtype) -> None:
    """h_0 must match the input's dtype (torch fails in its GEMM with a RuntimeError)."""
    if h0.dtype != dtype and not torch.is_autocast_enabled(h0.device.type):
        raise RuntimeError(
            f"Expected hx dtype {dtype} (the input's), got {h0.dtype}: pass h_0.to({dtype})"
        )


def check_cell_forward(
    input: Tensor, hx: Any, input_size: int, hidden_size: int, weight: Tensor, name: str
) -> Tensor | None:
    """Validate a GRUCell or RNNCell call in torch's order; returns ``h_0`` or None.

    Ranks first (ValueError), then torch's C++ checks on the batched ``(N, H_in)`` input and
    ``(N, H)`` state: the feature size, the batch size, the hidden size (all RuntimeError; an
    IndexError for a 1-D state of a batched input whose length is the batch), devices and
    dtypes (RuntimeError).
    """
    if input.dim() not in (1, 2):
        raise ValueError(
            f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead: pass "
            "(N, H_in) or unbatched (H_in,)"
        )
    h0 = None
    if hx is not None:
        h0 = _require_tensor(hx, name, "dim")
        if h0.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {h0.dim()}D instead")
    if input.size(-1) != input_size:
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(-1)} expected {input_size}"
        )
    batched = input.dim() == 2
    if h0 is not None:
        batch = input.size(0) if batched else 1
        if batched and h0.size(0) != batch:
            raise RuntimeError(
                f"Input batch size {batch} doesn't match hidden0 batch size {h0.size(0)}"
            )
        if batched and h0.dim() == 1:
            raise IndexError(
                f"{name}: hx must be 2-D ({batch}, {hidden_size}) for batched input, got 1-D "
                f"of shape {tuple(h0.shape)}"
            )
        if not batched and h0.dim() == 2:
            got = h0.size(0)
            raise RuntimeError(
                f"hidden0 has inconsistent hidden_size: got {got}, expected {hidden_size} "
                f"({name} expects a 1-D hx ({hidden_size},) for unbatched input, got "
                f"{tuple(h0.shape)})"
            )
        if h0.size(-1) != hidden_size:
            raise RuntimeError(
                f"hidden0 has inconsistent hidden_size: got {h0.size(-1)}, expected {hidden_size}"
            )
    for tensor in (input, h0):
        if tensor is not None and tensor.device != weight.device:
            raise RuntimeError(
                f"Tensor on device {weight.device} is not on the expected device "
                f"{tensor.device}! ({name}'s parameters are on {weight.device}: move the "
                "input and hx with .to())"
            )
    mismatched = [t.dtype for t in (input, h0) if t is not None and t.dtype != weight.dtype]
    if mismatched and not torch.is_autocast_enabled(input.device.type):
        raise RuntimeError(
            f"{name} expected input and hx of dtype {weight.dtype} (the weights'), got "
            f"{mismatched[0]}: convert them or call model.to({mismatched[0]})"
        )
    return h0
