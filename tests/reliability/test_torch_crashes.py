"""Where torch 2.13 kills the process, HandLSTM and HandLSTMCell raise a clear error.

torch's side runs in a child process (a subprocess for the fixed cases, a forked child in the
fuzz), so the suite survives its segfault. Ours must raise the class torch raises for the nearest
input it does check, with a message that says what was expected and what was got.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings

from handlstm import HandLSTM, HandLSTMCell

from .test_bad_input_fuzz import (
    MISSING,
    TORCH_CRASHES,
    call,
    cell_bad_calls,
    expected_without_torch,
    lstm_bad_calls,
    lstm_pair,
)

POSIX = pytest.mark.skipif(os.name != "posix", reason="signals and os.fork are POSIX")

PRELUDE = (
    "import torch\nfrom torch import nn\n"
    "from torch.nn.utils.rnn import pack_padded_sequence\ntorch.manual_seed(0)\n"
)

# name -> (torch's statement, ours as a callable, the class torch raises for the nearest input)
CELL_UNBATCHED_2D_HX = (
    "nn.LSTMCell(3, 3)(torch.randn(3), (torch.randn(3, 3), torch.randn(3, 3)))",
    lambda: HandLSTMCell(3, 3)(torch.randn(3), (torch.randn(3, 3), torch.randn(3, 3))),
    RuntimeError,  # torch's reaction to 2-D states of one row: "inconsistent hidden_size"
)
PACKED_H0_OF_TWO_LAYERS = (
    "nn.LSTM(1, 1, dtype=torch.float64)(pack_padded_sequence("
    "torch.randn(3, 1, 1, dtype=torch.float64), [3]),"
    " (torch.randn(2, 1, 1, dtype=torch.float64), torch.randn(1, 1, 1, dtype=torch.float64)))",
    lambda: HandLSTM(1, 1, dtype=torch.float64)(
        torch.nn.utils.rnn.pack_padded_sequence(torch.randn(3, 1, 1, dtype=torch.float64), [3]),
        (torch.randn(2, 1, 1, dtype=torch.float64), torch.randn(1, 1, 1, dtype=torch.float64)),
    ),
    RuntimeError,  # torch's reaction to the same h_0 with dense input
)
CASES = {
    "cell-unbatched-2d-hx": CELL_UNBATCHED_2D_HX,
    "packed-h0-2-layers": PACKED_H0_OF_TWO_LAYERS,
}


def torch_in_subprocess(statement: str) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + (
        f"try:\n    {statement}\nexcept Exception as e:\n"
        "    print('RAISED', type(e).__name__, e)\nelse:\n    print('RETURNED')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


@POSIX
@pytest.mark.parametrize("name", list(CASES))
def test_torch_crashes_where_ours_raises(name):
    statement, ours, want = CASES[name]
    with pytest.raises(want) as caught:
        ours()
    message = str(caught.value)
    assert "xpected" in message and "got" in message, message
    done = torch_in_subprocess(statement)
    if done.returncode >= 0:
        pytest.skip(f"torch {torch.__version__} no longer crashes here: {done.stdout.strip()}")
    assert -done.returncode in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS), done


def test_float32_packed_h0_of_two_layers_is_refused_where_torch_returns():
    """In float32 torch reads h_0[0] and returns; ours refuses the shape, as for float64."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(3, 1, 1), [3])
    with pytest.raises(
        RuntimeError, match=r"Expected hidden\[0\] size \(1, 1, 1\), got \[2, 1, 1\]"
    ):
        HandLSTM(1, 1)(packed, (torch.randn(2, 1, 1), torch.randn(1, 1, 1)))


# -- the fuzz: torch's side in a forked child ------------------------------------------------

#: Two forks per example: a modest count keeps the fuzz to seconds (the profile's derandomize
#: still applies); FUZZ_EXAMPLES=400 for a longer search.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20")))

#: Inputs where torch's forked child died by a signal, for the report (mutation, signal).
CRASHED: list[tuple[str, int]] = []


def in_child(fn: Callable[[], Any], timeout: float = 60.0) -> tuple[str, Any]:
    """``fn()`` in a forked child.

    Returns ("ok", result), ("raise", class), ("crash", signal number) or ("hang", None)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    payload: tuple[str, Any] = ("ok", fn())
            except Exception as error:  # noqa: BLE001 - reported to the parent
                payload = ("raise", type(error))
            try:
                data = pickle.dumps(payload)
            except Exception:  # noqa: BLE001 - e.g. meta tensors: shapes are enough
                data = pickle.dumps(("ok-unpicklable", None))
            with os.fdopen(write, "wb") as pipe:
                pipe.write(data)
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    with os.fdopen(read, "rb") as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return ("hang", None)
            chunk = os.read(pipe.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("crash", os.WTERMSIG(status))
    return pickle.loads(b"".join(chunks))


def check_against_forked_torch(expected_call, actual_call, mutation: str, hx: Any) -> None:
    torch_side = in_child(expected_call)
    ours = in_child(actual_call)
    assert ours[0] not in ("crash", "hang"), f"{mutation}: ours {ours}"
    if torch_side[0] == "crash":
        CRASHED.append((mutation, torch_side[1]))
        assert ours[0] == "raise", f"{mutation}: torch crashed, ours returned"
        if mutation in TORCH_CRASHES:
            assert issubclass(ours[1], expected_without_torch(mutation, hx)), (mutation, ours)
        return
    if torch_side[0] == "raise":
        assert ours[0] == "raise" and issubclass(ours[1], torch_side[1]), (mutation, ours)


@POSIX
@FUZZ
@given(lstm_bad_calls())
def test_lstm_never_crashes_where_torch_does(case):
    config, mutation, input, hx = case
    expected, actual = lstm_pair(config)
    check_against_forked_torch(call(expected, input, hx), call(actual, input, hx), mutation, hx)


@POSIX
@FUZZ
@given(cell_bad_calls())
def test_cell_never_crashes_where_torch_does(case):
    config, mutation, input, hx = case
    torch.manual_seed(0)
    expected = torch.nn.LSTMCell(**config, dtype=torch.float64)
    actual = HandLSTMCell(**config, dtype=torch.float64)
    actual.load_state_dict(expected.state_dict())
    check_against_forked_torch(call(expected, input, hx), call(actual, input, hx), mutation, hx)


def test_crash_log_written_when_asked():
    """``HANDLSTM_CRASH_LOG=path`` appends the crash inputs the fuzz above met (for the report)."""
    path = os.environ.get("HANDLSTM_CRASH_LOG")
    if not path:
        pytest.skip("HANDLSTM_CRASH_LOG not set")
    with open(path, "a") as log:
        for mutation, number in CRASHED:
            log.write(f"{mutation}\t{signal.Signals(number).name}\n")
    assert MISSING is not None
