"""Dynamic int8 quantization: the documented way is to swap back to torch first.

``torch.ao.quantization.quantize_dynamic`` maps module *types* (nn.LSTM -> its int8 dynamic
LSTM); it does not know HandLSTM and leaves it in float32 without a word. The way: train with
HandLSTM, ``swap_lstms(model, to="torch", strict=True)``, then quantize. Variants have no torch
module to quantize into; ``strict=True`` says so, naming them, before anything changes.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

from handlstm import HandLSTM, swap_lstms

quantization = pytest.importorskip("torch.ao.quantization", reason="torch without ao.quantization")


def quantize(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch announces the move of eager quantization to torchao
        return quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


@pytest.fixture()
def engine():
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("fbgemm", "x86", "qnnpack")):
        pytest.skip(f"no quantized CPU engine in this torch build: {engines}")


def test_quantize_dynamic_does_not_know_handlstm(engine):
    """The hazard the README describes: HandLSTM silently stays float32."""
    model = Tagger()
    swap_lstms(model)
    quantized = quantize(copy.deepcopy(model))
    assert type(quantized.lstm) is HandLSTM
    assert quantized.lstm.weight_ih_l0.dtype == torch.float32
    assert type(quantized.head) is not nn.Linear  # the Linear was quantized, the LSTM was not


def test_swap_back_then_quantize_is_torchs_int8_lstm_exactly(engine):
    torch.manual_seed(0)
    original = Tagger()
    model = copy.deepcopy(original)
    swap_lstms(model)  # train with HandLSTM here; the Parameters stay the same objects
    report = swap_lstms(model, to="torch", strict=True)
    assert [s.path for s in report.swapped] == ["lstm"]
    quantized, expected = quantize(model), quantize(original)
    assert type(quantized.lstm) is type(expected.lstm)
    assert type(quantized.lstm).__module__.startswith("torch.ao.nn.quantized.dynamic")
    x = torch.randn(7, 2, 6)
    assert torch.equal(quantized(x), expected(x))
    assert (quantized(x) - original(x)).abs().max() < 0.1  # int8 weights: close, not equal


def test_variants_cannot_be_quantized_and_strict_says_which(engine):
    model = nn.Sequential(HandLSTM(3, 4), HandLSTM(4, 4, layer_norm=True))
    with pytest.raises(ValueError, match="layer_norm"):
        swap_lstms(model, to="torch", strict=True)
    assert [type(m) for m in model] == [HandLSTM, HandLSTM], "strict changed nothing"
