"""The traced loop: one direction over time as a single ``scan``, for compile and export.

The Python time loop of :func:`handlstm._scan.scan` is unrolled by Dynamo, so a compiled or
exported graph holds one copy of the step per time step and serves one sequence length. Here the
same step (:func:`handlstm._cell.lstm_step_gates`, the only copy of the gate equations) is the
combine function of torch's ``scan`` higher-order op, so the graph holds the step once and the
sequence length stays symbolic: one compile, one exported program for every length.

Per-sequence lengths (a padded batch with PackedSequence semantics) are a mask over the steps:
a step changes only the rows whose sequence is still running, and writes zeros to the output
elsewhere. Forward, each row's state stops at its last valid step; in reverse, a row keeps its
initial state until its sequence starts. That is nn.LSTM's packed semantics, in a dense graph.

Shapes: L sequence, N batch, H_cell hidden size, H_out output size (``proj_size`` or H_cell).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from ._cell import DEFAULT_VARIANT, CellVariant, StepNoise, lstm_step_gates

if TYPE_CHECKING:
    from ._scan import ScanVariant

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


_TORCHSCRIPT_MESSAGE = (
    "HandLSTM does not support TorchScript ({how}): its time loop is Python, so a trace would "
    "serve only the traced sequence length and scripting cannot compile it. Use "
    "torch.export.export(model, args, dynamic_shapes=...) for one program at every length "
    "(and torch.onnx.export(..., dynamo=True) for ONNX, torch.compile for speed); see "
    "docs/works_with.md"
)


def check_not_torchscript() -> None:
    """Refuse ``torch.jit.trace`` at trace time, naming the way that works (torch.export)."""
    if torch.jit.is_tracing():
        raise RuntimeError(_TORCHSCRIPT_MESSAGE.format(how="torch.jit.trace"))


def refuse_script() -> None:
    """Called by ``torch.jit.script`` (through ``__prepare_scriptable__``): refuse it clearly."""
    raise RuntimeError(_TORCHSCRIPT_MESSAGE.format(how="torch.jit.script"))


def check_lengths(input: object, lengths: object) -> Tensor:
    """Validate ``forward(..., lengths=)``: a ``(N,)`` integer tensor for a padded batch.

    Returns:
        ``lengths`` as a tensor (a list or tuple of ints is converted).

    Raises:
        ValueError: packed or unbatched input, a wrong shape, or (eagerly) a length outside
            ``[0, L]``. TypeError: not integers.
    """
    if not isinstance(input, Tensor):
        raise ValueError(
            "lengths= is for a padded batch tensor, got a "
            f"{type(input).__name__} (a PackedSequence carries its own lengths)"
        )
    if input.dim() != 3:
        raise ValueError(
            f"lengths= needs a batched input of 3 dimensions, got {input.dim()} dimensions"
        )
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer tensor, got dtype {lengths.dtype}")
    return lengths


def check_length_values(lengths: Tensor, steps: int, batch: int) -> None:
    """``lengths`` is ``(N,)`` and (eagerly: values are data under tracing) within ``[0, L]``."""
    if lengths.dim() != 1 or lengths.size(0) != batch:
        raise ValueError(
            f"lengths: expected shape ({batch},), one length per sequence, "
            f"got {tuple(lengths.shape)}"
        )
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > steps):
        raise ValueError(
            f"lengths: expected every length in [0, {steps}] (the padded sequence length), "
            f"got min {int(lengths.min())} and max {int(lengths.max())}"
        )


def wanted(steps: int | torch.SymInt, lengths: Tensor | None) -> bool:
    """Whether run_direction takes this module's loop for a dense direction of ``steps``."""
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


def step_mask(lengths: Tensor, steps: int | torch.SymInt, like: Tensor) -> Tensor:
    """``(L, N, 1)`` in ``like``'s dtype: 1 where step ``t`` is inside sequence ``n``."""
    t = torch.arange(steps, device=like.device).unsqueeze(1)  # type: ignore[arg-type]  # (L, 1)
    return (t < lengths.to(like.device).unsqueeze(0)).unsqueeze(-1).to(like.dtype)


