"""Claim: the documentation site, API reference included, builds with warnings as errors.

``mkdocs build --strict`` (mkdocs.yml: material theme, mkdocstrings for the reference) fails on
any warning: a broken link or anchor, a page missing from the nav, a docstring section
mkdocstrings cannot parse, a documented parameter the signature lacks. Needs the docs extra
(``pip install -e ".[docs]"``); skipped with that reason without it.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strict_with_the_api_reference(tmp_path: Path) -> None:
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material"):
        pytest.importorskip(module, reason=f'{module} is not installed (pip install -e ".[docs]")')
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = (site / "reference" / "index.html").read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    for name in ("HandLSTM", "HandLSTMCell", "LSTMOptions", "swap_lstms", "assert_lstm_close"):
        assert name in text, f"{name} missing from the API reference"
    assert "layer_norm" in text and "FunctionLSTM" in text and "lstm_cases" in text
    for page_name in ("variants", "testing", "cli", "works_with", "guarantees"):
        assert (site / page_name / "index.html").exists(), page_name
