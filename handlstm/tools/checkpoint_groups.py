"""Recurrent-module parameter groups in a flat state dict: which keys form an LSTM or an
LSTMCell, with what configuration (inferred from key names and shapes), and what is wrong.

:func:`find_lstm_groups` never raises on a malformed group: it reports its problems.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LSTMGroup", "find_lstm_groups"]


_PLAIN = "weight_ih|weight_hh|bias_ih|bias_hh|weight_hr"
# HandLSTM's variant parameters (handlstm.core.variants.variant_param_shapes), per option.
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
