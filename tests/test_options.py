"""Claim: the variant options are real keyword-only parameters, written once.

HandLSTM's and HandLSTMCell's keyword-only parameters are LSTMOptions' fields (names, order,
annotations, defaults); a misspelt option fails at run time with the valid names, and a type
checker (mypy, through the shipped ``py.typed``) rejects it before the code runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

import handlstm
from handlstm import HandLSTM, HandLSTMCell, LSTMOptions
from handlstm.core.options import CELL_OPTIONS, LSTM_OPTIONS, SEQUENCE_ONLY


def keyword_only(cls: type) -> list[inspect.Parameter]:
    params = inspect.signature(cls).parameters.values()
    return [p for p in params if p.kind is p.KEYWORD_ONLY]


@pytest.mark.parametrize(("cls", "names"), [(HandLSTM, LSTM_OPTIONS), (HandLSTMCell, CELL_OPTIONS)])
def test_keyword_only_parameters_are_the_options_fields(cls: type, names: tuple[str, ...]) -> None:
    fields = {f.name: f for f in dataclasses.fields(LSTMOptions)}
    params = keyword_only(cls)
    assert [p.name for p in params] == list(names)
    for p in params:
        field = fields[p.name]
        assert type(p.default) is type(field.default), p.name
        assert p.default is field.default or p.default == field.default, p.name
        assert p.annotation == field.type, p.name  # both strings (postponed annotations)
    catch_all = list(inspect.signature(cls).parameters.values())[-1]
    assert catch_all.kind is catch_all.VAR_KEYWORD and catch_all.annotation == "NoReturn"


def test_the_cell_takes_every_option_but_the_sequence_ones() -> None:
    assert set(LSTM_OPTIONS) == {f.name for f in dataclasses.fields(LSTMOptions)}
    assert set(CELL_OPTIONS) == set(LSTM_OPTIONS) - set(SEQUENCE_ONLY)


def test_positional_arguments_are_nn_lstms() -> None:
    import torch

    lstm_params = list(inspect.signature(torch.nn.modules.rnn.RNNBase).parameters)
    ours = [
        p.name
        for p in inspect.signature(HandLSTM).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert ours == [name for name in lstm_params if name != "mode"]
    cell = [
        p.name
        for p in inspect.signature(HandLSTMCell).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert cell == list(inspect.signature(torch.nn.LSTMCell).parameters)


def test_a_misspelt_option_names_the_nearest_and_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError, match="'layer_nrom'") as error:
        HandLSTM(3, 4, layer_nrom=True)  # type: ignore[arg-type]
    message = str(error.value)
    assert "did you mean 'layer_norm'?" in message
    assert all(name in message for name in LSTM_OPTIONS)


@pytest.mark.parametrize("name", SEQUENCE_ONLY)
def test_a_sequence_option_on_the_cell_says_why_and_where_to_go(name: str) -> None:
    with pytest.raises(TypeError, match=name) as error:
        HandLSTMCell(3, 4, **{name: 0.5})
    assert "use HandLSTM" in str(error.value)


# -- static checking ------------------------------------------------------------------------------

SNIPPET = """\
from handlstm import HandLSTM, HandLSTMCell
good = HandLSTM(3, 4, num_layers=2, layer_norm=True, zoneout_h=0.1)
cell = HandLSTMCell(3, 4, peepholes=True, cell_clip=3.0)
bad = HandLSTM(3, 4, layer_nrom=True)
wrong_type = HandLSTM(3, 4, layer_norm=1.0)
"""
# torch is not analysed (seconds): only handlstm's own signatures matter here.
MYPY_CONFIG = """\
[mypy]
follow_imports = silent
[mypy-torch.*]
follow_imports = skip
ignore_missing_imports = True
"""


def run_mypy(tmp_path: Path, with_marker: bool) -> str:
    """mypy on SNIPPET with handlstm installed as a package (not a source directory) in a fresh
    environment, so the result depends on the ``py.typed`` marker as it does for users."""
    env = tmp_path / ("env" if with_marker else "env-no-marker")
    venv.create(env, with_pip=False)
    (site,) = env.glob("lib/python*/site-packages")
    package = site / "handlstm"
    shutil.copytree(Path(handlstm.__file__).parent, package, ignore=shutil.ignore_patterns("*.pyc"))
    if not with_marker:
        (package / "py.typed").unlink()
    (tmp_path / "snippet.py").write_text(SNIPPET)
    (tmp_path / "mypy.ini").write_text(MYPY_CONFIG)
    python = env / "bin" / "python"
    # Only the throwaway environment may provide handlstm (PYTHONPATH would be searched too).
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-incremental"]
        + ["--python-executable", str(python), "snippet.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean,
    )
    return result.stdout + result.stderr


def test_mypy_rejects_a_misspelt_option(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    if sys.platform == "win32":
        pytest.skip("the throwaway environment's layout is POSIX's")
    out = run_mypy(tmp_path, with_marker=True)
    assert "py.typed" not in out and "Cannot find implementation" not in out, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert any(line.startswith("snippet.py:4:") and "layer_nrom" in line for line in errors), out
    assert any(line.startswith("snippet.py:5:") and '"bool"' in line for line in errors), out
    assert len(errors) == 2, out  # lines 2 and 3 are correct
    control = run_mypy(tmp_path, with_marker=False)
    assert "py.typed" in control, textwrap.shorten(control, 500)
