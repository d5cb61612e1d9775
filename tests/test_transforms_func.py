"""torch.func on HandLSTM and HandLSTMCell: functional_call, vmap, ensembles, per-sample gradients.

Every result is compared with an independent oracle: nn.LSTM / nn.LSTMCell run one example (or
one ensemble member) at a time in a Python loop, float64, tolerance 1e-10. The first config of
each list is the default dense configuration, the one a fast path would take, so a fast path that
does not fall back under a transform is caught here. The last tests measure that nn.LSTM itself
fails under vmap (the "Works with" table in docs/works_with.md).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, stack_module_state, vmap

from handlstm import HandLSTM, HandLSTMCell

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}

# (name, constructor kwargs): the default dense config first.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("default", {"input_size": 3, "hidden_size": 4}),
    (
        "bi_proj_2layers",
        {"input_size": 3, "hidden_size": 4, "num_layers": 2, "bidirectional": True, "proj_size": 2},
    ),
    ("batch_first_nobias", {"input_size": 3, "hidden_size": 4, "batch_first": True, "bias": False}),
]
IDS = [name for name, _ in CONFIGS]


def make_pair(config: dict[str, Any], seed: int = 0) -> tuple[HandLSTM, nn.LSTM]:
    torch.manual_seed(seed)
    ref = nn.LSTM(**config, dtype=DT)
    mine = HandLSTM(**config, dtype=DT)
    mine.load_state_dict(ref.state_dict())
    return mine, ref


def states_shape(module: nn.Module, batch: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    d = 2 if module.bidirectional else 1
    h_out = module.proj_size or module.hidden_size
    lead = (d * module.num_layers,) + (() if batch is None else (batch,))
    return lead + (h_out,), lead + (module.hidden_size,)


def random_params(module: nn.Module) -> dict[str, Tensor]:
    return {name: torch.randn_like(p) * 0.5 for name, p in module.named_parameters()}


def assert_tree_close(actual: Any, expected: Any) -> None:
    torch.testing.assert_close(actual, expected, **TOL)


# -- functional_call ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [c for _, c in CONFIGS], ids=IDS)
def test_functional_call_with_swapped_parameters(config: dict[str, Any]) -> None:
    mine, ref = make_pair(config)
    torch.manual_seed(1)
    swapped = {k: v.requires_grad_() for k, v in random_params(mine).items()}
    x = torch.randn((2, 5, 3) if mine.batch_first else (5, 2, 3), dtype=DT)
    hshape, cshape = states_shape(mine, 2)
    hx = (torch.randn(hshape, dtype=DT), torch.randn(cshape, dtype=DT))
    before = {k: v.detach().clone() for k, v in mine.state_dict().items()}

    out = functional_call(mine, swapped, (x, hx))
    # Oracle 1: nn.LSTM through functional_call with the same dict.
    expected = functional_call(ref, swapped, (x, hx))
    assert_tree_close(out, expected)
    # Oracle 2: a fresh nn.LSTM whose weights were loaded with those tensors.
    loaded = nn.LSTM(**config, dtype=DT)
    loaded.load_state_dict({k: v.detach() for k, v in swapped.items()})
    assert_tree_close(out, loaded(x, hx))
    # Gradients with respect to the swapped tensors equal nn.LSTM's.
    loss = out[0].square().sum() + out[1][0].sum() + out[1][1].sum()
    exp_loss = expected[0].square().sum() + expected[1][0].sum() + expected[1][1].sum()
    grads = torch.autograd.grad(loss, list(swapped.values()))
    exp_grads = torch.autograd.grad(exp_loss, list(swapped.values()))
    assert_tree_close(grads, exp_grads)
    # The module's own parameters are untouched and still used afterwards.
    assert_tree_close(mine.state_dict(), before)
    assert_tree_close(mine(x, hx), ref(x, hx))


def test_functional_call_packed_input() -> None:
    mine, ref = make_pair(dict(CONFIGS[1][1]))
    swapped = random_params(mine)
    padded = torch.randn(4, 3, 3, dtype=DT)
    packed = nn.utils.rnn.pack_padded_sequence(padded, [4, 2, 3], enforce_sorted=False)
    out, (h, c) = functional_call(mine, swapped, (packed,))
    exp, (eh, ec) = functional_call(ref, swapped, (packed,))
    assert_tree_close((out.data, h, c), (exp.data, eh, ec))


def test_functional_call_cell() -> None:
    torch.manual_seed(0)
    ref = nn.LSTMCell(3, 4, dtype=DT)
    mine = HandLSTMCell(3, 4, dtype=DT)
    swapped = random_params(ref)
    x, h, c = (torch.randn(2, n, dtype=DT) for n in (3, 4, 4))
    expected = functional_call(ref, swapped, (x, (h, c)))
    assert_tree_close(functional_call(mine, swapped, (x, (h, c))), expected)
    loaded = HandLSTMCell(3, 4, dtype=DT)
    loaded.load_state_dict(swapped)
    assert_tree_close(loaded(x, (h, c)), expected)


# -- vmap over examples ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", [c for _, c in CONFIGS], ids=IDS)
@pytest.mark.parametrize("batched", [True, False], ids=["each_3d", "each_2d"])
def test_vmap_over_examples(config: dict[str, Any], batched: bool) -> None:
    """vmap over a leading batch of examples, each a whole nn.LSTM input (2-D or 3-D) with hx."""
    mine, ref = make_pair(config)
    examples = 3
    per = 2 if batched else None
    length = 4
    if batched:
        shape = (per, length, 3) if mine.batch_first else (length, per, 3)
    else:
        shape = (length, 3)
    x = torch.randn(examples, *shape, dtype=DT)
    hshape, cshape = states_shape(mine, per)
    h0 = torch.randn(examples, *hshape, dtype=DT)
    c0 = torch.randn(examples, *cshape, dtype=DT)

    got = vmap(lambda x, h, c: mine(x, (h, c)))(x, h0, c0)
    got_no_hx = vmap(lambda x: mine(x))(x)
    loops = [ref(x[i], (h0[i], c0[i])) for i in range(examples)]
    loops_no_hx = [ref(x[i]) for i in range(examples)]
    stack = lambda rs: (  # noqa: E731
        torch.stack([r[0] for r in rs]),
        (torch.stack([r[1][0] for r in rs]), torch.stack([r[1][1] for r in rs])),
    )
    assert_tree_close(got, stack(loops))
    assert_tree_close(got_no_hx, stack(loops_no_hx))


def test_vmap_over_a_middle_dimension() -> None:
    """in_dims=1 over a time-major batch: each example is an unbatched (L, H_in) sequence."""
    mine, ref = make_pair(dict(CONFIGS[0][1]))
    x = torch.randn(5, 3, 3, dtype=DT)  # (L, N, H_in)
    out, (h, c) = vmap(lambda s: mine(s), in_dims=1, out_dims=1)(x)
    expected, (eh, ec) = ref(x)  # the batched call is the per-example loop's equal
    assert_tree_close((out, h, c), (expected, eh, ec))


def test_vmap_cell_over_examples() -> None:
    torch.manual_seed(0)
    ref = nn.LSTMCell(3, 4, dtype=DT)
    mine = HandLSTMCell(3, 4, dtype=DT)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=DT)  # 5 examples of (N, H_in)
    h, c = torch.randn(5, 2, 4, dtype=DT), torch.randn(5, 2, 4, dtype=DT)
    got = vmap(lambda x, h, c: mine(x, (h, c)))(x, h, c)
    loop = [ref(x[i], (h[i], c[i])) for i in range(5)]
    assert_tree_close(got, (torch.stack([r[0] for r in loop]), torch.stack([r[1] for r in loop])))
    got_1d = vmap(lambda x: mine(x))(x[:, 0])  # each example unbatched (H_in,)
    loop_1d = [ref(x[i, 0]) for i in range(5)]
    assert_tree_close(got_1d, tuple(torch.stack(t) for t in zip(*loop_1d, strict=True)))


# -- ensembles: vmap over parameter sets ----------------------------------------------------------


def ensemble(config: dict[str, Any], members: int) -> tuple[list[HandLSTM], list[nn.LSTM]]:
    pairs = [make_pair(config, seed) for seed in range(members)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.mark.parametrize("config", [c for _, c in CONFIGS], ids=IDS)
@pytest.mark.parametrize("same_input", [True, False], ids=["shared_input", "input_per_member"])
def test_vmap_ensemble(config: dict[str, Any], same_input: bool) -> None:
    """stack_module_state + functional_call under vmap equals running each member's nn.LSTM."""
    members, refs = ensemble(config, 3)
    params, buffers = stack_module_state(members)  # type: ignore[arg-type]
    base = copy.deepcopy(members[0]).to("meta")
    shape = (2, 5, 3) if members[0].batch_first else (5, 2, 3)
    torch.manual_seed(7)
    if same_input:
        x = torch.randn(shape, dtype=DT)
        inputs = [x] * 3
        in_dims: tuple[int | None, ...] = (0, 0, None)
    else:
        x = torch.randn(3, *shape, dtype=DT)
        inputs = list(x)
        in_dims = (0, 0, 0)

    def run(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Any:
        return functional_call(base, (p, b), (x,))

    got = vmap(run, in_dims=in_dims)(params, buffers, x)
    loop = [r(xi) for r, xi in zip(refs, inputs, strict=True)]
    expected = (
        torch.stack([o for o, _ in loop]),
        (torch.stack([h for _, (h, _) in loop]), torch.stack([c for _, (_, c) in loop])),
    )
    assert_tree_close(got, expected)


def test_vmap_ensemble_times_examples_nested() -> None:
    """vmap over members outside, over examples inside: (K, B) results equal a double loop."""
    config = dict(CONFIGS[0][1])
    members, refs = ensemble(config, 2)
    params, buffers = stack_module_state(members)  # type: ignore[arg-type]
    base = copy.deepcopy(members[0]).to("meta")
    x = torch.randn(3, 5, 2, 3, dtype=DT)  # 3 examples of (L, N, H_in)

    def run(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Any:
        return functional_call(base, (p, b), (x,))

    got = vmap(vmap(run, in_dims=(None, None, 0)), in_dims=(0, 0, None))(params, buffers, x)
    for k, ref in enumerate(refs):
        for i in range(3):
            out, (h, c) = ref(x[i])
            assert_tree_close((got[0][k, i], got[1][0][k, i], got[1][1][k, i]), (out, h, c))


def test_vmap_ensemble_cell() -> None:
    torch.manual_seed(0)
    refs = [nn.LSTMCell(3, 4, dtype=DT) for _ in range(3)]
    cells = [HandLSTMCell(3, 4, dtype=DT) for _ in range(3)]
    for cell, ref in zip(cells, refs, strict=True):
        cell.load_state_dict(ref.state_dict())
    params, buffers = stack_module_state(cells)  # type: ignore[arg-type]
    base = copy.deepcopy(cells[0]).to("meta")
    x = torch.randn(3, 2, 3, dtype=DT)
    got = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))(params, buffers, x)
    loop = [r(x[i]) for i, r in enumerate(refs)]
    assert_tree_close(got, tuple(torch.stack(t) for t in zip(*loop, strict=True)))


