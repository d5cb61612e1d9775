"""The fast path (handlstm.engines.fast): exact, actually taken where it serves, and never taken
where it does not (then the composed path is taken and is correct).

Oracles: nn.LSTM in float64 for values and first derivatives (including its double backward),
the composed path (``choose.fast_disabled()``) for everything both paths compute, and
``torch.autograd.gradcheck`` / ``gradgradcheck`` for the hand-written backward.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

from handlstm import HandLSTM
from handlstm.core.lstm import LSTM
from handlstm.engines import choose
from handlstm.engines.fast.counts import counts as fast_counts
from handlstm.testing import assert_lstm_close, lstm_cases

F64 = torch.float64


def make_pair(**config: Any) -> tuple[HandLSTM, nn.LSTM]:
    config.setdefault("dtype", F64)
    ref = nn.LSTM(**config)
    mine = HandLSTM(**config)
    mine.load_state_dict(ref.state_dict())
    return mine, ref


@contextmanager
def path_counter() -> Iterator[dict[str, int]]:
    """Counts of fast-path runs inside the block: ``inference`` and ``train`` (directions
    served), ``fast`` (their sum), ``lockstep`` and ``packed`` (layer calls), ``recompute``."""
    before = dict(fast_counts)
    seen: dict[str, int] = {}
    yield seen
    after = dict(fast_counts)
    for key in ("inference", "train", "recompute", "lockstep", "packed"):
        seen[key] = after.get(key, 0) - before.get(key, 0)
    seen["fast"] = seen["inference"] + seen["train"]


def grads_of(module: nn.Module, *tensors: Tensor) -> list[Tensor]:
    return [t.grad for t in tensors] + [p.grad for p in module.parameters()]  # type: ignore[misc]


# -- parity with nn.LSTM on the fast path --------------------------------------------------------


@settings(max_examples=25)
@given(case=lstm_cases(kinds=("dense", "unbatched"), dropout=False))
def test_fast_path_matches_nn_lstm(case: Any) -> None:
    ref = case.make()
    mine = case.make(HandLSTM, ref.state_dict())
    with path_counter() as seen:
        assert_lstm_close(mine, ref, case.input, case.hx)
    directions = 2 if case.config["bidirectional"] else 1
    batch_first = case.config["batch_first"] and case.input.dim() == 3
    length = case.input.size(1) if batch_first else case.input.size(0)
    expected = case.config["num_layers"] * directions if length > 1 else 0  # 1 step: composed
    assert seen["train"] == expected


@pytest.mark.parametrize(
    "layers,bidirectional,proj,bias,batch_first",
    list(itertools.product([1, 2], [False, True], [0, 3], [True, False], [False, True])),
)
def test_fast_path_grid(
    layers: int, bidirectional: bool, proj: int, bias: bool, batch_first: bool
) -> None:
    mine, ref = make_pair(
        input_size=4,
        hidden_size=5,
        num_layers=layers,
        bidirectional=bidirectional,
        proj_size=proj,
        bias=bias,
        batch_first=batch_first,
    )
    x = torch.randn(3, 6, 4, dtype=F64)  # (N, L, H_in) or (L, N, H_in)
    with path_counter() as seen:
        assert_lstm_close(mine, ref, x)
    assert seen["train"] == layers * (2 if bidirectional else 1)
    assert seen["lockstep"] == (layers if bidirectional else 0)  # both directions at once


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 4, 3), (2, 1, 3), (7, 1, 3)])
def test_one_step_and_one_row(shape: tuple[int, int, int]) -> None:
    """One step takes the composed path (measured faster there); two or more the fast path."""
    mine, ref = make_pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    with path_counter() as seen:
        assert_lstm_close(mine, ref, torch.randn(*shape, dtype=F64))
        with torch.no_grad():
            mine(torch.randn(*shape, dtype=F64))
    fast = shape[0] > 1
    assert seen["train"] == (4 if fast else 0)
    assert seen["inference"] == (4 if fast else 0)


def test_inference_matches_and_saves_nothing() -> None:
    mine, ref = make_pair(input_size=3, hidden_size=5, num_layers=2, proj_size=2)
    x = torch.randn(6, 4, 3, dtype=F64)
    h0, c0 = torch.randn(2, 4, 2, dtype=F64), torch.randn(2, 4, 5, dtype=F64)
    copies = [t.clone() for t in (x, h0, c0)]
    with torch.no_grad(), path_counter() as seen:
        out, (h, c) = mine(x, (h0, c0))
        expected, (eh, ec) = ref(x, (h0, c0))
    assert seen["inference"] == 2 and seen["train"] == 0
    assert out.grad_fn is None and not out.requires_grad
    for got, want in ((out, expected), (h, eh), (c, ec)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for before, after in zip(copies, (x, h0, c0), strict=True):
        assert torch.equal(before, after)  # caller tensors untouched


def test_fast_path_is_the_recorded_graph() -> None:
    mine, _ = make_pair(input_size=3, hidden_size=4)
    out, (h, c) = mine(torch.randn(5, 2, 3, dtype=F64))
    near = [out.grad_fn, *(fn for fn, _ in out.grad_fn.next_functions if fn is not None)]
    assert any("FastLayer" in fn.name() for fn in near)  # the output is a view of its result


def test_dropout_fast_equals_composed() -> None:
    mine, _ = make_pair(input_size=3, hidden_size=4, num_layers=3, dropout=0.5)
    mine.train()
    x = torch.randn(5, 3, 3, dtype=F64)
    results = []
    for fast in (True, False):
        torch.manual_seed(7)
        mine.zero_grad()
        with path_counter() as seen, choose.fast_disabled() if not fast else _null():
            out, (h, c) = mine(x)
            (out.square().sum() + h.sum() + c.sum()).backward()
        assert seen["fast"] == (3 if fast else 0)
        results.append([out, h, c, *[p.grad.clone() for p in mine.parameters()]])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@contextmanager
def _null() -> Iterator[None]:
    yield


def test_non_contiguous_input_and_expanded_gradient() -> None:
    mine, ref = make_pair(input_size=3, hidden_size=4, batch_first=True)
    base = torch.randn(3, 5, 7, dtype=F64)[..., ::2]  # (N, L, 4) strided, take 3 features
    x = base[..., :3]
    grads = []
    for module in (mine, ref):
        xr = x.detach().requires_grad_()
        out, _ = module(xr)
        out.sum().backward()  # an expanded (stride 0) gradient reaches the backward
        grads.append(grads_of(module, xr))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_backward_twice_with_retain_graph() -> None:
    mine, _ = make_pair(input_size=3, hidden_size=4, proj_size=2, bidirectional=True)
    out, (h, c) = mine(torch.randn(4, 2, 3, dtype=F64))
    loss = out.square().sum() + c.sum()
    first = torch.autograd.grad(loss, list(mine.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(mine.parameters()))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_parameter_changes_are_seen() -> None:
    """Nothing is cached: optimizer steps, load_state_dict and no_grad edits all take effect."""
    mine, ref = make_pair(input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=F64)
    opt = torch.optim.SGD(mine.parameters(), lr=0.5)
    mine(x)[0].sum().backward()
    opt.step()
    ref.load_state_dict(mine.state_dict())
    assert_lstm_close(mine, ref, x)
    with torch.no_grad():
        mine.weight_hh_l1.mul_(-1.5)
    ref.load_state_dict(mine.state_dict())
    assert_lstm_close(mine, ref, x)
    params = {name: torch.randn_like(p) for name, p in mine.named_parameters()}
    ref.load_state_dict(params)
    with path_counter() as seen:
        got = functional_call(mine, params, (x,))
    torch.testing.assert_close(got[0], ref(x)[0], rtol=1e-10, atol=1e-10)
    assert seen["inference"] == 2  # the new tensors do not require grad


# -- gradcheck of the hand-written backward ------------------------------------------------------


@pytest.mark.parametrize("proj,bidirectional,bias", [(0, False, True), (2, True, False)])
def test_gradcheck_and_gradgradcheck(proj: int, bidirectional: bool, bias: bool) -> None:
    mine, _ = make_pair(
        input_size=2, hidden_size=3, proj_size=proj, bidirectional=bidirectional, bias=bias
    )
    d = 2 if bidirectional else 1
    x = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(d, 2, proj or 3, dtype=F64, requires_grad=True)
    c0 = torch.randn(d, 2, 3, dtype=F64, requires_grad=True)
    names = [n for n, _ in mine.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in mine.parameters()]

    def run(x: Tensor, h0: Tensor, c0: Tensor, *ps: Tensor) -> tuple[Tensor, ...]:
        out, (h, c) = functional_call(mine, dict(zip(names, ps, strict=True)), (x, (h0, c0)))
        return out, h, c

    with path_counter() as seen:
        assert torch.autograd.gradcheck(run, (x, h0, c0, *params))
    assert seen["train"] > 0 and seen["recompute"] == 0
    with path_counter() as seen:
        assert torch.autograd.gradgradcheck(run, (x, h0, c0, *params))
    assert seen["recompute"] > 0


def test_double_backward_matches_nn_lstm() -> None:
    """A Hessian-vector product (create_graph=True) through the fast path vs nn.LSTM's."""
    mine, ref = make_pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=F64)
    vs = [torch.randn_like(p) for p in ref.parameters()]
    hvps = []
    for module in (mine, ref):
        params = list(module.parameters())
        out, (h, c) = module(x)
        loss = out.square().sum() + c.square().sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
        hvps.append(torch.autograd.grad(dot, params))
    for a, b in zip(*hvps, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# -- every case the fast path does not serve takes the composed path, correctly -----------------


@settings(max_examples=25)
@given(case=lstm_cases(kinds=("packed_sorted", "packed_unsorted"), max_len=6))
def test_packed_fast_path_matches_nn_lstm(case: Any) -> None:
    """Packed input (any lengths, sorted or not, with or without hx) on the fast path."""
    ref = case.make()
    mine = case.make(HandLSTM, ref.state_dict())
    with path_counter() as seen:
        assert_lstm_close(mine, ref, case.input, case.hx)
    layers = case.config["num_layers"]
    fast = max(case.lengths) > 1
    assert seen["packed"] == (layers if fast else 0)
    directions = 2 if case.config["bidirectional"] else 1
    assert seen["train"] == (layers * directions if fast else 0)


@pytest.mark.parametrize("bidirectional,proj", [(False, 0), (True, 0), (True, 2)])
def test_packed_input_takes_fast_path(bidirectional: bool, proj: int) -> None:
    mine, ref = make_pair(
        input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional, proj_size=proj
    )
    x = torch.randn(6, 4, 3, dtype=F64)
    packed = pack_padded_sequence(x, torch.tensor([5, 2, 6, 1]), enforce_sorted=False)
    d = 2 if bidirectional else 1
    hx = (torch.randn(2 * d, 4, proj or 4, dtype=F64), torch.randn(2 * d, 4, 4, dtype=F64))
    with path_counter() as seen:
        assert_lstm_close(mine, ref, packed, hx)
    assert seen["packed"] == 2 and seen["train"] == 2 * d
    assert seen["lockstep"] == (2 if bidirectional else 0)
    with path_counter() as seen, choose.fast_disabled():  # the composed packed path stays right too
        assert_lstm_close(mine, ref, packed, hx)
    assert seen["fast"] == 0
    with torch.no_grad(), path_counter() as seen:
        got, (h, c) = mine(packed, hx)
        want, (eh, ec) = ref(packed, hx)
    assert seen["inference"] == 2 * d
    for a, b in ((got.data, want.data), (h, eh), (c, ec)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("slow_check", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_packed_gradcheck_and_gradgradcheck(slow_check: bool) -> None:
    """The hand-written backward on packed input (each sequence ends at its own step), and the
    double backward's recompute, against finite differences."""
    mine, _ = make_pair(input_size=1, hidden_size=2, bidirectional=True)
    lengths = torch.tensor([3, 1, 2])
    x = torch.randn(3, 3, 1, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)
    names = [n for n, _ in mine.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in mine.parameters()]

    def run(x: Tensor, h0: Tensor, c0: Tensor, *ps: Tensor) -> tuple[Tensor, ...]:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        args = (packed, (h0, c0))
        out, (h, c) = functional_call(mine, dict(zip(names, ps, strict=True)), args)
        return out.data, h, c

    with path_counter() as seen:
        assert torch.autograd.gradcheck(run, (x, h0, c0, *params))
    assert seen["packed"] > 0 and seen["recompute"] == 0
    if slow_check:
        with path_counter() as seen:
            assert torch.autograd.gradgradcheck(run, (x, h0, c0, *params))
        assert seen["recompute"] > 0


def test_packed_double_backward_matches_nn_lstm() -> None:
    """A Hessian-vector product through the packed fast path (its recompute) vs nn.LSTM's."""
    mine, ref = make_pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 3, dtype=F64)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 3]), enforce_sorted=False)
    vs = [torch.randn_like(p) for p in ref.parameters()]
    hvps = []
    for module in (mine, ref):
        params = list(module.parameters())
        with path_counter() as seen:
            out, (h, c) = module(packed)
            loss = out.data.square().sum() + c.square().sum() + (h * h.flip(0)).sum()
            grads = torch.autograd.grad(loss, params, create_graph=True)
        if module is mine:
            assert seen["packed"] == 2 and seen["recompute"] == 2
        dot = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
        hvps.append(torch.autograd.grad(dot, params))
    for a, b in zip(*hvps, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("proj", [0, 2])
def test_single_reverse_direction_fast_equals_composed(packed: bool, proj: int) -> None:
    """``choose.run_direction`` with ``reverse=True`` on its own (not in lockstep)."""
    from handlstm.engines.choose import run_direction

    mine, _ = make_pair(input_size=3, hidden_size=4, bidirectional=True, proj_size=proj)
    weights = mine._direction_weights(0, 1)
    out_size = proj or 4
    if packed:
        sizes = [3, 3, 2, 1]
        x = torch.randn(sum(sizes), 3, dtype=F64, requires_grad=True)
        batch_sizes: list[int] | None = sizes
    else:
        x = torch.randn(4, 3, 3, dtype=F64, requires_grad=True)
        batch_sizes = None
    h0 = torch.randn(3, out_size, dtype=F64, requires_grad=True)
    c0 = torch.randn(3, 4, dtype=F64, requires_grad=True)
    results = []
    for fast in (True, False):
        with path_counter() as seen, choose.fast_disabled() if not fast else _null():
            out, (h, c) = run_direction(LSTM, x, batch_sizes, (h0, c0), weights, True)
            loss = out.square().sum() + (h * c.sum()).sum() + c.square().sum()
            grads = torch.autograd.grad(loss, [x, h0, c0, *mine.parameters()], allow_unused=True)
        assert seen["train"] == (1 if fast else 0)
        results.append([out, h, c, *[g for g in grads if g is not None]])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "options,training",
    [
        ({"weight_drop": 0.3}, True),
        ({"input_dropout": 0.3}, True),
        ({"recurrent_dropout": 0.3}, True),
        ({"recurrent_dropout": 0.3, "weight_drop": 0.3, "proj_size": 2}, True),
        ({"recurrent_dropout": 0.3, "weight_drop": 0.3, "input_dropout": 0.2}, False),
    ],
)
@pytest.mark.parametrize("packed", [False, True])
def test_dropout_variants_take_fast_path(
    options: dict[str, Any], training: bool, packed: bool
) -> None:
    """Variants whose steps the fast path computes (recurrent dropout's mask on h; weight drop
    and input dropout act on its inputs; in eval all are off) equal the composed path, masks,
    gradients and a Hessian-vector product included."""
    mine = HandLSTM(3, 4, num_layers=2, bidirectional=True, dtype=F64, **options)
    mine.train(training)
    x: Any = torch.randn(5, 3, 3, dtype=F64)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([2, 5, 4]), enforce_sorted=False)
    vs = [torch.randn_like(p) for p in mine.parameters()]
    results = []
    for fast in (True, False):
        torch.manual_seed(3)
        with path_counter() as seen, choose.fast_disabled() if not fast else _null():
            out, (h, c) = mine(x)
            out = out.data if packed else out
            loss = out.square().sum() + h.sum() + c.square().sum()
            grads = torch.autograd.grad(loss, list(mine.parameters()), create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
            hvp = torch.autograd.grad(dot, list(mine.parameters()))
        assert seen["train"] == (4 if fast else 0)
        results.append([out, h, c, *grads, *hvp])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_recurrent_dropout_gradcheck() -> None:
    """The hand-written backward with recurrent dropout's mask, against finite differences."""
    mine = HandLSTM(2, 3, bidirectional=True, recurrent_dropout=0.4, dtype=F64)
    x = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, 2, 3, dtype=F64, requires_grad=True)
    names = [n for n, _ in mine.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in mine.parameters()]

    def run(x: Tensor, h0: Tensor, c0: Tensor, *ps: Tensor) -> tuple[Tensor, ...]:
        torch.manual_seed(5)  # the same masks at every evaluation
        out, (h, c) = functional_call(mine, dict(zip(names, ps, strict=True)), (x, (h0, c0)))
        return out, h, c

    with path_counter() as seen:
        assert torch.autograd.gradcheck(run, (x, h0, c0, *params))
    assert seen["train"] > 0 and seen["recompute"] == 0


