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