# -- per-sample gradients -------------------------------------------------------------------------


def masked_loss(output: Tensor, target: Tensor, length: Tensor) -> Tensor:
    """Squared error over the first ``length`` steps of one unbatched example ``(L, H)``."""
    mask = (torch.arange(output.size(0)) < length).to(output.dtype)  # (L,)
    return ((output - target).square().sum(-1) * mask).sum()


@pytest.mark.parametrize("config", [c for _, c in CONFIGS], ids=IDS)
def test_per_sample_gradients_with_length_masking(config: dict[str, Any]) -> None:
    """vmap(grad(loss)) over examples equals an autograd.grad loop on nn.LSTM, every parameter."""
    mine, ref = make_pair(config)
    examples, length = 4, 5
    h_out = (mine.proj_size or mine.hidden_size) * (2 if mine.bidirectional else 1)
    torch.manual_seed(3)
    x = torch.randn(examples, length, 3, dtype=DT)
    target = torch.randn(examples, length, h_out, dtype=DT)
    lengths = torch.tensor([5, 2, 4, 1])
    params = {k: v.detach() for k, v in mine.named_parameters()}

    def loss(p: dict[str, Tensor], x: Tensor, y: Tensor, n: Tensor) -> Tensor:
        out, _ = functional_call(mine, p, (x.unsqueeze(0 if mine.batch_first else 1),))
        return masked_loss(out.squeeze(0 if mine.batch_first else 1), y, n)

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, target, lengths)
    names = [name for name, _ in ref.named_parameters()]
    assert sorted(per_sample) == sorted(names)
    for i in range(examples):
        xi = x[i].unsqueeze(0 if ref.batch_first else 1)
        out, _ = ref(xi)
        ref_loss = masked_loss(out.squeeze(0 if ref.batch_first else 1), target[i], lengths[i])
        grads = torch.autograd.grad(ref_loss, list(ref.parameters()))
        for name, g in zip(names, grads, strict=True):
            torch.testing.assert_close(per_sample[name][i], g, **TOL, msg=f"{name}, example {i}")
        if not ref.bidirectional:
            # Unidirectional: masking the padded tail equals running the truncated sequence.
            n = int(lengths[i])
            out_t, _ = ref(x[i, :n])
            trunc = torch.autograd.grad((out_t - target[i, :n]).square().sum(), ref.parameters())
            for name, g in zip(names, trunc, strict=True):
                torch.testing.assert_close(per_sample[name][i], g, **TOL)


