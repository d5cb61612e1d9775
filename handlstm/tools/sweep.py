"""The parity checks behind ``handlstm check``: the embedded sweep, inputs, one row's run.

A :class:`Check` is one module configuration in one dtype (with a checkpoint's weights, its
file problems and variant options when it comes from a checkpoint); :func:`run_check` compares
HandLSTM (or a user's ``--impl``) with torch's own module on every input kind and returns a
:class:`Row`. torch's LSTMs run here as the oracle, never inside a HandLSTM forward.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..modules.cell import HandLSTMCell
from ..modules.lstm import HandLSTM
from .compare import HX, LSTMInput, compare_modules, make_hx, make_input

# Row statuses: compared and equal; compared and different; a file problem (the group's keys,
# shapes or values); not compared (a HandLSTM variant, which nn.LSTM cannot compute).
PASS, FAIL, PROBLEM, NOT_CHECKED = "pass", "FAIL", "PROBLEM", "not checked"

OUTPUT_NAMES = ("output", "h_n", "c_n", "h", "c")

# Row statuses: compared and equal; compared and different; a file problem (the group's keys,
# shapes or values); not compared (a HandLSTM variant, which nn.LSTM cannot compute).
PASS, FAIL, PROBLEM, NOT_CHECKED = "pass", "FAIL", "PROBLEM", "not checked"


@dataclass
class Check:
    """One row of the report: a module configuration run on several inputs in one dtype."""

    label: str
    kind: str  # "lstm" or "cell"
    config: dict[str, Any]
    dtype: torch.dtype
    state_dict: dict[str, Tensor] | None = None
    eval_mode: bool = False
    problems: list[str] = field(default_factory=list)
    variant: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    label: str
    dtype: str
    inputs: list[str]
    max_abs_output: float | None
    max_abs_grad: float | None
    ok: bool
    failures: list[str] = field(default_factory=list)
    status: str = PASS


# -- the default sweep ----------------------------------------------------------------------------

SWEEP_DTYPES = (torch.float64, torch.float32)


def default_checks() -> list[Check]:
    """The embedded grid: every nn.LSTM flag, both cell biases, in float64 and float32.

    32 flag combinations (num_layers 1/2, bias, batch_first, bidirectional, proj_size 0/2),
    inter-layer dropout in eval mode, and nn.LSTMCell with and without bias. Each row runs dense,
    unbatched, packed sorted and packed unsorted input, with and without hx.
    """
    configs: list[tuple[str, dict[str, Any], bool]] = []
    flags = itertools.product((1, 2), (True, False), (False, True), (False, True), (0, 2))
    for num_layers, bias, batch_first, bidirectional, proj_size in flags:
        config = dict(
            input_size=3,
            hidden_size=4,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=0.0,
            bidirectional=bidirectional,
            proj_size=proj_size,
        )
        configs.append(("lstm", config, False))
    for bidirectional in (False, True):
        config = dict(input_size=3, hidden_size=4, num_layers=2, dropout=0.5)
        config["bidirectional"] = bidirectional
        configs.append(("lstm", config, True))
    for bias in (True, False):
        configs.append(("cell", dict(input_size=3, hidden_size=4, bias=bias), False))
    checks = []
    for dtype in SWEEP_DTYPES:
        for kind, config, eval_mode in configs:
            label = describe(kind, config) + (" eval" if eval_mode else "")
            checks.append(Check(label, kind, config, dtype, None, eval_mode))
    return checks


def describe(kind: str, config: dict[str, Any]) -> str:
    """A compact configuration label, e.g. ``LSTM(3,4) L2 bi proj2 nobias bf``."""
    if kind == "cell":
        return f"LSTMCell({config['input_size']},{config['hidden_size']})" + (
            "" if config.get("bias", True) else " nobias"
        )
    parts = [f"LSTM({config['input_size']},{config['hidden_size']})"]
    parts.append(f"L{config.get('num_layers', 1)}")
    if config.get("bidirectional"):
        parts.append("bi")
    if config.get("proj_size"):
        parts.append(f"proj{config['proj_size']}")
    if not config.get("bias", True):
        parts.append("nobias")
    if config.get("batch_first"):
        parts.append("bf")
    if config.get("dropout"):
        parts.append(f"drop{config['dropout']}")
    return " ".join(parts)


# -- inputs ---------------------------------------------------------------------------------------

# (input kind, sequence lengths, with hx): dense, unbatched, packed sorted and unsorted; hx is
# given to half of them, so both the zero default and a given state are checked per row.
LSTM_RUNS = (
    ("dense", (4, 4, 4), False),
    ("unbatched+hx", (4,), True),
    ("packed_sorted+hx", (4, 3, 2), True),
    ("packed_unsorted", (2, 4, 1, 3), False),
)


def lstm_inputs(
    config: dict[str, Any], dtype: torch.dtype, generator: torch.Generator
) -> Iterator[tuple[str, LSTMInput, HX]]:
    """Named (input, hx) pairs for an nn.LSTM ``config``, one per entry of LSTM_RUNS."""
    full = {"batch_first": False, "num_layers": 1, "bidirectional": False, "proj_size": 0}
    full.update(config)
    for name, lengths, with_hx in LSTM_RUNS:
        kind = name.removesuffix("+hx")
        input = make_input(full, kind, lengths, dtype, generator)
        batch = None if kind == "unbatched" else len(lengths)
        hx = make_hx(full, batch, dtype, generator) if with_hx else None
        yield name, input, hx


def cell_inputs(
    config: dict[str, Any], dtype: torch.dtype, generator: torch.Generator
) -> Iterator[tuple[str, LSTMInput, HX]]:
    """Named (input, hx) pairs for an nn.LSTMCell ``config``: batched and unbatched, +- hx."""
    for batch in (3, None):
        lead = () if batch is None else (batch,)
        x = torch.randn(*lead, config["input_size"], generator=generator, dtype=torch.float64)
        for with_hx in (False, True):
            hx = None
            if with_hx:
                states = torch.randn(2, *lead, config["hidden_size"], generator=generator)
                hx = (states[0].to(dtype), states[1].to(dtype))
            name = ("batched" if batch else "unbatched") + ("+hx" if with_hx else "")
            yield name, x.to(dtype), hx


# -- running one check ----------------------------------------------------------------------------


def _build(cls: Callable[..., nn.Module], config: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """``cls(**config, dtype=dtype)``, or ``cls(**config).to(dtype)`` for a class without it."""
    try:
        return cls(**config, dtype=dtype)
    except TypeError as error:
        if "dtype" not in str(error):
            raise
        return cls(**config).to(dtype)


def _modules(
    check: Check, seed: int, impl: Callable[..., nn.Module] | None = None
) -> tuple[nn.Module, nn.Module]:
    """(HandLSTM-side, torch-side) modules with equal parameters."""
    torch_cls: type[nn.Module] = nn.LSTM if check.kind == "lstm" else nn.LSTMCell
    hand_cls = impl or (HandLSTM if check.kind == "lstm" else HandLSTMCell)
    torch.manual_seed(seed)
    expected = torch_cls(**check.config, dtype=check.dtype)
    if check.state_dict is not None:
        expected.load_state_dict({k: v.to(check.dtype) for k, v in check.state_dict.items()})
    actual = _build(hand_cls, check.config, check.dtype)
    actual.load_state_dict(expected.state_dict())
    if check.eval_mode:
        expected.eval()
        actual.eval()
    return actual, expected


def _not_finite(module: nn.Module, input: LSTMInput, hx: HX) -> str | None:
    """How many NaN / inf torch's own module returns for this input, or None if none."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = module(input, hx)
    tensors = torch.utils._pytree.tree_leaves(result)
    tensors = [t.data if hasattr(t, "batch_sizes") else t for t in tensors]
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors if isinstance(t, Tensor))
    total = sum(t.numel() for t in tensors if isinstance(t, Tensor))
    if bad:
        return f"torch's own outputs hold {bad} NaN or inf of {total} values"
    return None


