"""Claim: every variant option computes its paper's equations, on every configuration.

Oracle: tests/variant_reference.py, a float64 loop over time written from the papers, sharing no
code with handlstm; the random masks the package draws are recorded and handed to it. Outputs,
final states, per-step states and every gradient (autograd on each side) are compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from variant_reference import reference_lstm

import handlstm.core.variants as variants_module
from handlstm import HandLSTM
from handlstm.testing import LSTMCase, lstm_cases

TOL = {"rtol": 1e-10, "atol": 1e-10}
STANDARD = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")

# One non-neutral value per option (activations: ones that differ from the defaults).
NON_NEUTRAL: dict[str, Any] = {
    "layer_norm": True,
    "peepholes": True,
    "input_dropout": 0.4,
    "recurrent_dropout": 0.3,
    "weight_drop": 0.5,
    "zoneout_h": 0.3,
    "zoneout_c": 0.6,
    "gate_activation": F.hardsigmoid,
    "cell_activation": F.softsign,
    "cell_clip": 0.4,
    "proj_clip": 0.2,
}


@contextmanager
def recorded_masks() -> Iterator[dict[str, Tensor]]:
    """Record every mask the package draws, by name, while the block runs."""
    masks: dict[str, Tensor] = {}
    original = variants_module.bernoulli

    def record(shape: Any, p: float, like: Tensor, name: str) -> Tensor:
        mask = original(shape, p, like, name)
        assert name not in masks, f"mask {name} drawn twice in one call"
        masks[name] = mask
        return mask

    variants_module.bernoulli = record  # type: ignore[assignment]
    try:
        yield masks
    finally:
        variants_module.bernoulli = original  # type: ignore[assignment]


def randomise_variant_params(module: torch.nn.Module, seed: int) -> None:
    """Give the variant's own parameters non-trivial values (init would make them neutral)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.split("_l")[0] not in STANDARD and name not in STANDARD:
                noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
                param.copy_(noise * 0.5 + (1.0 if name.startswith("ln_weight") else 0.0))


def _to_original_rows(masks: dict[str, Tensor], unsorted: Tensor | None) -> dict[str, Tensor]:
    """Masks are drawn for the packed (sorted) rows; the reference runs in the input's order."""
    if unsorted is None:
        return masks
    out = {}
    for name, mask in masks.items():
        if name.startswith("weight_drop"):
            out[name] = mask
        else:
            out[name] = mask.index_select(1 if name.startswith("zoneout") else 0, unsorted)
    return out


def _leaves(case: LSTMCase) -> tuple[Tensor, Any, tuple[Tensor, Tensor] | None]:
    """A leaf for the input data, the module's input built from it, and leaf hx."""
    if isinstance(case.input, PackedSequence):
        data = case.input.data.detach().clone().requires_grad_(True)
        packed = case.input
        module_input: Any = PackedSequence(
            data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )
    else:
        data = case.input.detach().clone().requires_grad_(True)
        module_input = data
    hx = None
    if case.hx is not None:
        h, c = (t.detach().clone().requires_grad_(True) for t in case.hx)
        hx = (h, c)
    return data, module_input, hx


def _time_major(case: LSTMCase, module_input: Any, batch_first: bool) -> tuple[Tensor, list[int]]:
    if isinstance(module_input, PackedSequence):
        padded, lengths = pad_packed_sequence(module_input)
        return padded, [int(n) for n in lengths]
    if module_input.dim() == 2:
        return module_input.unsqueeze(1), [module_input.size(0)]
    x = module_input.transpose(0, 1) if batch_first else module_input
    return x, [x.size(0)] * x.size(1)


def _module_time_major(case: LSTMCase, output: Any, batch_first: bool) -> Tensor:
    if isinstance(output, PackedSequence):
        return pad_packed_sequence(output)[0]
    if case.kind == "unbatched":
        return output.unsqueeze(1)
    return output.transpose(0, 1) if batch_first else output


