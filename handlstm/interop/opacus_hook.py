"""Teach opacus about HandLSTM whichever of the two is imported first.

The opacus integration (:mod:`handlstm.interop.opacus`) imports opacus, so ``import handlstm``
cannot load it unconditionally. :func:`install_with_opacus` (called by ``import handlstm``)
loads it now when opacus is already imported, and otherwise places a one-shot finder at the
front of ``sys.meta_path`` that lets opacus import as usual and loads the integration right
after ``opacus/__init__.py`` has run. Either way ``GradSampleModule`` and ``make_private`` see
HandLSTM's grad samplers, with no ``import handlstm.opacus`` in user code.

This module is standard library only and never imports opacus itself. The finder does not
change what opacus is: it finds opacus's spec through the other finders, wraps only the loader's
``exec_module`` and, once opacus is loaded, puts the original loader back on the module and
removes itself from ``sys.meta_path``. If the integration cannot be loaded (an opacus it does
not support), ``import opacus`` still succeeds and a ``RuntimeWarning`` says why.
"""

from __future__ import annotations

import importlib
import sys
import threading
import warnings
from collections.abc import Sequence
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["OpacusFinder", "install_with_opacus"]

_TARGET = "opacus"
_INTEGRATION = "handlstm.opacus"  # the public path (it imports handlstm.interop.opacus)
_lock = threading.Lock()


def _load_integration() -> None:
    """Import :mod:`handlstm.opacus` (the integration installs itself); warn, never raise."""
    try:
        importlib.import_module(_INTEGRATION)
    except Exception as error:  # noqa: BLE001 - an unsupported opacus must not break its import
        warnings.warn(
            f"handlstm could not install its opacus integration ({type(error).__name__}: "
            f"{error}): GradSampleModule will not compute HandLSTM's per-sample gradients. "
            "`import handlstm.opacus` shows the full error.",
            RuntimeWarning,
            stacklevel=3,
        )


class _Loader(Loader):
    """opacus's own loader, with the integration loaded after its ``exec_module``."""

    def __init__(self, loader: Loader, finder: OpacusFinder) -> None:
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name: str) -> Any:  # resources, get_code, ...: opacus's loader's
        return getattr(self._loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)  # an error here leaves the finder in place for a retry
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._finder.remove()
        # opacus is in sys.modules and fully run; its __spec__._initializing is still True, which
        # only makes a concurrent ``import opacus`` wait for this to finish, as it should.
        _load_integration()


class OpacusFinder(MetaPathFinder):
    """One-shot ``sys.meta_path`` entry: wraps the loader of the top-level ``opacus`` package
    (every ``opacus.*`` import goes through it first) and removes itself once it has run."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != _TARGET:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # a namespace package or an old-style loader: left as it is
        spec.loader = _Loader(spec.loader, self)
        return spec

    def remove(self) -> None:
        with _lock:
            while self in sys.meta_path:
                sys.meta_path.remove(self)


def _finder() -> OpacusFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, OpacusFinder)), None)


def install_with_opacus() -> None:
    """Load the opacus integration now if opacus is imported, else as soon as it is.

    Idempotent: at most one finder is ever in ``sys.meta_path``.
    """
    module = sys.modules.get(_TARGET)
    if module is not None:
        spec = getattr(module, "__spec__", None)
        if not getattr(spec, "_initializing", False):
            _load_integration()
        # else: opacus is being imported right now (it imported handlstm?): its finder, if ours,
        # loads the integration when opacus is done; otherwise ``import handlstm.opacus`` does.
        return
    with _lock:
        if _finder() is None:
            sys.meta_path.insert(0, OpacusFinder())
