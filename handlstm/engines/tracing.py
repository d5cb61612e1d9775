"""What a trace is doing, read at trace time: compile or export, and the time loop it wants.

:func:`time_loop` (public as ``handlstm.time_loop``) sets how the time loop is traced; the
chooser (:mod:`handlstm.engines.choose`) reads :func:`scan_wanted` and :func:`dynamo_tracing`;
:func:`use_scan_op` decides, inside the traced engine, between torch's scan op and the same
combine function in a Python loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor

TimeLoop = Literal["auto", "scan", "unrolled"]
_LOOPS = ("auto", "scan", "unrolled")

#: The time loop under torch.compile / torch.export. A plain module global, not a ContextVar:
#: Dynamo guards on its value (a change recompiles), and a ContextVar read breaks the graph.
_loop: TimeLoop = "auto"

#: In "auto", a sequence length known at trace time (a plain int, not symbolic) up to this many
#: steps is unrolled: measured faster to compile there and as fast to run (inductor, CPU:
#: ``python benchmarks/compile_bench.py --short``; docs/works_with.md), and the graph of a static
#: length serves that one length anyway. Longer static lengths compile faster as a scan.
UNROLL_MAX_STEPS = 8


@contextlib.contextmanager
def time_loop(loop: TimeLoop) -> Iterator[None]:
    """Choose how HandLSTM runs its time loop when compiled or exported, within this block.

    Args:
        loop: ``"auto"`` (the default): a single ``scan`` whenever the sequence length is
            symbolic (``torch.compile(dynamic=True)``, ``mark_dynamic``, an automatic-dynamic
            recompile, ``torch.export`` with a ``Dim`` on it) or longer than
            ``UNROLL_MAX_STEPS``, where the trace can hold it (``fullgraph=True``,
            torch.export, or ``capture_scalar_outputs``); the unrolled Python loop otherwise,
            e.g. for short lengths fixed at trace time. ``"scan"``: always the single scan.
            ``"unrolled"``: always the Python loop (one graph per length, the sequence length
            cannot be exported as dynamic).

    Eager calls are unaffected (they run the Python loop, or the fast path). The setting is
    process-wide (a module global, read at trace time), so set it around the compile call and
    the first calls that trace; a change makes Dynamo recompile.

    Example:
        >>> import torch
        >>> from handlstm import HandLSTM
        >>> from handlstm import time_loop
        >>> lstm = HandLSTM(3, 4)
        >>> with time_loop("scan"):
        ...     program = torch.export.export(lstm, (torch.randn(5, 2, 3),))
    """
    global _loop
    if loop not in _LOOPS:
        raise ValueError(f"time_loop: expected one of {_LOOPS}, got {loop!r}")
    previous, _loop = _loop, loop
    try:
        yield
    finally:
        _loop = previous


def scan_wanted(steps: int | torch.SymInt, lengths: Tensor | None) -> bool:
    """Whether a dense direction of ``steps`` runs on the traced engine."""
    return lengths is not None or use_scan_op(steps)  # lengths: the only loop that masks


def use_scan_op(steps: int | torch.SymInt) -> bool:
    """Whether the time loop is torch's scan op (else a Python loop, unrolled when traced)."""
    if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        return False  # eager: the scan op would compile itself at every call
    if _loop != "auto":
        return _loop == "scan"
    if not _scan_lowerable():
        return False
    # Symbolic or long: scan. (Under Dynamo isinstance(SymInt, int) is True, and a comparison
    # would guard on the length; statically_known_true adds no guard.)
    # Imported here: symbolic_shapes imports sympy, which eager users never need (0.4 s).
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return not statically_known_true(steps <= UNROLL_MAX_STEPS)


def constant_at_trace_time(fn: Any) -> Any:
    """``torch.compiler.assume_constant_result(fn)`` without importing torch._dynamo (and sympy,
    0.4 s) when handlstm is imported: in torch 2.13 that decorator only sets this marker, which
    tests/test_export_lengths.py checks against the decorator itself."""
    fn._dynamo_marked_constant = True
    return fn


def _scan_lowerable() -> bool:
    """Whether this trace may hold the scan: Dynamo evaluates this once, at trace time.

    Inductor lowers scan to a while loop that reads its step counter as a scalar, which torch
    2.13 allows only when the trace captures scalar outputs: ``fullgraph=True``, torch.export,
    or ``torch._dynamo.config.capture_scalar_outputs = True``. Elsewhere (a plain
    ``torch.compile(model)``) "auto" keeps the unrolled loop rather than fail in inductor.
    """
    context = torch._guards.TracingContext.try_get()
    fake_mode = None if context is None else context.fake_mode
    shape_env = None if fake_mode is None else fake_mode.shape_env
    return shape_env is None or bool(shape_env.allow_scalar_outputs)


_scan_lowerable = constant_at_trace_time(_scan_lowerable)


def loop_setting() -> TimeLoop:
    """The :func:`time_loop` in force ("auto" unless a block set another)."""
    return _loop


@constant_at_trace_time
def dynamo_tracing() -> bool:
    """True inside a Dynamo trace (evaluated once, at trace time); False when merely called."""
    return torch._guards.TracingContext.try_get() is not None
