"""Claim: HandGRU, HandRNN, HandGRUCell and HandRNNCell are nn.GRU, nn.RNN, nn.GRUCell and
nn.RNNCell: the same parameters, init and state dicts, and the same outputs, final states and
gradients (float64, 1e-10) over the flag grid, packed, unbatched and dropout in training; the
same exception classes for bad arguments and inputs; no fused kernel; vmap and compile work.
Oracle: torch's own modules, computed inside each test.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

from handlstm.modules.gru import HandGRU
from handlstm.modules.recurrent_cells import HandGRUCell, HandRNNCell
from handlstm.modules.rnn import HandRNN

TOL = {"rtol": 1e-10, "atol": 1e-10}
F64 = torch.float64

# (hand class, torch class, extra constructor keywords)
STACKED = [
    (HandGRU, nn.GRU, {}),
    (HandRNN, nn.RNN, {"nonlinearity": "tanh"}),
    (HandRNN, nn.RNN, {"nonlinearity": "relu"}),
]
CELLS = [
    (HandGRUCell, nn.GRUCell, {}),
    (HandRNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    (HandRNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
]
IDS = ["gru", "rnn_tanh", "rnn_relu"]


def pair(hand_cls, torch_cls, extra, *args, **kwargs):
    """The torch module and a hand module holding the same parameter values (float64)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch_cls(*args, **extra, **kwargs, dtype=F64)
        hand = hand_cls(*args, **extra, **kwargs, dtype=F64)
    hand.load_state_dict(ref.state_dict(), strict=True)
    return hand, ref


def assert_same_grads(hand, ref, hand_inputs, ref_inputs):
    """Every gradient: the inputs' and each parameter's (by name, from .grad, not state_dict)."""
    for a, b in zip(hand_inputs, ref_inputs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, **TOL)
    ref_params = dict(ref.named_parameters())
    for name, p in hand.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, **TOL, msg=name)


def run_both(hand, ref, x, h0, seed=0):
    outs = []
    for module in (hand, ref):
        xi = x.detach().clone().requires_grad_()
        hi = None if h0 is None else h0.detach().clone().requires_grad_()
        torch.manual_seed(seed)
        out, h_n = module(xi, hi)
        data = out.data if isinstance(out, PackedSequence) else out
        (data.sin().sum() + h_n.cos().sum()).backward()
        outs.append((data, h_n, [t for t in (xi, hi) if t is not None]))
    (o1, h1, i1), (o2, h2, i2) = outs
    torch.testing.assert_close(o1, o2, **TOL)
    torch.testing.assert_close(h1, h2, **TOL)
    assert_same_grads(hand, ref, i1, i2)


