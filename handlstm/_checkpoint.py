"""Reading checkpoints safely and finding the LSTMs in them (for ``handlstm check PATH``).

* :func:`load_checkpoint` reads a file with ``torch.load(weights_only=True)`` only. A zip
  checkpoint pickled with protocol 4 or 5 (``torch.save(..., pickle_protocol=4)``, as flair's
  ``Model.save`` writes), which torch's weights-only unpickler cannot parse, is rewritten into
  the protocol-2 instructions that unpickler reads (without executing anything) and then read
  by that same unpickler, so it gets exactly the same protection.
* :func:`find_lstm_groups` finds every nn.LSTM / nn.LSTMCell parameter group by torch's key
  pattern, infers its configuration from the shapes, recognises HandLSTM variant parameters
  (``ln_*``, peepholes) and lists what is wrong with a group (missing or unexpected keys, shapes
  that disagree, NaN or inf values) as file problems.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "LSTMGroup", "find_lstm_groups", "load_checkpoint"]


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
            if _pickle_protocol(file) in (None, 2) or "Unsupported operand" not in str(error):
                raise
        # A zip checkpoint pickled with protocol 4/5: torch's weights-only unpickler, fed the
        # same instructions in the protocol-2 form it parses. pickle_module replaces only the
        # unpickler class torch uses; weights_only=False here runs *that* class, which is the
        # weights-only one (see _Protocol2Unpickler).
        return torch.load(
            file, map_location="cpu", weights_only=False, pickle_module=_WEIGHTS_ONLY_PROTOCOL_2
        )


def _pickle_protocol(file: Path) -> int | None:
    """The pickle protocol of a zip checkpoint's ``data.pkl``, or None for other files."""
    if not zipfile.is_zipfile(file):
        return None
    with zipfile.ZipFile(file) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not names:
            return None
        with archive.open(names[0]) as data:
            head = data.read(2)
    return head[1] if len(head) == 2 and head[0] == pickle.PROTO[0] else None


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

_PLAIN = "weight_ih|weight_hh|bias_ih|bias_hh|weight_hr"
# HandLSTM's variant parameters (handlstm._variants.variant_param_shapes), per option.
_VARIANT_KINDS = {
    "ln_weight_ih": "layer_norm",
    "ln_weight_hh": "layer_norm",
    "ln_weight_c": "layer_norm",
    "ln_bias_c": "layer_norm",
    "weight_ci": "peepholes",
    "weight_cf": "peepholes",
    "weight_co": "peepholes",
}
_VARIANT = "|".join(_VARIANT_KINDS)
_LSTM_KEY = re.compile(
    rf"^(?P<prefix>(?:.*\.)?)(?P<kind>{_VARIANT}|{_PLAIN})_l(?P<layer>\d+)(?P<reverse>_reverse)?$"
)
_CELL_KEY = re.compile(
    rf"^(?P<prefix>(?:.*\.)?)(?P<kind>{_VARIANT}|weight_ih|weight_hh|bias_ih|bias_hh)$"
)


@dataclass
class LSTMGroup:
    """The parameters of one ``nn.LSTM`` (``kind="lstm"``) or ``nn.LSTMCell`` (``"cell"``) found
    in a flat state dict, with the configuration their shapes imply.

    ``variant`` names the HandLSTM variant options whose parameters are present (e.g.
    ``{"layer_norm": True}``); ``problems`` lists what is wrong with the group as a file
    (missing or unexpected keys, shapes, NaN or inf), empty when nothing is.
    """

    prefix: str
    kind: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    dtype: torch.dtype
    variant: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        config = ", ".join(f"{k}={v}" for k, v in self.config.items())
        name = "LSTM" if self.kind == "lstm" else "LSTMCell"
        text = f"{self.prefix or '<root>'}: {name}({config}) [{str(self.dtype)[6:]}]"
        if self.variant:
            text += " HandLSTM variant: " + ", ".join(f"{k}={v}" for k, v in self.variant.items())
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "kind": self.kind,
            "config": self.config,
            "dtype": str(self.dtype).removeprefix("torch."),
            "keys": list(self.state_dict),
            "variant": self.variant,
            "problems": self.problems,
        }


