"""Reading checkpoints safely (for ``handlstm check PATH``; the groups in them:
:mod:`handlstm.tools.checkpoint_groups`).

* :func:`load_checkpoint` reads a file with ``torch.load(weights_only=True)`` only. A zip
  checkpoint pickled with protocol 4 or 5 (``torch.save(..., pickle_protocol=4)``, as flair's
  ``Model.save`` writes), which torch's weights-only unpickler cannot parse, is rewritten into
  the protocol-2 instructions that unpickler reads (without executing anything) and then read
  by that same unpickler, so it gets exactly the same protection.
* The result is flat: nested dicts and lists become dotted keys of tensors.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
import types
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["CheckpointError", "load_checkpoint"]


class CheckpointError(Exception):
    """A checkpoint that cannot be checked; the message says why and what to do."""


# -- reading --------------------------------------------------------------------------------------

_RESAVE = (
    "If you trust the file, re-save only its weights: "
    "torch.save(torch.load(PATH, weights_only=False)['state_dict'], 'weights.pt') "
    "(or model.state_dict()), then check that file."
)


def load_checkpoint(path: str) -> dict[str, Tensor]:
    """Read ``path`` with torch's weights-only unpickler and flatten it to ``{key: tensor}``.

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
        loaded = _load(file)
    except Exception as error:  # noqa: BLE001 - torch raises many classes for a foreign file
        with file.open("rb") as handle:
            head = handle.read(4)
        if head and not head.startswith((b"PK\x03\x04", pickle.PROTO)):
            raise CheckpointError(
                f"{path} is not a torch checkpoint: it is neither a zip archive (what torch.save "
                "writes) nor a pickle (torch's legacy format)."
            ) from None
        if isinstance(error, pickle.UnpicklingError):
            raise CheckpointError(_unpickling_problem(path, file, error)) from None
        raise CheckpointError(_not_a_checkpoint(path, error)) from None
    flat: dict[str, Tensor] = {}
    _flatten(loaded, "", flat)
    if not flat:
        raise CheckpointError(f"{path} holds no tensors (a {type(loaded).__name__})")
    return flat