GRID = list(itertools.product([1, 2], [True, False], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("classes", STACKED, ids=IDS)
@pytest.mark.parametrize("layers,bias,batch_first,bidirectional,with_h0", GRID)
def test_flag_grid_matches_torch(classes, layers, bias, batch_first, bidirectional, with_h0):
    hand, ref = pair(
        *classes,
        3,
        4,
        num_layers=layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
    )
    torch.manual_seed(1)
    x = torch.randn((2, 5, 3) if batch_first else (5, 2, 3), dtype=F64)
    d = 2 if bidirectional else 1
    h0 = torch.randn(layers * d, 2, 4, dtype=F64) if with_h0 else None
    run_both(hand, ref, x, h0)


@pytest.mark.parametrize("classes", STACKED, ids=IDS)
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("training", [False, True])
def test_dropout_between_layers_as_torch_places_it(classes, p, training):
    hand, ref = pair(*classes, 3, 4, num_layers=3, dropout=p, bidirectional=True)
    hand.train(training)
    ref.train(training)
    x = torch.randn(6, 2, 3, dtype=F64)
    run_both(hand, ref, x, torch.randn(6, 2, 4, dtype=F64), seed=7)


@pytest.mark.parametrize("classes", STACKED, ids=IDS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_packed_sequences(classes, enforce_sorted, bidirectional, with_h0):
    hand, ref = pair(*classes, 3, 4, num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor([5, 4, 2]) if enforce_sorted else torch.tensor([2, 5, 4])
    packed = pack_padded_sequence(
        torch.randn(5, 3, 3, dtype=F64), lengths, enforce_sorted=enforce_sorted
    )
    h0 = torch.randn(4 if bidirectional else 2, 3, 4, dtype=F64) if with_h0 else None
    outs = []
    for module in (hand, ref):
        data = packed.data.detach().clone().requires_grad_()
        p = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        hi = None if h0 is None else h0.clone().requires_grad_()
        out, h_n = module(p, hi)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        assert out.unsorted_indices is packed.unsorted_indices
        (out.data.sin().sum() + h_n.cos().sum()).backward()
        outs.append((out.data, h_n, [t for t in (data, hi) if t is not None]))
    torch.testing.assert_close(outs[0][0], outs[1][0], **TOL)
    torch.testing.assert_close(outs[0][1], outs[1][1], **TOL)  # h_n in the caller's order
    assert_same_grads(hand, ref, outs[0][2], outs[1][2])


@pytest.mark.parametrize("classes", STACKED, ids=IDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_unbatched(classes, batch_first, with_h0):
    hand, ref = pair(*classes, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
    h0 = torch.randn(4, 4, dtype=F64) if with_h0 else None
    run_both(hand, ref, torch.randn(5, 3, dtype=F64), h0)


@pytest.mark.parametrize("classes", CELLS, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 3), (3,)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_cells_match_torch(classes, bias, shape, with_h0):
    hand, ref = pair(*classes, 3, 4, bias=bias)
    x = torch.randn(shape, dtype=F64)
    h0 = torch.randn((*shape[:-1], 4), dtype=F64) if with_h0 else None
    results = []
    for module in (hand, ref):
        xi = x.clone().requires_grad_()
        hi = None if h0 is None else h0.clone().requires_grad_()
        h1 = module(xi, hi)
        h1.sin().sum().backward()
        results.append((h1, [t for t in (xi, hi) if t is not None]))
    torch.testing.assert_close(results[0][0], results[1][0], **TOL)
    assert_same_grads(hand, ref, results[0][1], results[1][1])


CONFIGS = [
    dict(),
    dict(num_layers=3, bidirectional=True),
    dict(bias=False, num_layers=2),
    dict(batch_first=True, dropout=0.3, num_layers=2),
]


@pytest.mark.parametrize(
    "classes", STACKED + CELLS, ids=[f"{i}" for i in IDS + [f"{i}_cell" for i in IDS]]
)
@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_seeded_init_and_state_dicts_both_ways(classes, config):
    hand_cls, torch_cls, extra = classes
    kwargs = CONFIGS[config]
    if hand_cls in (HandGRUCell, HandRNNCell):
        kwargs = {"bias": kwargs.get("bias", True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        ref = torch_cls(3, 4, **extra, **kwargs)
        torch.manual_seed(0)
        hand = hand_cls(3, 4, **extra, **kwargs)
    ref_sd, hand_sd = ref.state_dict(), hand.state_dict()
    assert list(ref_sd) == list(hand_sd)  # names and order
    for name in ref_sd:
        assert torch.equal(ref_sd[name], hand_sd[name]), name  # bit-identical init
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in hand.named_parameters()]
    torch.manual_seed(5)
    hand.reset_parameters()
    ref.load_state_dict(hand.state_dict(), strict=True)
    hand.load_state_dict(ref.state_dict(), strict=True)
    for name, value in hand.state_dict().items():
        assert torch.equal(value, ref.state_dict()[name])
    for attr in (
        "input_size",
        "hidden_size",
        "bias",
        "num_layers",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
        "nonlinearity",
    ):
        if hasattr(ref, attr):
            assert getattr(hand, attr) == getattr(ref, attr), attr
    assert repr(hand).split("(", 1)[1] == repr(ref).split("(", 1)[1]


def error_of(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the class is what is compared
        return error
    return None


def assert_same_error(hand_fn, torch_fn):
    expected, got = error_of(torch_fn), error_of(hand_fn)
    if expected is None:
        assert got is None, got
        return
    assert got is not None, f"torch raised {type(expected).__name__}: {expected}; hand did not"
    assert isinstance(got, type(expected)), (type(got), got, type(expected), expected)
    assert str(got), "a message saying expected vs got"


BAD_ARGS = [
    ((3, 4), dict(proj_size=2)),
    ((3, 4), dict(proj_size=0)),
    ((3, 4), dict(foo=1)),
    ((3, 0), {}),
    ((3, 2.0), {}),
    ((0, 3), {}),
    ((3, 4, 0), {}),
    ((3, 4), dict(num_layers=1.5)),
    ((3, 4), dict(num_layers="2")),
    ((3, 4), dict(dropout=2)),
    ((3, 4), dict(dropout="a")),
    ((3, 4), dict(dropout=True)),
    ((3, 4), dict(bias=1)),
    ((3, 4), dict(batch_first=1)),
    ((3, 4), dict(bidirectional=1)),
    ((3, 4), dict(bidirectional=torch.tensor([1, 2]))),
    ((3,), {}),
]


@pytest.mark.parametrize("classes", STACKED, ids=IDS)
@pytest.mark.parametrize("case", range(len(BAD_ARGS)))
def test_constructor_errors_as_torch(classes, case):
    hand_cls, torch_cls, extra = classes
    args, kwargs = BAD_ARGS[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_error(
            lambda: hand_cls(*args, **extra, **kwargs), lambda: torch_cls(*args, **extra, **kwargs)
        )


@pytest.mark.parametrize("nonlinearity", ["sigmoid", None, "TANH"])
def test_rnn_nonlinearity_errors_as_torch(nonlinearity):
    assert_same_error(
        lambda: HandRNN(3, 4, nonlinearity=nonlinearity),
        lambda: nn.RNN(3, 4, nonlinearity=nonlinearity),
    )
    assert_same_error(lambda: HandRNN(3, 4, 1, nonlinearity), lambda: nn.RNN(3, 4, 1, nonlinearity))
    cell, ref = (
        HandRNNCell(3, 4, nonlinearity=nonlinearity),
        nn.RNNCell(3, 4, nonlinearity=nonlinearity),
    )
    assert_same_error(lambda: cell(torch.randn(2, 3)), lambda: ref(torch.randn(2, 3)))


BAD_CELL_ARGS = [(3, 0), (3, -1), (3, 2.0), (3, "2"), ("3", 2), (3, torch.tensor(2))]


@pytest.mark.parametrize("classes", CELLS, ids=IDS)
@pytest.mark.parametrize("args", BAD_CELL_ARGS, ids=str)
def test_cell_constructor_errors_as_torch(classes, args):
    hand_cls, torch_cls, extra = classes
    assert_same_error(lambda: hand_cls(*args, **extra), lambda: torch_cls(*args, **extra))
    assert_same_error(
        lambda: hand_cls(3, 2, bias=torch.tensor([1, 2])),
        lambda: torch_cls(3, 2, bias=torch.tensor([1, 2])),
    )
    assert_same_error(lambda: hand_cls(3, 2, foo=1), lambda: torch_cls(3, 2, foo=1))


def _packed(data=None, batch_sizes=None):
    p = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 3, 2]), enforce_sorted=False)
    return PackedSequence(
        p.data if data is None else data(p.data),
        p.batch_sizes if batch_sizes is None else batch_sizes(p.batch_sizes),
        p.sorted_indices,
        p.unsorted_indices,
    )


SORTED = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 3, 2]))
BAD_INPUTS = {
    "4d": lambda: (torch.randn(1, 5, 2, 3),),
    "1d": lambda: (torch.randn(3),),
    "features": lambda: (torch.randn(5, 2, 2),),
    "float64": lambda: (torch.randn(5, 2, 3, dtype=F64),),
    "int": lambda: (torch.zeros(5, 2, 3, dtype=torch.long),),
    "length 0": lambda: (torch.randn(0, 2, 3),),
    "batch 0": lambda: (torch.randn(5, 0, 3),),
    "hx 2d": lambda: (torch.randn(5, 2, 3), torch.randn(2, 4)),
    "hx tuple": lambda: (torch.randn(5, 2, 3), (torch.randn(2, 2, 4),)),
    "hx int": lambda: (torch.randn(5, 2, 3), 3),
    "hx batch": lambda: (torch.randn(5, 2, 3), torch.randn(2, 3, 4)),
    "hx layers": lambda: (torch.randn(5, 2, 3), torch.randn(1, 2, 4)),
    "hx hidden": lambda: (torch.randn(5, 2, 3), torch.randn(2, 2, 5)),
    "hx float64": lambda: (torch.randn(5, 2, 3), torch.randn(2, 2, 4, dtype=F64)),
    "hx meta": lambda: (torch.randn(5, 2, 3), torch.randn(2, 2, 4, device="meta")),
    "input meta": lambda: (torch.randn(5, 2, 3, device="meta"),),
    "unbatched hx 3d": lambda: (torch.randn(5, 3), torch.randn(2, 1, 4)),
    "unbatched hx hidden": lambda: (torch.randn(5, 3), torch.randn(2, 5)),
    "unbatched length 0": lambda: (torch.randn(0, 3),),
    "packed hx 2d": lambda: (_packed(), torch.randn(2, 3)),
    "packed hx 1d": lambda: (_packed(), torch.randn(4)),
    "packed hx tuple": lambda: (_packed(), (torch.randn(2, 3, 4),)),
    "packed hx small batch": lambda: (_packed(), torch.randn(2, 2, 4)),
    "packed hx big batch": lambda: (_packed(), torch.randn(2, 4, 4)),
    "packed hx 4d": lambda: (_packed(), torch.randn(2, 3, 4, 1)),
    "packed hx hidden": lambda: (_packed(), torch.randn(2, 3, 5)),
    "packed hx float64": lambda: (_packed(), torch.randn(2, 3, 4, dtype=F64)),
    "packed float64": lambda: (_packed(data=lambda d: d.double()),),
    "packed features": lambda: (_packed(data=lambda d: d[:, :2]),),
    "packed 3d": lambda: (_packed(data=lambda d: d[:, None]),),
    "packed float sizes": lambda: (_packed(batch_sizes=lambda b: b.float()),),
    "packed empty sizes": lambda: (_packed(batch_sizes=lambda b: b[:0]),),
    "sorted packed hx tuple": lambda: (SORTED, (torch.randn(2, 3, 4),)),
    "sorted packed hx 2d": lambda: (SORTED, torch.randn(2, 3)),
    "sorted packed hx batch": lambda: (SORTED, torch.randn(2, 2, 4)),
}


@pytest.mark.parametrize("classes", STACKED, ids=IDS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_forward_errors_as_torch(classes, case):
    hand_cls, torch_cls, extra = classes
    torch.manual_seed(0)
    ref = torch_cls(3, 4, 2, **extra)
    hand = hand_cls(3, 4, 2, **extra)
    inputs = BAD_INPUTS[case]()
    assert_same_error(lambda: hand(*inputs), lambda: ref(*inputs))


BAD_CELL_INPUTS = {
    "3d": lambda: (torch.randn(1, 2, 3),),
    "0d": lambda: (torch.tensor(1.0),),
    "features": lambda: (torch.randn(2, 2),),
    "float64": lambda: (torch.randn(2, 3, dtype=F64),),
    "hx 3d": lambda: (torch.randn(2, 3), torch.randn(1, 2, 4)),
    "hx tuple": lambda: (torch.randn(2, 3), (torch.randn(2, 4),)),
    "hx 1d": lambda: (torch.randn(2, 3), torch.randn(4)),
    "hx 1d of batch": lambda: (torch.randn(2, 3), torch.randn(2)),
    "hx batch": lambda: (torch.randn(2, 3), torch.randn(3, 4)),
    "hx hidden": lambda: (torch.randn(2, 3), torch.randn(2, 5)),
    "hx float64": lambda: (torch.randn(2, 3), torch.randn(2, 4, dtype=F64)),
    "unbatched hx 2d": lambda: (torch.randn(3), torch.randn(1, 4)),
    "unbatched hx 2d of 2": lambda: (torch.randn(3), torch.randn(2, 4)),
    "unbatched hx hidden": lambda: (torch.randn(3), torch.randn(5)),
    "batch 0": lambda: (torch.randn(0, 3),),
    "hx meta": lambda: (torch.randn(2, 3), torch.randn(2, 4, device="meta")),
    "input meta": lambda: (torch.randn(2, 3, device="meta"),),
    "hx int": lambda: (torch.randn(2, 3), 3),
}


@pytest.mark.parametrize("classes", CELLS, ids=IDS)
@pytest.mark.parametrize("case", list(BAD_CELL_INPUTS))
def test_cell_forward_errors_as_torch(classes, case):
    hand_cls, torch_cls, extra = classes
    ref, hand = torch_cls(3, 4, **extra), hand_cls(3, 4, **extra)
    inputs = BAD_CELL_INPUTS[case]()
    assert_same_error(lambda: hand(*inputs), lambda: ref(*inputs))


@st.composite
def configs(draw):
    classes = draw(st.sampled_from(STACKED))
    config = dict(
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.4])),
    )
    sizes = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    steps, batch = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    training = draw(st.booleans())
    lengths = draw(st.none() | st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
    return classes, config, sizes, steps, batch, training, lengths, draw(st.booleans())


@given(configs())
def test_fuzz_against_torch(drawn):
    classes, config, (h_in, hidden), steps, batch, training, lengths, with_h0 = drawn
    hand, ref = pair(*classes, h_in, hidden, **config)
    hand.train(training)
    ref.train(training)
    torch.manual_seed(3)
    shape = (batch, steps, h_in) if config["batch_first"] else (steps, batch, h_in)
    x = torch.randn(shape, dtype=F64)
    d = 2 if config["bidirectional"] else 1
    h0 = torch.randn(config["num_layers"] * d, batch, hidden, dtype=F64) if with_h0 else None
    if lengths is None:
        run_both(hand, ref, x, h0, seed=11)
        return
    packed = pack_padded_sequence(
        x, torch.tensor(lengths), batch_first=config["batch_first"], enforce_sorted=False
    )
    results = []
    for module in (hand, ref):
        data = packed.data.clone().requires_grad_()
        p = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        hi = None if h0 is None else h0.clone().requires_grad_()
        torch.manual_seed(11)
        out, h_n = module(p, hi)
        (out.data.sin().sum() + h_n.cos().sum()).backward()
        results.append((out.data, h_n, [t for t in (data, hi) if t is not None]))
    torch.testing.assert_close(results[0][0], results[1][0], **TOL)
    torch.testing.assert_close(results[0][1], results[1][1], **TOL)
    assert_same_grads(hand, ref, results[0][2], results[1][2])


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


FORBIDDEN = ("gru", "rnn_tanh", "rnn_relu", "_thnn_fused", "mkldnn_rnn", "cudnn", "lstm")


def fused(ops):
    return sorted({op for op in ops if any(word in op.lower() for word in FORBIDDEN)})


def recorded(module, *inputs):
    """Every op of forward and backward: as dispatched (below composite ops) and as the
    profiler names them (composite ops such as aten::gru included)."""
    with torch.profiler.profile() as profile, OpRecorder() as recorder:
        out = module(*inputs)
        first = out[0] if isinstance(out, tuple) else out
        first = first.data if isinstance(first, PackedSequence) else first
        loss = first.sum() + (out[1].sum() if isinstance(out, tuple) else 0)
        loss.backward()
    return recorder.ops + [event.key for event in profile.key_averages()]


@pytest.mark.parametrize("classes", STACKED + CELLS, ids=IDS + [f"{i}_cell" for i in IDS])
def test_no_fused_kernel_runs(classes):
    hand_cls, torch_cls, extra = classes
    if hand_cls in (HandGRUCell, HandRNNCell):
        x = torch.randn(2, 3, requires_grad=True)
        control = recorded(torch_cls(3, 4, **extra), x)
        assert fused(control), "the recorder missed torch's cell kernel: the test proves nothing"
        ops = recorded(hand_cls(3, 4, **extra), x)
        assert ops and fused(ops) == []
        return
    x = torch.randn(5, 2, 3, requires_grad=True)
    control = recorded(torch_cls(3, 4, 2, **extra), x)
    assert fused(control), "the recorder missed torch's kernel: the test proves nothing"
    module = hand_cls(3, 4, 2, **extra, bidirectional=True, dropout=0.5)
    assert fused(recorded(module, x)) == []
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 2]))
    assert fused(recorded(module, packed)) == []


