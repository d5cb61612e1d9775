"""torch.compile and torch.export of models that contain HandLSTM or HandLSTMCell.

Oracle: the same model run eagerly (a deep copy), float64, tolerance 1e-10; and nn.LSTM for the
eager run itself (other test files prove HandLSTM == nn.LSTM). Compiles are slow on 2 cores, so
models are tiny and most checks use the "eager" / "aot_eager" backends (Dynamo tracing, and
AOTAutograd's forward/backward graphs); inductor runs in one test marked slow. The default dense
configuration (the one a fast path would take) comes first everywhere.
"""

from __future__ import annotations

import copy
import shutil
from typing import Any

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch import Tensor, nn

from handlstm import HandLSTM, HandLSTMCell
from handlstm.engines.tracing import time_loop

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("default", {}),
    (
        "bi_proj_2layers_bf",
        {"num_layers": 2, "bidirectional": True, "proj_size": 2, "batch_first": True},
    ),
]
IDS = [name for name, _ in CONFIGS]


class Model(nn.Module):
    """Linear -> HandLSTM -> Linear, returning the head's output and the LSTM's final states."""

    def __init__(self, lstm_cls: type[nn.Module] = HandLSTM, **config: Any) -> None:
        super().__init__()
        self.encoder = nn.Linear(2, 3, dtype=DT)
        self.lstm = lstm_cls(3, 4, dtype=DT, **config)
        d = 2 if self.lstm.bidirectional else 1
        self.head = nn.Linear(d * (self.lstm.proj_size or 4), 2, dtype=DT)

    def forward(
        self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        out, (h, c) = self.lstm(torch.tanh(self.encoder(x)), hx)
        return self.head(out), h, c


def make_model(config: dict[str, Any]) -> Model:
    torch.manual_seed(0)
    return Model(**config)


def example_inputs(model: Model, length: int = 3, batch: int = 2) -> tuple[Tensor, Any]:
    lstm = model.lstm
    shape = (batch, length, 2) if lstm.batch_first else (length, batch, 2)
    d = 2 if lstm.bidirectional else 1
    h0 = torch.randn(d * lstm.num_layers, batch, lstm.proj_size or 4, dtype=DT)
    c0 = torch.randn(d * lstm.num_layers, batch, 4, dtype=DT)
    return torch.randn(shape, dtype=DT), (h0, c0)


def outputs_and_grads(model: nn.Module, x: Tensor, hx: Any) -> list[Tensor]:
    x = x.clone().requires_grad_()
    out, h, c = model(x, hx)
    loss = out.square().sum() + h.sum() + (c * c).sum()
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return [out, h, c, *grads]


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch._dynamo.reset()


# aot_eager (AOTAutograd's joint graph) costs 5-9 s per compile here: once in the default run.
COMPILE_CASES = [
    pytest.param(CONFIGS[0][1], "aot_eager", False, id="default-aot_eager-hx_none"),
    pytest.param(CONFIGS[0][1], "eager", True, id="default-eager-hx_given"),
    pytest.param(CONFIGS[1][1], "eager", False, id="bi_proj_2layers_bf-eager-hx_none"),
    pytest.param(CONFIGS[1][1], "eager", True, id="bi_proj_2layers_bf-eager-hx_given"),
    pytest.param(
        CONFIGS[1][1], "aot_eager", True, id="bi_proj_2layers_bf-aot_eager", marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize(("config", "backend", "with_hx"), COMPILE_CASES)
def test_compile_fullgraph_matches_eager(
    config: dict[str, Any], backend: str, with_hx: bool
) -> None:
    model = make_model(config)
    eager = copy.deepcopy(model)
    x, hx = example_inputs(model)
    hx = hx if with_hx else None
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    torch.testing.assert_close(
        outputs_and_grads(compiled, x, hx), outputs_and_grads(eager, x, hx), **TOL
    )
    # reference of the reference: the eager model with nn.LSTM inside
    oracle = Model(nn.LSTM, **config)
    oracle.load_state_dict(eager.state_dict())
    torch.testing.assert_close(
        outputs_and_grads(eager, x, hx), outputs_and_grads(oracle, x, hx), **TOL
    )
    assert counter.frame_count == 1


@pytest.mark.parametrize("config", [c for _, c in CONFIGS], ids=IDS)
def test_no_graph_break(config: dict[str, Any]) -> None:
    model = make_model(config)
    x, hx = example_inputs(model)
    explanation = torch._dynamo.explain(model)(x, hx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compile_cell_fullgraph_matches_nn_lstm_cell() -> None:
    torch.manual_seed(0)
    ref = nn.LSTMCell(3, 4, dtype=DT)
    cell = HandLSTMCell(3, 4, dtype=DT)
    cell.load_state_dict(ref.state_dict())
    compiled = torch.compile(cell, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, dtype=DT, requires_grad=True)
    for module in (compiled, ref):
        h, c = module(x)
        (h.square().sum() + c.sum()).backward()
    got = [*compiled(x), x.grad, *(p.grad for p in cell.parameters())]
    # gradients were accumulated once per module: x.grad holds both, parameters their own
    expected = [*ref(x), None, *(p.grad for p in ref.parameters())]
    torch.testing.assert_close(got[:2], expected[:2], **TOL)
    torch.testing.assert_close(got[3:], expected[3:], **TOL)


# -- dynamic sequence lengths: what they cost and the cheapest way around -------------------------


@pytest.mark.parametrize(
    "dynamic", [None, pytest.param(True, marks=pytest.mark.slow)], ids=["default", "dynamic"]
)
def test_unrolled_loop_recompiles_per_length_measured(dynamic: bool | None) -> None:
    """time_loop("unrolled"): the loop is unrolled in the graph, so each new L is a new graph,
    even with dynamic=True (the behaviour before the traced loop, kept on request)."""
    model = make_model({})
    counter = torch._dynamo.testing.CompileCounter()
    with time_loop("unrolled"):
        compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=dynamic)
        for length in (2, 3, 2, 3):
            compiled(example_inputs(model, length)[0])
    assert counter.frame_count == 2


FIVE_LENGTHS = (5, 9, 2, 33, 17)


@pytest.mark.parametrize(
    ("config", "how"),
    [
        (CONFIGS[0][1], "dynamic"),
        (CONFIGS[0][1], "mark_dynamic"),
        pytest.param(CONFIGS[1][1], "dynamic", marks=pytest.mark.slow),
        pytest.param(CONFIGS[1][1], "mark_dynamic", marks=pytest.mark.slow),
    ],
    ids=["default-dynamic", "default-mark_dynamic", f"{IDS[1]}-dynamic", f"{IDS[1]}-mark_dynamic"],
)
def test_one_graph_for_five_lengths(config: dict[str, Any], how: str) -> None:
    """dynamic=True, or mark_dynamic on the time dimension: the traced loop keeps L symbolic,
    so one Dynamo graph serves five lengths, each equal to nn.LSTM (hx given)."""
    model = make_model(config).eval()
    oracle = Model(nn.LSTM, **config).eval()
    oracle.load_state_dict(model.state_dict())
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(
        model, backend=counter, fullgraph=True, dynamic=True if how == "dynamic" else None
    )
    time_dim = 1 if model.lstm.batch_first else 0
    for length in FIVE_LENGTHS:
        x, hx = example_inputs(model, length)
        if how == "mark_dynamic":
            torch._dynamo.mark_dynamic(x, time_dim)
        with torch.no_grad():  # inference: the scan (training: the opaque op, tested below)
            torch.testing.assert_close(compiled(x, hx), oracle(x, hx), **TOL)
    assert counter.frame_count == 1


def test_default_compile_recompiles_once_then_serves_every_length() -> None:
    """Plain torch.compile: the first length compiles static (short: unrolled), the second
    recompiles with L symbolic (automatic dynamic: the traced loop), and no length after that
    compiles again."""
    model = make_model({}).eval()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for length in (3, 4, *FIVE_LENGTHS):
        x = example_inputs(model, length)[0]
        torch.testing.assert_close(compiled(x), model(x), **TOL)
    assert counter.frame_count == 2


@pytest.mark.parametrize("loop", ["auto", "scan"], ids=["opaque_op", "scan"])
def test_compiled_training_any_length_gradients_equal_nn_lstm(loop: str) -> None:
    """aot_eager (AOTAutograd's forward and backward graphs), dynamic=True: one compile, and at
    each length outputs and every gradient equal nn.LSTM's. "auto" trains through the opaque op
    (the eager direction), "scan" through the scan's autograd."""
    model = make_model({})
    oracle = Model(nn.LSTM)
    oracle.load_state_dict(model.state_dict())
    counter = torch._dynamo.utils.counters
    counter.clear()
    with time_loop(loop):  # type: ignore[arg-type]
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
        for length in (5, 11):  # not 4: dynamic=True duck-sizes a length equal to H (4) with it
            x, hx = example_inputs(model, length)
            torch.testing.assert_close(
                outputs_and_grads(compiled, x, hx), outputs_and_grads(oracle, x, hx), **TOL
            )
    assert counter["stats"]["unique_graphs"] == 1


def test_compiled_training_graph_holds_one_opaque_op_per_direction() -> None:
    """With gradients, a compiled default direction is one handlstm::direction node (the eager
    direction, fast path included, at any length); without gradients it is a scan."""
    model = make_model({"num_layers": 2, "bidirectional": True})
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=True)
    x = example_inputs(model, 6)[0]
    compiled(x)
    with torch.no_grad():
        compiled(x)
    targets = [[str(n.target) for n in gm.graph.nodes if n.op == "call_function"] for gm in graphs]
    assert sum("handlstm.direction" in t for t in targets[0]) == 4
    assert not any("scan" in t for t in targets[0])
    assert sum("scan" in t for t in targets[1]) == 4
    assert not any("handlstm" in t for t in targets[1])


def test_compile_lengths_one_graph_equals_nn_lstm_packed() -> None:
    """forward(x, lengths=) under compile: one graph for new lengths and new padded sizes,
    each sequence's output and final state equal nn.LSTM on the packed batch."""
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, bidirectional=True, dtype=DT)
    lstm = HandLSTM(3, 4, bidirectional=True, dtype=DT)
    lstm.load_state_dict(ref.state_dict())
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(lstm, backend=counter, fullgraph=True, dynamic=True)
    # first call: L, N and the feature sizes all different (dynamic=True duck-sizes equal ones)
    for lengths in ([5, 2, 7, 1, 7], [9, 9], [1, 6, 2, 6, 5, 6]):
        x = torch.randn(max(lengths), len(lengths), 3, dtype=DT)
        out, (h, c) = compiled(x, lengths=torch.tensor(lengths))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        expected, (eh, ec) = ref(packed)
        expected, _ = nn.utils.rnn.pad_packed_sequence(expected, total_length=max(lengths))
        torch.testing.assert_close((out, h, c), (expected, eh, ec), **TOL)
    assert counter.frame_count == 1


RANDOM_VARIANTS = {
    "input_dropout": 0.3,
    "recurrent_dropout": 0.2,
    "weight_drop": 0.25,
    "zoneout_h": 0.2,
    "zoneout_c": 0.15,
    "layer_norm": True,
    "peepholes": True,
}


@pytest.mark.parametrize("how", ["mark_dynamic", pytest.param("dynamic", marks=pytest.mark.slow)])
def test_compile_variants_with_random_masks_any_length(how: str) -> None:
    """Every variant option, in training (random masks drawn per call), through the traced
    loop: with the same seed the compiled module draws the same masks as the eager one and
    gives the same outputs and gradients, at two lengths with one graph."""
    torch.manual_seed(0)
    lstm = HandLSTM(3, 4, dtype=DT, **RANDOM_VARIANTS)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(
        lstm, backend=counter, fullgraph=True, dynamic=True if how == "dynamic" else None
    )

    def run(module: nn.Module, x: Tensor, seed: int) -> list[Tensor]:
        torch.manual_seed(seed)
        out, (h, c) = module(x)
        loss = out.square().sum() + h.sum() + c.sum()
        return [out, h, c, *torch.autograd.grad(loss, list(lstm.parameters()))]

    for length, seed in ((6, 1), (19, 2)):
        x = torch.randn(length, 2, 3, dtype=DT)
        if how == "mark_dynamic":
            torch._dynamo.mark_dynamic(x, 0)
        got, expected = run(compiled, x, seed), run(lstm, x, seed)
        torch.testing.assert_close(got, expected, **TOL)
        assert not torch.equal(got[0], run(lstm, x, seed + 10)[0])  # the masks matter
    assert counter.frame_count == 1


def test_compile_dynamic_layer_norm_one_graph() -> None:
    """dynamic=True with layer_norm: the norms' eps stays a Python float inside the scan body
    (torch 2.13's scan refuses a symbolic float there, and Dynamo makes a module-level float
    symbolic under dynamic=True), so one graph serves every length, equal to eager."""
    torch.manual_seed(0)
    lstm = HandLSTM(3, 4, num_layers=2, layer_norm=True, dtype=DT)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(lstm, backend=counter, fullgraph=True, dynamic=True)
    for length in (9, 13, 21):
        x = torch.randn(length, 2, 3, dtype=DT, requires_grad=True)
        out, (h, c) = compiled(x)
        expected, (eh, ec) = lstm(x)
        torch.testing.assert_close((out, h, c), (expected, eh, ec), **TOL)
        got = torch.autograd.grad(out.sum() + c.sum(), [x, *lstm.parameters()])
        want = torch.autograd.grad(expected.sum() + ec.sum(), [x, *lstm.parameters()])
        torch.testing.assert_close(got, want, **TOL)
    assert counter.frame_count == 1


def test_scan_graph_size_does_not_grow_with_length() -> None:
    """Why compile time does not grow with L: the traced graph holds the step once. Exported
    with fixed shapes at L=16 and L=1024, the programs have the same nodes; unrolled, the graph
    grows with L (the compile times are measured in benchmarks/compile_bench.py)."""
    model = make_model({}).eval()

    def nodes(length: int) -> int:
        program = torch.export.export(model, (example_inputs(model, length)[0],))
        return len(program.graph.nodes)

    with time_loop("scan"):
        assert nodes(16) == nodes(1024)
    with time_loop("unrolled"):
        assert nodes(8) > nodes(4)


# -- TorchScript: refused at trace/script time, pointing at torch.export --------------------------


def test_torchscript_trace_and_script_refused_with_torch_export_hint() -> None:
    model = make_model({})
    x, _ = example_inputs(model)
    with pytest.raises(RuntimeError, match=r"torch\.jit\.trace.*torch\.export\.export"):
        torch.jit.trace(model, (x,))
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script.*torch\.export\.export"):
        torch.jit.script(model)
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script.*torch\.export\.export"):
        torch.jit.script(HandLSTM(3, 4))


def test_nn_lstm_torchscript_trace_any_length_measured() -> None:
    """What HandLSTM does not match: nn.LSTM's trace (one aten::lstm op) runs any length."""
    model = Model(nn.LSTM).eval()
    traced = torch.jit.trace(model, (example_inputs(model, 3)[0],))
    x = example_inputs(model, 7)[0]
    torch.testing.assert_close(traced(x), model(x), **TOL)
    torch.jit.script(nn.LSTM(3, 4))


def test_new_batch_size_recompiles_at_most_once() -> None:
    """A new batch size costs at most one recompile: batch then becomes a symbolic size."""
    model = make_model({})
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for batch in (2, 3, 4, 5):
        x = example_inputs(model, 2, batch)[0]
        torch.testing.assert_close(compiled(x), model(x), **TOL)
    assert counter.frame_count <= 2


def test_bucketed_lengths_compile_once_per_bucket() -> None:
    """Padding at the end to a few bucket lengths: one graph per bucket; for a unidirectional
    LSTM the outputs at the valid steps equal the unpadded run."""
    model = make_model({})
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    buckets = (2, 4)
    for length in (1, 2, 3, 4, 3, 1):
        x = example_inputs(model, length)[0]
        bucket = next(b for b in buckets if b >= length)
        padded = torch.cat([x, x.new_zeros(bucket - length, *x.shape[1:])])
        out, _, _ = compiled(padded)
        torch.testing.assert_close(out[:length], model(x)[0], **TOL)
    assert counter.frame_count == len(buckets)


def test_compiled_step_serves_every_length() -> None:
    """Compiling the LSTM for one step (L=1) and looping in Python: the graph count does not grow
    with new lengths, and outputs, final states and gradients equal the eager whole-sequence run."""
    torch.manual_seed(0)
    lstm = HandLSTM(3, 4, num_layers=2, proj_size=2, dtype=DT)
    counter = torch._dynamo.testing.CompileCounter()
    step = torch.compile(lstm, backend=counter, fullgraph=True)
    counts = []
    for length in (2, 5, 3):
        x = torch.randn(length, 2, 3, dtype=DT)
        hx = (torch.zeros(2, 2, 2, dtype=DT), torch.zeros(2, 2, 4, dtype=DT))
        outs = []
        for t in range(length):
            out, hx = step(x[t : t + 1], hx)
            outs.append(out)
        got = [torch.cat(outs), *hx]
        expected = [lstm(x)[0], *lstm(x)[1]]
        torch.testing.assert_close(got, expected, **TOL)
        grads = torch.autograd.grad(sum(t.sum() for t in got), list(lstm.parameters()))
        exp_grads = torch.autograd.grad(sum(t.sum() for t in expected), list(lstm.parameters()))
        torch.testing.assert_close(grads, exp_grads, **TOL)
        counts.append(counter.frame_count)
    assert counts[0] == counts[-1] <= 2


def test_compile_packed_input_without_fullgraph() -> None:
    """PackedSequence batch sizes are data: Dynamo breaks the graph where they are read, and the
    result still equals eager (and nn.LSTM). fullgraph=True refuses packed input."""
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, dtype=DT)
    lstm = HandLSTM(3, 4, dtype=DT)
    lstm.load_state_dict(ref.state_dict())
    compiled = torch.compile(lstm, backend="eager")
    for lengths in ([3, 1], [2, 2]):
        packed = nn.utils.rnn.pack_padded_sequence(torch.randn(3, 2, 3, dtype=DT), lengths)
        out, (h, c) = compiled(packed)
        expected, (eh, ec) = ref(packed)
        torch.testing.assert_close((out.data, h, c), (expected.data, eh, ec), **TOL)
    torch._dynamo.reset()  # else the frames cached above answer the next call
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(4, 2, 3, dtype=DT), [4, 2])
    with pytest.raises(Exception, match="data-dependent"):
        torch.compile(lstm, backend="eager", fullgraph=True)(packed)


