"""The ``handlstm`` command: ``handlstm check [PATH] [--impl MODULE:CLASS]``.

``handlstm check`` runs the embedded parity sweep: HandLSTM against this machine's nn.LSTM (and
HandLSTMCell against nn.LSTMCell) over a grid of configurations, on outputs, final states and
every gradient. ``handlstm check PATH`` does the same for every LSTM found in a checkpoint;
``--impl`` / ``--impl-cell`` put a user's own implementation in HandLSTM's place.

Here, and only here in the package, torch's own LSTMs run: they are the oracle being compared
against, never part of a HandLSTM forward. Checkpoints are read in :mod:`handlstm.tools.checkpoint`.

Exit codes: 0 every check passes; 1 a parity check failed; 2 a usage error or a file problem
(unreadable, no LSTM, missing or unexpected keys, NaN or inf in weights or results, LSTMs that
could not be checked). A parity failure (1) wins over file problems (2) when both occur.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, NoReturn, TextIO

import torch
from torch import nn

from ..core.version import __version__
from .checkpoint import CheckpointError, load_checkpoint
from .checkpoint_groups import LSTMGroup, find_lstm_groups
from .sweep import (
    FAIL,
    LSTM_RUNS,
    NOT_CHECKED,
    PROBLEM,
    Check,
    Row,
    cell_inputs,
    default_checks,
    describe,
    lstm_inputs,
    run_check,
)

__all__ = [
    "LSTM_RUNS",
    "CheckpointError",
    "cell_inputs",
    "default_checks",
    "load_checkpoint",
    "lstm_inputs",
    "main",
]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

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


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def format_table(rows: Sequence[Row]) -> str:
    header = ("configuration", "dtype", "max|d output|", "max|d grad|", "result")
    body = [
        (r.label, r.dtype, _number(r.max_abs_output), _number(r.max_abs_grad), r.status)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _counts(rows: Sequence[Row]) -> dict[str, int]:
    return {
        status: sum(r.status == status for r in rows) for status in (FAIL, PROBLEM, NOT_CHECKED)
    }


def summary(rows: Sequence[Row], what: str) -> str:
    counts = _counts(rows)
    inputs = sum(len(r.inputs) for r in rows)
    parts = [f"{counts[FAIL]} FAILED"] if counts[FAIL] else []
    parts += [f"{counts[PROBLEM]} with file problems"] if counts[PROBLEM] else []
    parts += [f"{counts[NOT_CHECKED]} not checked"] if counts[NOT_CHECKED] else []
    verdict = ", ".join(parts) or ("all pass" if rows else "nothing checked")
    return (
        f"{what}: {len(rows)} checks ({inputs} runs), {verdict}; "
        f"torch {torch.__version__}, handlstm {__version__}, "
        "tolerance rtol=atol=1e-10 (float64), 1e-5 (float32)"
    )


def exit_code(rows: Sequence[Row]) -> int:
    if not rows:
        return EXIT_USAGE  # nothing was checked
    counts = _counts(rows)
    if counts[FAIL]:
        return EXIT_FAIL
    return EXIT_USAGE if counts[PROBLEM] or counts[NOT_CHECKED] else EXIT_OK


def _finite_json(value: Any) -> Any:
    """``value`` with every NaN / inf float replaced by None: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value


def write_json(out: TextIO, report: dict[str, Any]) -> None:
    out.write(json.dumps(_finite_json(report), indent=2, allow_nan=False) + "\n")


# -- the command ----------------------------------------------------------------------------------


class UsageError(Exception):
    """A command line argparse rejects; the message is argparse's."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.format_usage().strip()}\n{self.prog}: error: {message}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


CHECK_DESCRIPTION = (
    "Verify that HandLSTM computes what this machine's torch.nn.LSTM computes: outputs, final "
    "states and every gradient (input, h_0, c_0, each parameter), compared with rtol=atol=1e-10 "
    "in float64 and 1e-5 in float32. Without PATH, run the embedded sweep over every nn.LSTM "
    "flag (layers, bias, batch_first, bidirectional, proj_size, dropout in eval mode) and "
    "nn.LSTMCell, on dense, unbatched and packed input, with and without initial states, in "
    "float64 and float32. With PATH, check every LSTM found in that checkpoint instead."
)
CHECK_EPILOG = (
    "exit status: 0 every check passes; 1 a check failed; 2 a usage error or a file problem "
    "(missing file, not a torch checkpoint, a checkpoint that needs weights_only=False, no LSTM "
    "in it, missing or unexpected keys, NaN or inf in weights or results, a HandLSTM variant "
    "that nn.LSTM cannot be compared with). 1 wins when both occur. With --json every outcome, "
    "errors included, is one JSON object on stdout."
)
PATH_HELP = (
    "a checkpoint written by torch.save: a state dict, or a dict holding one (under "
    "state_dict, model, model_state_dict, ... at any depth). It is read with "
    "torch.load(weights_only=True), never unpickled otherwise (a zip checkpoint pickled with "
    "protocol 4 or 5 is rewritten as protocol 2 for that same unpickler). Every LSTM parameter "
    "group (weight_ih_l0, weight_hh_l0, ...) and LSTMCell group is found by its key pattern; "
    "its input_size, hidden_size, num_layers, bidirectional, proj_size and bias are inferred "
    "from the tensor shapes, and nn.LSTM and HandLSTM holding those weights are compared on "
    "random inputs in float64 (and float32 when stored so)."
)
IMPL_HELP = (
    "check your own LSTM instead of HandLSTM: MODULE:CLASS names a class (or factory) "
    "importable from PYTHONPATH or the current directory, called like nn.LSTM (with dtype= if "
    "it takes it) and loaded with nn.LSTM's state dict. Only LSTM rows run unless --impl-cell "
    "is also given."
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="handlstm",
        description="handlstm: a hand-written, exact drop-in for torch.nn.LSTM.",
    )
    parser.add_argument("--version", action="version", version=f"handlstm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="verify HandLSTM against this machine's nn.LSTM",
        description=CHECK_DESCRIPTION,
        epilog=CHECK_EPILOG,
    )
    check.add_argument("path", nargs="?", metavar="PATH", help=PATH_HELP)
    check.add_argument("--impl", metavar="MODULE:CLASS", help=IMPL_HELP)
    check.add_argument(
        "--impl-cell",
        metavar="MODULE:CLASS",
        help="the same for an LSTMCell implementation (called like nn.LSTMCell)",
    )
    check.add_argument(
        "--json",
        action="store_true",
        help=(
            "print one JSON object (rows, per-tensor failures, summary, or the error) instead "
            "of the table; strict JSON: NaN and inf are written as null"
        ),
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


def load_impl(spec: str) -> Callable[..., nn.Module]:
    """The class (or factory) ``module:attribute`` names; UsageError if it cannot be found."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--impl expects MODULE:CLASS (e.g. mypkg.rnn:MyLSTM), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        if os.getcwd() in sys.path:
            raise UsageError(f"--impl: cannot import {module_name!r} ({spec})") from None
        sys.path.insert(0, os.getcwd())  # the console script does not put "." on the path
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UsageError(f"--impl: cannot import {module_name!r}: {error}") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"--impl: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"--impl: {spec} is a {type(target).__name__}, not a class or factory")
    return target  # type: ignore[no-any-return]


