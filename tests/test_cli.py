"""The ``handlstm check`` command: the default sweep, checkpoints, bad files, --json, --help."""

import io
import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import handlstm
from handlstm.tools import cli
from handlstm.tools import sweep as _sweep

ALL_CHECKS = cli.default_checks()


class Model(nn.Module):
    """Two LSTMs, one bidirectional with projections, and a cell, as a real model might have."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 5)
        self.encoder = nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3)
        self.decoder = nn.LSTM(6, 4, bias=False, batch_first=True)
        self.cell = nn.LSTMCell(4, 2)
        self.gru = nn.GRU(4, 4)  # 3 gates: must not be mistaken for an LSTM
        self.out = nn.Linear(4, 10)


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_default_sweep_passes(capsys):
    code, out, err = run(["check"], capsys)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == [
        "configuration",
        "dtype",
        "max|d",
        "output|",
        "max|d",
        "grad|",
        "result",
    ]
    rows = [line for line in lines if line.startswith(("LSTM(", "LSTMCell("))]
    assert len(rows) == len(cli.default_checks())
    assert all(line.rstrip().endswith("pass") for line in rows)
    for flag in (" bi", " proj2", " nobias", " bf", " L2", "drop0.5 eval", "LSTMCell"):
        assert any(flag in row for row in rows), flag
    assert any("float32" in row for row in rows) and any("float64" in row for row in rows)
    assert "default sweep:" in lines[-1] and "all pass" in lines[-1]
    assert err == ""  # no progress: stderr is not a terminal here


def test_the_sweep_covers_packed_and_unbatched_input():
    names = [name for name, *_ in cli.LSTM_RUNS]
    assert {"dense", "unbatched+hx", "packed_sorted+hx", "packed_unsorted"} <= set(names)
    generator = torch.Generator().manual_seed(0)
    kinds = [
        type(x).__name__
        for _, x, _ in cli.lstm_inputs(
            {"input_size": 3, "hidden_size": 4}, torch.float64, generator
        )
    ]
    assert kinds.count("PackedSequence") == 2


def test_a_parity_failure_exits_1_and_names_the_tensor(capsys, monkeypatch):
    class Broken(handlstm.HandLSTM):
        def forward(self, input, hx=None):
            output, state = super().forward(input, hx)
            if isinstance(output, torch.Tensor):
                output = output * (1 + 1e-6)
            return output, state

    monkeypatch.setattr(_sweep, "HandLSTM", Broken)
    monkeypatch.setattr(cli, "default_checks", lambda: ALL_CHECKS[:2])
    code, out, _ = run(["check"], capsys)
    assert code == 1
    assert "FAIL" in out and "output: max abs difference" in out and "FAILED" in out


@pytest.fixture()
def small_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "small.pt"
    model = nn.Module()
    model.rnn = nn.LSTM(2, 3, dtype=torch.float64)
    model.cell = nn.LSTMCell(2, 2, dtype=torch.float64)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = Model()
    path = tmp_path / "model.pt"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "optimizer": {"lr": 0.1}}, path)
    return path


def test_checkpoint_lstms_are_found_and_verified(checkpoint, capsys):
    code, out, _ = run(["check", str(checkpoint)], capsys)
    assert code == 0, out
    assert "found 3 LSTM group(s)" in out
    assert (
        "model_state_dict.encoder: LSTM(input_size=5, hidden_size=6, num_layers=2, bias=True, "
        "bidirectional=True, proj_size=3) [float32]" in out
    )
    assert (
        "model_state_dict.decoder: LSTM(input_size=6, hidden_size=4, num_layers=1, bias=False, "
        "bidirectional=False, proj_size=0)" in out
    )
    assert "model_state_dict.cell: LSTMCell(input_size=4, hidden_size=2, bias=True)" in out
    assert "gru" not in out
    # float64 and (stored) float32 rows per group
    assert sum(line.endswith(" pass") for line in out.splitlines()) == 6


def test_plain_state_dict_and_json(tmp_path, capsys):
    torch.manual_seed(1)
    lstm = nn.LSTM(3, 4, num_layers=3, proj_size=2, dtype=torch.float64)
    torch.save(lstm.state_dict(), tmp_path / "lstm.pt")
    code, out, _ = run(["check", str(tmp_path / "lstm.pt"), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True and report["failed"] == 0 and report["passed"] == 1
    (group,) = report["groups"]
    assert group["prefix"] == "" and group["kind"] == "lstm"
    assert group["config"] == {
        "input_size": 3,
        "hidden_size": 4,
        "num_layers": 3,
        "bias": True,
        "bidirectional": False,
        "proj_size": 2,
    }
    (row,) = report["rows"]
    assert row["dtype"] == "float64" and row["ok"] and row["max_abs_output"] < 1e-12
    assert row["inputs"] == [name for name, *_ in cli.LSTM_RUNS]


def test_default_sweep_json(capsys, monkeypatch):
    monkeypatch.setattr(cli, "default_checks", lambda: ALL_CHECKS[::9])
    code, out, _ = run(["check", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["source"] == "default"
    assert len(report["rows"]) == len(ALL_CHECKS[::9])


def test_a_checkpoint_that_fails_parity_exits_1(small_checkpoint, capsys, monkeypatch):
    class Broken(handlstm.HandLSTMCell):
        def forward(self, input, hx=None):
            h, c = super().forward(input, hx)
            return h, c + 1e-3

    monkeypatch.setattr(_sweep, "HandLSTMCell", Broken)
    code, out, _ = run(["check", str(small_checkpoint)], capsys)
    assert code == 1
    assert "FAIL state_dict.cell" in out and "] c: max abs difference" in out


# -- bad files: exit 2 and a message that says what is wrong -------------------------------------


def error_of(argv, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert out == ""
    return err


def test_missing_file(tmp_path, capsys):
    err = error_of(["check", str(tmp_path / "nope.pt")], capsys)
    assert "no such file" in err and "nope.pt" in err


def test_directory(tmp_path, capsys):
    assert "is a directory" in error_of(["check", str(tmp_path)], capsys)


@pytest.mark.parametrize(
    "content",
    [b"hello, this is text\n", b"", b"PK\x03\x04 broken zip", pickle.dumps({"a": 1})],
    ids=["text", "empty", "broken-zip", "plain-pickle"],
)
def test_not_a_torch_checkpoint(tmp_path, capsys, content):
    path = tmp_path / "file.pt"
    path.write_bytes(content)
    err = error_of(["check", str(path)], capsys)
    assert "is not a torch checkpoint" in err


class PlantsAFile:
    """Unpickling this creates a file: proof of whether the checkpoint was really unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("zipped", [True, False])
