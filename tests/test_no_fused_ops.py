"""No fused LSTM/RNN kernel runs: every op dispatched in forward and backward is recorded."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

from handlstm import HandLSTM, HandLSTMCell


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def recorded_ops(module, *inputs, train=True):
    module.train(train)
    with OpRecorder() as recorder:
        out = module(*inputs)
        first = out[0].data if hasattr(out[0], "batch_sizes") else out[0]
        if torch.is_grad_enabled():
            (first.sum() + out[1][0].sum() + out[1][1].sum()).backward()
    return recorder.ops


def fused(ops):
    return sorted({op for op in ops if "lstm" in op.lower() or "rnn" in op.lower()})


def test_recorder_sees_torchs_fused_kernel():
    """Positive control: the same recording on nn.LSTM does find its fused op."""
    ops = recorded_ops(nn.LSTM(3, 4), torch.randn(5, 2, 3))
    assert fused(ops), "the recorder missed nn.LSTM's kernel, so the test below proves nothing"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "config",
    [
        dict(),
        dict(num_layers=2, bidirectional=True, proj_size=2, dropout=0.5),
        dict(bias=False, batch_first=True),
    ],
)
def test_handlstm_dispatches_no_fused_op(config, dtype):
    module = HandLSTM(3, 4, **config).to(dtype)
    x = torch.randn(5, 2, 3, dtype=dtype, requires_grad=True)
    ops = recorded_ops(module, x)
    assert ops and "aten.mm" in " ".join(ops) or "aten.addmm" in " ".join(ops)
    assert fused(ops) == []
    packed = pack_padded_sequence(torch.randn(5, 2, 3, dtype=dtype), torch.tensor([5, 2]))
    assert fused(recorded_ops(module, packed)) == []
    with torch.no_grad():
        assert fused(recorded_ops(module, x, train=False)) == []


def test_handlstmcell_dispatches_no_fused_op():
    cell = HandLSTMCell(3, 4)
    with OpRecorder() as recorder:
        h, c = cell(torch.randn(2, 3, requires_grad=True))
        (h.sum() + c.sum()).backward()
    assert recorder.ops and fused(recorder.ops) == []
