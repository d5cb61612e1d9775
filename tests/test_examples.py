"""Every example runs, as a user would run it, and shows what it claims."""

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_swap_checkpoint_continues_training_identically():
    out = run_example("swap_checkpoint.py")
    assert "1 checks (4 runs), all pass" in out  # handlstm check on the checkpoint
    assert "lstm: LSTM -> HandLSTM(" in out
    worst = float(re.search(r"resuming the same way: ([0-9.e+-]+)", out).group(1))
    assert worst < 1e-9
    assert out.rstrip().endswith("OK")


def test_attention_classifier_learns_the_task():
    out = run_example("attention_classifier.py")
    accuracy = float(re.search(r"^held-out accuracy ([0-9.]+)%", out, re.M).group(1))
    assert accuracy > 90.0, out
    attention = float(re.search(r"signal tokens: ([0-9.]+)%", out).group(1))
    assert attention > 12.5 * 2, "attention should concentrate on the two signal steps"


def test_own_lstm_property_test_passes_the_right_module_and_catches_the_bug():
    out = run_example("own_lstm_property_test.py")
    assert "StackedLSTM matches HandLSTM on 60 drawn cases" in out
    assert "SwappedGates is caught" in out
    assert re.search(r"(output|h_n|c_n|grad\.\w+): max abs difference", out)
