"""Conversion: from_torch / to_torch copies, and swap_lstms sharing the very same Parameters."""

import pytest
import torch
from torch import nn

import handlstm
from handlstm import HandLSTM, HandLSTMCell
from handlstm.convert import find_lstm_groups, swap_lstms
from handlstm.testing import assert_lstm_close

F64 = torch.float64


@pytest.fixture()
def one_thread():
    """Tiny matrices: one intra-op thread is much faster, and far steadier on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


# -- from_torch / to_torch ------------------------------------------------------------------------

LSTM_CONFIGS = [
    dict(input_size=3, hidden_size=4),
    dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=2),
    dict(input_size=2, hidden_size=3, num_layers=3, bias=False, batch_first=True, dropout=0.25),
]


@pytest.mark.parametrize("config", LSTM_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("training", [True, False])
def test_lstm_from_torch_keeps_everything(config, dtype, training):
    source = nn.LSTM(**config, dtype=dtype).train(training)
    frozen = next(iter(source.parameters()))
    frozen.requires_grad_(False)
    hand = HandLSTM.from_torch(source)
    assert type(hand) is HandLSTM
    assert hand.training is training
    for key, value in config.items():
        assert getattr(hand, key) == value, key
    assert_same_state(hand, source)
    for (name, p), (_, q) in zip(hand.named_parameters(), source.named_parameters(), strict=True):
        assert p.requires_grad == q.requires_grad, name
        assert p.device == q.device and p.dtype == q.dtype
        assert p is not q and p.data_ptr() != q.data_ptr(), "from_torch copies"
    back = hand.to_torch()
    assert type(back) is nn.LSTM and back.training is training
    assert_same_state(back, source)
    assert [p.requires_grad for p in back.parameters()] == [
        p.requires_grad for p in source.parameters()
    ]


def test_from_torch_is_equal_and_independent():
    source = nn.LSTM(3, 4, num_layers=2, proj_size=2, dtype=F64)
    hand = HandLSTM.from_torch(source)
    assert_lstm_close(hand, source, torch.randn(5, 2, 3, dtype=F64))
    with torch.no_grad():
        hand.weight_ih_l0.add_(1.0)
    assert not torch.equal(hand.weight_ih_l0, source.weight_ih_l0)


def test_conversion_does_not_consume_the_global_rng():
    source, cell = nn.LSTM(3, 4, num_layers=2), nn.LSTMCell(2, 3)
    model = nn.Sequential(nn.LSTM(3, 4), nn.LSTMCell(2, 3))
    torch.manual_seed(3)
    HandLSTM.from_torch(source).to_torch()
    HandLSTMCell.from_torch(cell).to_torch()
    swap_lstms(model)
    swap_lstms(model, to="torch")
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(4))


@pytest.mark.parametrize("bias", [True, False])
def test_cell_round_trip(bias):
    source = nn.LSTMCell(3, 4, bias=bias, dtype=F64).eval()
    source.weight_hh.requires_grad_(False)
    hand = HandLSTMCell.from_torch(source)
    assert type(hand) is HandLSTMCell and not hand.training and hand.bias == bias
    assert not hand.weight_hh.requires_grad and hand.weight_ih.requires_grad
    assert_same_state(hand, source)
    assert_lstm_close(hand, source, torch.randn(2, 3, dtype=F64))
    back = hand.to_torch()
    assert type(back) is nn.LSTMCell and not back.training
    assert_same_state(back, source)


def test_from_torch_rejects_the_wrong_module():
    with pytest.raises(TypeError, match="nn.LSTM"):
        HandLSTM.from_torch(nn.GRU(3, 4))
    with pytest.raises(TypeError, match="nn.LSTMCell"):
        HandLSTMCell.from_torch(nn.LSTM(3, 4))


def test_to_torch_refuses_variant_options(monkeypatch):
    hand = HandLSTM(3, 4)
    monkeypatch.setattr(hand, "variant_options", lambda: {"layer_norm": True})
    with pytest.raises(ValueError, match="layer_norm=True"):
        hand.to_torch()
    cell = HandLSTMCell(3, 4)
    monkeypatch.setattr(cell, "variant_options", lambda: {"peepholes": True})
    with pytest.raises(ValueError, match="peepholes=True"):
        cell.to_torch()


def test_to_torch_refuses_real_variants():
    """With the real variant options of HandLSTM (if built with any), to_torch says which."""
    try:
        hand = HandLSTM(3, 4, layer_norm=True)
    except TypeError:  # pragma: no cover - variants not present in this build
        pytest.skip("HandLSTM has no layer_norm option")
    assert hand.variant_options()
    with pytest.raises(ValueError, match="layer_norm"):
        hand.to_torch()


# -- swap_lstms ---------------------------------------------------------------------------------


class Block(nn.Module):
    """A custom container holding LSTMs at several depths and in every container kind."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 3)
        self.encoder = nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
        self.stack = nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4, batch_first=True))
        self.cells = nn.ModuleList([nn.LSTMCell(4, 5), nn.LSTMCell(5, 4, bias=False)])
        self.heads = nn.ModuleDict({"a": nn.LSTM(4, 3), "b": nn.Linear(3, 1)})
        self.inner = nn.Module()
        self.inner.deep = nn.Sequential(nn.ModuleDict({"x": nn.LSTM(2, 2)}))
        self.alias = self.heads["a"]  # the same module under two paths