def test_disabled_context_takes_composed_path() -> None:
    mine, ref = make_pair(input_size=3, hidden_size=4, num_layers=2)
    with path_counter() as seen, choose.fast_disabled():
        assert_lstm_close(mine, ref, torch.randn(4, 2, 3, dtype=F64))
    assert seen["fast"] == 0
    with path_counter() as seen:
        mine(torch.randn(4, 2, 3, dtype=F64))
    assert seen["fast"] == 2  # switched back on after the block


def test_forward_mode_ad_takes_composed_path() -> None:
    import torch.autograd.forward_ad as fwAD

    mine, ref = make_pair(input_size=3, hidden_size=4, num_layers=2)
    x, tangent = torch.randn(4, 2, 3, dtype=F64), torch.randn(4, 2, 3, dtype=F64)
    results = []
    for module in (mine, ref):
        with path_counter() as seen, fwAD.dual_level():
            out, _ = module(fwAD.make_dual(x, tangent))
            results.append(fwAD.unpack_dual(out).tangent)
        if module is mine:
            assert seen["fast"] == 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-10)


def test_jvp_takes_composed_path() -> None:
    mine, ref = make_pair(input_size=3, hidden_size=4)
    x, v = torch.randn(4, 2, 3, dtype=F64), torch.randn(4, 2, 3, dtype=F64)
    with path_counter() as seen:
        _, got = torch.func.jvp(lambda t: mine(t)[0], (x,), (v,))
    assert seen["fast"] == 0
    _, want = torch.func.jvp(lambda t: ref(t)[0], (x,), (v,))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_vmap_and_func_grad_take_composed_path() -> None:
    mine, ref = make_pair(input_size=3, hidden_size=4)
    xs = torch.randn(3, 4, 2, 3, dtype=F64)  # a batch of 3 inputs (L, N, H_in)
    with path_counter() as seen:
        got = torch.func.vmap(lambda t: mine(t)[0])(xs)
    assert seen["fast"] == 0
    want = torch.stack([ref(t)[0] for t in xs])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)

    params = {n: p.detach() for n, p in mine.named_parameters()}

    def loss(ps: dict[str, Tensor], t: Tensor) -> Tensor:
        return functional_call(mine, ps, (t,))[0].square().sum()

    with path_counter() as seen:
        got_grads = torch.func.grad(loss)(params, xs[0])
    assert seen["fast"] == 0
    ref.zero_grad()
    ref(xs[0])[0].square().sum().backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(got_grads[name], p.grad, rtol=1e-10, atol=1e-10)


