"""opacus's ``DPLSTM`` and ``DPLSTMCell`` in :func:`~handlstm.swap_lstms`: checkpoints keep loading.

A swapped opacus layer must keep what a checkpoint of it depends on, or yesterday's model and
optimizer states stop loading:

* **parameter order.** DPLSTM registers weight_ih, bias_ih, weight_hh, bias_hh per layer and
  direction, DPLSTMCell ih.weight, ih.bias, hh.weight, hh.bias; nn.LSTM and HandLSTM register
  weight_ih, weight_hh, bias_ih, bias_hh. An optimizer's state dict refers to parameters by
  their index in ``model.parameters()``, so the replacement keeps the source's order
  (:func:`keep_order`, for every swapped module): an optimizer state saved before the swap loads
  into an optimizer built over the swapped model, and DP noise is drawn in the same order.
* **state-dict keys.** Inside a model, DPLSTM's state dict holds nn.LSTM's keys *and* its cells'
  aliases (``l0.ih.weight``, ...: opacus filters them out only when the DPLSTM is the root of the
  ``state_dict()`` call). :class:`LegacyKeys` gives the replacement the same keys in the same
  order and lets it load DPLSTM's state dicts and nn.LSTM's. DPLSTMCell's keys (``ih.weight``)
  become nn.LSTMCell's (``weight_ih``), since a ``HandLSTMCell.to_torch()`` copies through the
  state dict; the cell still loads DPLSTMCell's state dicts.

These hooks are picklable objects, copied with the module by ``copy.deepcopy`` and carried to an
nn.LSTM when the module is swapped back (:func:`carry`). opacus is never imported here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = [
    "Cannot",
    "LegacyKeys",
    "carry",
    "dp_classes",
    "dp_parameters",
    "extra_state",
    "keep_order",
]

_ATTR = "_handlstm_legacy_keys"  # on a swapped module: its LegacyKeys


class Cannot(Exception):
    """Planning found that this module cannot be swapped; the message is the reason."""


def dp_classes() -> tuple[type[nn.Module] | None, type[nn.Module] | None]:
    """opacus's DPLSTM and DPLSTMCell if opacus is already imported (a model holding them has
    imported it), else None: opacus is never imported here."""
    dp_rnn = sys.modules.get("opacus.layers.dp_rnn")
    if dp_rnn is None:
        return None, None
    return getattr(dp_rnn, "DPLSTM", None), getattr(dp_rnn, "DPLSTMCell", None)


class LegacyKeys:
    """State-dict hooks of a swapped opacus layer (picklable: no closure, no module reference).

    Args:
        aliases: opacus's key -> torch's parameter name, in the order opacus's state dict
            lists the opacus keys.
        emit: add the opacus keys to ``state_dict()`` as DPLSTM does (after the module's own,
            holding the same tensors, unless the module is the root of the call).
    """

    def __init__(self, aliases: Mapping[str, str], emit: bool) -> None:
        self.aliases = dict(aliases)
        self.emit = emit

    def state_dict_post_hook(
        self, module: nn.Module, state_dict: dict[str, Any], prefix: str, metadata: Any
    ) -> None:
        if not self.emit:
            return
        for old, new in self.aliases.items():
            # opacus's filter_out_old_keys drops a key only if it is, prefix and all, an alias
            if prefix + old not in self.aliases and prefix + new in state_dict:
                state_dict[prefix + old] = state_dict[prefix + new]

    def load_pre_hook(
        self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
    ) -> None:
        for old, new in self.aliases.items():
            if prefix + old in state_dict:  # as in opacus: the alias (loaded last there) wins
                state_dict[prefix + new] = state_dict.pop(prefix + old)

    def register(self, module: nn.Module) -> None:
        module.register_state_dict_post_hook(_Hook(self, "state_dict_post_hook"))
        module.register_load_state_dict_pre_hook(_Hook(self, "load_pre_hook"))
        module.__dict__[_ATTR] = self


class _Hook:
    """One of :class:`LegacyKeys`' methods as a hook object (torch marks each hook with an
    attribute, which a bound method cannot take; a closure could not be pickled)."""

    def __init__(self, keys: LegacyKeys, method: str) -> None:
        self.keys = keys
        self.method = method

    def __call__(self, *args: Any) -> None:
        getattr(self.keys, self.method)(*args)


def carry(old: nn.Module, new: nn.Module) -> str:
    """Register ``old``'s :class:`LegacyKeys` (if any) on ``new``; the note for the report."""
    keys: LegacyKeys | None = old.__dict__.get(_ATTR)
    if keys is None:
        return ""
    keys.register(new)
    return "keeps the parameter order and state-dict keys of the opacus layer it replaced"