def test_per_sample_gradients_cell_loop() -> None:
    """A user's time loop over HandLSTMCell: vmap(grad) over examples vs an nn.LSTMCell loop."""
    torch.manual_seed(0)
    ref = nn.LSTMCell(3, 4, dtype=DT)
    mine = HandLSTMCell(3, 4, dtype=DT)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 3, dtype=DT)  # 3 examples, 4 steps each (unbatched)

    def unroll(cell: nn.Module, p: dict[str, Tensor] | None, seq: Tensor) -> Tensor:
        h = c = seq.new_zeros(4)
        total = seq.new_zeros(())
        for step in seq:
            h, c = functional_call(cell, p, (step, (h, c))) if p is not None else cell(step, (h, c))
            total = total + h.square().sum()
        return total

    params = {k: v.detach() for k, v in mine.named_parameters()}
    per_sample = vmap(grad(lambda p, s: unroll(mine, p, s)), in_dims=(None, 0))(params, x)
    for i in range(3):
        grads = torch.autograd.grad(unroll(ref, None, x[i]), list(ref.parameters()))
        for (name, _), g in zip(ref.named_parameters(), grads, strict=True):
            torch.testing.assert_close(per_sample[name][i], g, **TOL)


# -- measured: what nn.LSTM itself does under vmap (the "Works with" table) -----------------------


