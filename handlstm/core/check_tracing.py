"""Checks of what forward is asked beyond nn.LSTM: ``lengths=`` for a padded batch, and
TorchScript (refused, naming torch.export), with torch's exception classes.
"""

from __future__ import annotations

import torch
from torch import Tensor

_TORCHSCRIPT_MESSAGE = (
    "HandLSTM does not support TorchScript ({how}): its time loop is Python, so a trace would "
    "serve only the traced sequence length and scripting cannot compile it. Use "
    "torch.export.export(model, args, dynamic_shapes=...) for one program at every length "
    "(and torch.onnx.export(..., dynamo=True) for ONNX, torch.compile for speed); see "
    "docs/works_with.md"
)


def check_not_torchscript() -> None:
    """Refuse ``torch.jit.trace`` at trace time, naming the way that works (torch.export)."""
    if torch.jit.is_tracing():
        raise RuntimeError(_TORCHSCRIPT_MESSAGE.format(how="torch.jit.trace"))


def refuse_script() -> None:
    """Called by ``torch.jit.script`` (through ``__prepare_scriptable__``): refuse it clearly."""
    raise RuntimeError(_TORCHSCRIPT_MESSAGE.format(how="torch.jit.script"))


def check_lengths(input: object, lengths: object) -> Tensor:
    """Validate ``forward(..., lengths=)``: a ``(N,)`` integer tensor for a padded batch.

    Returns:
        ``lengths`` as a tensor (a list or tuple of ints is converted).

    Raises:
        ValueError: packed or unbatched input, a wrong shape, or (eagerly) a length outside
            ``[0, L]``. TypeError: not integers.
    """
    if not isinstance(input, Tensor):
        raise ValueError(
            "lengths= is for a padded batch tensor, got a "
            f"{type(input).__name__} (a PackedSequence carries its own lengths)"
        )
    if input.dim() != 3:
        raise ValueError(
            f"lengths= needs a batched input of 3 dimensions, got {input.dim()} dimensions"
        )
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer tensor, got dtype {lengths.dtype}")
    return lengths


def check_length_values(lengths: Tensor, steps: int, batch: int) -> None:
    """``lengths`` is ``(N,)`` and (eagerly: values are data under tracing) within ``[0, L]``."""
    if lengths.dim() != 1 or lengths.size(0) != batch:
        raise ValueError(
            f"lengths: expected shape ({batch},), one length per sequence, "
            f"got {tuple(lengths.shape)}"
        )
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > steps):
        raise ValueError(
            f"lengths: expected every length in [0, {steps}] (the padded sequence length), "
            f"got min {int(lengths.min())} and max {int(lengths.max())}"
        )
