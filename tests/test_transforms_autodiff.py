"""Forward-mode AD, Jacobians and double backward through HandLSTM and HandLSTMCell.

Oracles: a float64 central finite difference (independent of any autograd formula), nn.LSTM's own
forward-mode and double backward on CPU (torch supports both there), and jacfwd == jacrev. The
first config is the default dense configuration, the one a fast path would take.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, jacfwd, jacrev, jvp
from torch.nn.utils.rnn import pack_padded_sequence

from handlstm import HandLSTM, HandLSTMCell

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}
# Central differences with eps=1e-6 in float64: truncation ~eps^2, rounding ~1e-16/eps.
FD_EPS = 1e-6
FD_TOL = {"rtol": 1e-7, "atol": 1e-8}

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("default", {"input_size": 2, "hidden_size": 3}),
    ("bidirectional", {"input_size": 2, "hidden_size": 3, "bidirectional": True}),
    ("proj", {"input_size": 2, "hidden_size": 3, "proj_size": 2}),
    (
        "bi_proj_2layers",
        {"input_size": 2, "hidden_size": 3, "num_layers": 2, "bidirectional": True, "proj_size": 2},
    ),
]
IDS = [name for name, _ in CONFIGS]
CONFIG_VALUES = [c for _, c in CONFIGS]


def make_pair(config: dict[str, Any]) -> tuple[HandLSTM, nn.LSTM]:
    torch.manual_seed(0)
    ref = nn.LSTM(**config, dtype=DT)
    mine = HandLSTM(**config, dtype=DT)
    mine.load_state_dict(ref.state_dict())
    return mine, ref


def hx_for(module: nn.Module, batch: int) -> tuple[Tensor, Tensor]:
    d = 2 if module.bidirectional else 1
    h_out = module.proj_size or module.hidden_size
    return (
        torch.randn(d * module.num_layers, batch, h_out, dtype=DT),
        torch.randn(d * module.num_layers, batch, module.hidden_size, dtype=DT),
    )


def flat_outputs(result: tuple[Tensor, tuple[Tensor, Tensor]]) -> Tensor:
    output, (h, c) = result
    return torch.cat([output.flatten(), h.flatten(), c.flatten()])


def central_difference(
    f: Callable[..., Tensor], primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...]
) -> Tensor:
    plus = f(*(p + FD_EPS * t for p, t in zip(primals, tangents, strict=True)))
    minus = f(*(p - FD_EPS * t for p, t in zip(primals, tangents, strict=True)))
    return (plus - minus) / (2 * FD_EPS)


# -- forward-mode AD ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIG_VALUES, ids=IDS)
def test_jvp_matches_finite_difference_and_nn_lstm(config: dict[str, Any]) -> None:
    """torch.func.jvp with tangents on the input, the states and every parameter at once."""
    mine, ref = make_pair(config)
    torch.manual_seed(1)
    x = torch.randn(4, 2, 2, dtype=DT)
    h0, c0 = hx_for(mine, 2)
    params = {k: v.detach() for k, v in mine.named_parameters()}
    names = list(params)

    def f(module: nn.Module) -> Callable[..., Tensor]:
        def run(x: Tensor, h: Tensor, c: Tensor, *ps: Tensor) -> Tensor:
            return flat_outputs(
                functional_call(module, dict(zip(names, ps, strict=True)), (x, (h, c)))
            )

        return run

    primals = (x, h0, c0, *params.values())
    tangents = tuple(torch.randn_like(p) for p in primals)
    out, tangent_out = jvp(f(mine), primals, tangents)
    torch.testing.assert_close(out, f(ref)(*primals), **TOL)
    torch.testing.assert_close(
        tangent_out, central_difference(f(mine), primals, tangents), **FD_TOL
    )
    torch.testing.assert_close(tangent_out, jvp(f(ref), primals, tangents)[1], **TOL)


@pytest.mark.parametrize("config", CONFIG_VALUES[:2], ids=IDS[:2])
def test_forward_ad_dual_numbers(config: dict[str, Any]) -> None:
    """torch.autograd.forward_ad with dual input and dual states, on the module itself."""
    mine, _ = make_pair(config)
    torch.manual_seed(2)
    x = torch.randn(4, 2, 2, dtype=DT)
    h0, c0 = hx_for(mine, 2)
    primals = (x, h0, c0)
    tangents = tuple(torch.randn_like(p) for p in primals)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents, strict=True)]
        result = mine(duals[0], (duals[1], duals[2]))
        out, h, c = (fwAD.unpack_dual(t) for t in (result[0], *result[1]))
        primal = torch.cat([out.primal.flatten(), h.primal.flatten(), c.primal.flatten()])
        tangent = torch.cat([out.tangent.flatten(), h.tangent.flatten(), c.tangent.flatten()])

    def f(x: Tensor, h: Tensor, c: Tensor) -> Tensor:
        return flat_outputs(mine(x, (h, c)))

    torch.testing.assert_close(primal, f(*primals), **TOL)
    torch.testing.assert_close(tangent, central_difference(f, primals, tangents), **FD_TOL)


def test_forward_ad_packed() -> None:
    """Tangents on a PackedSequence's data (pack_padded_sequence has no forward AD itself)."""
    mine, ref = make_pair(dict(CONFIGS[1][1]))
    torch.manual_seed(3)
    packed = pack_padded_sequence(torch.randn(4, 3, 2, dtype=DT), [4, 2, 3], enforce_sorted=False)
    tangent = torch.randn_like(packed.data)

    def f(module: nn.Module, data: Tensor) -> Tensor:
        out, (h, c) = module(packed._replace(data=data))
        return torch.cat([out.data.flatten(), h.flatten(), c.flatten()])

    _, got = jvp(lambda d: f(mine, d), (packed.data,), (tangent,))
    # nn.LSTM's packed kernel fails under torch.func.jvp ("Cannot access data pointer of Tensor
    # that doesn't have storage"), so its reference tangent comes from dual numbers.
    with fwAD.dual_level():
        expected = fwAD.unpack_dual(f(ref, fwAD.make_dual(packed.data, tangent))).tangent
    torch.testing.assert_close(got, expected, **TOL)
    fd = central_difference(lambda d: f(mine, d), (packed.data,), (tangent,))
    torch.testing.assert_close(got, fd, **FD_TOL)