def test_swap_nested_containers_shares_parameters():
    torch.manual_seed(0)
    model = Block()
    before = {name: p for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = swap_lstms(model)
    assert [s.path for s in report.swapped] == [
        "encoder",
        "stack.1",
        "cells.0",
        "cells.1",
        "heads.a",
        "inner.deep.0.x",
    ]
    assert report.skipped == []
    assert type(model.encoder) is HandLSTM and type(model.stack[1]) is HandLSTM
    assert type(model.cells[0]) is HandLSTMCell and type(model.cells[1]) is HandLSTMCell
    assert type(model.inner.deep[0]["x"]) is HandLSTM
    assert model.alias is model.heads["a"] and type(model.alias) is HandLSTM
    assert report.swapped[0].config["proj_size"] == 2 and report.swapped[0].config["bidirectional"]
    after = dict(model.named_parameters())
    assert list(after) == list(before)
    for name in before:
        assert after[name] is before[name], f"{name} is not the same Parameter object"
    assert list(model.state_dict()) == list(state)
    model.load_state_dict(state, strict=True)
    assert "encoder" in str(report) and "HandLSTM" in str(report)

    back = swap_lstms(model, to="torch")
    assert len(back.swapped) == 6
    assert type(model.encoder) is nn.LSTM and type(model.cells[1]) is nn.LSTMCell
    assert all(dict(model.named_parameters())[n] is p for n, p in before.items())


def test_swapped_model_computes_what_it_computed():
    torch.manual_seed(1)
    model = nn.Sequential(nn.LSTM(3, 4, num_layers=2, proj_size=2, dtype=F64))
    reference = nn.LSTM(3, 4, num_layers=2, proj_size=2, dtype=F64)
    reference.load_state_dict(model[0].state_dict())
    swap_lstms(model)
    assert_lstm_close(model[0], reference, torch.randn(6, 2, 3, dtype=F64))


def test_optimizer_built_before_swap_keeps_stepping_the_same_parameters(one_thread):
    torch.manual_seed(2)
    model = nn.Sequential(nn.LSTM(3, 4, dtype=F64))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    swap_lstms(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=F64)
    for _ in range(2):
        optimizer.zero_grad()
        model[0](x)[0].pow(2).sum().backward()
        optimizer.step()
    for name, param in model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} was not stepped"
    group = optimizer.param_groups[0]["params"]
    assert all(any(p is q for q in group) for p in model.parameters())


