"""torch.export, AOTInductor and ONNX at any sequence length: one program, lengths it never saw.

Under export (and compile) a symbolic sequence length makes run_direction take the traced loop
(handlstm/engines/traced.py): one ``scan`` per direction, whose combine function is the same step
(handlstm/core/lstm.py). Oracle: nn.LSTM with the same state dict, float64, rtol = atol = 1e-10
(ONNX: float32, 1e-5). Programs are exported at L=5 and N=3 and run at lengths and batch sizes
never seen. Each export costs seconds on 2 cores: the default run exports the default config and
one config with every flag on; one flag at a time, AOTInductor and ONNX are marked slow.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.export import Dim
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from handlstm import HandLSTM
from handlstm.engines.tracing import UNROLL_MAX_STEPS, time_loop

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}
ALL_FLAGS = {
    "num_layers": 2,
    "bidirectional": True,
    "proj_size": 2,
    "bias": False,
    "batch_first": True,
}
SEEN = (5, 3)  # (L, N) at export time
UNSEEN = [(1, 3), (2, 1), (37, 4), (100, 2)]


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    """The scan op traces its body with Dynamo, and Dynamo's cache outlives an export: an
    earlier export with a static batch of 3 makes a later one with a dynamic batch fail
    ("specialized it to be a constant (3)"). Reset between tests (docs/works_with.md)."""
    torch._dynamo.reset()


class WithHx(nn.Module):
    """``lstm(x, (h0, c0))`` with the state as two positional inputs (dynamic_shapes per input)."""

    def __init__(self, lstm: nn.Module) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor) -> Any:
        return self.lstm(x, (h0, c0))


class WithLengths(nn.Module):
    def __init__(self, lstm: HandLSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: Tensor, lengths: Tensor) -> Any:
        return self.lstm(x, lengths=lengths)


def pair(**config: Any) -> tuple[nn.LSTM, HandLSTM]:
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, dtype=DT, **config).eval()
    lstm = HandLSTM(3, 4, dtype=DT, **config).eval()
    lstm.load_state_dict(ref.state_dict())
    return ref, lstm


def make_x(lstm: nn.Module, length: int, batch: int | None) -> Tensor:
    if batch is None:
        return torch.randn(length, 3, dtype=DT)
    return torch.randn(*((batch, length) if lstm.batch_first else (length, batch)), 3, dtype=DT)


def make_hx(lstm: nn.Module, batch: int | None) -> tuple[Tensor, Tensor]:
    states = lstm.num_layers * (2 if lstm.bidirectional else 1)
    lead = (states,) if batch is None else (states, batch)
    h_out = lstm.proj_size or lstm.hidden_size
    return torch.randn(*lead, h_out, dtype=DT), torch.randn(*lead, lstm.hidden_size, dtype=DT)


def x_dims(lstm: nn.Module, batched: bool) -> dict[int, Any]:
    length, batch = Dim("L"), Dim("N")
    if not batched:
        return {0: length}
    return {0: batch, 1: length} if lstm.batch_first else {0: length, 1: batch}


def export_any_length(lstm: HandLSTM, batched: bool, with_hx: bool) -> torch.export.ExportedProgram:
    batch = SEEN[1] if batched else None
    x = make_x(lstm, SEEN[0], batch)
    dims = x_dims(lstm, batched)
    if not with_hx:
        return torch.export.export(lstm, (x,), dynamic_shapes=(dims,))
    state_dims = {1: Dim("N")} if batched else None
    return torch.export.export(
        WithHx(lstm), (x, *make_hx(lstm, batch)), dynamic_shapes=(dims, state_dims, state_dims)
    )


def check_unseen_lengths(
    program: torch.export.ExportedProgram,
    ref: nn.LSTM,
    batched: bool,
    with_hx: bool,
    cases: list[tuple[int, int]] = UNSEEN,
) -> None:
    module = program.module()
    for length, batch in cases:
        n = batch if batched else None
        x = make_x(ref, length, n)
        args = (x, *make_hx(ref, n)) if with_hx else (x,)
        out, (h, c) = module(*args)
        expected, (eh, ec) = ref(x, tuple(args[1:]) if with_hx else None)
        torch.testing.assert_close((out, h, c), (expected, eh, ec), **TOL)


def scan_nodes(program: torch.export.ExportedProgram) -> int:
    return sum(
        node.op == "call_function" and "scan" in str(node.target) for node in program.graph.nodes
    )


# Default run: every flag at once with hx given (below, with save/load), and the default config
# unbatched without hx. The rest is slow.
CASES = [
    pytest.param({}, False, False, id="default-unbatched-hx_none"),
    pytest.param({}, True, False, id="default-hx_none", marks=pytest.mark.slow),
    pytest.param({}, True, True, id="default-hx_given", marks=pytest.mark.slow),
    pytest.param(ALL_FLAGS, False, True, id="all_flags-unbatched-hx_given", marks=pytest.mark.slow),
    pytest.param(ALL_FLAGS, True, False, id="all_flags-hx_none", marks=pytest.mark.slow),
]
for flag, value in ALL_FLAGS.items():
    for with_hx in (False, True):
        CASES.append(
            pytest.param(
                {flag: value},
                True,
                with_hx,
                id=f"{flag}-{'hx_given' if with_hx else 'hx_none'}",
                marks=pytest.mark.slow,
            )
        )


@pytest.mark.parametrize(("config", "batched", "with_hx"), CASES)
def test_export_dynamic_length_equals_nn_lstm_at_unseen_lengths(
    config: dict[str, Any], batched: bool, with_hx: bool
) -> None:
    if not batched:  # batch_first does not apply to unbatched input
        config = {k: v for k, v in config.items() if k != "batch_first"}
    ref, lstm = pair(**config)
    program = export_any_length(lstm, batched, with_hx)
    assert scan_nodes(program) == lstm.num_layers * (2 if lstm.bidirectional else 1)
    check_unseen_lengths(program, ref, batched, with_hx)


@pytest.mark.parametrize("config", [{}, {"num_layers": 2, "bidirectional": True}])
def test_export_without_hx_survives_decompositions(config: dict[str, Any]) -> None:
    """Without hx the zero initial states are two tensors: torch's scan refuses initial carries
    that alias each other, in the decompositions that ONNX and AOTInductor run (a shared zero
    tensor for h_0 and c_0 failed there, while the plain export passed). The decomposed
    program still equals nn.LSTM at unseen lengths."""
    ref, lstm = pair(**config)
    program = export_any_length(lstm, batched=True, with_hx=False).run_decompositions()
    check_unseen_lengths(program, ref, batched=True, with_hx=False, cases=UNSEEN[:3])


def test_export_all_flags_then_save_load_round_trip(tmp_path: Path) -> None:
    """Every constructor flag at once, hx given with a dynamic batch; then the program saved
    with torch.export.save and loaded back runs the unseen lengths too."""
    ref, lstm = pair(**ALL_FLAGS)
    program = export_any_length(lstm, batched=True, with_hx=True)
    assert scan_nodes(program) == 4
    check_unseen_lengths(program, ref, batched=True, with_hx=True)
    path = tmp_path / "lstm.pt2"
    torch.export.save(program, path)
    check_unseen_lengths(torch.export.load(path), ref, True, True, cases=UNSEEN[2:3])


def test_export_lengths_equal_nn_lstm_on_packed_input() -> None:
    """A padded batch with per-sequence lengths in one program: nn.LSTM's packed semantics."""
    ref, lstm = pair(bidirectional=True)  # the reverse direction starts at each own length
    x = make_x(lstm, *SEEN)
    lengths = torch.tensor([5, 2, 4])
    program = torch.export.export(
        WithLengths(lstm), (x, lengths), dynamic_shapes=(x_dims(lstm, True), {0: Dim("N")})
    )
    for length, batch_lengths in [(9, [9, 1, 4, 7]), (40, [13, 40])]:
        x = make_x(lstm, length, len(batch_lengths))
        lengths = torch.tensor(batch_lengths)
        out, (h, c) = program.module()(x, lengths)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        expected, (eh, ec) = ref(packed)
        expected, _ = pad_packed_sequence(expected, total_length=length)
        torch.testing.assert_close((out, h, c), (expected, eh, ec), **TOL)


