"""swap_lstms on real-model shapes: odd sizes, all-or-nothing, subclasses, meta, opacus layers.

The oracle is the unswapped model itself (a deep copy run by torch), in float64: outputs, final
states and every parameter's gradient must agree to rounding.
"""

import copy
import io
import pickle
from abc import ABC

try:  # numpy is optional: torch runs without it, and so does handlstm
    import numpy as np
except ImportError:
    np = None
import pytest
import torch
from test_no_fused_ops import OpRecorder  # the one op recorder (tests/ is on pytest's path)
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from handlstm import HandLSTM, HandLSTMCell, swap_lstms

F64 = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)


def fused(ops):
    return sorted({op for op in ops if "lstm" in op.lower() or "rnn" in op.lower()})


def outputs_and_grads(model, *inputs):
    """Every tensor the model returns (flattened) and every parameter's gradient."""
    model.zero_grad()
    out = model(*inputs)
    flat = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    sum(t.sum() for t in flat).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return flat, grads


def assert_same_function(swapped, reference, *inputs):
    got, got_grads = outputs_and_grads(swapped, *inputs)
    want, want_grads = outputs_and_grads(reference, *inputs)
    assert len(got) == len(want)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_grads, want_grads, **TOL)


# -- sizes that real code passes ------------------------------------------------------------------


class SpeechbrainLike(nn.Module):
    """speechbrain builds an LSTMCell from ``torch.prod(torch.tensor(shape))``."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 4, dtype=F64)
        self.cell = nn.LSTMCell(torch.prod(torch.tensor([2, 2])), 5, dtype=F64)
        sizes = (5, 3) if np is None else (np.int64(5), np.int64(3))  # numpy ints where present
        self.cell2 = nn.LSTMCell(*sizes, dtype=F64)

    def forward(self, x):
        out, _ = self.rnn(x)
        h, c = self.cell(out[-1])
        return self.cell2(h)


def test_cell_built_from_a_tensor_size_is_swapped_with_the_rest():
    torch.manual_seed(0)
    model = SpeechbrainLike()
    reference = copy.deepcopy(model)
    report = swap_lstms(model)
    assert [s.path for s in report.swapped] == ["rnn", "cell", "cell2"], str(report)
    assert type(model.cell) is HandLSTMCell and model.cell.input_size == 4
    assert_same_function(model, reference, torch.randn(5, 2, 3, dtype=F64))


# -- all or nothing -------------------------------------------------------------------------------


def test_a_module_whose_replacement_cannot_be_built_is_listed_and_untouched():
    """Attributes that disagree with the weights: no half-built HandLSTMCell is installed."""
    model = nn.Module()
    model.rnn = nn.LSTM(3, 4)
    model.cell = nn.LSTMCell(3, 4)
    model.cell.input_size = 5  # weight_ih is still (16, 3)
    report = swap_lstms(model)
    assert [s.path for s in report.swapped] == ["rnn"]
    assert report.skipped[0].path == "cell" and "weight_ih" in report.skipped[0].reason
    assert type(model.cell) is nn.LSTMCell


def test_a_module_whose_plan_raises_is_listed_and_the_rest_swapped():
    model = nn.Module()
    model.rnn = nn.LSTM(3, 4)
    model.odd = nn.LSTM(3, 4)
    model.odd.num_layers = "two"  # anything that makes building its twin raise
    report = swap_lstms(model)
    assert [s.path for s in report.swapped] == ["rnn"]
    assert report.skipped[0].path == "odd" and "could not be" in report.skipped[0].reason
    assert type(model.odd) is nn.LSTM and type(model.rnn) is HandLSTM


class Fussy(nn.Module):
    """A container whose __setattr__ refuses a HandLSTM under one name."""

    def __setattr__(self, name, value):
        if name == "b" and isinstance(value, HandLSTM):
            raise RuntimeError("Fussy refuses b")
        super().__setattr__(name, value)


def test_a_failure_while_changing_the_model_undoes_every_change():
    model = nn.Module()
    model.a = nn.LSTM(3, 4)
    model.sub = Fussy()
    model.sub.b = nn.LSTM(3, 4)
    model.c = PassThrough(3, 4)
    a, b = model.a, model.sub.b
    with pytest.raises(RuntimeError, match="Fussy"):
        swap_lstms(model)
    assert model.a is a and model.sub.b is b and type(model.a) is nn.LSTM
    assert type(model.c) is PassThrough


def test_strict_raises_before_changing_anything():
    model = nn.Module()
    model.a = nn.LSTM(3, 4)
    model.hooked = nn.LSTM(3, 4)
    model.hooked.register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match="hooked"):
        swap_lstms(model, strict=True)
    assert type(model.a) is nn.LSTM


# -- subclasses -----------------------------------------------------------------------------------


class RNN(ABC, nn.RNNBase):
    """pytorch-forecasting's shape: an abstract mixin whose forward handles zero lengths and
    then calls ``super().forward``, mixed into nn.LSTM by the concrete class."""

    def forward(self, x, hx=None, lengths=None, enforce_sorted=True):
        if lengths is None:
            return super().forward(x, hx)
        no_encoding = lengths == 0
        packed = pack_padded_sequence(
            x,
            lengths.clamp(min=1).cpu(),
            batch_first=self.batch_first,
            enforce_sorted=enforce_sorted,
        )
        out, (h, c) = super().forward(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=self.batch_first)
        if no_encoding.any():
            keep = (~no_encoding).to(h.dtype).view(1, -1, 1)
            h, c = h * keep, c * keep
            shape = (-1, 1, 1) if self.batch_first else (1, -1, 1)
            out = out * (~no_encoding).to(out.dtype).view(shape)
        return out, (h, c)


class ForecastingLSTM(RNN, nn.LSTM):
    """pytorch-forecasting's ``LSTM(RNN, nn.LSTM)``."""

    def extra_hint(self):
        return "kept"


