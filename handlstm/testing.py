"""Property-based testing toolkit for recurrent modules: hypothesis strategies and a comparator.

Strategies draw an LSTM configuration together with inputs that fit it, so a test reads::

    from hypothesis import given
    from handlstm.testing import assert_lstm_close, lstm_cases

    @given(lstm_cases())
    def test_mine_matches_torch(case):
        expected = case.make(torch.nn.LSTM)
        actual = case.make(MyLSTM, state_dict=expected.state_dict())
        assert_lstm_close(actual, expected, case.input, case.hx)

Needs hypothesis (``pip install hypothesis``, or ``pip install "handlstm[test]"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ._compare import (
    INPUT_KINDS,
    Difference,
    assert_lstm_close,
    compare_modules,
    make_hx,
    make_input,
    tolerances,
)
from .convert import LSTM_KEYS

try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "handlstm.testing needs hypothesis, which is not installed. "
        'Install it with: pip install hypothesis  (or: pip install "handlstm[test]")'
    ) from error

__all__ = [
    "Difference",
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


def _build(
    cls: Callable[..., nn.Module],
    config: dict[str, Any],
    dtype: torch.dtype,
    state_dict: dict[str, Tensor] | None,
    extra: dict[str, Any],
) -> nn.Module:
    """``cls(**config, **extra)`` in ``dtype``, loading ``state_dict`` if given."""
    module = cls(**config, dtype=dtype, **extra)
    if state_dict is not None:
        module.load_state_dict(state_dict)
    return module


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
        state_dict: dict[str, Tensor] | None = None,
        **extra: Any,
    ) -> nn.Module:
        """Build ``cls(**config)`` in this case's dtype, loading ``state_dict`` if given."""
        return _build(cls, self.config, self.dtype, state_dict, extra)


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
        state_dict: dict[str, Tensor] | None = None,
        **extra: Any,
    ) -> nn.Module:
        """Build ``cls(**config)`` in this case's dtype, loading ``state_dict`` if given."""
        return _build(cls, self.config, self.dtype, state_dict, extra)


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
    """A configuration from :func:`lstm_configs` with a matching input and optional hx.

    Args:
        dtypes: dtypes to draw the input, hx and (via :meth:`LSTMCase.make`) the module in.
        kinds: input kinds to draw from :data:`INPUT_KINDS` (dense, unbatched, packed_sorted,
            packed_unsorted).
        max_size, max_layers, max_len, max_batch: upper bounds of the drawn sizes.
        dropout: also draw an inter-layer dropout probability.
        fixed: constructor arguments to pin instead of drawing (see :func:`lstm_configs`).
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
