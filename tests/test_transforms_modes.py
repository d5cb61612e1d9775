"""Autocast (CPU bfloat16), torch.no_grad and torch.inference_mode on HandLSTM and HandLSTMCell.

Oracles: the same module in float32 without autocast (autocast must stay close: bfloat16 keeps 8
significant bits, eps = 2**-7 ~ 7.8e-3, so outputs are held to 2e-2 absolute on these small,
tanh-bounded models; the largest error measured here is ~4e-3), and grad mode / nn.LSTM for
no_grad and inference_mode (float64, 1e-10). The default dense configuration comes first.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from handlstm import HandLSTM, HandLSTMCell

TOL = {"rtol": 1e-10, "atol": 1e-10}
BF16_TOL = {"rtol": 0.0, "atol": 2e-2}

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("default", {"input_size": 8, "hidden_size": 16}),
    (
        "bi_proj_2layers",
        {
            "input_size": 8,
            "hidden_size": 16,
            "num_layers": 2,
            "bidirectional": True,
            "proj_size": 4,
        },
    ),
]
IDS = [name for name, _ in CONFIGS]


def flat(result: tuple[Tensor, tuple[Tensor, Tensor]]) -> list[Tensor]:
    out, (h, c) = result
    return [out, h, c]


@pytest.mark.parametrize("config", [c for _, c in CONFIGS], ids=IDS)
def test_autocast_bfloat16_close_to_float32(config: dict[str, Any]) -> None:
    torch.manual_seed(0)
    lstm = HandLSTM(**config)
    x = torch.randn(10, 4, 8)
    reference = flat(lstm(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = flat(lstm(x))
    assert any(t.dtype == torch.bfloat16 for t in got) or lstm.proj_size == 0
    for actual, expected in zip(got, reference, strict=True):
        torch.testing.assert_close(actual.float(), expected, **BF16_TOL)
    # and autocast really ran in bfloat16: the result is not the float32 one
    assert max((a.float() - e).abs().max().item() for a, e in zip(got, reference, strict=True)) > 0


def test_autocast_backward_close_to_float32() -> None:
    torch.manual_seed(0)
    lstm = HandLSTM(**CONFIGS[0][1])
    x = torch.randn(10, 4, 8)

    def grads() -> list[Tensor]:
        out, (h, c) = lstm(x)
        loss = out.float().square().mean() + c.float().mean()
        return list(torch.autograd.grad(loss, list(lstm.parameters())))

    reference = grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = grads()
    for actual, expected in zip(got, reference, strict=True):
        assert actual.dtype == torch.float32  # parameters' gradients keep the parameters' dtype
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual, expected, rtol=0.0, atol=2e-2 * scale)


def test_autocast_dtypes_match_nn_lstm_with_projection() -> None:
    """With proj_size, nn.LSTM runs under CPU autocast (without it, this machine's oneDNN LSTM
    rejects bfloat16); HandLSTM's output and state dtypes are nn.LSTM's."""
    torch.manual_seed(0)
    ref = nn.LSTM(**CONFIGS[1][1])
    lstm = HandLSTM(**CONFIGS[1][1])
    lstm.load_state_dict(ref.state_dict())
    x = torch.randn(10, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = flat(lstm(x)), flat(ref(x))
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    for actual, exp in zip(got, expected, strict=True):
        torch.testing.assert_close(actual.float(), exp.float(), **BF16_TOL)


def test_autocast_cell_close_to_float32() -> None:
    torch.manual_seed(0)
    cell = HandLSTMCell(8, 16)
    x, h, c = torch.randn(4, 8), torch.randn(4, 16), torch.randn(4, 16)
    reference = cell(x, (h, c))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cell(x, (h, c))
    for actual, expected in zip(got, reference, strict=True):
        torch.testing.assert_close(actual.float(), expected, **BF16_TOL)


@pytest.mark.parametrize("config", [c for _, c in CONFIGS], ids=IDS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_no_grad_and_inference_mode_equal_grad_mode(
    config: dict[str, Any], mode: str, packed: bool
) -> None:
    torch.manual_seed(0)
    ref = nn.LSTM(**config, dtype=torch.float64)
    lstm = HandLSTM(**config, dtype=torch.float64)
    lstm.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 8, dtype=torch.float64)
    inp: Any = pack_padded_sequence(x, [5, 2, 4], enforce_sorted=False) if packed else x

    def run(module: nn.Module) -> list[Tensor]:
        out, (h, c) = module(inp)
        return [out.data if packed else out, h, c]

    with_grad = run(lstm)
    assert with_grad[0].requires_grad
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        got = run(lstm)
        expected = run(ref)
    assert not any(t.requires_grad for t in got)
    if mode == "inference_mode":
        assert all(t.is_inference() for t in got)
    torch.testing.assert_close(got, [t.detach() for t in with_grad], **TOL)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_and_inference_mode_cell(mode: str) -> None:
    torch.manual_seed(0)
    ref = nn.LSTMCell(8, 16, dtype=torch.float64)
    cell = HandLSTMCell(8, 16, dtype=torch.float64)
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(3, 8, dtype=torch.float64)
    with_grad = cell(x)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        got = cell(x)
        expected = ref(x)
    assert not any(t.requires_grad for t in got)
    torch.testing.assert_close(got, tuple(t.detach() for t in with_grad), **TOL)
    torch.testing.assert_close(got, expected, **TOL)