def _hx_full(case: LSTMCase, hx: tuple[Tensor, Tensor] | None, module: HandLSTM, n: int) -> Any:
    if hx is None:
        states = module.num_layers * module.num_directions
        dtype = case.dtype
        return (
            torch.zeros(states, n, module.output_size, dtype=dtype),
            torch.zeros(states, n, module.hidden_size, dtype=dtype),
        )
    return (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if case.kind == "unbatched" else hx


def check_against_reference(
    case: LSTMCase, options: dict[str, Any], training: bool, seed: int, states: bool = False
) -> None:
    """Package vs reference: output, h_n, c_n (+ per-step states), and every gradient."""
    config = dict(case.config, dropout=0.0)
    torch.manual_seed(seed)
    module = HandLSTM(**config, dtype=case.dtype, **options)
    randomise_variant_params(module, seed)
    module.train(training)
    data, module_input, hx = _leaves(case)
    with recorded_masks() as masks:
        if states:
            result = module.forward_with_states(module_input, hx)
            output, h_n, c_n = result.output, result.h_n, result.c_n
        else:
            output, (h_n, c_n) = module(module_input, hx)
    if not training:
        assert masks == {}, f"masks drawn in eval mode: {sorted(masks)}"
    unsorted = getattr(module_input, "unsorted_indices", None)
    x, lengths = _time_major(case, module_input, config["batch_first"])
    h0, c0 = _hx_full(case, hx, module, x.size(1))
    params = dict(module.named_parameters())
    ref = reference_lstm(
        params, config, options, x, lengths, h0, c0, _to_original_rows(masks, unsorted), training
    )
    out = _module_time_major(case, output, config["batch_first"])
    if case.kind == "unbatched":
        h_n, c_n = h_n.unsqueeze(1), c_n.unsqueeze(1)
    torch.testing.assert_close(out, ref["output"], **TOL)
    torch.testing.assert_close(h_n, ref["h_n"], **TOL)
    torch.testing.assert_close(c_n, ref["c_n"], **TOL)
    assert torch.isfinite(out).all()
    if states:
        _check_states(case, module_input, result, ref, config["batch_first"])

    generator = torch.Generator().manual_seed(seed + 1)
    weights = [torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in (out, h_n, c_n)]
    leaves = [data, *(hx or ()), *params.values()]
    names = ["input", "h0", "c0"][: 1 + len(hx or ())] + list(params)

    def grads(tensors: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
        loss = sum((t * w).sum() for t, w in zip(tensors, weights, strict=True))
        return torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)

    mine = grads((out, h_n, c_n))
    theirs = grads((ref["output"], ref["h_n"], ref["c_n"]))
    for name, a, e in zip(names, mine, theirs, strict=True):
        if a is None or e is None:
            assert a is None and e is None, f"gradient of {name}: one side is None"
            continue
        torch.testing.assert_close(a, e, **TOL, msg=lambda m, n=name: f"grad {n}: {m}")


def _check_states(
    case: LSTMCase, module_input: Any, result: Any, ref: dict[str, Tensor], batch_first: bool
) -> None:
    for key in ("hiddens", "cells", "gates"):
        got, want = getattr(result, key), ref[key]  # want: (D*layers, L, N, F)
        if isinstance(module_input, PackedSequence):
            order = module_input.sorted_indices
            lengths = pad_packed_sequence(module_input)[1]
            if order is not None:
                want, lengths = want.index_select(2, order), lengths.index_select(0, order)
            want = torch.stack([pack_padded_sequence(w, lengths).data for w in want])
        elif case.kind == "unbatched":
            want = want.squeeze(2)
        elif batch_first:
            want = want.transpose(1, 2)
        torch.testing.assert_close(got, want, **TOL, msg=lambda m, k=key: f"{k}: {m}")


def _usable(options: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    if config["proj_size"] == 0:
        options = {k: v for k, v in options.items() if k != "proj_clip"}
    if not config["bias"]:
        options = {k: v for k, v in options.items() if k != "forget_bias"}
    return options


# -- neutral values are nn.LSTM --------------------------------------------------------------

NEUTRAL: dict[str, Any] = {
    "layer_norm": False,
    "peepholes": False,
    "input_dropout": 0.0,
    "recurrent_dropout": 0.0,
    "weight_drop": 0.0,
    "zoneout_h": 0.0,
    "zoneout_c": 0.0,
    "forget_bias": None,
    "gate_activation": torch.sigmoid,
    "cell_activation": torch.tanh,
    "cell_clip": None,
    "proj_clip": None,
}


@settings(max_examples=25)
@given(case=lstm_cases(max_size=5, max_layers=2, max_len=5, max_batch=3), training=st.booleans())
def test_neutral_options_equal_nn_lstm(case: LSTMCase, training: bool) -> None:
    from handlstm.testing import assert_lstm_close

    expected = case.make(torch.nn.LSTM).train(training)
    actual = case.make(HandLSTM, state_dict=expected.state_dict(), **NEUTRAL).train(training)
    assert actual.variant_options() == {}
    assert list(actual.state_dict()) == list(expected.state_dict())
    assert_lstm_close(actual, expected, case.input, case.hx)


# -- each option, and combinations, against the reference ------------------------------------

CASES = lstm_cases(max_size=4, max_layers=2, max_len=4, max_batch=3)


@pytest.mark.parametrize("name", sorted(NON_NEUTRAL))
@settings(max_examples=6)
@given(case=CASES, training=st.booleans(), seed=st.integers(0, 2**16))
def test_each_option_matches_reference(
    name: str, case: LSTMCase, training: bool, seed: int
) -> None:
    options = _usable({name: NON_NEUTRAL[name]}, case.config)
    check_against_reference(case, options, training, seed)


@st.composite
def option_sets(draw: st.DrawFn) -> dict[str, Any]:
    """A random combination of options, each at a neutral or non-neutral value."""
    values: dict[str, Any] = {
        "layer_norm": st.booleans(),
        "peepholes": st.booleans(),
        "input_dropout": st.sampled_from([0.0, 0.5, 1.0]),
        "recurrent_dropout": st.sampled_from([0.0, 0.3, 1.0]),
        "weight_drop": st.sampled_from([0.0, 0.5]),
        "zoneout_h": st.sampled_from([0.0, 0.3, 1.0]),
        "zoneout_c": st.sampled_from([0.0, 0.5]),
        "forget_bias": st.sampled_from([None, 1.0]),
        "gate_activation": st.sampled_from([torch.sigmoid, F.hardsigmoid]),
        "cell_activation": st.sampled_from([torch.tanh, F.softsign]),
        "cell_clip": st.sampled_from([None, 0.5]),
        "proj_clip": st.sampled_from([None, 0.3]),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(values)), max_size=6, unique=True))
    return {name: draw(values[name]) for name in chosen}


