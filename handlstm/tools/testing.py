"""Property-based testing toolkit for recurrent modules: hypothesis strategies and a comparator.

Strategies draw an LSTM configuration together with inputs that fit it, so a test reads::

    from hypothesis import given
    from handlstm.testing import assert_lstm_close, lstm_cases

    @given(lstm_cases())
    def test_mine_matches_torch(case):
        expected = case.make(torch.nn.LSTM)
        actual = case.make(MyLSTM, state_dict=expected.state_dict())
        assert_lstm_close(actual, expected, case.input, case.hx)

An implementation whose constructor or parameters are named differently says how
(``case.make(MyLSTM, state_dict, arguments={"hidden_size": "units", "proj_size": None},
parameter_names={"weight_ih_l0": "w_x", ...})``, and the same ``parameter_names`` to
``assert_lstm_close``); one that is not an ``nn.Module`` (a function of the weights, an
exported program, an onnxruntime session) is wrapped in ``FunctionLSTM``.

Needs hypothesis (``pip install hypothesis``, or ``pip install "handlstm[test]"``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..modules.conversion import LSTM_KEYS
from .compare import (
    INPUT_KINDS,
    Difference,
    ParameterNames,
    assert_lstm_close,
    compare_modules,
    make_hx,
    make_input,
    parameter_name,
    tolerances,
)
from .function import FunctionLSTM

try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "handlstm.testing needs hypothesis, which is not installed. "
        'Install it with: pip install hypothesis  (or: pip install "handlstm[test]")'
    ) from error

__all__ = [
    "Difference",
    "FunctionLSTM",
    "ParameterNames",
    "LSTMCase",
    "CellCase",
    "INPUT_KINDS",
    "assert_lstm_close",
    "compare_modules",
    "LSTM_FLAGS",
    "lstm_configs",
    "lstm_cases",
    "cell_cases",
    "make_hx",
    "make_input",
    "tolerances",
]


def _defaults(cls: Callable[..., Any]) -> dict[str, Any]:
    """Keyword defaults of ``cls``'s constructor (nn.LSTM's live on RNNBase)."""
    target = nn.RNNBase if cls is nn.LSTM else cls
    return {
        name: p.default
        for name, p in inspect.signature(target).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _build(
    cls: Callable[..., nn.Module],
    oracle: type[nn.Module],
    config: dict[str, Any],
    dtype: torch.dtype,
    state_dict: Mapping[str, Tensor] | None,
    arguments: Mapping[str, str | None] | None,
    parameter_names: ParameterNames | None,
    extra: dict[str, Any],
) -> nn.Module:
    """``cls(**config, dtype=dtype, **extra)`` with ``arguments`` renamed or left out, cast to
    ``dtype`` when ``dtype`` is left out, loading ``state_dict`` (keys renamed) if given."""
    kwargs: dict[str, Any] = {**config, "dtype": dtype}
    defaults = _defaults(oracle)
    cast = False
    for name, theirs in (arguments or {}).items():
        if name not in kwargs:
            raise ValueError(
                f"arguments names {name!r}, which is not one of the case's arguments "
                f"{sorted(kwargs)}"
            )
        value = kwargs.pop(name)
        if theirs is not None:
            kwargs[theirs] = value
        elif name == "dtype":
            cast = True
        elif name not in defaults or value != defaults[name]:
            pin = f"; pin it: fixed={{{name!r}: {defaults[name]!r}}}" if name in defaults else ""
            raise ValueError(
                f"{_name(cls)} does not take {name!r} (arguments={{{name!r}: None}}), but this "
                f"case has {name}={value!r}{pin}"
            )
    module = cls(**kwargs, **extra)
    if cast:
        module = module.to(dtype)
    if state_dict is not None:
        renamed = {parameter_name(parameter_names, k): v for k, v in state_dict.items()}
        module.load_state_dict(renamed)
    return module


def _name(cls: Any) -> str:
    return getattr(cls, "__qualname__", None) or repr(cls)


@dataclass
class LSTMCase:
    """One drawn test case: an nn.LSTM configuration and an input (and maybe hx) that fit it."""

    config: dict[str, Any]
    input: Tensor | PackedSequence
    hx: tuple[Tensor, Tensor] | None
    kind: str
    dtype: torch.dtype
    lengths: list[int] = field(default_factory=list)

    def make(
        self,
        cls: Callable[..., nn.Module] = nn.LSTM,
        state_dict: Mapping[str, Tensor] | None = None,
        *,
        arguments: Mapping[str, str | None] | None = None,
        parameter_names: ParameterNames | None = None,
        **extra: Any,
    ) -> nn.Module:
        """Build ``cls`` for this case: ``cls(**config, dtype=dtype, **extra)``.

        Args:
            cls: the class (or any factory returning a module) taking nn.LSTM's keyword
                arguments; the default builds the oracle itself.
            state_dict: weights to load, under nn.LSTM's names (e.g. the oracle's
                ``state_dict()``).
            arguments: for a constructor that differs from nn.LSTM's: maps nn.LSTM's
                argument names (and ``dtype``) to ``cls``'s, ``{"hidden_size": "units"}``;
                None leaves one out, ``{"proj_size": None}``, which is allowed when the case
                holds nn.LSTM's default for it (pin it with ``fixed=``) and, for ``dtype``,
                casts the built module with ``.to(dtype)``.
            parameter_names: where ``cls`` names its parameters differently: nn.LSTM's name
                to ``cls``'s (a mapping, names left out being the same, or a function); the
                ``state_dict`` keys are renamed so. Pass the same to
                ``assert_lstm_close``.
            **extra: more keyword arguments for ``cls``.

        Raises:
            ValueError: an ``arguments`` entry the case cannot honour.
        """
        return _build(
            cls, nn.LSTM, self.config, self.dtype, state_dict, arguments, parameter_names, extra
        )


@dataclass
class CellCase:
    """An LSTMCell configuration and an input (and maybe hx) that fit it."""

    config: dict[str, Any]
    input: Tensor
    hx: tuple[Tensor, Tensor] | None
    batched: bool
    dtype: torch.dtype

    def make(
        self,
        cls: Callable[..., nn.Module] = nn.LSTMCell,
        state_dict: Mapping[str, Tensor] | None = None,
        *,
        arguments: Mapping[str, str | None] | None = None,
        parameter_names: ParameterNames | None = None,
        **extra: Any,
    ) -> nn.Module:
        """Build ``cls`` for this case, as ``LSTMCase.make`` does with nn.LSTMCell's
        arguments (``input_size``, ``hidden_size``, ``bias``) and defaults."""
        return _build(
            cls,
            nn.LSTMCell,
            self.config,
            self.dtype,
            state_dict,
            arguments,
            parameter_names,
            extra,
        )


#: nn.LSTM's constructor arguments that strategies draw (and ``fixed=`` may pin).
LSTM_FLAGS = LSTM_KEYS


def _check_fixed(fixed: Mapping[str, Any] | None, allowed: Sequence[str]) -> dict[str, Any]:
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(allowed))
    if unknown:
        raise ValueError(f"fixed got unknown keys {unknown}; expected some of {list(allowed)}")
    return fixed


@st.composite
def lstm_configs(
    draw: st.DrawFn,
    max_size: int = 9,
    max_layers: int = 3,
    dropout: bool = False,
    fixed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """nn.LSTM constructor keyword arguments: every flag, sizes 1..``max_size``.

    ``proj_size`` is drawn below ``hidden_size`` (0 when ``hidden_size`` is 1). With
    ``dropout`` a dropout probability is drawn too (use eval mode to compare such modules).
    ``fixed`` pins arguments instead of drawing them, e.g. ``{"bidirectional": False,
    "proj_size": 0}`` for a module that supports neither.
    """
    pinned = _check_fixed(fixed, LSTM_FLAGS)

    def pick(name: str, strategy: st.SearchStrategy[Any]) -> Any:
        return pinned[name] if name in pinned else draw(strategy)

    hidden_size = pick("hidden_size", st.integers(1, max_size))
    num_layers = pick("num_layers", st.integers(1, max_layers))
    drop = st.sampled_from([0.0, 0.3, 1.0]) if dropout and num_layers > 1 else st.just(0.0)
    return {
        "input_size": pick("input_size", st.integers(1, max_size)),
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "bias": pick("bias", st.booleans()),
        "batch_first": pick("batch_first", st.booleans()),
        "dropout": pick("dropout", drop),
        "bidirectional": pick("bidirectional", st.booleans()),
        "proj_size": pick("proj_size", st.integers(0, hidden_size - 1)),
    }


@st.composite
def lstm_cases(
    draw: st.DrawFn,
    dtypes: Sequence[torch.dtype] = (torch.float64,),
    kinds: Sequence[str] = INPUT_KINDS,
    max_size: int = 9,
    max_layers: int = 3,
    max_len: int = 7,
    max_batch: int = 5,
    dropout: bool = False,
    fixed: Mapping[str, Any] | None = None,
    with_hx: bool | None = None,
) -> LSTMCase:
    """A configuration from ``lstm_configs`` with a matching input and optional hx.

    Args:
        dtypes: dtypes to draw the input, hx and (via ``LSTMCase.make``) the module in.
        kinds: input kinds to draw from ``INPUT_KINDS`` (dense, unbatched, packed_sorted,
            packed_unsorted).
        max_size: the largest ``input_size`` and ``hidden_size`` drawn.
        max_layers: the most layers drawn.
        max_len: the longest sequence drawn.
        max_batch: the largest batch drawn.
        dropout: also draw an inter-layer dropout probability.
        fixed: constructor arguments to pin instead of drawing (see ``lstm_configs``).
        with_hx: always (True) or never (False) pass ``(h_0, c_0)``; drawn when None.
    """
    config = draw(
        lstm_configs(max_size=max_size, max_layers=max_layers, dropout=dropout, fixed=fixed)
    )
    kind = draw(st.sampled_from(list(kinds)))
    dtype = draw(st.sampled_from(list(dtypes)))
    batch = 1 if kind == "unbatched" else draw(st.integers(1, max_batch))
    if kind.startswith("packed"):
        lengths = draw(st.lists(st.integers(1, max_len), min_size=batch, max_size=batch))
    else:
        lengths = [draw(st.integers(1, max_len))] * batch
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    input = make_input(config, kind, lengths, dtype, generator)
    hx = None
    if draw(st.booleans()) if with_hx is None else with_hx:
        hx = make_hx(config, None if kind == "unbatched" else batch, dtype, generator)
    return LSTMCase(config, input, hx, kind, dtype, list(lengths))


@st.composite
def cell_cases(
    draw: st.DrawFn,
    dtypes: Sequence[torch.dtype] = (torch.float64,),
    max_size: int = 9,
    max_batch: int = 5,
    fixed: Mapping[str, Any] | None = None,
) -> CellCase:
    """An nn.LSTMCell configuration with a matching batched or unbatched input and optional hx.

    ``fixed`` pins any of ``input_size``, ``hidden_size``, ``bias`` instead of drawing it.
    """
    pinned = _check_fixed(fixed, ("input_size", "hidden_size", "bias"))
    config = {
        "input_size": draw(st.integers(1, max_size)),
        "hidden_size": draw(st.integers(1, max_size)),
        "bias": draw(st.booleans()),
    }
    config.update(pinned)
    dtype = draw(st.sampled_from(list(dtypes)))
    batched = draw(st.booleans())
    batch = draw(st.integers(1, max_batch)) if batched else None
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    lead = (batch,) if batched else ()
    x = torch.randn(*lead, config["input_size"], generator=generator, dtype=torch.float64).to(dtype)
    hx = None
    if draw(st.booleans()):
        hx = tuple(
            torch.randn(*lead, config["hidden_size"], generator=generator, dtype=torch.float64).to(
                dtype
            )
            for _ in range(2)
        )
    return CellCase(config, x, hx, batched, dtype)  # type: ignore[arg-type]
