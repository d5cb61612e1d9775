"""``handlstm check`` refuses a checkpoint whose pickle would run code, and the code never runs.

The planted file unpickles (with plain ``pickle`` or ``torch.load(weights_only=False)``) into a
call that creates a marker file. The command must exit with 2, say that the file needs
``weights_only=False``, and leave no marker behind.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

cli = pytest.importorskip("handlstm.cli", reason="handlstm.cli (the check command) not there yet")


class CreateMarker:
    """Unpickling this runs ``open(path, "w").close()``: a harmless, checkable side effect."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


def plant(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran.marker"
    checkpoint = tmp_path / "evil.pt"
    payload = CreateMarker(marker)
    if kind == "torch.save":  # a real-looking checkpoint: tensors next to the payload
        torch.save({"weight_ih_l0": torch.zeros(8, 3), "extra": payload}, checkpoint)
    else:  # a bare pickle file, protocol 2 or the current default
        protocol = 2 if kind == "pickle-2" else pickle.DEFAULT_PROTOCOL
        checkpoint.write_bytes(pickle.dumps(payload, protocol=protocol))
    return checkpoint, marker


def run_main(checkpoint: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["check", str(checkpoint)])
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("kind", ["torch.save", "pickle-2", "pickle-default"])
def test_the_planted_file_really_runs_code_when_unpickled(tmp_path, kind):
    """Guard: the payload works, so the refusal below is meaningful."""
    checkpoint, marker = plant(tmp_path, kind)
    if kind == "torch.save":
        torch.load(checkpoint, weights_only=False)
    else:
        pickle.loads(checkpoint.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch.save", "pickle-2", "pickle-default"])
def test_cli_main_refuses_with_exit_2_and_never_runs_the_code(tmp_path, kind):
    checkpoint, marker = plant(tmp_path, kind)
    code, message = run_main(checkpoint)
    assert code == 2, message
    assert not marker.exists(), "the checkpoint's code ran"


@pytest.mark.parametrize(
    "kind",
    [
        "torch.save",
        "pickle-2",
        "pickle-default",
    ],
)
def test_cli_message_names_weights_only(tmp_path, kind):
    checkpoint, _ = plant(tmp_path, kind)
    code, message = run_main(checkpoint)
    assert code == 2
    assert "weights_only" in message, message


def test_python_dash_m_refuses_and_never_runs_the_code(tmp_path):
    checkpoint, marker = plant(tmp_path, "torch.save")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "handlstm", "check", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "weights_only" in result.stdout + result.stderr
    assert not marker.exists(), "the checkpoint's code ran"
