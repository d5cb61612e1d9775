"""The variant options of HandLSTM and HandLSTMCell: one frozen object, its validation and repr.

Every option's default is its neutral value, and with every option neutral the modules are
exactly nn.LSTM / nn.LSTMCell. The options travel down to the cell math as this one object (and
the per-call tensors built from it in ``handlstm.core.variants``), never as loose flags.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

Activation = Callable[[Tensor], Tensor]

#: The small constant added to the variance inside every layer norm (nn.LayerNorm's default).
LAYER_NORM_EPS = 1e-5

_PROBABILITIES = ("input_dropout", "recurrent_dropout", "weight_drop", "zoneout_h", "zoneout_c")
_CLIPS = ("cell_clip", "proj_clip")
_FLAGS = ("layer_norm", "peepholes")
_ACTIVATIONS = ("gate_activation", "cell_activation")
#: Options that only change how parameters are initialised, not what forward computes.
INIT_ONLY = ("forget_bias",)
#: Options that need a whole sequence (HandLSTMCell does not take them).
SEQUENCE_ONLY = ("input_dropout", "recurrent_dropout", "weight_drop", "proj_clip")


@dataclass(frozen=True)
class LSTMOptions:
    """Variant options; every default reproduces nn.LSTM exactly.

    Attributes:
        layer_norm: normalise ``W_ih x`` and ``W_hh h`` separately (learned gains; ``b_ih`` and
            ``b_hh`` act as the norms' shifts) and ``c_t`` before its activation in ``h_t``.
        peepholes: diagonal weights from ``c_{t-1}`` into i and f and from ``c_t`` into o.
        input_dropout: variational dropout on each layer's input, one mask per sequence.
        recurrent_dropout: variational dropout on ``h_{t-1}`` fed to ``W_hh``, one mask per
            sequence, layer and direction.
        weight_drop: DropConnect on ``weight_hh``, one mask per forward call.
        zoneout_h, zoneout_c: probability of keeping the previous h (c) per unit and step.
        forget_bias: if not None, ``reset_parameters`` sets the forget block of ``b_ih`` to it
            and that of ``b_hh`` to 0 (init only).
        gate_activation: for i, f, o (default ``torch.sigmoid``).
        cell_activation: for g and for c in ``h_t`` (default ``torch.tanh``).
        cell_clip: clip ``c_t`` to ``[-cell_clip, cell_clip]``; None: no clipping.
        proj_clip: clip the projected ``h_t`` to ``[-proj_clip, proj_clip]`` (needs proj_size).
    """

    layer_norm: bool = False
    peepholes: bool = False
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    weight_drop: float = 0.0
    zoneout_h: float = 0.0
    zoneout_c: float = 0.0
    forget_bias: float | None = None
    gate_activation: Activation = torch.sigmoid
    cell_activation: Activation = torch.tanh
    cell_clip: float | None = None
    proj_clip: float | None = None

    @classmethod
    def from_arguments(cls, values: Mapping[str, Any], names: tuple[str, ...]) -> LSTMOptions:
        """Validate the options ``names`` taken from ``values`` (a constructor's ``locals()``)."""
        return cls.build({name: values[name] for name in names}, names)

    @classmethod
    def build(cls, options: dict[str, Any], allowed: tuple[str, ...] | None = None) -> LSTMOptions:
        """Validate keyword options and return the options object.

        Raises:
            TypeError: an unknown option, or a value of the wrong type.
            ValueError: a value outside its valid range.
        """
        names = [f.name for f in fields(cls)] if allowed is None else list(allowed)
        for name in options:
            if name not in names:
                raise TypeError(
                    f"unexpected keyword argument {name!r}; valid variant options: "
                    + ", ".join(names)
                )
        values = {name: _validate(name, value) for name, value in options.items()}
        return cls(**values)

    def check_module(self, bias: bool, proj_size: int = 0) -> None:
        """Refuse options the module's configuration cannot use (ValueError)."""
        if self.forget_bias is not None and not bias:
            raise ValueError(
                f"forget_bias={self.forget_bias!r} needs bias=True (it initialises bias_ih's "
                "forget block); got bias=False"
            )
        if self.proj_clip is not None and proj_size <= 0:
            raise ValueError(
                f"proj_clip={self.proj_clip!r} clips the projection and needs proj_size > 0, "
                f"got proj_size={proj_size}"
            )

    def non_neutral(self, include_init: bool = False) -> dict[str, Any]:
        """Options not at their neutral value; init-only ones only with ``include_init``."""
        found = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in INIT_ONLY and not include_init:
                continue
            if value is not f.default and value != f.default:
                found[f.name] = value
        return found

    @property
    def is_default(self) -> bool:
        """True when forward computes exactly nn.LSTM (init-only options ignored).

        Worked out once per object (read at every forward call; the object is frozen)."""
        known = self.__dict__.get("_is_default")
        if known is None:
            known = not self.non_neutral()
            object.__setattr__(self, "_is_default", known)  # not a field: eq, hash, repr ignore it
        return known  # type: ignore[no-any-return]

    def describe(self) -> str:
        """``name=value`` for every non-neutral option, comma separated (for ``extra_repr``)."""
        parts = []
        for name, value in self.non_neutral(include_init=True).items():
            shown = _callable_name(value) if name in _ACTIVATIONS else repr(value)
            parts.append(f"{name}={shown}")
        return ", ".join(parts)


def fields_of(cls: type) -> tuple[str, ...]:
    """The option names of an options dataclass, in declaration order."""
    return tuple(f.name for f in fields(cls))


#: The options at their neutral values (the constructors' keyword defaults, checked by a test).
NEUTRAL = LSTMOptions()
#: HandLSTM's keyword-only options, in declaration order.
LSTM_OPTIONS = fields_of(LSTMOptions)
#: HandLSTMCell's: the options a single step can take (the others need a sequence).
CELL_OPTIONS = tuple(name for name in LSTM_OPTIONS if name not in SEQUENCE_ONLY)

#: Why HandLSTMCell does not take the sequence-only options.
_NOT_FOR_A_CELL = {
    "input_dropout": "input_dropout keeps one mask per sequence, which a single step cannot",
    "recurrent_dropout": "recurrent_dropout keeps one mask per sequence, which a single step "
    "cannot",
    "weight_drop": "weight_drop keeps one dropped weight_hh per sequence, which a single step "
    "cannot",
    "proj_clip": "proj_clip clips a projection, which nn.LSTMCell does not have",
}


def refuse_unknown_options(
    owner: str, unknown: Mapping[str, Any], options: tuple[str, ...]
) -> None:
    """Raise TypeError for keyword arguments a constructor does not take (its ``**unknown``).

    The constructors' options are real keyword-only parameters (IDEs complete them); the
    catch-all ``**not_an_option: NoReturn`` that collects anything else makes a type checker
    reject a misspelt option and lets this message list the valid ones, suggest the nearest,
    and say why a cell does not take a sequence-only option.
    """
    if unknown:
        raise TypeError(_unknown_message(owner, next(iter(unknown)), options))


def _unknown_message(owner: str, name: str, options: tuple[str, ...]) -> str:
    message = f"{owner}() got an unexpected keyword argument {name!r}"
    if name in SEQUENCE_ONLY:
        reason = _NOT_FOR_A_CELL[name]
        return f"{message}: {reason}; use HandLSTM. Valid variant options: " + ", ".join(options)
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{message}{hint}; valid variant options: " + ", ".join(options)


def _callable_name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", None)
    if name is None:
        return repr(fn)
    return f"{module}.{name}" if module else name


def _validate(name: str, value: Any) -> Any:
    if name in _FLAGS:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
        return value
    if name in _ACTIVATIONS:
        if not callable(value):
            raise TypeError(
                f"{name} must be a callable taking and returning a Tensor (e.g. torch.sigmoid), "
                f"got {type(value).__name__} {value!r}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) and value is not None:
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if name in _PROBABILITIES:
        if value is None or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        return float(value)
    if value is None:
        return None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if name in _CLIPS and value <= 0:
        raise ValueError(f"{name} must be None (no clipping) or a number > 0, got {value!r}")
    return float(value)