def test_checkpoint_needing_weights_only_false_is_refused_not_unpickled(tmp_path, capsys, zipped):
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / "unsafe.pt"
    payload = {"state_dict": nn.LSTM(2, 3).state_dict(), "extra": PlantsAFile(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zipped)
    assert not marker.exists()
    err = error_of(["check", str(path)], capsys)
    assert "weights_only=False" in err and "does not load it" in err
    assert not marker.exists(), "the checkpoint was unpickled"
    # the same file really does plant the marker when unpickled without weights_only
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_no_lstm_inside(tmp_path, capsys):
    path = tmp_path / "linear.pt"
    torch.save({"state_dict": nn.Sequential(nn.Linear(3, 4), nn.GRU(4, 4)).state_dict()}, path)
    err = error_of(["check", str(path)], capsys)
    assert "no LSTM found" in err


def test_no_tensors_inside(tmp_path, capsys):
    path = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, path)
    assert "holds no tensors" in error_of(["check", str(path)], capsys)


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["check", "--bogus"]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["check", "--threads", "0"]) == 2


def test_threads_are_restored(small_checkpoint, capsys):
    before = torch.get_num_threads()
    assert cli.main(["check", str(small_checkpoint), "--threads", "2"]) == 0
    assert torch.get_num_threads() == before