def scan_direction(
    gates_x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
    reverse: bool,
    variant: ScanVariant | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The recurrence over a dense sequence as one scan (or its eager equivalent).

    Args:
        gates_x: the input's share of the gates, ``(L, N, 4*H_cell)``.
        h0, c0: initial states ``(N, H_out)``, ``(N, H_cell)``.
        weight_hh, weight_hr: as :func:`handlstm._scan.scan`.
        reverse: run from the last step to the first.
        variant: the variant's parameters and masks (see :class:`handlstm._scan.ScanVariant`);
            None is nn.LSTM. With ``variant.record``, every step's c and gate activations are
            appended to ``variant.cells`` and ``variant.gates``.
        lengths: ``(N,)`` valid steps per sequence, or None when every step is valid.

    Returns:
        ``(output, h_n, c_n)``: ``(L, N, H_out)`` (zeros at masked steps), ``(N, H_out)``,
        ``(N, H_cell)``.
    """
    cell = _python_floats(DEFAULT_VARIANT if variant is None else variant.cell)
    record = variant is not None and variant.record
    h_mask = None if variant is None else variant.h_mask
    xs: dict[str, Tensor] = {"gates_x": gates_x}
    if variant is not None and variant.zone_h is not None:
        xs["zone_h"] = variant.zone_h
    if variant is not None and variant.zone_c is not None:
        xs["zone_c"] = variant.zone_c
    if lengths is not None:
        xs["mask"] = step_mask(lengths, gates_x.size(0), gates_x)  # (L, N, 1)

    batch = h0.size(0)  # N

    def combine(
        carry: tuple[Tensor, Tensor], x: dict[str, Tensor]
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, ...]]:
        h, c = carry
        noise = StepNoise(h_mask, x.get("zone_h"), x.get("zone_c"))
        h_next, c_next, acts = lstm_step_gates(
            x["gates_x"], h, c, weight_hh, weight_hr, cell, noise
        )
        out = h_next
        if "mask" in x:
            m = x["mask"]  # (N, 1)
            out = h_next * m  # zeros at padded steps, as pad_packed_sequence
            h_next = torch.lerp(h, h_next, m)  # m is 0 or 1: exactly h or h_next
            c_next = torch.lerp(c, c_next, m)
        # The scan op refuses outputs that alias each other, its inputs, or (in training, under
        # inductor's partitioner) the intermediates it saves for backward: clone each output.
        # A no-op that names the batch size inside the body, so that torch.export lifts it as
        # a scan input: inductor (AOTInductor) sizes the stacked outputs from the scan's inputs
        # and otherwise fails with "KeyError: s.." when batch and length are both dynamic.
        out = out.reshape(batch, out.size(-1))
        ys: tuple[Tensor, ...] = (out.clone(),)
        if record:
            ys = (*ys, c_next.clone(), torch.cat(acts, -1))
        return (h_next.clone(), c_next.clone()), ys

    if use_scan_op(gates_x.size(0)):
        from torch._higher_order_ops.scan import scan

        (h_n, c_n), ys = scan(combine, (h0, c0), xs, reverse=reverse)
    else:  # eager, or unrolled by choice: the same combine function in a Python loop
        (h_n, c_n), ys = _python_scan(combine, (h0, c0), xs, reverse)
    if record and variant is not None:
        variant.cells.append(ys[1])
        variant.gates.append(ys[2])
    return ys[0], h_n, c_n


def _python_floats(cell: CellVariant) -> CellVariant:
    """The variant with its float options as Python floats.

    Under ``dynamic=True`` Dynamo reads them as symbolic floats, and the scan op refuses a
    symbolic float among the combine function's inputs; these are configuration, not data.
    ``float()`` keeps a symbolic float symbolic; ``math.fsum`` of one float is that float,
    exactly, and Dynamo specializes it (a guard on the value, so a change recompiles).
    """

    def constant(value: float | None) -> float | None:
        return None if value is None else math.fsum([value])

    return cell._replace(
        zoneout_h=math.fsum([cell.zoneout_h]),
        zoneout_c=math.fsum([cell.zoneout_c]),
        ln_eps=math.fsum([cell.ln_eps]),
        cell_clip=constant(cell.cell_clip),
        proj_clip=constant(cell.proj_clip),
    )


def _python_scan(
    combine: object, init: tuple[Tensor, Tensor], xs: dict[str, Tensor], reverse: bool
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, ...]]:
    """``scan``'s semantics, run eagerly step by step (the scan op would compile in eager)."""
    steps = xs["gates_x"].size(0)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    carry = init
    outs: list[tuple[Tensor, ...]] = [()] * steps
    for t in order:
        carry, outs[t] = combine(carry, {k: v[t] for k, v in xs.items()})  # type: ignore[operator]
    stacked = tuple(torch.stack(column, 0) for column in zip(*outs, strict=True))
    return carry, stacked


# -- compiled training: the eager direction as one opaque op at any length -------------------------
#
# The scan's backward is slow on CPU (weight gradients accumulated step by step), and the
# unrolled loop as well (measured ~3x the eager fast path at medium size). Under torch.compile
# with gradients, a dense default direction is instead one custom op whose implementation is the
# eager run_direction (the fast path where it serves): Dynamo and inductor see a single node with
# symbolic shapes, so one graph still serves every length. Its backward is a second opaque op that
# recomputes the forward with autograd and differentiates it (the fast path's hand-written
# backward), so a compiled step costs about one extra forward over the eager step.
# torch.export never takes it: an exported program must not depend on handlstm's ops.


def use_opaque_op(x: Tensor, variant: object, lengths: Tensor | None) -> bool:
    """Whether a dense direction runs as the opaque op (compile, training, nn.LSTM's options)."""
    if variant is not None or lengths is not None or _loop != "auto":
        return False
    if not torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    if torch.is_autocast_enabled(x.device.type):  # a custom op's kernel runs without autocast
        return False
    return torch.is_grad_enabled() and _dynamo_tracing()


@constant_at_trace_time
def _dynamo_tracing() -> bool:
    """True inside a Dynamo trace (evaluated once, at trace time); False when merely called."""
    return torch._guards.TracingContext.try_get() is not None


_EXCLUDED_AT_IMPORT = torch._C._dispatch_tls_local_exclude_set()


def _with_autograd() -> Any:
    """Dispatch with the keys excluded at import (autograd on) inside a custom op's kernel."""
    include = torch._C._dispatch_tls_local_include_set()
    return torch._C._ForceDispatchKeyGuard(include, _EXCLUDED_AT_IMPORT)


def _weights(
    w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None
) -> Any:
    from ._scan import DirectionWeights

    return DirectionWeights(w_ih, w_hh, b_ih, b_hh, w_hr)


@torch.library.custom_op("handlstm::direction", mutates_args=())
def _direction_op(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    from ._scan import run_direction

    with torch.no_grad():
        out, h, c = run_direction(x, None, h0, c0, _weights(w_ih, w_hh, b_ih, b_hh, w_hr), reverse)
    return out.clone(), h.clone(), c.clone()  # a custom op's outputs may not alias its inputs


@_direction_op.register_fake
def _(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return (
        x.new_empty(x.size(0), x.size(1), h0.size(-1)),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
    )


@torch.library.custom_op("handlstm::direction_backward", mutates_args=())
def _direction_backward_op(
    d_out: Tensor,
    d_h: Tensor,
    d_c: Tensor,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> list[Tensor]:
    from ._scan import run_direction

    present = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]
    leaves = [t.detach().requires_grad_() for t in present]
    it = iter(leaves)
    args: list[Any] = [
        None if t is None else next(it) for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    ]
    # A custom op runs below autograd (its dispatch keys excluded): restore them to record the
    # recomputation (the fast path's autograd.Function records regardless; the composed path not).
    with torch.enable_grad(), _with_autograd():
        out, h, c = run_direction(args[0], None, args[1], args[2], _weights(*args[3:]), reverse)
        grads = torch.autograd.grad((out, h, c), leaves, (d_out, d_h, d_c), allow_unused=True)
    # a custom op's outputs may not alias its inputs or each other (e.g. dc0 is d_c at L=1)
    taken = {t.untyped_storage().data_ptr() for t in (d_out, d_h, d_c, *present)}
    result = []
    for g, t in zip(grads, leaves, strict=True):
        if g is None:
            g = torch.zeros_like(t)
        elif g.untyped_storage().data_ptr() in taken:
            g = g.clone()
        taken.add(g.untyped_storage().data_ptr())
        result.append(g)
    return result


@_direction_backward_op.register_fake
def _(
    d_out: Tensor,
    d_h: Tensor,
    d_c: Tensor,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> list[Tensor]:
    return [
        t.new_empty(t.shape) for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None
    ]


def _setup_context(ctx: object, inputs: tuple[object, ...], output: object) -> None:
    ctx.save_for_backward(*[t for t in inputs[:8] if t is not None])  # type: ignore[attr-defined]
    ctx.present = [t is not None for t in inputs[:8]]  # type: ignore[attr-defined]
    ctx.reverse = inputs[8]  # type: ignore[attr-defined]


def _backward(ctx: object, d_out: Tensor, d_h: Tensor, d_c: Tensor) -> tuple[object, ...]:
    saved = iter(ctx.saved_tensors)  # type: ignore[attr-defined]
    args = [next(saved) if p else None for p in ctx.present]  # type: ignore[attr-defined]
    grads = iter(_direction_backward_op(d_out, d_h, d_c, *args, ctx.reverse))  # type: ignore[attr-defined]
    return (*(next(grads) if p else None for p in ctx.present), None)  # type: ignore[attr-defined]


_direction_op.register_autograd(_backward, setup_context=_setup_context)


def opaque_direction(
    x: Tensor, h0: Tensor, c0: Tensor, weights: tuple[Tensor | None, ...], reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One dense default direction as the opaque op (see above)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    assert w_ih is not None and w_hh is not None  # noqa: S101 - DirectionWeights always has them
    out, h, c = _direction_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return out, h, c