# -- inductor (the default backend): one test, slow on 2 cores ------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor on CPU needs a C++ compiler")
def test_compile_inductor_matches_eager() -> None:
    torch.manual_seed(0)
    model = Model().float()
    eager = copy.deepcopy(model)
    x = torch.randn(3, 2, 2)
    compiled = torch.compile(model, fullgraph=True)

    def run(m: nn.Module) -> list[Tensor]:
        xx = x.clone().requires_grad_()
        out, h, c = m(xx)
        grads = torch.autograd.grad(out.square().sum() + h.sum() + c.sum(), [xx, *m.parameters()])
        return [out, h, c, *grads]

    torch.testing.assert_close(run(compiled), run(eager), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor on CPU needs a C++ compiler")
def test_compile_inductor_dynamic_one_graph_five_lengths() -> None:
    """Inductor, dynamic=True: the scan compiles once and serves five lengths, outputs and every
    gradient equal to nn.LSTM's (float32)."""
    torch.manual_seed(0)
    model = Model(num_layers=2, bidirectional=True).float()
    oracle = Model(nn.LSTM, num_layers=2, bidirectional=True).float()
    oracle.load_state_dict(model.state_dict())
    counter = torch._dynamo.utils.counters
    counter.clear()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for length in FIVE_LENGTHS:
        x = torch.randn(length, 2, 2)
        torch.testing.assert_close(
            outputs_and_grads(compiled, x, None),
            outputs_and_grads(oracle, x, None),
            rtol=1e-5,
            atol=1e-5,
        )
    assert counter["stats"]["unique_graphs"] == 1


# -- torch.export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [c for _, c in CONFIGS], ids=IDS)
def test_export_matches_eager(config: dict[str, Any]) -> None:
    model = make_model(config).eval()
    x, hx = example_inputs(model)
    program = torch.export.export(model, (x, hx))
    exported = program.module()
    torch.testing.assert_close(exported(x, hx), model(x, hx), **TOL)
    x2, hx2 = example_inputs(model)  # new values, same shapes
    torch.testing.assert_close(exported(x2, hx2), model(x2, hx2), **TOL)
    oracle = Model(nn.LSTM, **config).eval()
    oracle.load_state_dict(model.state_dict())
    torch.testing.assert_close(exported(x2, hx2), oracle(x2, hx2), **TOL)


def test_export_with_dynamic_batch() -> None:
    model = make_model({}).eval()
    x, _ = example_inputs(model, 3, 2)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x,), dynamic_shapes=({1: batch},))
    for n in (1, 5):
        xn, _ = example_inputs(model, 3, n)
        torch.testing.assert_close(program.module()(xn), model(xn), **TOL)


