"""Claim: help() on every public name documents it and points only at public names.

A wheel ships the package, not docs/ or tests/, so help text naming ``docs/*.md`` or a private
module (``handlstm.core.options``) sends a user nowhere. forward of both modules has its own
docstring with the shape legend (otherwise help shows nn.Module's generic text).
"""

from __future__ import annotations

import inspect
import re

import pytest

import handlstm
import handlstm.testing
from handlstm import HandLSTM, HandLSTMCell

PUBLIC = [(handlstm, name) for name in handlstm.__all__] + [
    (handlstm.testing, name) for name in handlstm.testing.__all__
]
UNSHIPPED = re.compile(r"docs/|\.md\b|tests/|examples/|benchmarks/|handlstm\._\w")


def documented_objects():
    for module, name in PUBLIC:
        obj = getattr(module, name)
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                target = member.fget if isinstance(member, property) else member
                target = getattr(target, "__func__", target)
                if callable(target) or isinstance(member, property):
                    yield f"{module.__name__}.{name}.{attr}", target
    yield "handlstm", handlstm
    yield "handlstm.testing", handlstm.testing


@pytest.mark.parametrize(("where", "obj"), list(documented_objects()), ids=lambda v: str(v))
def test_help_points_only_at_shipped_public_names(where: str, obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    found = UNSHIPPED.findall(doc)
    assert not found, f"{where}'s docstring refers to {found}"


@pytest.mark.parametrize("cls", [HandLSTM, HandLSTMCell])
def test_forward_has_its_own_docstring_with_shapes(cls: type) -> None:
    doc = cls.forward.__doc__
    assert doc, f"{cls.__name__}.forward has no docstring"
    assert "Shapes:" in doc and "Returns:" in doc and ">>>" in doc
    help_text = inspect.getdoc(cls.forward) or ""
    assert "Define the computation performed at every call" not in help_text  # nn.Module's


def test_public_functions_and_classes_have_docstrings() -> None:
    missing = [
        where
        for where, obj in documented_objects()
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj)
    ]
    assert not missing, missing
