"""HandLSTM's forward contract for dense and packed input and initial states, in nn.LSTM's order.

:func:`initial_state` validates ``hx`` against the input (nn.LSTM's checks and exception
classes, in its order) or makes zeros; :func:`forward_dense` runs a batched, batch-first or
unbatched tensor; :func:`forward_packed` runs a PackedSequence (sorted or not: ``h_0`` in the
caller's batch order, ``h_n`` back in it).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from ..core import check_inputs, check_tracing
from ..core.lstm import ScanVariant

#: A HandLSTM (not imported: this module is below handlstm.modules.lstm, which imports it).
HandLSTM = Any


def forward_packed(
    module: HandLSTM,
    input: PackedSequence,
    hx: tuple[Tensor, Tensor] | None,
    records: list[tuple[Tensor, ScanVariant]] | None = None,
) -> tuple[PackedSequence, tuple[Tensor, Tensor]]:
    """``module`` over a PackedSequence: ``h_0`` read in the caller's batch order and sorted,
    ``h_n`` and ``c_n`` returned in it (each sequence's own last valid step)."""
    data, batch_sizes, sorted_indices, unsorted_indices = input
    weights = module._layer_weights()
    first = weights[0][0].weight_ih
    sizes = check_inputs.check_packed(input, hx, module.input_size, first.dtype)
    h0, c0 = initial_state(module, hx, data, sizes[0], True, 2, first)
    if sorted_indices is not None:
        h0 = h0.index_select(1, sorted_indices)
        c0 = c0.index_select(1, sorted_indices)
    output, h_n, c_n = module._run_layers(data, sizes, h0, c0, weights, records)
    if unsorted_indices is not None:
        h_n = h_n.index_select(1, unsorted_indices)
        c_n = c_n.index_select(1, unsorted_indices)
    packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
    return packed, (h_n, c_n)


def forward_dense(
    module: HandLSTM,
    input: Tensor,
    hx: tuple[Tensor, Tensor] | None,
    records: list[tuple[Tensor, ScanVariant]] | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``module`` over a dense ``(L, N, H_in)``, ``(N, L, H_in)`` (batch_first) or unbatched
    ``(L, H_in)`` input; ``lengths``: ``(N,)`` valid steps per sequence, or None."""
    batched = input.dim() == 3
    if not batched:
        check_inputs.check_input_rank(input)
        x = input.unsqueeze(1)  # (L, N, H_in)
    elif module.batch_first:
        x = input.transpose(0, 1)  # (L, N, H_in)
    else:
        x = input
    weights = module._layer_weights()
    steps, batch = x.shape[:2]
    weight = weights[0][0].weight_ih
    if (  # the common case, tested without calls (else initial_state checks, and raises)
        hx is None
        and module.proj_size == 0
        and x.dtype == weight.dtype
        and x.size(2) == module.input_size
        and x.device == weight.device
    ):
        states = module.num_layers * (2 if module.bidirectional else 1)
        # two tensors: a scan (compile/export) refuses initial states that alias each other
        h0 = x.new_zeros((states, batch, module.hidden_size))
        c0 = x.new_zeros((states, batch, module.hidden_size))
    else:
        h0, c0 = initial_state(module, hx, x, batch, batched, 3, weight)
    if steps == 0:
        check_inputs.check_sequence_length(steps)
    if lengths is not None:
        check_tracing.check_length_values(lengths, steps, batch)
    output, h_n, c_n = module._run_layers(x, None, h0, c0, weights, records, lengths)
    if not batched:
        return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    if module.batch_first:
        output = output.transpose(0, 1)  # (N, L, D*H_out)
    return output, (h_n, c_n)


def initial_state(
    module: HandLSTM, hx: Any, x: Tensor, batch: int, batched: bool, input_dim: int, weight: Tensor
) -> tuple[Tensor, Tensor]:
    """Validate ``hx`` and ``x`` in nn.LSTM's order; zeros when ``hx`` is None.

    ``weight`` is ``weight_ih_l0`` (what the dtype and device checks compare with).
    Returns ``(h_0, c_0)`` of shapes ``(D*num_layers, N, H_out)`` and
    ``(D*num_layers, N, H_cell)``.
    """
    if hx is not None:
        h0, c0 = check_inputs.check_hx_pair(hx)
        check_inputs.check_hx_rank((h0, c0), batched)
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    if x.dtype != weight.dtype or x.dim() != input_dim or x.size(-1) != module.input_size:
        # raises (or passes, under autocast)
        check_inputs.check_input(x, input_dim, module.input_size, weight.dtype)
    states = module.num_layers * (2 if module.bidirectional else 1)
    expected_h = (states, batch, module.proj_size if module.proj_size > 0 else module.hidden_size)
    if hx is None:
        if x.device != weight.device:
            check_inputs.check_devices(x, (), weight)  # raises
        # two tensors even without projection: a scan refuses initial states that alias
        return x.new_zeros(expected_h), x.new_zeros((states, batch, module.hidden_size))
    check_inputs.check_hidden_size(h0, expected_h, 0)
    check_inputs.check_hidden_size(c0, (states, batch, module.hidden_size), 1)
    check_inputs.check_hx_structure(hx, batched)
    check_inputs.check_devices(x, (h0, c0), weight)
    check_inputs.check_hx_dtype(h0, x.dtype)
    return h0, c0
