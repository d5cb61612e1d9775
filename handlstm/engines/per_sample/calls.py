"""HandLSTM's and HandLSTMCell's forward calls in per-sample mode: each call one
:class:`~handlstm.engines.per_sample.blocks.BlockRun`, every linear op on a tape.

The module is duck-typed (its options, parameters and forward), so this layer never imports
:mod:`handlstm.modules`: HandLSTM's layer loop reads the tape this sets for the call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ...core import variants as _variants
from ...core.kinds import DirectionWeights
from ...core.lstm import ScanVariant, input_gates, lstm_step
from .blocks import BlockRun, Rows
from .tape import ModuleTape, Sink

#: Variant options whose own parameters (or weight transform) the tape does not cover yet.
UNSUPPORTED_OPTIONS = ("weight_drop",)


def check_options(module: nn.Module) -> None:
    """NotImplementedError for the variant options the tape does not cover."""
    options = module.options  # type: ignore[union-attr]
    used = [name for name in UNSUPPORTED_OPTIONS if getattr(options, name, None)]
    if used:
        raise NotImplementedError(
            f"{type(module).__name__}: per-sample gradients (opacus) support every option but "
            f"{', '.join(UNSUPPORTED_OPTIONS)}; got {', '.join(used)}. Use grad_sample_mode "
            "'hooks', 'functorch' or 'ghost' without them, or torch.func.vmap(grad(...))."
        )


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _pair(hx: Any) -> bool:
    return isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(t, Tensor) for t in hx)


def lstm_forward(
    module: nn.Module, input: Tensor | PackedSequence, hx: Any, sink: Sink, **kwargs: Any
) -> tuple[ModuleTape, BlockRun, Any]:
    """HandLSTM.forward as one :class:`BlockRun`, every linear op on a tape (returns the tape,
    the run and forward's result)."""
    check_options(module)
    m: Any = module
    packed = isinstance(input, PackedSequence)
    data: Tensor
    if isinstance(input, PackedSequence):
        sizes = input.batch_sizes
        batch = int(sizes[0]) if sizes.numel() else 0
        unsorted = input.unsorted_indices
        data = input.data
        steps = torch.arange(batch, device=data.device)
        rows_data = Rows(torch.cat([steps[: int(b)] for b in sizes]) if batch else steps, 0)
        if unsorted is None:
            rows_state = Rows(steps, 1, ordered=True)
        else:
            rows_state = Rows(unsorted.to(data.device), 1)
    else:
        unsorted, data = None, input
        batched = data.dim() == 3
        batch = (data.size(0) if m.batch_first else data.size(1)) if batched else 1
        steps = torch.arange(batch, device=data.device)
        rows_data = Rows(steps if batched else None, 0 if m.batch_first else 1, ordered=True)
        rows_state = Rows(steps if batched else None, 1, ordered=True)
    tape = ModuleTape(trainable(module), batch, unsorted, sink)
    differentiable = _pair(hx)
    h0, c0 = hx if differentiable else (None, None)

    def fn(data: Tensor, h0: Tensor | None, c0: Tensor | None) -> tuple[Tensor, ...]:
        x: Any = data
        if packed:
            assert isinstance(input, PackedSequence)
            x = PackedSequence(
                data, input.batch_sizes, input.sorted_indices, input.unsorted_indices
            )
        state = (h0, c0) if differentiable else hx
        module.__dict__["_per_sample_tape"] = tape  # read by HandLSTM._run_layers for this call
        try:
            out, (h_n, c_n) = type(module).forward(module, x, state, **kwargs)
        finally:
            del module.__dict__["_per_sample_tape"]
        return (out.data if packed else out, h_n, c_n)

    run = BlockRun(
        tape, fn, (rows_data, rows_state, rows_state), (rows_data, rows_state, rows_state)
    )
    out, h_n, c_n = run.apply((data, h0, c0))
    if isinstance(input, PackedSequence):
        sequence = PackedSequence(
            out, input.batch_sizes, input.sorted_indices, input.unsorted_indices
        )
        return tape, run, (sequence, (h_n, c_n))
    return tape, run, (out, (h_n, c_n))


def cell_forward(
    module: nn.Module, input: Tensor, hx: Any, sink: Sink
) -> tuple[ModuleTape, BlockRun, tuple[Tensor, Tensor]]:
    """HandLSTMCell.forward as one :class:`BlockRun`, its two linear ops on a tape."""
    check_options(module)
    m: Any = module
    batched = input.dim() == 2
    n = input.size(0) if batched else 1
    tape = ModuleTape(trainable(module), n, None, sink)
    rows = Rows(torch.arange(n, device=input.device) if batched else None, 0, ordered=True)
    differentiable = _pair(hx)
    h0, c0 = hx if differentiable else (None, None)

    def fn(input: Tensor, h0: Tensor | None, c0: Tensor | None) -> tuple[Tensor, ...]:
        x, h0, c0, batched = m._batched_inputs(input, (h0, c0) if differentiable else hx)
        weights = DirectionWeights(m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh, None)
        ln_ih = m.ln_weight_ih if m.options.layer_norm else None
        variant = ScanVariant(
            cell=_variants.cell_variant(m.options, lambda kind: getattr(m, kind)), ln_ih=ln_ih
        )
        weights, variant = tape.direction(weights, variant, None)
        bias = None
        if weights.bias_ih is not None and weights.bias_hh is not None:
            bias = weights.bias_ih + weights.bias_hh  # (4*H,)
        gates_x = input_gates(x, weights.weight_ih, bias, None, variant.cell.linear)  # (N, 4*H)
        noise = _variants.cell_noise(m.options, x.size(0), m.hidden_size, x, m.training)
        h1, c1 = lstm_step(gates_x, h0, c0, weights.weight_hh, None, variant.cell, noise)
        if not batched:
            return h1.squeeze(0), c1.squeeze(0)
        return h1, c1

    run = BlockRun(tape, fn, (rows, rows, rows), (rows, rows))
    h1, c1 = run.apply((input, h0, c0))
    return tape, run, (h1, c1)