class TextModel(nn.Module):
    """Embedding, nn.LSTM, linear: the usual shape of a sequence model."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True, dropout=0.0)
        self.out = nn.Linear(8, 3)

    def forward(self, tokens):
        output, _ = self.lstm(self.embed(tokens))
        return self.out(output[:, -1])


def train_losses(model, steps=20):
    data = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 20, (8, 7), generator=data)
    target = tokens[:, 0] % 3  # learnable: the class is set by the first token
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(tokens), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_20_steps_gives_the_same_losses_after_swap(one_thread):
    torch.manual_seed(4)
    model = TextModel().double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch_losses = train_losses(model)
    model.load_state_dict(state)
    report = swap_lstms(model)
    assert [s.path for s in report.swapped] == ["lstm"]
    hand_losses = train_losses(model)
    assert len(hand_losses) == 20
    torch.testing.assert_close(hand_losses, torch_losses, rtol=1e-9, atol=1e-9)
    assert torch_losses[-1] < torch_losses[0]  # it did train


def test_round_trip_hand_torch_hand_is_identity_on_state_dict():
    torch.manual_seed(6)
    model = nn.Sequential(
        HandLSTM(3, 5, num_layers=2, bidirectional=True, proj_size=3), HandLSTMCell(4, 4)
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    swap_lstms(model, to="torch")
    assert type(model[0]) is nn.LSTM
    swap_lstms(model, to="hand")
    assert type(model[0]) is HandLSTM and type(model[1]) is HandLSTMCell
    assert list(model.state_dict()) == list(state)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    copy = HandLSTM.from_torch(HandLSTM(3, 5, proj_size=2).to_torch())
    assert isinstance(copy, HandLSTM)


def test_checkpoint_saved_before_swap_loads_after(tmp_path):
    torch.manual_seed(8)
    model = TextModel()
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    fresh = TextModel()
    swap_lstms(fresh)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True), strict=True)
    assert_same_state(fresh, model)


class ForwardOverride(nn.LSTM):
    def forward(self, input, hx=None):
        output, state = super().forward(input, hx)
        return output * 2, state


class PlainSubclass(nn.LSTM):
    """Adds nothing but a name."""


def test_hooked_modules_are_left_alone_and_subclasses_swapped_in_place():
    """Subclasses reaching nn.LSTM's forward through super() are swapped in place (see
    tests/test_convert_swap.py); a hooked module is still left alone and listed."""
    model = nn.Module()
    model.custom = ForwardOverride(3, 4)
    model.plain = PlainSubclass(3, 4)
    model.hooked = nn.LSTM(3, 4)
    model.hooked.register_forward_hook(lambda *args: None)
    model.ok = nn.LSTM(3, 4)
    report = swap_lstms(model)
    assert [s.path for s in report.swapped] == ["custom", "plain", "ok"]
    reasons = {s.path: s.reason for s in report.skipped}
    assert set(reasons) == {"hooked"}
    assert "hook" in reasons["hooked"]
    assert isinstance(model.custom, ForwardOverride) and isinstance(model.custom, HandLSTM)
    assert isinstance(model.plain, PlainSubclass) and type(model.hooked) is nn.LSTM
    assert "left alone 1" in str(report)
    swap_lstms(model, to="torch")
    assert type(model.custom) is ForwardOverride and type(model.plain) is PlainSubclass


def test_weight_dropped_lstm_is_left_alone():
    model = nn.Module()
    model.lstm = nn.LSTM(3, 4)
    raw = model.lstm.weight_hh_l0
    del model.lstm._parameters["weight_hh_l0"]
    model.lstm.weight_hh_l0 = raw.detach() * 0.5  # AWD-LSTM style: a plain tensor
    report = swap_lstms(model)
    assert report.swapped == [] and "weight_hh_l0" in report.skipped[0].reason


def test_to_torch_leaves_variant_modules_alone(monkeypatch):
    model = nn.Sequential(HandLSTM(3, 4), HandLSTM(4, 4))
    monkeypatch.setattr(model[1], "variant_options", lambda: {"peepholes": True})
    report = swap_lstms(model, to="torch")
    assert [s.path for s in report.swapped] == ["0"]
    assert report.skipped[0].path == "1" and "peepholes" in report.skipped[0].reason
    assert type(model[1]) is HandLSTM


def test_swap_argument_errors():
    with pytest.raises(ValueError, match="from_torch"):
        swap_lstms(nn.LSTM(3, 4))
    with pytest.raises(ValueError, match='"hand" or "torch"'):
        swap_lstms(nn.Sequential(), to="keras")  # type: ignore[arg-type]


def test_swap_lstms_is_exported():
    assert handlstm.convert.swap_lstms is swap_lstms


def test_conversion_repeats_no_constructor_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nn.Sequential(nn.LSTM(3, 4, dropout=0.5))  # warns once, here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        swap_lstms(model)
        assert model[0].dropout == 0.5
        HandLSTM.from_torch(model[0].to_torch())


@pytest.mark.parametrize(
    "state_dict",
    [
        {"bias_ih_l0": torch.zeros(8)},  # a bias alone: no weight to size the LSTM from
        {"lstm.bias_hh_l0": torch.zeros(8), "lstm.bias_ih_l0": torch.zeros(8)},
        {"weight_ih_l1": torch.zeros(8, 2), "weight_hh_l1": torch.zeros(8, 2)},  # layer 1 only
        {"weight_ih_l0": torch.zeros(8, 3), "weight_hh_l0": torch.zeros(8)},  # 1-D weight_hh
        {"weight_ih_l0": torch.zeros(8), "weight_hh_l0": torch.zeros(8, 2)},  # 1-D weight_ih
        {"weight_hh_l0": torch.zeros(8, 2)},  # no weight_ih_l0
        {"weight_ih_l0": torch.zeros(8, 3)},  # no weight_hh_l0
        {
            "weight_ih_l0": torch.zeros(8, 3),
            "weight_hh_l0": torch.zeros(8, 1),
            "weight_hr_l0": torch.zeros(1),  # 1-D projection
        },
        {"cell.bias_ih": torch.zeros(8)},
        {"cell.weight_ih": torch.zeros(8, 3), "cell.weight_hh": torch.zeros(8)},
        {"cell.weight_ih": torch.zeros(8), "cell.weight_hh": torch.zeros(8, 2)},
        {"cell.weight_hh": torch.zeros(8, 2)},
    ],
    ids=lambda sd: ",".join(f"{k}{tuple(v.shape)}" for k, v in sd.items()),
)
def test_find_lstm_groups_yields_no_group_for_partial_or_malformed_weights(state_dict):
    """Partial or wrong-rank LSTM keys are not an LSTM: no group, never an AttributeError or
    IndexError from reading a shape that is not there."""
    assert find_lstm_groups(state_dict) == []


def test_find_lstm_groups_reads_a_two_layer_bidirectional_projected_lstm():
    """The positive side of the test above: every argument read from the shapes."""
    config = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2)
    (group,) = find_lstm_groups(nn.LSTM(**config).state_dict())
    assert group.kind == "lstm" and group.config == dict(config, bias=True)
    (group,) = find_lstm_groups(nn.LSTM(3, 4, bias=False).state_dict())
    assert group.config == dict(
        input_size=3, hidden_size=4, num_layers=1, bias=False, bidirectional=False, proj_size=0
    )
    (group,) = find_lstm_groups({f"c.{k}": v for k, v in nn.LSTMCell(3, 4).state_dict().items()})
    assert (group.prefix, group.kind, group.config) == (
        "c",
        "cell",
        dict(input_size=3, hidden_size=4, bias=True),
    )


@pytest.mark.parametrize(
    "state_dict",
    [
        {"c.weight_ih": torch.zeros(32, 3), "c.weight_hh": torch.zeros(32, 4)},  # 8 gates
        {"weight_ih_l0": torch.zeros(8, 3, dtype=torch.int64), "weight_hh_l0": torch.zeros(8, 2)},
        {"weight_ih_l0": torch.zeros(8, 3), "weight_hh_l0": torch.zeros(8, 2, dtype=torch.int8)},
    ],
    ids=["cell-8-gates", "integer-weight_ih", "integer-weight_hh"],
)
def test_find_lstm_groups_ignores_other_gate_counts_and_integer_tensors(state_dict):
    assert find_lstm_groups(state_dict) == []


def test_find_lstm_groups_cell_with_one_bias_has_a_bias():
    """A file missing one of the two biases: a biased cell with a problem, not bias=False."""
    state = nn.LSTMCell(3, 4).state_dict()
    del state["bias_hh"]
    (group,) = find_lstm_groups(state)
    assert group.config["bias"] is True
    assert group.problems, group