def test_nn_lstm_vmap_fails_measured() -> None:
    ref = nn.LSTM(3, 4, dtype=DT)
    with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::lstm"):
        vmap(lambda x: ref(x)[0])(torch.randn(2, 5, 3, dtype=DT))


def test_nn_lstm_per_sample_gradients_fail_measured() -> None:
    ref = nn.LSTM(3, 4, dtype=DT)
    params = {k: v.detach() for k, v in ref.named_parameters()}

    def loss(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(ref, p, (x,))[0].sum()

    with pytest.raises(RuntimeError):
        vmap(grad(loss), in_dims=(None, 0))(params, torch.randn(2, 5, 3, dtype=DT))


def test_nn_lstm_cell_vmap_fails_measured() -> None:
    ref = nn.LSTMCell(3, 4, dtype=DT)
    with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::lstm_cell"):
        vmap(lambda x: ref(x)[0])(torch.randn(2, 3, dtype=DT))


def test_nn_lstm_ensemble_vmap_fails_measured() -> None:
    refs = [nn.LSTM(3, 4, dtype=DT) for _ in range(2)]
    params, buffers = stack_module_state(refs)  # type: ignore[arg-type]
    base = copy.deepcopy(refs[0]).to("meta")
    x = torch.randn(5, 2, 3, dtype=DT)
    with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::lstm"):
        vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