def _unchecked_row(check: Check, status: str, reasons: list[str]) -> Row:
    return Row(check.label, _dtype_name(check.dtype), [], None, None, False, reasons, status)


def _variant_row(check: Check) -> Row:
    """A HandLSTM variant group: loaded into the variant (strict), never compared."""
    options = ", ".join(f"{k}={v!r}" for k, v in check.variant.items())
    try:
        cls = HandLSTM if check.kind == "lstm" else HandLSTMCell
        module = cls(**check.config, **check.variant, dtype=check.dtype)
        module.load_state_dict({k: v.to(check.dtype) for k, v in (check.state_dict or {}).items()})
        loaded = f"loads into {cls.__name__}(..., {options}) with strict=True"
    except (RuntimeError, ValueError, TypeError) as error:
        return _unchecked_row(check, PROBLEM, [f"does not load into the variant: {error}"])
    reason = (
        f"a HandLSTM variant ({options}): it {loaded}, but nn.LSTM has no such option, so "
        "there is nothing to compare it with; not checked"
    )
    return _unchecked_row(check, NOT_CHECKED, [reason])


def run_check(check: Check, seed: int, impl: Callable[..., nn.Module] | None = None) -> Row:
    """Compare the hand module (or ``impl``) with torch's on every input kind; one row."""
    if check.problems:
        return _unchecked_row(check, PROBLEM, check.problems)
    if check.variant:
        return _variant_row(check)
    try:
        actual, expected = _modules(check, seed, impl)
    except Exception as error:  # noqa: BLE001 - a user's --impl may raise anything
        reason = f"cannot build the modules: {type(error).__name__}: {error}"
        return _unchecked_row(check, FAIL, [reason])
    generator = torch.Generator().manual_seed(seed)
    make = lstm_inputs if check.kind == "lstm" else cell_inputs
    out_max, grad_max, failures, names, status = 0.0, 0.0, [], [], PASS
    for name, input, hx in make(check.config, check.dtype, generator):
        names.append(name)
        with warnings.catch_warnings():  # torch notes that oneDNN cannot run projections
            warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
            try:
                diffs = compare_modules(actual, expected, input, hx, seed=seed)
            except Exception as error:  # noqa: BLE001 - a user's --impl may raise anything
                failures.append(f"[{name}] raised {type(error).__name__}: {error}")
                status = FAIL
                continue
        out_max = max([out_max, *(d.max_abs for d in diffs if d.name in OUTPUT_NAMES)])
        grad_max = max([grad_max, *(d.max_abs for d in diffs if d.name.startswith("grad."))])
        if [d for d in diffs if not d.ok]:
            status = FAIL
        failures += [f"[{name}] {d.describe()}" for d in diffs if not d.ok]
        nonfinite = _not_finite(expected, input, hx)
        if nonfinite is not None:
            failures.append(f"[{name}] {nonfinite}: the weights overflow or are degenerate")
            status = FAIL if status == FAIL else PROBLEM
    return Row(
        check.label, _dtype_name(check.dtype), names, out_max, grad_max, status == PASS,
        failures, status,
    )  # fmt: skip


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
