"""Claim: variant options are a well-behaved part of the module's contract.

Validation names the option and its range; parameters follow nn.LSTM's naming after its own;
an nn.LSTM checkpoint loads with strict=False; init draws the standard parameters exactly like
nn.LSTM; options survive repr, state_dict round trips, deepcopy, pickling and .to(); dropout-style
options draw one mask per sequence, fresh per call, none in eval, with the right kept fraction.
"""

from __future__ import annotations

import copy
import io
import itertools
import math
import pickle
from typing import Any

import pytest
import torch
from test_variants import NON_NEUTRAL, randomise_variant_params, recorded_masks
from torch import nn

import handlstm.core.variants as variants_module
from handlstm import HandLSTM, HandLSTMCell

CONFIGS = [
    {"num_layers": 1, "bidirectional": False, "proj_size": 0},
    {"num_layers": 2, "bidirectional": True, "proj_size": 0},
    {"num_layers": 2, "bidirectional": True, "proj_size": 2},
]
ALL_OPTIONS: dict[str, Any] = dict(NON_NEUTRAL, forget_bias=1.0)


def _variant(config: dict[str, Any], **options: Any) -> HandLSTM:
    return HandLSTM(3, 4, dtype=torch.float64, **config, **options)


# -- validation ------------------------------------------------------------------------------

BAD: list[tuple[str, Any, type[Exception], str]] = [
    *[
        (name, value, ValueError, "[0, 1]")
        for name in ("input_dropout", "recurrent_dropout", "weight_drop", "zoneout_h", "zoneout_c")
        for value in (-0.1, 1.5)
    ],
    ("recurrent_dropout", True, TypeError, "real number"),
    ("zoneout_h", "0.1", TypeError, "real number"),
    ("cell_clip", 0.0, ValueError, "> 0"),
    ("cell_clip", -1.0, ValueError, "> 0"),
    ("proj_clip", -2.0, ValueError, "> 0"),
    ("cell_clip", math.inf, ValueError, "finite"),
    ("gate_activation", 3, TypeError, "callable"),
    ("cell_activation", "tanh", TypeError, "callable"),
    ("layer_norm", 1, TypeError, "bool"),
    ("peepholes", "yes", TypeError, "bool"),
    ("forget_bias", "1", TypeError, "real number"),
    ("forget_bias", math.nan, ValueError, "finite"),
    ("no_such_option", 1, TypeError, "valid variant options"),
]


@pytest.mark.parametrize(("name", "value", "error", "hint"), BAD)
def test_bad_option_values_raise_naming_the_option(
    name: str, value: Any, error: type[Exception], hint: str
) -> None:
    with pytest.raises(error, match=name) as raised:
        HandLSTM(3, 4, proj_size=2, **{name: value})
    assert hint in str(raised.value)


def test_options_the_configuration_cannot_use_are_refused() -> None:
    with pytest.raises(ValueError, match="proj_clip.*proj_size > 0"):
        HandLSTM(3, 4, proj_clip=1.0)
    with pytest.raises(ValueError, match="forget_bias.*bias=True"):
        HandLSTM(3, 4, bias=False, forget_bias=1.0)
    for name in ("input_dropout", "recurrent_dropout", "weight_drop", "proj_clip"):
        with pytest.raises(TypeError, match=name):
            HandLSTMCell(3, 4, **{name: 0.5})


def test_positional_options_are_not_accepted() -> None:
    with pytest.raises(TypeError):
        HandLSTM(3, 4, 1, True, False, 0.0, False, 0, None, None, True)  # type: ignore[call-arg]


# -- parameters and state dict ---------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_variant_parameters_follow_nn_lstm_names_after_its_own(config: dict[str, Any]) -> None:
    reference = nn.LSTM(3, 4, **config)
    module = _variant(config, layer_norm=True, peepholes=True)
    keys = list(module.state_dict())
    standard = list(reference.state_dict())
    assert keys[: len(standard)] == standard
    extra = keys[len(standard) :]
    kinds = ["ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c"]
    kinds += ["weight_ci", "weight_cf", "weight_co"]
    suffixes = [
        f"_l{layer}{'_reverse' if d else ''}"
        for layer, d in itertools.product(
            range(config["num_layers"]), range(2 if config["bidirectional"] else 1)
        )
    ]
    assert extra == [kind + suffix for suffix in suffixes for kind in kinds]


@pytest.mark.parametrize("config", CONFIGS)
def test_nn_lstm_checkpoint_loads_with_strict_false(config: dict[str, Any]) -> None:
    source = nn.LSTM(3, 4, dtype=torch.float64, **config)
    module = _variant(config, layer_norm=True, peepholes=True, recurrent_dropout=0.2)
    result = module.load_state_dict(source.state_dict(), strict=False)
    own = [k for k in module.state_dict() if k not in source.state_dict()]
    assert sorted(result.missing_keys) == sorted(own) and own
    assert result.unexpected_keys == []
    for key, value in source.state_dict().items():
        assert torch.equal(module.state_dict()[key], value)
    with pytest.raises(RuntimeError, match="Missing key"):
        module.load_state_dict(source.state_dict())