def test_export_cell() -> None:
    torch.manual_seed(0)
    ref = nn.LSTMCell(3, 4, dtype=DT)
    cell = HandLSTMCell(3, 4, dtype=DT)
    cell.load_state_dict(ref.state_dict())
    x, h, c = torch.randn(2, 3, dtype=DT), torch.randn(2, 4, dtype=DT), torch.randn(2, 4, dtype=DT)
    program = torch.export.export(cell, (x, (h, c)))
    x2 = torch.randn(2, 3, dtype=DT)
    torch.testing.assert_close(program.module()(x2, (h, c)), ref(x2, (h, c)), **TOL)


# -- ONNX (optional: needs onnx, onnxscript and onnxruntime) --------------------------------------


def onnx_session(model: nn.Module, x: Tensor) -> Any:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnx")
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    return ort.InferenceSession(program.model_proto.SerializeToString())


@pytest.mark.slow
def test_onnx_export_proj_size_runs_in_onnxruntime() -> None:
    torch.manual_seed(0)
    lstm = HandLSTM(3, 4, proj_size=2, num_layers=2, bidirectional=True).eval()
    x = torch.randn(3, 2, 3)
    session = onnx_session(lstm, x)
    x2 = torch.randn(3, 2, 3)
    got = session.run(None, {session.get_inputs()[0].name: x2.numpy()})
    out, (h, c) = lstm(x2)
    for actual, expected in zip(got, (out, h, c), strict=True):
        torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_nn_lstm_proj_size_onnx_fails_in_onnxruntime_measured() -> None:
    """nn.LSTM(proj_size>0) exports to ONNX's LSTM op, which has no projection: onnxruntime
    rejects the graph at run time (initial_c shape mismatch)."""
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, proj_size=2).eval()
    x = torch.randn(3, 2, 3)
    session = onnx_session(lstm, x)
    with pytest.raises(Exception, match="initial_c"):
        session.run(None, {session.get_inputs()[0].name: x.numpy()})