def keep_order(new: nn.Module, old: nn.Module) -> None:
    """Reorder ``new``'s parameters (the same objects as ``old``'s) into ``old``'s order."""
    order = {id(p): i for i, p in enumerate(old.parameters())}
    params = new._parameters
    names = sorted(params, key=lambda name: order.get(id(params[name]), len(order)))
    for name in names:
        params[name] = params.pop(name)


def extra_state(module: nn.Module, allowed: set[str]) -> list[str]:
    """What ``module`` holds beyond the parameter names ``allowed``: state a swap would drop."""
    extra = [
        f"parameter {name}"
        for name, _ in module.named_parameters(remove_duplicate=False)
        if name not in allowed
    ]
    extra += [f"buffer {name}" for name, _ in module.named_buffers(remove_duplicate=False)]
    extra += [
        f"extra state of {path or 'the module'}"
        for path, sub in module.named_modules()
        if type(sub).get_extra_state is not nn.Module.get_extra_state
    ]
    return extra


def dp_parameters(
    module: nn.Module, names: list[str], cell: bool
) -> tuple[dict[str, nn.Parameter], LegacyKeys, str]:
    """An opacus layer's Parameters under torch's ``names``, its :class:`LegacyKeys` and the
    report's note; raises :class:`Cannot` if it holds anything else."""
    if cell:  # DPLSTMCell: ih.weight, ih.bias, hh.weight, hh.bias
        found = dict(module.named_parameters())
        aliases = {f"{n.split('_')[1]}.{n.split('_')[0]}": n for n in names}
        if set(found) != set(aliases):
            raise Cannot(f"holds {sorted(found)}, expected {sorted(aliases)}")
        params = {aliases[old]: found[old] for old in found}
        ordered = {old: aliases[old] for old in found}
        note = (
            "state-dict keys change from DPLSTMCell's (ih.weight, ...) to nn.LSTMCell's "
            "(weight_ih, ...); DPLSTMCell state dicts still load; parameter order kept "
            "(weight_ih, bias_ih, weight_hh, bias_hh), so its optimizer states load"
        )
        allowed = set(aliases)
        keys = LegacyKeys(ordered, emit=False)
    else:  # DPLSTM registers nn.LSTM's names itself, its cells' l0.ih.weight, ... alias them
        own = {name: module._parameters.get(name) for name in names}
        if not all(isinstance(p, nn.Parameter) for p in own.values()):
            raise Cannot(f"does not hold nn.LSTM's parameters {names} under their names")
        by_id = {id(p): name for name, p in own.items()}
        aliases = {
            name: by_id[id(p)]
            for name, p in module.named_parameters(remove_duplicate=False)
            if name not in own and id(p) in by_id
        }
        params = {name: p for name, p in module.named_parameters() if name in own}  # type: ignore[misc]
        if set(params) != set(names):
            raise Cannot(f"holds {sorted(params)}, expected {sorted(names)}")
        note = (
            "parameter order (weight_ih, bias_ih, weight_hh, bias_hh per layer) and state-dict "
            "keys (l0.ih.weight-style aliases included) kept as DPLSTM's: its checkpoints and "
            "optimizer states load as they are; nn.LSTM state dicts load too"
        )
        allowed = set(names) | set(aliases)
        keys = LegacyKeys(aliases, emit=True)
    extra = extra_state(module, allowed)
    if extra:
        raise Cannot(f"holds state beyond the LSTM's own ({', '.join(extra)}): a swap drops it")
    return params, keys, note
