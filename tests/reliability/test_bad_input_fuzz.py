"""Bad and edge input: HandLSTM and HandLSTMCell react exactly as nn.LSTM and nn.LSTMCell do.

For every drawn case, torch's own module runs first. If it raises, ours must raise an instance of
the same exception class; if it returns, ours must return outputs equal to torch's (NaN in the
same places, equal infinities). Never a different exception, a hang, or a crash.

A few malformed PackedSequences make nn.LSTM return silently (it never checks them); HandLSTM
raises for those instead, the class torch raises for the nearest check it does make. They are
listed in ``DELIBERATE`` and documented in docs/guarantees.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

try:  # numpy is optional: torch runs without it, and so does handlstm
    import numpy as np
except ImportError:
    np = None
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from handlstm import HandLSTM, HandLSTMCell
from handlstm.testing import lstm_configs
from handlstm.tools.compare import compare_results

F64 = torch.float64
MISSING = object()  # "call without hx"

# Mutation name -> the class HandLSTM raises where nn.LSTM silently returns.
DELIBERATE: dict[str, type[BaseException]] = {
    "packed:bs_sum_too_small": RuntimeError,  # torch ignores the data rows past the sum
    "packed:bs_increasing": RuntimeError,  # torch broadcasts the smaller state over the batch
    "packed:bs_leading_zero": RuntimeError,  # torch starts from states of batch 0
    "packed:indices_out_of_range": RuntimeError,  # torch reorders with invalid indices
    "packed:bs_rank": RuntimeError,  # a 2-D batch_sizes of one column, read as 1-D
    "packed:data_rank": RuntimeError,  # 1-D data that happens to fit torch's GEMM
    "packed:indices_float": RuntimeError,  # without hx torch never reads sorted_indices
    "packed:indices_duplicate": RuntimeError,  # torch feeds one sequence's hx to two
    "packed:indices_wrong_length": RuntimeError,  # torch returns h_n of the wrong batch
    "packed:indices_inconsistent": RuntimeError,  # unsorted is not sorted's inverse
    "packed:hx_len_3_with_indices": RuntimeError,  # torch drops hx[2] when it permutes hx
    "packed:hx_stacked_tensor_with_indices": TypeError,  # torch permutes hx[0], hx[1]
}

# nn.LSTM itself crashes the interpreter (SIGSEGV, torch 2.13 CPU) on some of these: packed input
# with h_0 or c_0 of the wrong shape or rank, e.g. a bidirectional LSTM given h_0 with 3 layer
# states and c_0 with 2. There the oracle is not run: HandLSTM must raise the class torch raises
# for the same mistake when it does not crash (RuntimeError for a shape; IndexError for a state
# of fewer than 3 dimensions, RuntimeError for more).
# nn.LSTMCell crashes (SIGSEGV or abort) on unbatched input (H_in,) with 2-D states (1, H) when
# H == 1; HandLSTMCell raises the RuntimeError torch raises for other H.
TORCH_CRASHES = (
    "packed:hx_shape",
    "packed:hx_swapped",
    "packed:hx_rank",
    "cell-unbatched:hx_rank",
)


def expected_without_torch(mutation: str, hx: Any) -> type[BaseException]:
    if mutation == "packed:hx_rank" and min(t.dim() for t in hx) < 3:
        return IndexError
    if mutation == "cell-unbatched:hx_rank" and any(t.dim() not in (1, 2) for t in hx):
        return ValueError
    return RuntimeError


def deliberate(mutation: str) -> type[BaseException] | None:
    """The class we raise where torch returns; None where we must return as torch does.

    A tensor on the meta device next to CPU parameters: torch sometimes returns meta tensors
    (outputs without values) instead of raising its device-mismatch RuntimeError.
    """
    if "meta" in mutation:
        return RuntimeError
    return DELIBERATE.get(mutation)


# -- running both sides ---------------------------------------------------------------------


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", call()
        except Exception as error:  # noqa: BLE001 - compared below; anything else propagates
            return "raise", error


def named(result: Any) -> dict[str, Tensor]:
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], tuple):
        output, (h, c) = result
        data = output.data if isinstance(output, PackedSequence) else output
        return {"output": data, "h_n": h, "c_n": c}
    return {"h": result[0], "c": result[1]}


def assert_same_reaction(expected_call, actual_call, mutation: str, hx: Any = None) -> None:
    if mutation in TORCH_CRASHES:
        actual = outcome(actual_call)
        want = expected_without_torch(mutation, hx)
        assert actual[0] == "raise" and isinstance(actual[1], want), (mutation, actual)
        return
    expected = outcome(expected_call)
    actual = outcome(actual_call)
    if expected[0] == "raise":
        want = type(expected[1])
        assert actual[0] == "raise", f"{mutation}: torch raised {want.__name__}: {expected[1]}"
        assert isinstance(actual[1], want), (
            f"{mutation}: torch raised {want.__name__} ({expected[1]}), ours raised "
            f"{type(actual[1]).__name__} ({actual[1]})"
        )
        return
    if deliberate(mutation) is not None:
        assert actual[0] == "raise", f"{mutation}: expected our deliberate error"
        assert isinstance(actual[1], deliberate(mutation)), actual[1]
        return
    assert actual[0] == "ok", f"{mutation}: torch returned, ours raised {actual[1]!r}"
    want, got = named(expected[1]), named(actual[1])
    if any(t.is_meta for t in [*want.values(), *got.values()]):
        assert {k: (t.shape, t.dtype) for k, t in got.items()} == {
            k: (t.shape, t.dtype) for k, t in want.items()
        }
        return
    bad = [d for d in compare_results(got, want, 1e-10, 1e-10) if not d.ok]
    assert not bad, f"{mutation}: " + "; ".join(d.describe() for d in bad)
    for key in want:
        assert got[key].dtype == want[key].dtype, f"{mutation}: {key} dtype"


# -- LSTM cases -----------------------------------------------------------------------------

ODD_VALUES = [float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 1e-310]
BAD_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool]
NOT_TENSORS: list[Any] = [None, 1, 2.5, "ab", [1.0], (1.0,)]


def spoil_values(draw, t: Tensor) -> Tensor:
    """A copy of ``t`` with NaN, infinities or huge values at a few drawn places."""
    t = t.clone(memory_format=torch.contiguous_format)
    flat = t.view(-1)
    if flat.numel() == 0:
        return t
    for _ in range(draw(st.integers(1, 3))):
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(ODD_VALUES))
    return t


def change_shape(draw, t: Tensor) -> Tensor:
    dim = draw(st.integers(0, t.dim() - 1))
    shape = list(t.shape)
    shape[dim] = max(0, shape[dim] + draw(st.sampled_from([-1, 1, 2])))
    return torch.zeros(shape, dtype=t.dtype)


def mutate_hx(draw, h: Tensor, c: Tensor, packed: bool) -> tuple[str, Any]:
    """One mistake in hx (or a valid oddity)."""
    kind = draw(
        st.sampled_from(
            [
                "none",
                "list",
                "tensor",
                "stacked_tensor",
                "len",
                "element",
                "object",
                "rank",
                "shape",
                "swapped",
                "dtype",
                "meta",
                "values",
                "strided",
            ]
        )
    )
    if kind == "none":
        return kind, (h, c)
    if kind == "list":
        return kind, [h, c]
    if kind == "tensor":
        return kind, draw(st.sampled_from([h, h[0], h[:1], torch.tensor(1.0, dtype=F64)]))
    if kind == "stacked_tensor":
        return kind, torch.stack([h, h])
    if kind == "len":
        length = draw(st.sampled_from([0, 1, 3]))
        return f"len_{length}", (h, c, c)[:length]
    if kind == "element":
        bad = draw(st.sampled_from(NOT_TENSORS))
        return kind, draw(st.sampled_from([(bad, c), (h, bad), [h, bad]]))
    if kind == "object":
        return kind, draw(st.sampled_from([1, 2.5, "ab", "a", {0: h, 1: c}, {"h": h}, b"xy"]))
    if kind == "rank":
        change = draw(st.sampled_from(["add", "drop"]))
        which = draw(st.sampled_from(["h", "c", "both"]))

        def fix(t: Tensor) -> Tensor:
            return t.unsqueeze(0) if change == "add" else t[0]

        h2 = fix(h) if which in ("h", "both") else h
        c2 = fix(c) if which in ("c", "both") else c
        return kind, (h2, c2)
    if kind == "shape":
        if draw(st.booleans()):
            return kind, (change_shape(draw, h), c)
        return kind, (h, change_shape(draw, c))
    if kind == "swapped":
        return ("swapped" if h.shape != c.shape else "swapped_same_shape"), (c, h)
    if kind == "dtype":
        dtype = draw(st.sampled_from(BAD_DTYPES))
        which = draw(st.sampled_from(["h", "c", "both"]))
        h2 = h.to(dtype) if which in ("h", "both") else h
        c2 = c.to(dtype) if which in ("c", "both") else c
        return f"dtype_{which}", (h2, c2)
    if kind == "meta":
        which = draw(st.sampled_from(["h", "c", "both"]))
        h2 = h.to("meta") if which in ("h", "both") else h
        c2 = c.to("meta") if which in ("c", "both") else c
        return kind, (h2, c2)
    if kind == "values":
        return kind, (spoil_values(draw, h), spoil_values(draw, c))
    # strided views of the right shape
    return kind, (torch.cat([h, h], -1)[..., ::2], c.transpose(0, -1).contiguous().transpose(0, -1))


@st.composite
def lstm_bad_calls(draw) -> tuple[dict[str, Any], str, Any, Any]:
    config = draw(lstm_configs(max_size=4, max_layers=2))
    layout = draw(st.sampled_from(["dense", "unbatched", "packed"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    length, batch = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    states = config["num_layers"] * (2 if config["bidirectional"] else 1)
    h_out = config["proj_size"] or config["hidden_size"]
    lead = (states,) if layout == "unbatched" else (states, batch)
    h = torch.randn(*lead, h_out, generator=gen, dtype=F64)
    c = torch.randn(*lead, config["hidden_size"], generator=gen, dtype=F64)
    seq = torch.randn(length, batch, config["input_size"], generator=gen, dtype=F64)
    target = draw(st.sampled_from(["input", "hx", "input", "hx", "nothing"]))
    hx: Any = MISSING if draw(st.booleans()) else (h, c)
    if layout == "packed":
        name, input, hx = mutate_packed(draw, config, seq, h, c, hx, target)
        return config, f"packed:{name}", input, hx
    input = seq[:, 0] if layout == "unbatched" else seq
    if layout == "dense" and config["batch_first"]:
        input = input.transpose(0, 1)
    name = "valid"
    if target == "hx":
        name, hx = mutate_hx(draw, h, c, packed=False)
    elif target == "input":
        name, input = mutate_dense_input(draw, input, layout, config)
    return config, f"{layout}:{name}", input, hx


def mutate_dense_input(draw, input: Tensor, layout: str, config) -> tuple[str, Any]:
    kind = draw(
        st.sampled_from(
            ["rank", "features", "length0", "batch0", "dtype", "meta", "not_tensor", "values"]
        )
    )
    time_dim = 1 if layout == "dense" and config["batch_first"] else 0
    if kind == "rank":
        return kind, draw(st.sampled_from([input[0, ..., 0], input[None], input[0, ..., 0, None]]))
    if kind == "features":
        return kind, change_last(input, draw(st.sampled_from([0, 1, 5])))
    if kind == "length0":
        return kind, input.narrow(time_dim, 0, 0)
    if kind == "batch0":
        if layout == "unbatched":
            return kind, input[:, :0]  # (L, 0): unbatched with zero features
        return kind, input.narrow(1 - time_dim, 0, 0)
    if kind == "dtype":
        return kind, input.to(draw(st.sampled_from(BAD_DTYPES)))
    if kind == "meta":
        return kind, input.to("meta")
    if kind == "not_tensor":
        return kind, draw(st.sampled_from([None, [1.0, 2.0], 3, "x"]))
    return kind, spoil_values(draw, input)


def change_last(t: Tensor, size: int) -> Tensor:
    return torch.zeros(*t.shape[:-1], size, dtype=t.dtype)


def mutate_packed(draw, config, seq: Tensor, h: Tensor, c: Tensor, hx: Any, target: str):
    batch = seq.size(1)
    lengths = draw(
        st.lists(st.integers(1, seq.size(0)), min_size=batch, max_size=batch).map(
            lambda ls: sorted(ls, reverse=True) if draw(st.booleans()) else ls
        )
    )
    sorted_ok = lengths == sorted(lengths, reverse=True)
    packed = pack_padded_sequence(seq, torch.tensor(lengths), enforce_sorted=sorted_ok)
    data, sizes, order, inverse = packed
    with_indices = order is not None
    name = "valid" + ("_with_indices" if with_indices else "")
    if target == "hx":
        kind, hx = mutate_hx(draw, h, c, packed=True)
        suffix = "_with_indices" if with_indices and kind in ("len_3", "stacked_tensor") else ""
        return f"hx_{kind}{suffix}", packed, hx
    if target == "nothing":
        return name, packed, hx
    kind = draw(
        st.sampled_from(
            [
                "bs_increasing",
                "bs_trailing_zero",
                "bs_leading_zero",
                "bs_negative",
                "bs_sum_too_big",
                "bs_sum_too_small",
                "bs_empty",
                "bs_dtype",
                "bs_rank",
                "indices_out_of_range",
                "indices_duplicate",
                "indices_wrong_length",
                "indices_float",
                "indices_inconsistent",
                "data_rank",
                "data_features",
                "data_dtype",
                "data_meta",
                "data_values",
            ]
        )
    )
    sizes_list = sizes.tolist()
    if kind.startswith("bs_"):
        new_sizes: Any
        if kind == "bs_increasing":
            new_sizes = sorted(sizes_list) if len(set(sizes_list)) > 1 else [*sizes_list, 1]
        elif kind == "bs_trailing_zero":
            new_sizes = [*sizes_list, 0]
        elif kind == "bs_leading_zero":
            new_sizes = [0, *sizes_list]
        elif kind == "bs_negative":
            new_sizes = [*sizes_list[:-1], -sizes_list[-1]]
        elif kind == "bs_sum_too_big":
            new_sizes = [*sizes_list, 1]
        elif kind == "bs_sum_too_small":
            if sizes_list[-1] > 1 or len(sizes_list) > 1:
                new_sizes = sizes_list[:-1] if sizes_list[-1] == 1 else [*sizes_list[:-1], 1]
            else:
                kind, new_sizes = "bs_empty", []
        else:
            new_sizes = sizes_list
        tensor = torch.tensor(new_sizes, dtype=torch.int64)
        if kind == "bs_empty":
            tensor = torch.zeros(0, dtype=torch.int64)
        if kind == "bs_dtype":
            tensor = sizes.to(draw(st.sampled_from([torch.int32, torch.float64, torch.bool])))
        if kind == "bs_rank":
            tensor = draw(st.sampled_from([sizes[None], sizes[0]]))
        return kind, PackedSequence._make((data, tensor, order, inverse)), hx
    if kind.startswith("indices_"):
        n = int(sizes[0])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        if kind == "indices_out_of_range":
            new = perm.clone()
            new[0] = n + draw(st.integers(0, 3))
        elif kind == "indices_duplicate":
            if n < 2:
                kind, new = "indices_out_of_range", torch.tensor([n])
            else:
                new = perm.clone()
                new[1] = new[0]
        elif kind == "indices_wrong_length":
            new = torch.cat([perm, torch.tensor([n])]) if draw(st.booleans()) else perm[:-1]
        elif kind == "indices_float":
            new = perm.double()
        else:
            if n < 2:
                return "valid", packed, hx
            new = perm
            inverse_new = torch.roll(torch.argsort(perm), 1)
            return kind, PackedSequence._make((data, sizes, new, inverse_new)), hx
        inverse_new = torch.argsort(new) if kind != "indices_float" else torch.argsort(perm)
        if kind in ("indices_out_of_range", "indices_duplicate", "indices_wrong_length"):
            inverse_new = torch.argsort(perm) if kind != "indices_wrong_length" else new
        return kind, PackedSequence._make((data, sizes, new, inverse_new)), hx
    if kind == "data_rank":
        new_data = draw(st.sampled_from([data[:, 0], data[:, None]]))
    elif kind == "data_features":
        new_data = change_last(data, draw(st.sampled_from([0, 1, 5])))
    elif kind == "data_dtype":
        new_data = data.to(draw(st.sampled_from(BAD_DTYPES)))
    elif kind == "data_meta":
        new_data = data.to("meta")
    else:
        new_data = spoil_values(draw, data)
    return kind, PackedSequence._make((new_data, sizes, order, inverse)), hx


def lstm_pair(config) -> tuple[nn.LSTM, HandLSTM]:
    torch.manual_seed(0)
    expected = nn.LSTM(**config, dtype=F64)
    actual = HandLSTM(**config, dtype=F64)
    actual.load_state_dict(expected.state_dict())
    return expected, actual


def call(module, input, hx) -> Callable[[], Any]:
    return (lambda: module(input)) if hx is MISSING else (lambda: module(input, hx))


@given(lstm_bad_calls())
def test_lstm_reacts_like_torch(case):
    config, mutation, input, hx = case
    expected, actual = lstm_pair(config)
    assert_same_reaction(call(expected, input, hx), call(actual, input, hx), mutation, hx)


# -- LSTMCell cases -------------------------------------------------------------------------


@st.composite
def cell_bad_calls(draw) -> tuple[dict[str, Any], str, Any, Any]:
    config = {
        "input_size": draw(st.integers(1, 4)),
        "hidden_size": draw(st.integers(1, 4)),
        "bias": draw(st.booleans()),
    }
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    batched = draw(st.booleans())
    lead = (draw(st.integers(1, 3)),) if batched else ()
    x = torch.randn(*lead, config["input_size"], generator=gen, dtype=F64)
    h = torch.randn(*lead, config["hidden_size"], generator=gen, dtype=F64)
    c = torch.randn(*lead, config["hidden_size"], generator=gen, dtype=F64)
    hx: Any = MISSING if draw(st.booleans()) else (h, c)
    target = draw(st.sampled_from(["input", "hx", "nothing"]))
    layout = "batched" if batched else "unbatched"
    if target == "hx":
        name, hx = mutate_hx(draw, h, c, packed=False)
        return config, f"cell-{layout}:hx_{name}", x, hx
    if target == "nothing":
        return config, f"cell-{layout}:valid", x, hx
    kind = draw(
        st.sampled_from(["rank", "features", "batch0", "dtype", "meta", "not_tensor", "values"])
    )
    if kind == "rank":
        x = draw(st.sampled_from([x.sum(), x[None], x[None, None]]))
    elif kind == "features":
        x = change_last(x, draw(st.sampled_from([0, 1, 5])))
    elif kind == "batch0":
        x = x[:0] if batched else x[None][:0]
    elif kind == "dtype":
        x = x.to(draw(st.sampled_from(BAD_DTYPES)))
    elif kind == "meta":
        x = x.to("meta")
    elif kind == "not_tensor":
        x = draw(st.sampled_from([None, [1.0, 2.0], 3]))
    else:
        x = spoil_values(draw, x)
    return config, f"cell-{layout}:{kind}", x, hx


@given(cell_bad_calls())
def test_cell_reacts_like_torch(case):
    config, mutation, input, hx = case
    torch.manual_seed(0)
    expected = nn.LSTMCell(**config, dtype=F64)
    actual = HandLSTMCell(**config, dtype=F64)
    actual.load_state_dict(expected.state_dict())
    assert_same_reaction(call(expected, input, hx), call(actual, input, hx), mutation, hx)


# -- constructor arguments ------------------------------------------------------------------

ODD_ARGUMENTS: list[Any] = [0, -1, 1, 2, 1.0, 2.5, True, False, "3", None, 10**1, [2]]


class _Index:
    """An object with only ``__index__``: torch takes it where it reads a size directly."""

    def __index__(self) -> int:
        return 3

    def __repr__(self) -> str:
        return "_Index()"


#: Sizes as real code passes them (numpy scalars, ``torch.prod(torch.tensor(shape))``), and the
#: number types whose acceptance differs between nn.LSTM (isinstance checks, float(), range())
#: and nn.LSTMCell (no checks: torch.empty decides).
NO_NUMPY = pytest.mark.skip(reason="numpy is not installed (torch and handlstm run without it)")


def with_numpy(make: Any, id: str) -> Any:
    """A parameter ``make(numpy)``, or one skipped with the reason where numpy is absent."""
    if np is None:
        return pytest.param(None, marks=NO_NUMPY, id=id)
    return pytest.param(make(np), id=id)


def numpy_scalar(kind: str, value: Any) -> Any:
    """``numpy.<kind>(value)`` as a parameter (skipped where numpy is absent)."""
    return with_numpy(lambda numpy: getattr(numpy, kind)(value), f"np.{kind}({value!r})")


NUMERIC_ARGUMENTS: list[Any] = [
    numpy_scalar("int64", 3),
    numpy_scalar("int32", 2),
    numpy_scalar("int64", 0),
    numpy_scalar("float64", 2.0),
    numpy_scalar("bool_", True),
    torch.tensor(3),
    torch.tensor(0),
    torch.tensor(-1),
    torch.tensor([2]),
    torch.tensor([[3]]),
    torch.tensor(3.0),
    torch.tensor(True),
    torch.tensor(3, dtype=torch.uint8),
    torch.tensor([2, 3]),
    torch.tensor([]),
    0.0,
    0.5,
    float("nan"),
    float("inf"),
    1j,
    Fraction(1, 2),
    Decimal("0.5"),
    _Index(),
]
LSTM_VALID = dict(
    input_size=3,
    hidden_size=4,
    num_layers=2,
    bias=True,
    batch_first=False,
    dropout=0.0,
    bidirectional=False,
    proj_size=0,
)
CELL_VALID = dict(input_size=3, hidden_size=4, bias=True)


def construct(cls, kwargs) -> tuple[str, Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            module = cls(**kwargs)
        except Exception as error:  # noqa: BLE001 - compared by the caller
            return "raise", error, []
    return "ok", module, sorted(str(w.category.__name__) for w in caught)


def assert_same_construction(expected_cls, actual_cls, kwargs) -> None:
    expected = construct(expected_cls, kwargs)
    actual = construct(actual_cls, kwargs)
    if expected[0] == "raise":
        assert actual[0] == "raise", f"{kwargs}: torch raised {expected[1]!r}, ours built"
        assert isinstance(actual[1], type(expected[1])), (kwargs, expected[1], actual[1])
        return
    assert actual[0] == "ok", f"{kwargs}: torch built, ours raised {actual[1]!r}"
    assert actual[2] == expected[2], f"{kwargs}: warnings {actual[2]} != torch's {expected[2]}"
    want, got = expected[1].state_dict(), actual[1].state_dict()
    assert [(k, v.shape) for k, v in got.items()] == [(k, v.shape) for k, v in want.items()]
    for name in kwargs:
        if name not in ("device", "dtype"):
            got_value, want_value = getattr(actual[1], name), getattr(expected[1], name)
            assert got_value is want_value or got_value == want_value, name  # `is`: NaN
    for got_p, want_p in zip(actual[1].parameters(), expected[1].parameters(), strict=True):
        assert (got_p.device, got_p.dtype) == (want_p.device, want_p.dtype)


@pytest.mark.parametrize("name", list(LSTM_VALID))
@pytest.mark.parametrize("value", ODD_ARGUMENTS, ids=repr)
def test_lstm_constructor_argument_like_torch(name, value):
    assert_same_construction(nn.LSTM, HandLSTM, dict(LSTM_VALID, **{name: value}))


@pytest.mark.parametrize(
    "extra",
    [
        dict(proj_size=4),
        dict(proj_size=5),
        dict(proj_size=3),
        dict(num_layers=1, dropout=0.5),
        dict(dropout=1.5),
        dict(dropout=-0.1),
        dict(dropout=float("nan")),
        dict(dropout=1),
        dict(hidden_size=0, proj_size=0),
        dict(input_size=0),
        dict(dtype=torch.int64),
        dict(dtype="float64"),
        dict(device="meta"),
        dict(device="nonsense"),
    ],
    ids=repr,
)
def test_lstm_constructor_combinations_like_torch(extra):
    assert_same_construction(nn.LSTM, HandLSTM, dict(LSTM_VALID, **extra))


@pytest.mark.parametrize("name", list(CELL_VALID))
@pytest.mark.parametrize("value", ODD_ARGUMENTS, ids=repr)
def test_cell_constructor_argument_like_torch(name, value):
    assert_same_construction(nn.LSTMCell, HandLSTMCell, dict(CELL_VALID, **{name: value}))


@pytest.mark.parametrize("name", list(LSTM_VALID))
@pytest.mark.parametrize("value", NUMERIC_ARGUMENTS, ids=repr)
@pytest.mark.parametrize(
    "extra", [dict(), dict(bidirectional=True), dict(num_layers=1, dropout=0.5)], ids=repr
)
def test_lstm_constructor_numeric_types_like_torch(name, value, extra):
    assert_same_construction(nn.LSTM, HandLSTM, {**LSTM_VALID, **extra, name: value})


@pytest.mark.parametrize("name", list(CELL_VALID))
@pytest.mark.parametrize("value", NUMERIC_ARGUMENTS, ids=repr)
def test_cell_constructor_numeric_types_like_torch(name, value):
    assert_same_construction(nn.LSTMCell, HandLSTMCell, dict(CELL_VALID, **{name: value}))


@pytest.mark.parametrize(
    "sizes",
    [
        (torch.tensor(3), 4),  # speechbrain: torch.prod(torch.tensor(shape))
        with_numpy(lambda numpy: (numpy.int64(3), numpy.int64(4)), "(np.int64(3), np.int64(4))"),
        (3, torch.tensor([4])),
    ],
    ids=repr,
)
def test_cell_built_from_tensor_or_numpy_sizes_computes_like_torch(sizes):
    """Built is not enough: the module runs, forward and backward, as nn.LSTMCell does."""
    torch.manual_seed(0)
    expected = nn.LSTMCell(*sizes, dtype=F64)
    actual = HandLSTMCell(*sizes, dtype=F64)
    actual.load_state_dict(expected.state_dict())
    x = torch.randn(2, 3, dtype=F64)
    hx = (torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64))
    for args in ((x,), (x, hx), (x[0], (hx[0][0], hx[1][0]))):
        want, got = expected(*args), actual(*args)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        grads = [
            torch.autograd.grad(sum(t.sum() for t in out), list(module.parameters()))
            for module, out in ((expected, want), (actual, got))
        ]
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "config",
    [
        with_numpy(lambda numpy: dict(num_layers=numpy.int64(2)), "num_layers=np.int64(2)"),
        dict(num_layers=torch.tensor(2)),
        with_numpy(lambda numpy: dict(proj_size=numpy.int64(2)), "proj_size=np.int64(2)"),
    ],
    ids=repr,
)
def test_lstm_built_from_numpy_or_tensor_sizes_computes_like_torch(config):
    torch.manual_seed(0)
    expected = nn.LSTM(3, 4, **config, dtype=F64)
    actual = HandLSTM(3, 4, **config, dtype=F64)
    actual.load_state_dict(expected.state_dict())
    x = torch.randn(5, 2, 3, dtype=F64)
    want, got = expected(x), actual(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "extra",
    [dict(dtype=torch.int64), dict(dtype="float64"), dict(device="meta"), dict(device="nonsense")],
    ids=repr,
)
def test_cell_constructor_combinations_like_torch(extra):
    assert_same_construction(nn.LSTMCell, HandLSTMCell, dict(CELL_VALID, **extra))
