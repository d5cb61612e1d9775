"""What the LSTM fast path can compute: the capability half of the choice.

The chooser (:mod:`handlstm.engines.choose`) asks :func:`serves` only for an eager call of two
or more steps with the fast path switched on; everything else about the call is checked here:
the variants served (recurrent dropout, weight drop and input dropout act on the inputs;
zoneout, peepholes and layer norm run in :mod:`~handlstm.engines.fast.lstm_variants`), plain
CPU tensors of float32/float64 on one device, no autocast, no forward-mode AD, ``torch.func``
transform, jit tracing, Python dispatch or function mode, no empty tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .lstm_variants import serves as serves_variant

_DTYPES = (torch.float32, torch.float64)
#: Device types served. Only CPU is measured and tested; benchmarks/cuda_check.py adds "cuda"
#: temporarily to check and time the fast path on a GPU.
DEVICE_TYPES = {"cpu"}
_TENSOR_TYPES = (Tensor, nn.Parameter)


def _transforms_active() -> bool:
    """True under forward-mode AD, torch.func transforms, jit tracing or Python modes."""
    if forward_ad._current_level >= 0:  # inside forward_ad.dual_level()
        return True
    if torch._C._are_functorch_transforms_active():
        return True
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if torch._C._is_torch_function_mode_enabled():
        return True
    return _get_current_dispatch_mode() is not None


def serves(
    x: Tensor,
    batch_sizes: Any,
    h0: Tensor,
    c0: Tensor,
    weights: Sequence[Tensor | None],
    variants: Sequence[Any],
) -> bool:
    """Whether the fast path computes this direction (or layer) exactly.

    Args:
        x: the input, ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
        batch_sizes: None for dense input, else the packed batch size of each step.
        h0, c0: initial states ``(N, H_out)`` and ``(N, H_cell)`` (or ``(D, N, *)``).
        weights: ``(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)`` of each direction, one
            after the other, None where absent.
        variants: the :class:`~handlstm.core.lstm.ScanVariant` (or None) of each direction.
    """
    if not all(serves_variant(v) for v in variants):
        return False
    if x.dim() != (3 if batch_sizes is None else 2) or x.numel() == 0 or h0.numel() == 0:
        return False
    dtype, device = x.dtype, x.device
    if dtype not in _DTYPES or device.type not in DEVICE_TYPES:
        return False
    for t in (x, h0, c0, *weights):
        if t is None:
            continue
        if type(t) not in _TENSOR_TYPES or t.dtype != dtype or t.device != device:
            return False
    for k in range(0, len(weights), 5):
        if (weights[k + 2] is None) != (weights[k + 3] is None):
            return False
    if torch.is_autocast_enabled(device.type):
        return False
    return not _transforms_active()