def test_loaded_checkpoint_with_neutral_variant_params_equals_nn_lstm() -> None:
    """Gains 1, shifts 0, peepholes 0 from init: a peephole model starts as the plain LSTM."""
    source = nn.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    module = HandLSTM(3, 4, num_layers=2, dtype=torch.float64, peepholes=True)
    module.load_state_dict(source.state_dict(), strict=False)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(module(x)[0], source(x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", CONFIGS)
def test_reset_parameters_draws_standard_parameters_like_nn_lstm(config: dict[str, Any]) -> None:
    torch.manual_seed(7)
    reference = nn.LSTM(3, 4, dtype=torch.float64, **config)
    torch.manual_seed(7)
    module = _variant(config, layer_norm=True, peepholes=True, forget_bias=1.0)
    after = torch.rand(1)
    torch.manual_seed(7)
    nn.LSTM(3, 4, dtype=torch.float64, **config)
    assert torch.equal(after, torch.rand(1)), "variant init drew from the generator"
    state = module.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("bias_"):
            q = value.numel() // 4
            expected = value.clone()
            expected[q : 2 * q] = 1.0 if key.startswith("bias_ih") else 0.0
            assert torch.equal(state[key], expected), key
        else:
            assert torch.equal(state[key], value), key
    for key, value in state.items():
        if key.startswith("ln_weight"):
            assert torch.equal(value, torch.ones_like(value)), key
        elif key.startswith(("ln_bias", "weight_c")):
            assert torch.equal(value, torch.zeros_like(value)), key


def test_forget_bias_is_init_only() -> None:
    module = HandLSTM(3, 4, forget_bias=2.0)
    assert module.variant_options() == {}
    assert "forget_bias=2.0" in repr(module)
    cell = HandLSTMCell(3, 4, forget_bias=1.0)
    assert torch.equal(cell.bias_ih[4:8], torch.ones(4))
    assert torch.equal(cell.bias_hh[4:8], torch.zeros(4))


def test_weight_drop_keeps_parameter_names_and_values() -> None:
    module = _variant(CONFIGS[1], weight_drop=0.5)
    names = [name for name, _ in module.named_parameters()]
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.train()
    module(torch.randn(4, 2, 3, dtype=torch.float64))[0].sum().backward()
    assert names == list(nn.LSTM(3, 4, **CONFIGS[1]).state_dict())
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key
        assert getattr(module, key).grad is not None


# -- persistence -----------------------------------------------------------------------------


def _eval_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    module.eval()
    return module(x)[0]


@pytest.mark.parametrize("config", CONFIGS)
def test_options_survive_repr_copy_pickle_to_and_state_dict(config: dict[str, Any]) -> None:
    options = dict(ALL_OPTIONS)
    if config["proj_size"] == 0:
        del options["proj_clip"]
    module = _variant(config, **options)
    randomise_variant_params(module, 3)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = _eval_output(module, x)
    text = repr(module)
    for name in options:
        assert f"{name}=" in text, name
    assert "gate_activation=torch.nn.functional.hardsigmoid" in text
    assert set(module.variant_options()) == set(options) - {"forget_bias"}

    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    copies = [
        copy.deepcopy(module),
        pickle.loads(pickle.dumps(module)),
        torch.load(buffer, weights_only=False),
    ]
    rebuilt = _variant(config, **options)
    rebuilt.load_state_dict(module.state_dict())
    copies.append(rebuilt)
    for other in copies:
        assert other.options == module.options
        assert repr(other) == text
        torch.testing.assert_close(_eval_output(other, x), expected, rtol=1e-12, atol=1e-12)
    single = copy.deepcopy(module).to(torch.float32)
    assert single.options == module.options and repr(single) == text
    assert all(p.dtype == torch.float32 for p in single.parameters())
    torch.testing.assert_close(_eval_output(single, x.float()), expected.float())


def test_lambdas_work_but_do_not_pickle() -> None:
    module = HandLSTM(3, 4, cell_activation=lambda t: torch.tanh(t) * 0.5)
    module(torch.randn(2, 1, 3))
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(module)


def test_to_torch_is_refused_for_variants() -> None:
    for options in ({"layer_norm": True}, {"recurrent_dropout": 0.1}, {"cell_clip": 1.0}):
        with pytest.raises(ValueError, match=next(iter(options))):
            HandLSTM(3, 4, **options).to_torch()
    assert isinstance(HandLSTM(3, 4, forget_bias=1.0).to_torch(), nn.LSTM)
    with pytest.raises(ValueError, match="peepholes"):
        HandLSTMCell(3, 4, peepholes=True).to_torch()


# -- dropout-style options: masks --------------------------------------------------------------

DROPOUTS = ("input_dropout", "recurrent_dropout", "weight_drop", "zoneout_h", "zoneout_c")


def _masks(module: HandLSTM, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with recorded_masks() as masks:
        module(x)
    return masks


@pytest.mark.parametrize("name", DROPOUTS)
def test_one_mask_per_sequence_fresh_per_call_none_in_eval(name: str) -> None:
    module = _variant(CONFIGS[2], **{name: 0.3}).train()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    first, second = _masks(module, x), _masks(module, x)
    expected_shapes = {
        "input_dropout": {"input_dropout_l0": (3, 3), "input_dropout_l1": (3, 4)},
        "recurrent_dropout": {f"recurrent_dropout{s}": (3, 2) for s in _suffixes()},
        "weight_drop": {f"weight_drop{s}": (16, 2) for s in _suffixes()},
        "zoneout_h": {f"zoneout_h{s}": (6, 3, 2) for s in _suffixes()},
        "zoneout_c": {f"zoneout_c{s}": (6, 3, 4) for s in _suffixes()},
    }[name]
    assert {k: tuple(v.shape) for k, v in first.items()} == expected_shapes
    assert any(not torch.equal(first[k], second[k]) for k in first), "masks reused across calls"
    out1, out2 = module(x)[0], module(x)[0]
    assert not torch.equal(out1, out2)
    module.eval()
    assert _masks(module, x) == {}


def _suffixes() -> list[str]:
    return ["_l0", "_l0_reverse", "_l1", "_l1_reverse"]


@pytest.mark.parametrize("name", DROPOUTS)
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_kept_fraction_is_binomial(name: str, p: float) -> None:
    """Fraction of units dropped (or zoned out, i.e. kept from the previous step) ~ p."""
    module = HandLSTM(40, 50, dtype=torch.float64, **{name: p}).train()
    torch.manual_seed(1)
    masks = _masks(module, torch.randn(20, 40, 40, dtype=torch.float64))
    (mask,) = masks.values()
    hits = mask.sum().item()
    n = mask.numel()
    keep = p if name.startswith("zoneout") else 1 - p  # probability of a 1 in the raw mask
    assert abs(hits - n * keep) < 5 * math.sqrt(n * keep * (1 - keep)), (hits, n, keep)


def test_dropout_scaling_and_extremes_through_forward() -> None:
    """Input dropout 1 removes the input; recurrent dropout 1 cuts W_hh; weight drop 1 too;
    zoneout_h 1 keeps h at h0; zoneout in eval is its expectation."""
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(0)
    base = HandLSTM(3, 4, dtype=torch.float64).train()
    no_input = base(torch.zeros_like(x))[0]
    torch.manual_seed(0)
    dropped = HandLSTM(3, 4, dtype=torch.float64, input_dropout=1.0).train()
    torch.testing.assert_close(dropped(x)[0], no_input, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        cut = HandLSTM(3, 4, dtype=torch.float64)
        cut.load_state_dict(base.state_dict())
        cut.weight_hh_l0.zero_()
    for name in ("recurrent_dropout", "weight_drop"):
        module = HandLSTM(3, 4, dtype=torch.float64, **{name: 1.0}).train()
        module.load_state_dict(base.state_dict())
        torch.testing.assert_close(module(x)[0], cut(x)[0], rtol=1e-12, atol=1e-12)
    h0 = torch.randn(1, 2, 4, dtype=torch.float64)
    c0 = torch.randn(1, 2, 4, dtype=torch.float64)
    frozen = HandLSTM(3, 4, dtype=torch.float64, zoneout_h=1.0, zoneout_c=1.0).train()
    out, (h_n, c_n) = frozen(x, (h0, c0))
    assert torch.equal(out, h0.expand(5, 2, 4)) and torch.equal(c_n, c0)


def test_zoneout_eval_is_the_expectation_of_training() -> None:
    """One step: the mean over many training draws approaches the eval output."""
    torch.manual_seed(0)
    module = HandLSTM(3, 4, dtype=torch.float64, zoneout_h=0.4, zoneout_c=0.3)
    x = torch.randn(1, 1, 3, dtype=torch.float64).expand(1, 4000, 3)
    h0 = torch.randn(1, 1, 4, dtype=torch.float64).expand(1, 4000, 4)
    c0 = torch.randn(1, 1, 4, dtype=torch.float64).expand(1, 4000, 4)
    train_h = module.train()(x, (h0, c0))[1][0].mean(1)
    eval_h = module.eval()(x, (h0, c0))[1][0].mean(1)
    torch.testing.assert_close(train_h, eval_h, rtol=0, atol=0.05)


def test_masks_follow_the_input_device_and_dtype() -> None:
    mask = variants_module.dropout_mask((3, 2), 0.5, torch.zeros(1, dtype=torch.float32), "x")
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 2.0}