@settings(max_examples=30)
@given(case=CASES, options=option_sets(), training=st.booleans(), seed=st.integers(0, 2**16))
def test_option_combinations_match_reference(
    case: LSTMCase, options: dict[str, Any], training: bool, seed: int
) -> None:
    options = _usable(options, case.config)
    check_against_reference(case, options, training, seed)


@settings(max_examples=12)
@given(case=CASES, options=option_sets(), training=st.booleans(), seed=st.integers(0, 2**16))
def test_per_step_states_match_reference(
    case: LSTMCase, options: dict[str, Any], training: bool, seed: int
) -> None:
    options = _usable(options, case.config)
    check_against_reference(case, options, training, seed, states=True)


@settings(max_examples=15)
@given(case=CASES, options=option_sets(), seed=st.integers(0, 2**16))
def test_eval_is_deterministic_and_forward_unchanged(
    case: LSTMCase, options: dict[str, Any], seed: int
) -> None:
    torch.manual_seed(seed)
    module = case.make(HandLSTM, **_usable(options, case.config)).eval()
    randomise_variant_params(module, seed)
    first = module(case.input, case.hx)
    second = module(case.input, case.hx)
    states = module.forward_with_states(case.input, case.hx)
    out1 = first[0].data if isinstance(first[0], PackedSequence) else first[0]
    out2 = second[0].data if isinstance(second[0], PackedSequence) else second[0]
    out3 = states.output.data if isinstance(states.output, PackedSequence) else states.output
    assert torch.equal(out1, out2)
    assert torch.equal(first[1][0], second[1][0]) and torch.equal(first[1][1], second[1][1])
    # forward may take the fast path (default options); forward_with_states never does
    torch.testing.assert_close(out3, out1, **TOL)
    torch.testing.assert_close(states.h_n, first[1][0], **TOL)
    torch.testing.assert_close(states.c_n, first[1][1], **TOL)
    assert all(torch.isfinite(t).all() for t in (out1, states.cells, states.gates))
    # the last layer's hiddens are the output, direction by direction
    dirs = module.num_directions
    last = states.hiddens[-dirs:]
    joined = torch.cat(list(last), -1)
    torch.testing.assert_close(joined, out3, rtol=0, atol=0)


# -- the training example learns ------------------------------------------------------------


def test_training_example_learns_the_adding_problem() -> None:
    """examples/variants_train.py (layer norm + recurrent dropout) beats the trivial answer."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "variants_train.py"
    spec = importlib.util.spec_from_file_location("variants_train", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = example.main(steps=100, length=10, hidden=24)
    finally:
        torch.set_num_threads(threads)
    assert result["mse_after"] < example.TRIVIAL_MSE / 4, result
    assert result["mse_after"] < result["mse_before"] / 10, result


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_input_dropout_in_training_on_packed_input_matches_reference(
    enforce_sorted: bool, num_layers: int
) -> None:
    """A fixed example (the fuzz covers it only on some draws): masks on the packed rows."""
    gen = torch.Generator().manual_seed(3)
    lengths = [4, 3, 1] if enforce_sorted else [3, 4, 1]
    x = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    config = dict(
        input_size=3, hidden_size=4, num_layers=num_layers, bias=True, batch_first=False,
        dropout=0.0, bidirectional=True, proj_size=0,
    )  # fmt: skip
    h0 = torch.randn(2 * num_layers, 3, 4, generator=gen, dtype=torch.float64)
    c0 = torch.randn(2 * num_layers, 3, 4, generator=gen, dtype=torch.float64)
    case = LSTMCase(
        config, packed, (h0, c0), "packed_sorted" if enforce_sorted else "packed_unsorted",
        torch.float64, lengths,
    )  # fmt: skip
    check_against_reference(case, {"input_dropout": 0.5}, training=True, seed=11)