@pytest.mark.parametrize("classes", STACKED, ids=IDS)
def test_vmap_over_calls(classes):
    """nn.GRU has no batching rule; a batch of HandGRU calls vmaps, equal to a Python loop."""
    hand, ref = pair(*classes, 3, 4, num_layers=2)
    xs = torch.randn(4, 5, 2, 3, dtype=F64)  # (B, L, N, H_in)
    h0s = torch.randn(4, 2, 2, 4, dtype=F64)
    out, h_n = torch.func.vmap(hand)(xs, h0s)
    for b in range(4):
        ref_out, ref_h = ref(xs[b], h0s[b])
        torch.testing.assert_close(out[b], ref_out, **TOL)
        torch.testing.assert_close(h_n[b], ref_h, **TOL)
    cell, ref_cell = pair(HandGRUCell, nn.GRUCell, {}, 3, 4)
    got = torch.func.vmap(cell)(xs[:, 0], h0s[:, 0])
    for b in range(4):
        torch.testing.assert_close(got[b], ref_cell(xs[b, 0], h0s[b, 0]), **TOL)


@pytest.mark.parametrize("classes", STACKED, ids=IDS)
def test_compile_fullgraph_smoke(classes):
    torch._dynamo.reset()
    hand, ref = pair(*classes, 3, 4, num_layers=2, bidirectional=True)
    compiled = torch.compile(hand, fullgraph=True, backend="eager")
    x = torch.randn(5, 2, 3, dtype=F64)
    out, h_n = compiled(x)
    ref_out, ref_h = ref(x)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(h_n, ref_h, **TOL)
