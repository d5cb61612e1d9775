"""The ``handlstm check`` command: the default sweep, checkpoints, bad files, --json, --help."""

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import handlstm
from handlstm import _sweep, cli

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