@pytest.mark.parametrize("config", CONFIG_VALUES[::3], ids=IDS[::3])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_jacfwd_equals_jacrev(config: dict[str, Any], batched: bool) -> None:
    mine, ref = make_pair(config)
    torch.manual_seed(4)
    x = torch.randn((3, 2, 2) if batched else (3, 2), dtype=DT)

    def f(module: nn.Module) -> Callable[[Tensor], Tensor]:
        return lambda x: flat_outputs(module(x))

    forward = jacfwd(f(mine))(x)
    torch.testing.assert_close(forward, jacrev(f(mine))(x), **TOL)
    torch.testing.assert_close(forward, jacrev(f(ref))(x), **TOL)


def test_cell_jvp_and_jacobians() -> None:
    torch.manual_seed(0)
    ref = nn.LSTMCell(2, 3, dtype=DT)
    mine = HandLSTMCell(2, 3, dtype=DT)
    mine.load_state_dict(ref.state_dict())
    x, h, c = torch.randn(2, 2, dtype=DT), torch.randn(2, 3, dtype=DT), torch.randn(2, 3, dtype=DT)

    def f(module: nn.Module) -> Callable[..., Tensor]:
        return lambda x, h, c: torch.cat([t.flatten() for t in module(x, (h, c))])

    tangents = (torch.randn_like(x), torch.randn_like(h), torch.randn_like(c))
    _, got = jvp(f(mine), (x, h, c), tangents)
    torch.testing.assert_close(got, central_difference(f(mine), (x, h, c), tangents), **FD_TOL)
    torch.testing.assert_close(got, jvp(f(ref), (x, h, c), tangents)[1], **TOL)
    torch.testing.assert_close(
        jacfwd(f(mine), argnums=(0, 1, 2))(x, h, c), jacrev(f(mine), argnums=(0, 1, 2))(x, h, c)
    )