def test_auto_time_loop_choice() -> None:
    """Static short lengths are unrolled (no scan), symbolic or long ones scanned; the switch
    forces either. Outputs are nn.LSTM's every time."""
    ref, lstm = pair()
    short = make_x(lstm, 3, 2)
    long = make_x(lstm, UNROLL_MAX_STEPS + 1, 2)
    assert scan_nodes(torch.export.export(lstm, (short,))) == 0
    with time_loop("scan"):
        program = torch.export.export(lstm, (short,))
    assert scan_nodes(program) == 1
    torch.testing.assert_close(program.module()(short), ref(short), **TOL)
    with time_loop("unrolled"):
        program = torch.export.export(lstm, (long,))
        assert scan_nodes(program) == 0
        torch.testing.assert_close(program.module()(long), ref(long), **TOL)
        with pytest.raises(Exception, match="specialized it to be a constant"):
            torch.export.export(lstm, (short,), dynamic_shapes=({0: Dim("L")},))
    assert scan_nodes(torch.export.export(lstm, (long,))) == 1  # auto again, long: scan
    with pytest.raises(ValueError, match="expected one of"), time_loop("fast"):  # type: ignore[arg-type]
        pass


@pytest.mark.slow
def test_export_variants_eval_equal_eager() -> None:
    """Variant options through the traced loop (eval: zoneout's expectation, layer norm,
    peepholes, clipping), at unseen lengths, against the eager module."""
    torch.manual_seed(0)
    lstm = HandLSTM(
        3,
        4,
        dtype=DT,
        bidirectional=True,
        proj_size=2,
        layer_norm=True,
        peepholes=True,
        cell_clip=0.7,
        proj_clip=0.4,
        zoneout_h=0.2,
        zoneout_c=0.1,
    ).eval()
    program = torch.export.export(
        lstm, (make_x(lstm, *SEEN),), dynamic_shapes=(x_dims(lstm, True),)
    )
    for length, batch in UNSEEN[:3]:
        x = make_x(lstm, length, batch)
        torch.testing.assert_close(program.module()(x), lstm(x), **TOL)