# -- progress, help, the module entry point ------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_goes_to_a_terminal_stderr_only(small_checkpoint):
    checkpoint = small_checkpoint
    args = cli.build_parser().parse_args(["check", str(checkpoint)])
    out, err = io.StringIO(), FakeTerminal()
    assert cli.check_command(args, out, err) == 0
    assert "\r[1/2] state_dict.rnn" in err.getvalue()
    assert "\r[2/2] state_dict.cell" in err.getvalue()
    assert "[" not in out.getvalue().split("\n")[0]
    args = cli.build_parser().parse_args(["check", str(checkpoint), "--no-progress"])
    err = FakeTerminal()
    cli.check_command(args, io.StringIO(), err)
    assert err.getvalue() == ""


def test_help_explains_every_option(capsys):
    assert cli.main(["check", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "PATH",
        "--json",
        "--seed",
        "--threads",
        "--no-progress",
        "--impl",
        "--impl-cell",
        "protocol 4",
        "weights_only=True",
        "exit status",
    ):
        assert option in text, option


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "handlstm", "check", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: handlstm check" in result.stdout


# -- issue 12: file problems are exit 2, never a silent pass; strict JSON for every outcome -------


def strict_json(text):
    """json.loads that refuses NaN and Infinity (what json.dumps writes by default)."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("protocol", [4, 5])
def test_checkpoint_pickled_with_protocol_4_or_5_is_read_safely(tmp_path, capsys, protocol):
    """flair's Model.save uses pickle_protocol=4, which torch's weights-only unpickler rejects."""
    torch.manual_seed(0)
    path = tmp_path / "flair.pt"
    model = nn.Module()
    model.rnn = nn.LSTM(3, 4, bidirectional=True, dtype=torch.float64)
    torch.save({"state_dict": model.state_dict(), "epoch": 2}, path, pickle_protocol=protocol)
    with (
        pytest.raises(pickle.UnpicklingError, match="Unsupported operand"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # torch warns that it may not read protocol 4
        torch.load(path, weights_only=True)  # the reason this test exists
    code, out, err = run(["check", str(path)], capsys)
    assert code == 0, (out, err)
    assert "state_dict.rnn: LSTM(input_size=3, hidden_size=4" in out and "all pass" in out


def test_protocol_4_checkpoint_with_objects_is_refused_not_unpickled(tmp_path, capsys):
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / "unsafe4.pt"
    payload = {"state_dict": nn.LSTM(2, 3).state_dict(), "extra": PlantsAFile(marker)}
    torch.save(payload, path, pickle_protocol=4)
    err = error_of(["check", str(path)], capsys)
    assert "weights_only=False" in err and "does not load it" in err
    assert not marker.exists(), "the checkpoint was unpickled"


def lstm_state(**changes):
    torch.manual_seed(0)
    state = nn.LSTM(3, 4, dtype=torch.float64).state_dict()
    state.update(changes)
    return state


def test_nan_in_a_weight_is_a_file_problem_not_a_pass(tmp_path, capsys):
    weight = lstm_state()["weight_hh_l0"].clone()
    weight[0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(lstm_state(weight_hh_l0=weight), path)
    code, out, _ = run(["check", str(path)], capsys)
    assert code == 2, out
    assert "weight_hh_l0 holds 1 NaN of 64 values" in out
    assert " pass" not in out and "PROBLEM" in out and "1 with file problems" in out


def test_nan_in_results_from_finite_weights_is_reported(tmp_path, capsys):
    """Finite weights whose products overflow to +inf and -inf in one gate sum: NaN results.

    Whether the hand module's NaNs fall exactly where torch's do depends on summation order, so
    the row may also fail parity (exit 1); what must never happen is a silent pass."""
    signs = torch.ones(16, 7, dtype=torch.float64)
    signs[:, 1::2] = -1
    weights = signs * 1.7e308
    state = lstm_state(weight_ih_l0=weights[:, :3].clone(), weight_hh_l0=weights[:, 3:].clone())
    path = tmp_path / "overflow.pt"
    torch.save(state, path)
    code, out, _ = run(["check", str(path)], capsys)
    assert code in (1, 2), out
    assert "NaN or inf" in out and "torch's own outputs" in out and " pass" not in out


def test_missing_key_is_a_file_problem_exit_2(tmp_path, capsys):
    state = lstm_state()
    del state["bias_hh_l0"]
    path = tmp_path / "missing.pt"
    torch.save(state, path)
    code, out, _ = run(["check", str(path)], capsys)
    assert code == 2, out
    assert "missing bias_hh_l0" in out and "nan" not in out.lower().replace("nan or", "")
    code, out, _ = run(["check", str(path), "--json"], capsys)
    report = strict_json(out)
    assert code == 2 and report["exit"] == 2 and report["ok"] is False
    assert report["groups"][0]["problems"][0] == "missing bias_hh_l0"
    assert report["rows"][0]["status"] == "PROBLEM" and report["rows"][0]["max_abs_output"] is None


def test_handlstm_variant_checkpoint_is_recognised_and_said_not_checked(tmp_path, capsys):
    path = tmp_path / "ln.pt"
    torch.save(handlstm.HandLSTM(3, 4, num_layers=2, layer_norm=True).state_dict(), path)
    code, out, _ = run(["check", str(path)], capsys)
    assert code == 2, out
    assert "HandLSTM variant: layer_norm=True" in out
    assert "not checked" in out and "loads into HandLSTM(..., layer_norm=True)" in out
    assert " pass" not in out and "unexpected" not in out


@pytest.mark.parametrize(
    "case", ["missing-file", "not-a-checkpoint", "nan", "usage", "bad-impl", "variant"]
)
def test_json_is_strict_for_every_outcome(tmp_path, capsys, case):
    path = tmp_path / "x.pt"
    argv = ["check", str(path), "--json"]
    if case == "not-a-checkpoint":
        path.write_bytes(b"hello")
    elif case == "nan":
        torch.save(
            lstm_state(bias_ih_l0=torch.full((16,), float("inf"), dtype=torch.float64)), path
        )
    elif case == "usage":
        argv = ["check", "--json", "--threads", "0"]
    elif case == "bad-impl":
        argv = ["check", "--json", "--impl", "no_such_module_here:X"]
    elif case == "variant":
        torch.save(handlstm.HandLSTMCell(3, 4, peepholes=True).state_dict(), path)
    code, out, _ = run(argv, capsys)
    report = strict_json(out)
    assert code == 2 and report["exit"] == 2 and report["ok"] is False, report


def test_truncated_checkpoint_message_is_whole(tmp_path, capsys):
    whole = tmp_path / "whole.pt"
    torch.save(lstm_state(), whole)
    path = tmp_path / "truncated.pt"
    path.write_bytes(whole.read_bytes()[:700])
    err = error_of(["check", str(path)], capsys)
    message = err.removeprefix("handlstm check: error: ").strip()
    assert "truncated" in message and message.endswith("."), message
    assert len(message) < 300


IMPLEMENTATIONS = '''
import torch
from torch import nn
import handlstm

class Mine(handlstm.HandLSTM):
    """Someone's own LSTM (here HandLSTM under another name)."""

class NoDtype(handlstm.HandLSTM):
    """Takes nn.LSTM's arguments but no dtype (check moves it with .to(dtype))."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size)

class Off(handlstm.HandLSTM):
    def forward(self, input, hx=None):
        output, state = super().forward(input, hx)
        return (output * 1.001 if isinstance(output, torch.Tensor) else output), state

class MyCell(handlstm.HandLSTMCell):
    pass
'''


@pytest.fixture()
def impl_module(tmp_path, monkeypatch):
    (tmp_path / "my_impls_for_check.py").write_text(IMPLEMENTATIONS)
    monkeypatch.syspath_prepend(str(tmp_path))
    cells = [check for check in ALL_CHECKS if check.kind == "cell"]
    monkeypatch.setattr(cli, "default_checks", lambda: ALL_CHECKS[:40:8] + cells[:2])
    return "my_impls_for_check"


def test_impl_runs_the_sweep_against_a_users_class(impl_module, capsys):
    code, out, _ = run(["check", "--impl", f"{impl_module}:Mine"], capsys)
    rows = [line for line in out.splitlines() if line.startswith("LSTM")]
    assert code == 0, out
    assert rows and not any(line.startswith("LSTMCell") for line in rows)
    assert f"against {impl_module}:Mine" in out and "all pass" in out
    code, out, _ = run(["check", "--impl-cell", f"{impl_module}:MyCell"], capsys)
    assert code == 0 and "LSTMCell(" in out and "LSTM(3,4)" not in out, out


def test_impl_that_differs_fails_and_one_without_dtype_runs(impl_module, capsys):
    code, out, _ = run(["check", "--impl", f"{impl_module}:Off"], capsys)
    assert code == 1 and "output: max abs difference" in out, out
    code, out, _ = run(["check", "--impl", f"{impl_module}:NoDtype", "--json"], capsys)
    report = strict_json(out)
    assert code == 0 and report["ok"] and report["impl"]["lstm"] == f"{impl_module}:NoDtype"


@pytest.mark.parametrize("spec", ["nocolon", "no_such_module_here:X", "json:NoSuchThing"])
def test_impl_that_cannot_be_loaded_is_a_usage_error(spec, capsys):
    err = error_of(["check", "--impl", spec], capsys)
    assert "--impl" in err


def test_protocol_4_rewrite_reads_exactly_what_protocol_2_reads(tmp_path):
    """Strings that are both global names and keys (memoized, then fetched again), nesting,
    shared tensors, views and every dtype a state dict may hold: the same flat dict either way."""
    from handlstm.tools.checkpoint import load_checkpoint

    torch.manual_seed(0)
    shared = torch.randn(4, 3, dtype=torch.float64)
    payload = {
        "collections": shared,
        "OrderedDict": shared[1:],  # a view of the same storage
        "torch._utils": torch.arange(5),
        "_rebuild_tensor_v2": [torch.ones(2, dtype=torch.float16), (torch.zeros(1),)],
        "nested": {"collections": {"OrderedDict": torch.tensor(True)}, "x": 3, "s": "text"},
        "model": nn.LSTM(2, 3, num_layers=2).state_dict(),
    }
    loaded = {}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pt"
        torch.save(payload, path, pickle_protocol=protocol)
        loaded[protocol] = load_checkpoint(str(path))
    for protocol in (4, 5):
        assert list(loaded[protocol]) == list(loaded[2])
        for key, value in loaded[2].items():
            assert loaded[protocol][key].dtype == value.dtype, key
            assert torch.equal(loaded[protocol][key], value), key


def test_impl_checks_a_checkpoint_too(impl_module, small_checkpoint, capsys):
    code, out, _ = run(["check", str(small_checkpoint), "--impl", f"{impl_module}:Mine"], capsys)
    assert code == 0, out
    assert "state_dict.rnn" in out and "state_dict.cell" not in out.split("\n\n")[-1]


@pytest.mark.parametrize("content", [b"notes: resume at epoch 12\n", b"hello\n", b"\x00\x01"])
def test_a_text_file_is_called_neither_zip_nor_pickle(tmp_path, capsys, content):
    """'n' and 'h' are pickle opcodes torch reports as unsupported: still not called a pickle."""
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    err = error_of(["check", str(path)], capsys)
    assert "neither a zip archive" in err and "plain pickle" not in err
