"""Claim: the wheel a user installs carries the type marker and the licence.

Builds the wheel from a copy of the package (pip, the project's own build backend, no network)
and lists it: ``handlstm/py.typed`` (so mypy and pyright use the package's annotations) and
the LICENSE file pyproject's BSD-3-Clause refers to.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_py_typed_and_license(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="setuptools (the build backend) is not installed")
    pytest.importorskip("pip", reason="pip is not installed")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "handlstm", src / "handlstm", ignore=shutil.ignore_patterns("__pycache__")
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-q", "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("handlstm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "handlstm/py.typed" in names, names
    assert any(name.endswith("LICENSE") for name in names), names
    assert not any(name.startswith(("tests/", "docs/")) for name in names), names


# -- numpy is not a dependency ----------------------------------------------------------------

NO_NUMPY = "import sys; sys.modules['numpy'] = None  # as in a torch-only environment\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_NUMPY + code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_no_numpy_warning_from_handlstm_and_filters_left_as_they_were() -> None:
    control = run_python("import torch")
    if "Failed to initialize NumPy" not in control.stderr:
        pytest.skip("this torch does not warn at import without numpy")
    result = run_python(
        "import warnings\n"
        "before = list(warnings.filters)\n"
        "import handlstm\n"
        "from handlstm import HandLSTM\n"
        "import torch\n"
        "out, _ = HandLSTM(3, 4)(torch.randn(2, 1, 3))\n"
        "assert list(warnings.filters) == before, 'warning filters changed'\n"
        "print('ran', tuple(out.shape))\n"
        "import runpy; sys.argv = ['handlstm', 'check', '--help']  # the command, too\n"
        "runpy.run_module('handlstm', run_name='__main__')\n"
    )
    assert result.returncode == 0, result.stderr
    assert "ran (2, 1, 4)" in result.stdout and "usage: handlstm check" in result.stdout
    assert "NumPy" not in result.stderr, result.stderr


def test_one_version_everywhere() -> None:
    """pyproject.toml, ``handlstm.__version__`` and ``handlstm --version`` name one release."""
    import tomllib

    import handlstm

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert handlstm.__version__ == declared
    result = subprocess.run(
        [sys.executable, "-m", "handlstm", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"handlstm {declared}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{declared}] - " in changelog