def _load(file: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            protocol = _pickle_protocol(file)
            if protocol is None or protocol <= 2 or "Unsupported operand" not in str(error):
                raise
        # A zip checkpoint pickled with protocol 4/5: torch's weights-only unpickler, fed the
        # same instructions in the protocol-2 form it parses. pickle_module replaces only the
        # unpickler class torch uses; weights_only=False here runs *that* class, which is the
        # weights-only one (see _Protocol2Unpickler).
        return torch.load(
            file, map_location="cpu", weights_only=False, pickle_module=_WEIGHTS_ONLY_PROTOCOL_2
        )


def _pickle_protocol(file: Path) -> int | None:
    """The pickle protocol of a zip checkpoint's ``data.pkl``, or None for other files.

    Protocols 0 and 1 write no PROTO opcode: 1 is told from 0 by its binary opcodes (read with
    pickletools, which executes nothing)."""
    if not zipfile.is_zipfile(file):
        return None
    with zipfile.ZipFile(file) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not names:
            return None
        with archive.open(names[0]) as data:
            stream = data.read()
    if stream[:1] == pickle.PROTO:
        return stream[1] if len(stream) > 1 else None
    try:
        return max((op.proto for op, _, _ in pickletools.genops(stream)), default=0)
    except Exception:  # noqa: BLE001 - not a pickle at all: no protocol to report
        return None


def _as_protocol_2(data: bytes) -> bytes:
    """The instructions of a protocol 4/5 pickle in the protocol-2 opcodes torch's weights-only
    unpickler reads: FRAME dropped, MEMOIZE as explicit BINPUTs, SHORT_BINUNICODE as
    BINUNICODE, STACK_GLOBAL as GLOBAL. Parsed with pickletools, which executes nothing; an
    opcode with no protocol-2 form is kept, and the weights-only unpickler refuses it."""
    out: list[tuple[str, Any]] = []  # ("str", text) or ("raw", bytes)
    strings: dict[int, str] = {}  # memo slots holding strings: re-emitted, never BINGET
    memo: set[int] = set()
    ops = list(pickletools.genops(data))
    for index, (op, arg, pos) in enumerate(ops):
        end = ops[index + 1][2] if index + 1 < len(ops) else len(data)
        raw = data[pos:end]  # type: ignore[index]
        if op.name == "FRAME":
            continue
        if op.name == "PROTO":
            out.append(("raw", pickle.PROTO + b"\x02"))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"):
            out.append(("str", arg))
        elif op.name in ("MEMOIZE", "BINPUT", "LONG_BINPUT"):
            slot = len(memo) if op.name == "MEMOIZE" else int(arg)  # type: ignore[arg-type]
            memo.add(slot)
            if out and out[-1][0] == "str":
                strings[slot] = out[-1][1]
            else:
                out.append(("raw", pickle.LONG_BINPUT + struct.pack("<I", slot)))
        elif op.name in ("BINGET", "LONG_BINGET") and arg in strings:
            out.append(("str", strings[arg]))
        elif op.name == "STACK_GLOBAL":
            if len(out) < 2 or out[-1][0] != "str" or out[-2][0] != "str":
                raise pickle.UnpicklingError("STACK_GLOBAL without its two names before it")
            name, module = out.pop()[1], out.pop()[1]
            if "\n" in module or "\n" in name:  # GLOBAL reads lines: refuse, never re-split
                raise pickle.UnpicklingError("a global name with a line break")
            out.append(("raw", pickle.GLOBAL + f"{module}\n{name}\n".encode()))
        else:
            out.append(("raw", raw))
    chunks = []
    for kind, value in out:
        if kind == "str":
            encoded = value.encode("utf-8", "surrogatepass")
            chunks.append(pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded)
        else:
            chunks.append(value)
    return b"".join(chunks)


class _Protocol2Unpickler(torch._weights_only_unpickler.Unpickler):
    """torch's weights-only unpickler reading a protocol 4/5 stream rewritten as protocol 2."""

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(io.BytesIO(_as_protocol_2(file.read())), **kwargs)


def _refuse_legacy(*args: Any, **kwargs: Any) -> Any:
    raise pickle.UnpicklingError("only zip checkpoints are rewritten")


# torch.load(pickle_module=...) uses ``.Unpickler`` for zip files and ``.load`` for the legacy
# format (refused: only zip checkpoints take this path).
_WEIGHTS_ONLY_PROTOCOL_2 = types.SimpleNamespace(
    Unpickler=_Protocol2Unpickler, load=_refuse_legacy, __name__="handlstm_weights_only_p2"
)


def _unpickling_problem(path: str, file: Path, error: BaseException) -> str:
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if unsafe:
        return (
            f"{path} needs torch.load(weights_only=False): it stores the Python object "
            f"{unsafe.group(1)}, and unpickling it could run arbitrary code, so handlstm "
            f"does not load it. {_RESAVE}"
        )
    protocol = _pickle_protocol(file)
    if protocol is not None and protocol < 2:
        return (
            f"{path} is a torch checkpoint pickled with protocol {protocol} "
            f"(torch.save(..., pickle_protocol={protocol})), whose opcodes torch's weights-only "
            "unpickler does not read; handlstm does not unpickle it otherwise. "
            f"{_RESAVE}"
        )
    if protocol not in (None, 2):
        return (
            f"{path} is a torch checkpoint pickled with protocol {protocol} "
            f"(torch.save(..., pickle_protocol={protocol})), and it holds something torch's "
            "weights-only unpickler cannot read even rewritten as protocol 2; handlstm does "
            f"not unpickle it otherwise. {_RESAVE}"
        )
    operand = re.search(r"Unsupported operand (\d+)", str(error))
    if operand and not zipfile.is_zipfile(file):
        return (
            f"{path} is not a torch checkpoint torch.load(weights_only=True) can read: it is a "
            f"plain pickle (or a legacy non-zip torch file) using pickle opcode "
            f"{operand.group(1)}, which torch's weights-only unpickler does not read, and "
            f"handlstm does not unpickle it otherwise. {_RESAVE}"
        )
    return (
        _not_a_checkpoint(path, error) + " If it is a pickle that only "
        "torch.load(weights_only=False) would read, handlstm does not load it: unpickling "
        "can run arbitrary code."
    )


_KNOWN_READ_ERRORS = (
    ("failed finding central directory", "its zip archive is incomplete: truncated or corrupted"),
    ("invalid header or archive is corrupted", "its zip archive is corrupted"),
    ("Ran out of input", "it is empty"),
    ("EOF", "it ends too early: truncated"),
)


def _not_a_checkpoint(path: str, error: BaseException) -> str:
    """One whole sentence on why torch could not read ``path`` (never cut mid-sentence)."""
    text = str(error)
    for needle, meaning in _KNOWN_READ_ERRORS:
        if needle in text or needle == type(error).__name__:
            return f"{path} is not a torch checkpoint torch can read: {meaning}."
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "documentation" not in line and "file an issue" not in line]
    reason = lines[-1] if lines else ""
    sentence = reason.split(". ")[0].rstrip(".")
    return (
        f"{path} is not a torch checkpoint "
        f"(torch.load could not read it: {type(error).__name__}: {sentence})."
    )


def _flatten(value: Any, prefix: str, out: dict[str, Tensor]) -> None:
    if isinstance(value, Tensor):
        out[prefix] = value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}.{index}" if prefix else str(index), out)


# -- finding LSTMs ------------------------------------------------------------------------------
