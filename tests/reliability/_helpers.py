"""Builders for the reliability tests: nn.LSTM (the oracle) and HandLSTM with equal weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from handlstm import HandLSTM, HandLSTMCell

F64 = torch.float64

# One configuration that exercises every parameter kind: two layers, both directions, bias and
# projection.
FULL = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=2)


def pair(config: dict[str, Any] | None = None, seed: int = 0) -> tuple[HandLSTM, nn.LSTM]:
    """``(HandLSTM, nn.LSTM)`` of ``config`` in float64 with the same weights."""
    config = dict(FULL if config is None else config)
    torch.manual_seed(seed)
    expected = nn.LSTM(**config, dtype=F64)
    actual = HandLSTM(**config, dtype=F64)
    actual.load_state_dict(expected.state_dict())
    return actual, expected


def cell_pair(seed: int = 0) -> tuple[HandLSTMCell, nn.LSTMCell]:
    torch.manual_seed(seed)
    expected = nn.LSTMCell(3, 5, dtype=F64)
    actual = HandLSTMCell(3, 5, dtype=F64)
    actual.load_state_dict(expected.state_dict())
    return actual, expected


def oracle_for(module: HandLSTM) -> nn.LSTM:
    """An nn.LSTM of ``module``'s configuration holding copies of its current parameters."""
    config = dict(
        input_size=module.input_size,
        hidden_size=module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=module.batch_first,
        bidirectional=module.bidirectional,
        proj_size=module.proj_size,
    )
    weight = next(module.parameters())
    expected = nn.LSTM(**config, dtype=weight.dtype, device=weight.device)
    expected.load_state_dict({k: v.detach().clone() for k, v in module.state_dict().items()})
    for name, param in module.named_parameters():
        getattr(expected, name).requires_grad_(param.requires_grad)
    return expected


def sequence(seed: int = 1, length: int = 4, batch: int = 3, size: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(length, batch, size, generator=gen, dtype=F64)  # (L, N, H_in)


def states(module: HandLSTM | nn.LSTM, batch: int = 3, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h_out = module.proj_size or module.hidden_size
    return (
        torch.randn(layers, batch, h_out, generator=gen, dtype=F64),
        torch.randn(layers, batch, module.hidden_size, generator=gen, dtype=F64),
    )