def _lstm_group_config(params: dict[str, Tensor]) -> dict[str, Any] | None:
    """nn.LSTM arguments implied by one group's shapes, or None if it is not an LSTM's."""
    weight_hh, weight_ih = params.get("weight_hh_l0"), params.get("weight_ih_l0")
    if weight_hh is None or weight_ih is None or weight_hh.dim() != 2 or weight_ih.dim() != 2:
        return None
    weight_hr = params.get("weight_hr_l0")
    if weight_hr is not None and weight_hr.dim() != 2:
        return None
    hidden_size = weight_hr.shape[1] if weight_hr is not None else weight_hh.shape[1]
    if weight_hh.shape[0] != 4 * hidden_size:  # a GRU (3 gates) or a plain RNN (1)
        return None
    layers = {int(_LSTM_KEY.match(k).group("layer")) for k in params}  # type: ignore[union-attr]
    return {
        "input_size": weight_ih.shape[1],
        "hidden_size": hidden_size,
        "num_layers": max(layers) + 1,
        "bias": any(k.startswith(("bias_ih_l", "bias_hh_l")) for k in params),
        "bidirectional": any(k.endswith("_reverse") for k in params),
        "proj_size": weight_hr.shape[0] if weight_hr is not None else 0,
    }


def _cell_group_config(params: dict[str, Tensor]) -> dict[str, Any] | None:
    weight_hh, weight_ih = params.get("weight_hh"), params.get("weight_ih")
    if weight_hh is None or weight_ih is None or weight_hh.dim() != 2 or weight_ih.dim() != 2:
        return None
    if weight_hh.shape[0] != 4 * weight_hh.shape[1]:
        return None
    return {
        "input_size": weight_ih.shape[1],
        "hidden_size": weight_hh.shape[1],
        "bias": any(k in params for k in ("bias_ih", "bias_hh")),
    }


def _variant_of(params: dict[str, Tensor]) -> dict[str, Any]:
    options = {
        _VARIANT_KINDS[kind]: True
        for key in params
        for kind in _VARIANT_KINDS
        if key == kind or key.startswith(kind + "_l")
    }
    return dict(sorted(options.items()))


def _problems(kind: str, config: dict[str, Any], params: dict[str, Tensor]) -> list[str]:
    """What keeps this group from being the state dict of its nn.LSTM or nn.LSTMCell."""
    cls = nn.LSTM if kind == "lstm" else nn.LSTMCell
    try:
        expected = dict(cls(**config, device="meta").named_parameters())
    except (ValueError, TypeError, RuntimeError) as error:
        return [f"its shapes imply an impossible configuration: {error}"]
    plain = {k: v for k, v in params.items() if not _variant_of({k: v})}
    problems = [f"missing {name}" for name in expected if name not in plain]
    problems += [f"unexpected {name}" for name in plain if name not in expected]
    for name, tensor in plain.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            problems.append(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    for name, tensor in params.items():
        nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
        if nan or inf:
            counts = ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)
            problems.append(f"{name} holds {counts} of {tensor.numel()} values")
    if any(problem.startswith(("missing", "unexpected")) for problem in problems):
        problems.append(f"{cls.__name__}({_short(config)}) has {', '.join(expected)}")
    return problems


def _short(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def find_lstm_groups(state_dict: Mapping[str, Any]) -> list[LSTMGroup]:
    """Every LSTM and LSTMCell parameter group in a flat ``{key: tensor}`` mapping.

    Groups are found by torch's key pattern (``<prefix>weight_ih_l0``, ``...weight_hh_l0_reverse``,
    ``<prefix>weight_ih`` for cells, and HandLSTM's variant parameters beside them) and kept
    when their shapes are an LSTM's (4 gates), so GRUs and plain RNNs are ignored.
    ``batch_first`` and ``dropout`` cannot be seen in weights and are left at their defaults.
    Groups come in key order, each with its ``variant`` options and file ``problems``.
    """
    found: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        match = _LSTM_KEY.match(key) or _CELL_KEY.match(key)
        if match is None:
            continue
        kind = "lstm" if match.re is _LSTM_KEY else "cell"
        prefix = match.group("prefix")
        found.setdefault((prefix, kind), {})[key[len(prefix) :]] = value
    groups = []
    for (prefix, kind), params in found.items():
        config = _lstm_group_config(params) if kind == "lstm" else _cell_group_config(params)
        if config is not None:
            dtype = next(iter(params.values())).dtype
            group = LSTMGroup(prefix.rstrip("."), kind, config, params, dtype)
            group.variant = _variant_of(params)
            group.problems = _problems(kind, config, params)
            groups.append(group)
    return groups