# -- measured: what nn.LSTM itself does under compile / export ------------------------------------


def test_nn_lstm_compile_fullgraph_fails_measured() -> None:
    model = Model(nn.LSTM)
    x, _ = example_inputs(model)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(model, backend="eager", fullgraph=True)(x)


def test_nn_lstm_export_works_measured() -> None:
    model = Model(nn.LSTM).eval()
    x, _ = example_inputs(model)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x), **TOL)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: HandLSTM(3, 4, dtype=DT), id="lstm"),
        pytest.param(lambda: HandLSTM(3, 4, num_layers=2, proj_size=2, dtype=DT), id="lstm-proj"),
        pytest.param(lambda: HandLSTMCell(3, 4, dtype=DT), id="cell"),
    ],
)
def test_compile_fullgraph_after_eager_calls(make: Any) -> None:
    """A module called eagerly first, then compiled with fullgraph: whatever the eager calls left
    in the module's ``__dict__`` (structure only) must be something Dynamo can trace (a kept
    ``operator.itemgetter`` was not), and the compiled call equals the eager one."""
    torch.manual_seed(0)
    module = make()
    x = (
        torch.randn(5, 2, 3, dtype=DT)
        if isinstance(module, HandLSTM)
        else torch.randn(2, 3, dtype=DT)
    )
    expected = module(x)
    module(x)
    torch._dynamo.reset()
    got = torch.compile(module, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(got, expected, **TOL)