class PassThrough(nn.LSTM):
    def forward(self, input, hx=None):
        output, state = super().forward(input, hx)
        return output * 2, state


class OwnForward(nn.LSTM):
    """Computes its own recurrence from the weights: never reaches nn.LSTM.forward."""

    def forward(self, input, hx=None):
        return torch.tanh(input @ self.weight_ih_l0[: self.hidden_size].T), hx


class KernelCaller(nn.LSTM):
    def forward(self, input, hx=None):
        return torch._VF.lstm(input, hx, self._flat_weights, True, 1, 0.0, False, False, False)


class CellSubclass(nn.LSTMCell):
    def forward(self, input, hx=None):
        h, c = super().forward(input, hx)
        return h + 1, c


def forecasting_model():
    torch.manual_seed(3)
    model = nn.Module()
    model.lstm = ForecastingLSTM(3, 4, num_layers=2, batch_first=True, dtype=F64)
    return model


def test_forecasting_style_subclass_is_swapped_in_place_and_computes_the_same():
    model = forecasting_model()
    reference = copy.deepcopy(model)
    lstm = model.lstm
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    report = swap_lstms(model)
    assert [s.path for s in report.swapped] == ["lstm"] and report.skipped == []
    assert model.lstm is lstm, "the object is kept: hooks, attributes, references elsewhere"
    assert isinstance(model.lstm, ForecastingLSTM) and isinstance(model.lstm, nn.LSTM)
    assert isinstance(model.lstm, HandLSTM) and model.lstm.extra_hint() == "kept"
    assert all(p is params[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == list(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    x = torch.randn(4, 5, 3, dtype=F64)
    lengths = torch.tensor([5, 0, 3, 1])
    assert_same_function(model.lstm, reference.lstm, x)
    assert_same_function(model.lstm, reference.lstm, x, None, lengths, False)

    # float32: there torch's LSTM dispatches a fused op the recorder sees (float64 decomposes)
    def recorded(lstm, *args):
        with OpRecorder() as recorder:
            out, (h, c) = lstm(x.float(), *args)
            (out.sum() + h.sum() + c.sum()).backward()
        return recorder.ops

    assert fused(recorded(copy.deepcopy(reference.lstm).float())), "the recorder sees nn.LSTM"
    for args in ((), (None, lengths, False)):
        ops = recorded(copy.deepcopy(model.lstm).float(), *args)
        assert ops and fused(ops) == []

    back = swap_lstms(model, to="torch")
    assert [s.new for s in back.swapped] == ["ForecastingLSTM"]
    assert type(model.lstm) is ForecastingLSTM
    assert fused(recorded(copy.deepcopy(model.lstm).float())), "torch's own forward runs again"
    assert_same_function(model.lstm, reference.lstm, x, None, lengths, False)


def test_hand_backed_subclass_survives_deepcopy_pickle_and_to():
    model = forecasting_model()
    reference = copy.deepcopy(model)
    swap_lstms(model)
    assert isinstance(model.lstm, HandLSTM)
    x = torch.randn(2, 5, 3, dtype=F64)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert type(clone.lstm) is type(model.lstm)
        assert_same_function(clone.lstm, reference.lstm, x)
    model.to(torch.float32).to(F64)  # RNNBase._apply would rebuild its cached weight list
    reference.to(torch.float32).to(F64)
    assert_same_function(model.lstm, reference.lstm, x)
    assert pickle.loads(pickle.dumps(model.lstm)).hidden_size == 4
    fresh = type(model.lstm)(3, 4, num_layers=2, batch_first=True, dtype=F64)  # user's __init__
    fresh.load_state_dict(reference.lstm.state_dict())
    assert isinstance(fresh, HandLSTM)
    assert_same_function(fresh, reference.lstm, x)


def test_subclasses_that_never_reach_nn_lstm_forward_are_left_alone():
    model = nn.Module()
    model.own = OwnForward(3, 4)
    model.kernel = KernelCaller(3, 4)
    model.passthrough = PassThrough(3, 4)
    report = swap_lstms(model)
    reasons = {s.path: s.reason for s in report.skipped}
    assert [s.path for s in report.swapped] == ["passthrough"]
    assert "never calls super().forward" in reasons["own"]
    assert "_VF" in reasons["kernel"] or "_flat_weights" in reasons["kernel"]
    assert type(model.own) is OwnForward and type(model.kernel) is KernelCaller


def test_a_subclass_keeps_its_hooks_and_attributes_when_swapped_in_place():
    torch.manual_seed(6)
    model = nn.Sequential(PassThrough(3, 4, dtype=F64))
    seen = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(type(module).__name__))
    model[0].tag = "mine"
    swap_lstms(model)
    model(torch.randn(5, 2, 3, dtype=F64))
    assert seen == ["HandPassThrough"] and model[0].tag == "mine"


def test_cell_subclass_is_swapped_in_place():
    torch.manual_seed(4)
    model = nn.Sequential(CellSubclass(3, 4, dtype=F64))
    reference = copy.deepcopy(model)
    swap_lstms(model)
    assert isinstance(model[0], CellSubclass) and isinstance(model[0], HandLSTMCell)
    assert_same_function(model, reference, torch.randn(2, 3, dtype=F64))
    swap_lstms(model, to="torch")
    assert type(model[0]) is CellSubclass


def test_swapping_twice_changes_nothing_more():
    model = nn.Sequential(PassThrough(3, 4), nn.LSTM(4, 4))
    swap_lstms(model)
    kinds = [type(m) for m in model]
    again = swap_lstms(model)
    assert again.swapped == [] and again.skipped == []
    assert [type(m) for m in model] == kinds


# -- meta -----------------------------------------------------------------------------------------


def test_a_model_on_the_meta_device_swaps_both_ways():
    with torch.device("meta"):
        model = nn.Sequential(nn.LSTM(3, 4, num_layers=2), nn.LSTMCell(4, 4), PassThrough(3, 4))
    params = dict(model.named_parameters())
    report = swap_lstms(model)
    assert len(report.swapped) == 3 and report.skipped == []
    assert type(model[0]) is HandLSTM and type(model[1]) is HandLSTMCell
    assert all(p is params[n] and p.is_meta for n, p in model.named_parameters())
    out, (h, c) = model[0](torch.randn(5, 2, 3, device="meta"))
    assert out.shape == (5, 2, 4) and out.is_meta
    swap_lstms(model, to="torch")
    assert type(model[0]) is nn.LSTM and type(model[2]) is PassThrough


# -- opacus ---------------------------------------------------------------------------------------


def test_opacus_dplstm_and_cell_are_swapped_sharing_parameters():
    dp_rnn = pytest.importorskip("opacus.layers.dp_rnn", reason="opacus is an optional extra")
    torch.manual_seed(5)
    model = nn.Module()
    model.lstm = dp_rnn.DPLSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True).to(F64)
    model.cell = dp_rnn.DPLSTMCell(8, 4, bias=True).to(F64)
    reference = copy.deepcopy(model)
    keys = list(model.lstm.state_dict())
    params = dict(model.lstm.named_parameters())
    cell_ih = model.cell.ih.weight

    def run(m, x):
        out, (h, c) = m.lstm(x)
        return [out, h, c, *m.cell(out[:, -1])]

    report = swap_lstms(model)
    assert [(s.path, s.new) for s in report.swapped] == [
        ("lstm", "HandLSTM"),
        ("cell", "HandLSTMCell"),
    ]
    assert "state-dict keys" in report.swapped[1].note
    assert type(model.lstm) is HandLSTM and type(model.cell) is HandLSTMCell
    assert sorted(model.lstm.state_dict()) == sorted(keys)
    assert all(getattr(model.lstm, name) is p for name, p in params.items())
    assert model.cell.weight_ih is cell_ih
    x = torch.randn(2, 5, 3, dtype=F64)
    got, want = run(model, x), run(reference, x)
    torch.testing.assert_close(got, want, **TOL)
    sum(t.sum() for t in got).backward()
    sum(t.sum() for t in want).backward()
    for name, param in params.items():
        torch.testing.assert_close(param.grad, getattr(reference.lstm, name).grad, **TOL)
    cell_names = (("weight_ih", "ih.weight"), ("weight_hh", "hh.weight"), ("bias_hh", "hh.bias"))
    for new, old in cell_names:
        expected = reference.cell.get_parameter(old).grad
        torch.testing.assert_close(getattr(model.cell, new).grad, expected, **TOL)
    back = swap_lstms(model, to="torch")
    assert [s.new for s in back.swapped] == ["LSTM", "LSTMCell"]


def test_opacus_layers_inside_a_grad_sample_module_are_left_alone():
    opacus = pytest.importorskip("opacus", reason="opacus is an optional extra")
    from opacus.layers import DPLSTM

    model = nn.Sequential(DPLSTM(3, 4))
    wrapped = opacus.GradSampleModule(model)
    report = swap_lstms(wrapped)
    assert report.swapped == [] and "hook" in report.skipped[0].reason
