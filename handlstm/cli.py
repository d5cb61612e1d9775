"""The ``handlstm`` command: ``handlstm check [PATH]``.

``handlstm check`` runs the embedded parity sweep: HandLSTM against this machine's nn.LSTM (and
HandLSTMCell against nn.LSTMCell) over a grid of configurations, on outputs, final states and
every gradient. ``handlstm check PATH`` does the same for every LSTM found in a checkpoint.

Here, and only here in the package, torch's own LSTMs run: they are the oracle being compared
against, never part of a HandLSTM forward.

Exit codes: 0 all checks pass, 1 a parity check failed, 2 a usage or file error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from . import __version__
from ._cell_module import HandLSTMCell
from ._compare import HX, LSTMInput, compare_modules, make_hx, make_input
from ._lstm import HandLSTM
from .convert import LSTMGroup, find_lstm_groups

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

OUTPUT_NAMES = ("output", "h_n", "c_n", "h", "c")


@dataclass
class Check:
    """One row of the report: a module configuration run on several inputs in one dtype."""

    label: str
    kind: str  # "lstm" or "cell"
    config: dict[str, Any]
    dtype: torch.dtype
    state_dict: dict[str, Tensor] | None = None
    eval_mode: bool = False


@dataclass
class Row:
    label: str
    dtype: str
    inputs: list[str]
    max_abs_output: float
    max_abs_grad: float
    ok: bool
    failures: list[str] = field(default_factory=list)


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


# -- checkpoints ----------------------------------------------------------------------------------


class CheckpointError(Exception):
    """A checkpoint that cannot be checked; the message says why and what to do."""


def load_checkpoint(path: str) -> dict[str, Tensor]:
    """Read ``path`` with ``torch.load(weights_only=True)`` and flatten it to ``{key: tensor}``.

    Nested dicts and lists are flattened with dotted keys, so a state dict at the top level and
    one under ``state_dict`` / ``model`` / ``model_state_dict`` (or any other key) are both found.

    Raises:
        CheckpointError: a missing file, a file torch cannot read, a checkpoint holding objects
            that only ``weights_only=False`` would load (never attempted), or one with no tensors.
    """
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"no such file: {path}")
    if file.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:
            raise CheckpointError(
                f"{path} needs torch.load(weights_only=False): it stores the Python object "
                f"{unsafe.group(1)}, and unpickling it could run arbitrary code, so handlstm "
                "does not load it. If you trust the file, re-save only its weights: "
                "torch.save(torch.load(PATH, weights_only=False)['state_dict'], 'weights.pt') "
                "(or model.state_dict()), then check that file."
            ) from None
        raise CheckpointError(
            _not_a_checkpoint(path, error) + ". If it is a pickle that only "
            "torch.load(weights_only=False) would read, handlstm does not load it: unpickling "
            "can run arbitrary code"
        ) from None
    except Exception as error:  # torch raises many classes for a file that is not its format
        raise CheckpointError(_not_a_checkpoint(path, error)) from None
    flat: dict[str, Tensor] = {}
    _flatten(loaded, "", flat)
    if not flat:
        raise CheckpointError(f"{path} holds no tensors (a {type(loaded).__name__})")
    return flat


def _not_a_checkpoint(path: str, error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    reason = lines[-2 if len(lines) > 1 and "documentation" in lines[-1] else -1] if lines else ""
    reason = reason.strip() or type(error).__name__
    return f"{path} is not a torch checkpoint (torch.load could not read it: {reason[:200]})"


def _flatten(value: Any, prefix: str, out: dict[str, Tensor]) -> None:
    if isinstance(value, Tensor):
        out[prefix] = value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}.{index}" if prefix else str(index), out)


# -- running one check ----------------------------------------------------------------------------


def _modules(check: Check, seed: int) -> tuple[nn.Module, nn.Module]:
    """(HandLSTM-side, torch-side) modules with equal parameters."""
    torch_cls, hand_cls = (
        (nn.LSTM, HandLSTM) if check.kind == "lstm" else (nn.LSTMCell, HandLSTMCell)
    )
    torch.manual_seed(seed)
    expected = torch_cls(**check.config, dtype=check.dtype)
    if check.state_dict is not None:
        expected.load_state_dict({k: v.to(check.dtype) for k, v in check.state_dict.items()})
    actual = hand_cls(**check.config, dtype=check.dtype)
    actual.load_state_dict(expected.state_dict())
    if check.eval_mode:
        expected.eval()
        actual.eval()
    return actual, expected


def run_check(check: Check, seed: int) -> Row:
    """Compare the hand module with torch's on every input kind; one row of results."""
    try:
        actual, expected = _modules(check, seed)
    except (RuntimeError, ValueError, TypeError) as error:
        reason = f"cannot build the modules: {error}"
        return Row(
            check.label, _dtype_name(check.dtype), [], float("nan"), float("nan"), False, [reason]
        )
    generator = torch.Generator().manual_seed(seed)
    make = lstm_inputs if check.kind == "lstm" else cell_inputs
    out_max, grad_max, failures, names = 0.0, 0.0, [], []
    for name, input, hx in make(check.config, check.dtype, generator):
        names.append(name)
        with warnings.catch_warnings():  # torch notes that oneDNN cannot run projections
            warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
            diffs = compare_modules(actual, expected, input, hx, seed=seed)
        out_max = max([out_max, *(d.max_abs for d in diffs if d.name in OUTPUT_NAMES)])
        grad_max = max([grad_max, *(d.max_abs for d in diffs if d.name.startswith("grad."))])
        failures += [f"[{name}] {d.describe()}" for d in diffs if not d.ok]
    return Row(
        check.label, _dtype_name(check.dtype), names, out_max, grad_max, not failures, failures
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- output ---------------------------------------------------------------------------------------


class Progress:
    """``[k/n] label`` on one rewritten stderr line, only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream = total, stream
        self.enabled = enabled and stream.isatty()
        self.width = 0

    def update(self, index: int, label: str) -> None:
        if self.enabled:
            text = f"[{index}/{self.total}] {label}"
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def format_table(rows: Sequence[Row]) -> str:
    header = ("configuration", "dtype", "max|d output|", "max|d grad|", "result")
    body = [
        (
            r.label,
            r.dtype,
            f"{r.max_abs_output:.2e}",
            f"{r.max_abs_grad:.2e}",
            "pass" if r.ok else "FAIL",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(rows: Sequence[Row], what: str) -> str:
    failed = sum(not r.ok for r in rows)
    inputs = sum(len(r.inputs) for r in rows)
    verdict = "all pass" if not failed else f"{failed} FAILED"
    return (
        f"{what}: {len(rows)} checks ({inputs} runs), {verdict}; "
        f"torch {torch.__version__}, handlstm {__version__}, "
        "tolerance rtol=atol=1e-10 (float64), 1e-5 (float32)"
    )


# -- the command ----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handlstm",
        description="handlstm: a hand-written, exact drop-in for torch.nn.LSTM.",
    )
    parser.add_argument("--version", action="version", version=f"handlstm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="verify HandLSTM against this machine's nn.LSTM",
        description=(
            "Verify that HandLSTM computes what this machine's torch.nn.LSTM computes: outputs, "
            "final states and every gradient (input, h_0, c_0, each parameter), compared with "
            "rtol=atol=1e-10 in float64 and 1e-5 in float32. Without PATH, run the embedded "
            "sweep over every nn.LSTM flag (layers, bias, batch_first, bidirectional, proj_size, "
            "dropout in eval mode) and nn.LSTMCell, on dense, unbatched and packed input, with "
            "and without initial states, in float64 and float32. With PATH, check every LSTM "
            "found in that checkpoint instead."
        ),
        epilog=(
            "exit status: 0 every check passes, 1 a check failed, 2 usage or file error "
            "(missing file, not a torch checkpoint, a checkpoint that needs "
            "weights_only=False, no LSTM in it)."
        ),
    )
    check.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help=(
            "a checkpoint written by torch.save: a state dict, or a dict holding one (under "
            "state_dict, model, model_state_dict, ... at any depth). It is read with "
            "torch.load(weights_only=True), never unpickled otherwise. Every LSTM parameter "
            "group (weight_ih_l0, weight_hh_l0, ...) and LSTMCell group is found by its key "
            "pattern; its input_size, hidden_size, num_layers, bidirectional, proj_size and bias "
            "are inferred from the tensor shapes, and nn.LSTM and HandLSTM holding those weights "
            "are compared on random inputs in float64 (and float32 when stored so)."
        ),
    )
    check.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (rows, per-tensor failures, summary) instead of the table",
    )
    check.add_argument(
        "--seed", type=int, default=0, help="seed for weights, inputs and the loss (default 0)"
    )
    check.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help=(
            "torch intra-op threads while checking (default 1: the checks use small matrices, "
            "for which one thread is fastest)"
        ),
    )
    check.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress line on stderr (it is shown only when stderr is a terminal anyway)",
    )
    return parser


def _checks_for(path: str) -> tuple[list[Check], list[LSTMGroup]]:
    groups = find_lstm_groups(load_checkpoint(path))
    if not groups:
        raise CheckpointError(
            f"no LSTM found in {path}: no key matches nn.LSTM's pattern (<prefix>weight_ih_l0, "
            "<prefix>weight_hh_l0, ...) or nn.LSTMCell's (<prefix>weight_ih, ...) with "
            "4-gate shapes"
        )
    checks = []
    for group in groups:
        dtypes = [torch.float64]
        if group.dtype == torch.float32:
            dtypes.append(torch.float32)
        for dtype in dtypes:
            label = f"{group.prefix or '<root>'}: {describe(group.kind, group.config)}"
            checks.append(Check(label, group.kind, group.config, dtype, group.state_dict))
    return checks, groups


def check_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    groups: list[LSTMGroup] = []
    if args.path is None:
        checks, what = default_checks(), "default sweep"
    else:
        try:
            checks, groups = _checks_for(args.path)
        except CheckpointError as error:
            err.write(f"handlstm check: error: {error}\n")
            return EXIT_USAGE
        what = args.path
    progress = Progress(len(checks), err, not args.no_progress)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for index, check in enumerate(checks, 1):
            progress.update(index, f"{check.label} [{_dtype_name(check.dtype)}]")
            rows.append(run_check(check, args.seed))
    finally:
        progress.close()
        torch.set_num_threads(threads)
    ok = all(r.ok for r in rows)
    if args.json:
        report = {
            "source": "default" if args.path is None else args.path,
            "torch": torch.__version__,
            "handlstm": __version__,
            "groups": [g.as_json() for g in groups],
            "rows": [asdict(r) for r in rows],
            "passed": sum(r.ok for r in rows),
            "failed": sum(not r.ok for r in rows),
            "ok": ok,
        }
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        if groups:
            out.write(f"found {len(groups)} LSTM group(s) in {args.path}:\n")
            out.writelines(f"  {g.describe()}\n" for g in groups)
            out.write("\n")
        out.write(format_table(rows) + "\n")
        for row in rows:
            for failure in row.failures:
                out.write(f"FAIL {row.label} [{row.dtype}] {failure}\n")
        out.write(summary(rows, what) + "\n")
    return EXIT_OK if ok else EXIT_FAIL


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {"check": check_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse: --help/--version exit 0, usage errors exit 2
        return int(exit.code or 0)
    return COMMANDS[args.command](args, sys.stdout, sys.stderr)
