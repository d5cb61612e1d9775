"""examples/dp_text_classifier.py runs as a user would run it and learns under DP-SGD."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("opacus", reason="opacus is an optional extra: pip install .[opacus]")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mode", ["hooks", pytest.param("ghost", marks=pytest.mark.slow)])
def test_dp_text_classifier_prints_epsilon_and_learns(mode):
    result = subprocess.run(
        [sys.executable, "examples/dp_text_classifier.py", "--epochs", "2", "--samples", "640"]
        + ["--mode", mode],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's handlstm
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = re.findall(
        r"epsilon ([0-9.]+) \(delta 1e-5\), held-out accuracy ([0-9.]+)", result.stdout
    )
    assert len(lines) == 2, result.stdout
    epsilons = [float(eps) for eps, _ in lines]
    assert 0 < epsilons[0] < epsilons[1] < 50  # the accountant ran and spent budget
    assert float(lines[-1][1]) > 0.5, result.stdout  # 4 classes: chance is 0.25
