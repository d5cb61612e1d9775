"""The transform examples in examples/ run and show what they claim (small settings for CI)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ensemble_vmap_example() -> None:
    result = load("ensemble_vmap").main(members=3, steps=5)
    assert result["forward_max_diff_vs_loop"] < 1e-5  # float32, vmapped vs one member at a time
    assert result["last_loss_mean"] < result["first_loss_mean"]  # every member learned


def test_per_sample_grads_dp_example() -> None:
    result = load("per_sample_grads_dp").main(steps=10)
    assert result["max_diff_vs_autograd_loop"] < 1e-5  # float32, vs the unpadded loop
    assert result["max_clipped_norm"] <= 1.0 + 1e-5  # clipping held
    assert result["loss_after"] < result["loss_before"]


def test_compiled_model_example() -> None:
    # Dynamo capture only (aot_eager: tests/test_transforms_compile.py; inductor: slow test below)
    result = load("compiled_model").main(backend="eager", lengths=(3, 1, 4, 2), buckets=(2, 4))
    assert result["output_max_diff"] < 1e-5
    assert result["grad_max_diff"] < 1e-5
    assert result["bucketed_graphs"] == 2  # 4 lengths, 2 buckets
    assert result["bucketed_max_diff"] < 1e-5
    assert result["step_graphs"] <= 2  # independent of the number of lengths
    assert result["step_max_diff"] < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor on CPU needs a C++ compiler")
def test_compiled_model_example_inductor() -> None:
    result = load("compiled_model").main(backend="inductor", lengths=(3, 1, 4, 2), buckets=(2, 4))
    assert result["output_max_diff"] < 1e-5
    assert result["grad_max_diff"] < 1e-4
    assert result["step_max_diff"] < 1e-5


@pytest.mark.slow
def test_transforms_survey_example() -> None:
    """Every transform runs on HandLSTM; nn.LSTM fails exactly where docs/works_with.md says."""
    table = load("transforms_survey").main()
    for name, (_, mine) in table.items():
        assert mine == "works" or mine.startswith("skipped"), (name, mine)
    theirs_fail = {name for name, (theirs, _) in table.items() if theirs.startswith("FAILS")}
    assert {
        "vmap over inputs",
        "per-sample grads vmap(grad)",
        "compile fullgraph",
        "cell vmap",
    } <= theirs_fail
    assert "jvp" not in theirs_fail and "double backward (eval)" not in theirs_fail