def test_compile_tracing_takes_composed_path(monkeypatch: pytest.MonkeyPatch) -> None:
    mine, ref = make_pair(input_size=3, hidden_size=4)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with path_counter() as seen:
        assert_lstm_close(mine, ref, torch.randn(4, 2, 3, dtype=F64))
    assert seen["fast"] == 0


def test_autocast_takes_composed_path() -> None:
    mine, _ = make_pair(input_size=3, hidden_size=4, dtype=torch.float32)
    x = torch.randn(4, 2, 3)
    with path_counter() as seen, torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = mine(x)
        with choose.fast_disabled():
            want, _ = mine(x)
    assert seen["fast"] == 0
    assert out.dtype == want.dtype
    torch.testing.assert_close(out, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_other_dtypes_take_composed_path(dtype: torch.dtype) -> None:
    mine, ref = make_pair(input_size=3, hidden_size=4, dtype=dtype)
    x = torch.randn(4, 2, 3, dtype=dtype)
    with path_counter() as seen:
        out, _ = mine(x)
    assert seen["fast"] == 0 and out.dtype == dtype
    with choose.fast_disabled():
        want, _ = mine(x)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_dispatch_mode_takes_composed_path() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    mine, ref = make_pair(input_size=3, hidden_size=4)
    x = torch.randn(4, 2, 3, dtype=F64)
    with path_counter() as seen, FlopCounterMode(display=False):
        out, _ = mine(x)
    assert seen["fast"] == 0
    torch.testing.assert_close(out, ref(x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "options",
    [{"cell_clip": 0.5}, {"gate_activation": torch.nn.functional.hardsigmoid}],
)
def test_variant_takes_composed_path(options: dict[str, Any]) -> None:
    """Variants the fast path does not compute (clipping, other activations; zoneout,
    peepholes and layer norm are served, see tests/test_fast_variants.py)."""
    mine = HandLSTM(3, 4, dtype=F64, **options)
    x = torch.randn(4, 2, 3, dtype=F64)
    with path_counter() as seen:
        out, _ = mine(x)
    assert seen["fast"] == 0
    with choose.fast_disabled():
        torch.testing.assert_close(out, mine(x)[0], rtol=0, atol=0)


def test_empty_batch_takes_composed_path() -> None:
    mine, ref = make_pair(input_size=3, hidden_size=4)
    x = torch.randn(4, 0, 3, dtype=F64)
    with path_counter() as seen:
        out, (h, c) = mine(x)
    assert seen["fast"] == 0
    assert out.shape == ref(x)[0].shape


@pytest.mark.parametrize("options", [{}, {"layer_norm": True, "zoneout_h": 0.2}])
@pytest.mark.parametrize("packed", [False, True])
def test_inference_results_are_ordinary_tensors(options: dict[str, Any], packed: bool) -> None:
    """The inference loops run under inference_mode internally, but hand back ordinary tensors:
    a caller can still use them in a recorded computation afterwards."""
    mine = HandLSTM(3, 4, num_layers=2, bidirectional=True, dtype=F64, **options).eval()
    x: Any = torch.randn(5, 3, 3, dtype=F64)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
    with torch.no_grad(), path_counter() as seen:
        out, (h, c) = mine(x)
    assert seen["inference"] == 4
    out = out.data if packed else out
    for t in (out, h, c):
        assert not t.is_inference()
    weight = torch.ones(out.shape[-1], dtype=F64, requires_grad=True)
    ((out * weight).sum() + (h * c.sum()).sum()).backward()  # fails for inference tensors
    assert weight.grad is not None
    with choose.fast_disabled(), torch.no_grad():
        want, (eh, ec) = mine(x)
    want = want.data if packed else want
    for a, b in ((out, want), (h, eh), (c, ec)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