# -- double backward ------------------------------------------------------------------------------


def small_params(module: nn.Module) -> tuple[list[str], list[Tensor]]:
    names = [n for n, _ in module.named_parameters()]
    return names, [p.detach().clone().requires_grad_() for p in module.parameters()]


@pytest.mark.parametrize("config", CONFIG_VALUES, ids=IDS)
def test_gradgradcheck_dense(config: dict[str, Any]) -> None:
    """Second derivatives with respect to input, states and (default config) every parameter."""
    mine, _ = make_pair(config)
    torch.manual_seed(5)
    x = torch.randn(2, 2, 2, dtype=DT, requires_grad=True)
    h0, c0 = (t.requires_grad_() for t in hx_for(mine, 2))
    names, params = small_params(mine)
    with_params = config == CONFIGS[0][1]

    def f(x: Tensor, h: Tensor, c: Tensor, *ps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = dict(zip(names, ps, strict=True)) if with_params else {}
        out, (hn, cn) = functional_call(mine, p, (x, (h, c)))
        return out, hn, cn

    inputs = (x, h0, c0, *params) if with_params else (x, h0, c0)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_gradgradcheck_packed() -> None:
    mine, _ = make_pair(dict(CONFIGS[3][1]))
    torch.manual_seed(6)
    padded = torch.randn(3, 2, 2, dtype=DT, requires_grad=True)

    def f(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, (h, c) = mine(pack_padded_sequence(x, [2, 3], enforce_sorted=False))
        return out.data, h, c

    assert torch.autograd.gradgradcheck(f, (padded,))


def test_gradgradcheck_cell() -> None:
    torch.manual_seed(0)
    cell = HandLSTMCell(2, 3, dtype=DT)
    names, params = small_params(cell)
    x = torch.randn(2, 2, dtype=DT, requires_grad=True)
    h, c = (torch.randn(2, 3, dtype=DT, requires_grad=True) for _ in range(2))

    def f(x: Tensor, h: Tensor, c: Tensor, *ps: Tensor) -> tuple[Tensor, Tensor]:
        return functional_call(cell, dict(zip(names, ps, strict=True)), (x, (h, c)))

    assert torch.autograd.gradgradcheck(f, (x, h, c, *params))


def gradient_penalty_step(module: nn.Module, x: Tensor, target: Tensor) -> list[Tensor]:
    """One WGAN-GP-style step: task loss plus the squared norm of d(loss)/d(input)."""
    x = x.clone().requires_grad_()
    out, _ = module(x)
    task = (out - target).square().mean()
    (dx,) = torch.autograd.grad(task, x, create_graph=True)
    loss = task + 10.0 * (dx.flatten(1).norm(dim=1) - 1).square().mean()
    return list(torch.autograd.grad(loss, list(module.parameters())))


@pytest.mark.parametrize("config", CONFIG_VALUES[::3], ids=IDS[::3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradient_penalty_step_matches_nn_lstm(config: dict[str, Any], mode: str) -> None:
    """Double backward in train() and eval(), against nn.LSTM on CPU (which supports both)."""
    mine, ref = make_pair(config)
    mine.train(mode == "train")
    ref.train(mode == "train")
    torch.manual_seed(7)
    x = torch.randn(4, 3, 2, dtype=DT)
    target = torch.randn(4, 3, (mine.proj_size or mine.hidden_size) * (1 + mine.bidirectional))
    got = gradient_penalty_step(mine, x, target.to(DT))
    expected = gradient_penalty_step(ref, x, target.to(DT))
    torch.testing.assert_close(got, expected, **TOL)
    # and an optimizer step with those gradients lands on the same weights
    for module, grads in ((mine, got), (ref, expected)):
        for p, g in zip(module.parameters(), grads, strict=True):
            p.grad = g
        torch.optim.SGD(module.parameters(), lr=0.1).step()
    torch.testing.assert_close(mine.state_dict(), ref.state_dict(), **TOL)


def loss_of_params(module: nn.Module, x: Tensor) -> Callable[..., Tensor]:
    names = [n for n, _ in module.named_parameters()]

    def loss(*ps: Tensor) -> Tensor:
        out, (h, c) = functional_call(module, dict(zip(names, ps, strict=True)), (x,))
        return out.square().sum() + h.sum() * c.sum()

    return loss


@pytest.mark.parametrize("config", CONFIG_VALUES[::3], ids=IDS[::3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_hessian_vector_product(config: dict[str, Any], mode: str) -> None:
    """H v by double backward equals nn.LSTM's and a finite difference of gradients."""
    mine, ref = make_pair(config)
    mine.train(mode == "train")
    ref.train(mode == "train")
    torch.manual_seed(8)
    x = torch.randn(4, 2, 2, dtype=DT)
    params = [p.detach().clone().requires_grad_() for p in mine.parameters()]
    v = [torch.randn_like(p) for p in params]

    def hvp(module: nn.Module) -> list[Tensor]:
        g = torch.autograd.grad(loss_of_params(module, x)(*params), params, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True))
        return list(torch.autograd.grad(dot, params))

    got = hvp(mine)
    torch.testing.assert_close(got, hvp(ref), **TOL)
    # torch.func spelling: jvp of grad (forward-over-reverse)
    loss = loss_of_params(mine, x)
    grad_fn = torch.func.grad(loss, argnums=tuple(range(len(params))))
    _, func_hvp = jvp(grad_fn, tuple(p.detach() for p in params), tuple(v))
    torch.testing.assert_close(list(func_hvp), got, **TOL)

    def grads_at(ps: list[Tensor]) -> Tensor:
        ps = [p.detach().requires_grad_() for p in ps]
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss(*ps), ps)])

    plus = grads_at([p + FD_EPS * vi for p, vi in zip(params, v, strict=True)])
    minus = grads_at([p - FD_EPS * vi for p, vi in zip(params, v, strict=True)])
    fd = (plus - minus) / (2 * FD_EPS)
    torch.testing.assert_close(torch.cat([g.flatten() for g in got]), fd, **FD_TOL)


def test_cell_hessian_vector_product_matches_nn_lstm_cell() -> None:
    torch.manual_seed(0)
    ref = nn.LSTMCell(2, 3, dtype=DT)
    mine = HandLSTMCell(2, 3, dtype=DT)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, dtype=DT)
    params = [p.detach().clone().requires_grad_() for p in mine.parameters()]
    v = [torch.randn_like(p) for p in params]
    names = [n for n, _ in mine.named_parameters()]

    def hvp(module: nn.Module) -> list[Tensor]:
        h, c = functional_call(module, dict(zip(names, params, strict=True)), (x,))
        g = torch.autograd.grad(h.square().sum() + c.sum(), params, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True))
        return list(torch.autograd.grad(dot, params))

    torch.testing.assert_close(hvp(mine), hvp(ref), **TOL)


def test_nn_lstm_packed_jvp_fails_measured() -> None:
    """nn.LSTM's packed kernel under torch.func.jvp (its dual-number path works)."""
    _, ref = make_pair(dict(CONFIGS[0][1]))
    packed = pack_padded_sequence(torch.randn(3, 2, 2, dtype=DT), [3, 2])

    def f(data: Tensor) -> Tensor:
        return ref(packed._replace(data=data))[0].data

    with pytest.raises(RuntimeError, match="storage"):
        jvp(f, (packed.data,), (torch.ones_like(packed.data),))