def _checks_for(path: str) -> tuple[list[Check], list[LSTMGroup]]:
    groups = find_lstm_groups(load_checkpoint(path))
    if not groups:
        raise CheckpointError(
            f"no LSTM found in {path}: no key matches nn.LSTM's pattern (<prefix>weight_ih_l0, "
            "<prefix>weight_hh_l0, ...) or nn.LSTMCell's (<prefix>weight_ih, ...) with "
            "4-gate shapes."
        )
    checks = []
    for group in groups:
        dtypes = [torch.float64]
        if group.dtype == torch.float32 and not group.problems and not group.variant:
            dtypes.append(torch.float32)
        for dtype in dtypes:
            label = f"{group.prefix or '<root>'}: {describe(group.kind, group.config)}"
            checks.append(
                Check(
                    label,
                    group.kind,
                    group.config,
                    dtype,
                    group.state_dict,
                    problems=group.problems,
                    variant=group.variant,
                )  # fmt: skip
            )
    return checks, groups


def _select(checks: list[Check], impls: dict[str, Callable[..., nn.Module]]) -> list[Check]:
    """With --impl / --impl-cell, only the rows of the kinds given."""
    return [c for c in checks if c.kind in impls] if impls else checks


def _error(args: argparse.Namespace, out: TextIO, err: TextIO, message: str) -> int:
    if getattr(args, "json", False):
        source = "default" if getattr(args, "path", None) is None else args.path
        write_json(out, {"source": source, "ok": False, "exit": EXIT_USAGE, "error": message})
    else:
        err.write(f"handlstm check: error: {message}\n")
    return EXIT_USAGE


def check_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    groups: list[LSTMGroup] = []
    try:
        impls = {
            kind: load_impl(spec)
            for kind, spec in (("lstm", args.impl), ("cell", args.impl_cell))
            if spec
        }
        if args.path is None:
            checks, what = default_checks(), "default sweep"
        else:
            checks, groups = _checks_for(args.path)
            what = args.path
    except (CheckpointError, UsageError) as error:
        return _error(args, out, err, str(error))
    checks = _select(checks, impls)
    if impls:
        what += " against " + ", ".join(f"{s}" for s in (args.impl, args.impl_cell) if s)
    progress = Progress(len(checks), err, not args.no_progress)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for index, check in enumerate(checks, 1):
            progress.update(index, f"{check.label} [{str(check.dtype).removeprefix('torch.')}]")
            rows.append(run_check(check, args.seed, impls.get(check.kind)))
    finally:
        progress.close()
        torch.set_num_threads(threads)
    code = exit_code(rows)
    if args.json:
        report = {
            "source": "default" if args.path is None else args.path,
            "impl": {"lstm": args.impl, "cell": args.impl_cell} if impls else None,
            "torch": torch.__version__,
            "handlstm": __version__,
            "groups": [g.as_json() for g in groups],
            "rows": [asdict(r) for r in rows],
            "passed": sum(r.ok for r in rows),
            "failed": sum(r.status == FAIL for r in rows),
            "problems": sum(r.status == PROBLEM for r in rows),
            "not_checked": sum(r.status == NOT_CHECKED for r in rows),
            "ok": code == EXIT_OK,
            "exit": code,
        }
        write_json(out, report)
    else:
        if groups:
            out.write(f"found {len(groups)} LSTM group(s) in {args.path}:\n")
            out.writelines(f"  {g.describe()}\n" for g in groups)
            out.write("\n")
        out.write(format_table(rows) + "\n")
        for row in rows:
            for failure in row.failures:
                out.write(f"{row.status} {row.label} [{row.dtype}] {failure}\n")
        out.write(summary(rows, what) + "\n")
    return code


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {"check": check_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help and --version exit 0
        return int(exit.code or 0)
    except UsageError as error:
        if "--json" in argv:
            write_json(sys.stdout, {"ok": False, "exit": EXIT_USAGE, "error": str(error)})
        else:
            sys.stderr.write(f"{error}\n")
        return EXIT_USAGE
    return COMMANDS[args.command](args, sys.stdout, sys.stderr)