@pytest.mark.slow
def test_export_forward_with_states() -> None:
    """forward_with_states records every step through the scan too."""

    class States(nn.Module):
        def __init__(self, lstm: HandLSTM) -> None:
            super().__init__()
            self.lstm = lstm

        def forward(self, x: Tensor) -> tuple[Tensor, ...]:
            return tuple(self.lstm.forward_with_states(x))

    _, lstm = pair(bidirectional=True)
    program = torch.export.export(
        States(lstm), (make_x(lstm, *SEEN),), dynamic_shapes=(x_dims(lstm, True),)
    )
    x = make_x(lstm, 23, 2)
    torch.testing.assert_close(program.module()(x), tuple(lstm.forward_with_states(x)), **TOL)


def test_nn_lstm_export_dynamic_length_fails_measured() -> None:
    """nn.LSTM's export specializes the sequence length (torch 2.13)."""
    ref, _ = pair()
    with pytest.raises(Exception, match="specialized it to be a constant"):
        torch.export.export(ref, (make_x(ref, *SEEN),), dynamic_shapes=({0: Dim("L")},))


# -- AOTInductor (slow: a C++ build per program) --------------------------------------------------

needs_cxx = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="AOTInductor on CPU needs a C++ compiler",
)


def aoti_load(program: torch.export.ExportedProgram, tmp_path: Path) -> Any:
    package = torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp_path / "lstm.pt2")
    )
    return torch._inductor.aoti_load_package(package)


@pytest.mark.slow
@needs_cxx
def test_aoti_dynamic_length(tmp_path: Path) -> None:
    """AOTInductor: one compiled package, several lengths (batch fixed, see the next test)."""
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, num_layers=2, bidirectional=True).eval()
    lstm = HandLSTM(3, 4, num_layers=2, bidirectional=True).eval()
    lstm.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 3)
    program = torch.export.export(lstm, (x,), dynamic_shapes=({0: Dim("L")},))
    runner = aoti_load(program, tmp_path)
    for length in (1, 2, 37, 300):
        x = torch.randn(length, 3, 3)
        out, (h, c) = runner(x)
        expected, (eh, ec) = ref(x)
        torch.testing.assert_close((out, h, c), (expected, eh, ec), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_cxx
def test_aoti_dynamic_length_and_batch(tmp_path: Path) -> None:
    """Batch and length both dynamic: inductor's scan lowering in torch 2.13 raised
    ``KeyError`` on the batch symbol; the workaround in handlstm/engines/traced.py (see
    docs/works_with.md) must keep this passing."""
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4).eval()
    lstm = HandLSTM(3, 4).eval()
    lstm.load_state_dict(ref.state_dict())
    program = torch.export.export(
        lstm, (torch.randn(5, 3, 3),), dynamic_shapes=({0: Dim("L"), 1: Dim("N")},)
    )
    runner = aoti_load(program, tmp_path)
    for length, batch in ((2, 1), (37, 4), (300, 2)):
        x = torch.randn(length, batch, 3)
        out, (h, c) = runner(x)
        expected, (eh, ec) = ref(x)
        torch.testing.assert_close((out, h, c), (expected, eh, ec), rtol=1e-5, atol=1e-5)


# -- ONNX (slow; optional: needs onnx, onnxscript and onnxruntime) --------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", [{}, {"num_layers": 2, "bidirectional": True, "proj_size": 2}], ids=["default", "bi"]
)
def test_onnx_dynamic_length_has_a_loop_and_runs_in_onnxruntime(config: dict[str, Any]) -> None:
    ort = pytest.importorskip("onnxruntime", reason="ONNX run needs onnxruntime")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx")
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, **config).eval()
    lstm = HandLSTM(3, 4, **config).eval()
    lstm.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 3)
    program = torch.onnx.export(
        lstm, (x,), dynamo=True, dynamic_shapes=({0: Dim("L"), 1: Dim("N")},), verbose=False
    )
    model = program.model_proto
    op_types = [node.op_type for node in model.graph.node]

    def all_ops(graph: Any) -> list[str]:
        ops = []
        for node in graph.node:
            ops.append(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    ops += all_ops(attr.g)
        for function in getattr(model, "functions", []):
            if graph is model.graph:
                ops += [n.op_type for n in function.node]
        return ops

    ops = all_ops(model.graph)
    directions = lstm.num_layers * (2 if lstm.bidirectional else 1)
    loops = sum(op in ("Scan", "Loop") for op in ops)
    assert loops >= directions, op_types
    assert "LSTM" not in ops
    session = ort.InferenceSession(model.SerializeToString())
    names = [i.name for i in session.get_inputs()]
    for length, batch in ((1, 2), (37, 3), (300, 1)):
        x = torch.randn(length, batch, 3)
        got = session.run(None, {names[0]: x.numpy()})
        out, (h, c) = ref(x)
        for actual, expected in zip(got, (out, h, c), strict=True):
            torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-5, atol=1e-5)
