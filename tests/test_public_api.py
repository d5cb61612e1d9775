"""Claim: the public API did not move when the package was laid out in layers (0.2.0 -> next).

Every name that 0.2.0 exported (each public module's ``__all__``, listed here as released, not
read from the package) still imports from the same public path, and is the object the layer
that implements it defines; the command runs as ``handlstm`` and ``python -m handlstm``.
Behaviour is the other test files' business; this pins the paths.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys

import pytest

import handlstm

#: 0.2.0's public modules and their ``__all__``, as released (commit a0c6d25).
RELEASED: dict[str, list[str]] = {
    "handlstm": [
        "HandLSTM",
        "HandLSTMCell",
        "LSTMOptions",
        "LSTMStates",
        "SwapReport",
        "swap_lstms",
        "time_loop",
    ],
    "handlstm.convert": [
        "LSTMGroup",
        "find_lstm_groups",
        "SwapReport",
        "Swapped",
        "Skipped",
        "cell_from_torch",
        "cell_to_torch",
        "lstm_config",
        "cell_config",
        "lstm_from_torch",
        "lstm_to_torch",
        "swap_lstms",
    ],
    "handlstm.testing": [
        "Difference",
        "FunctionLSTM",
        "ParameterNames",
        "LSTMCase",
        "CellCase",
        "INPUT_KINDS",
        "assert_lstm_close",
        "compare_modules",
        "LSTM_FLAGS",
        "lstm_configs",
        "lstm_cases",
        "cell_cases",
        "make_hx",
        "make_input",
        "tolerances",
    ],
    "handlstm.cli": ["main"],
}

#: Where each public class or function is implemented now (the public path re-exports it).
IMPLEMENTED_IN = {
    ("handlstm", "HandLSTM"): "handlstm.modules.lstm",
    ("handlstm", "HandLSTMCell"): "handlstm.modules.cell",
    ("handlstm", "LSTMOptions"): "handlstm.core.options",
    ("handlstm", "swap_lstms"): "handlstm.interop.swap",
    ("handlstm", "time_loop"): "handlstm.engines.tracing",
    ("handlstm.convert", "find_lstm_groups"): "handlstm.tools.checkpoint_groups",
    ("handlstm.testing", "assert_lstm_close"): "handlstm.tools.compare",
    ("handlstm.cli", "main"): "handlstm.tools.cli",
}


@pytest.mark.parametrize("path", sorted(RELEASED))
def test_every_released_name_imports_from_its_public_path(path: str) -> None:
    module = importlib.import_module(path)
    missing = [name for name in RELEASED[path] if not hasattr(module, name)]
    assert not missing, f"{path} lost {missing}"
    assert set(RELEASED[path]) <= set(module.__all__), f"{path}.__all__ lost names"


@pytest.mark.parametrize(("public", "home"), sorted(IMPLEMENTED_IN.items()))
def test_public_names_are_the_layers_objects(public: tuple[str, str], home: str) -> None:
    path, name = public
    exported = getattr(importlib.import_module(path), name)
    assert exported is getattr(importlib.import_module(home), name)


def test_opacus_public_path_exports_install() -> None:
    pytest.importorskip("opacus", reason="opacus not installed (the opacus extra)")
    import handlstm.interop.opacus
    import handlstm.opacus

    for name in ("MODULES", "SUPPORTED_MODES", "install"):
        assert getattr(handlstm.opacus, name) is getattr(handlstm.interop.opacus, name)


def test_console_script_and_python_dash_m_run_the_command() -> None:
    (script,) = [
        e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "handlstm"
    ]
    assert script.load() is importlib.import_module("handlstm.tools.cli").main
    done = subprocess.run(
        [sys.executable, "-m", "handlstm", "--version"], capture_output=True, text=True, check=True
    )
    assert handlstm.__version__ in done.stdout
