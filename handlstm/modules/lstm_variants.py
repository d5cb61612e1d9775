"""HandLSTM's variant plumbing: from its options to what one forward call runs per layer.

With default options and no per-step records or per-sample tape, :func:`preparation` returns
None and every direction is nn.LSTM's plain cell. Otherwise it returns the ``prepare`` function
of :func:`handlstm.modules.layers.run_layers`: input dropout on the layer's input, then per
direction the weight-drop copy of ``weight_hh`` and the :class:`~handlstm.core.lstm.ScanVariant`
(parameters and this call's masks, drawn in :mod:`handlstm.core.variants`' order), then the
per-sample tape's taps (opacus) where one is set.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..core import variants as _variants
from ..core.kinds import DirectionWeights
from ..core.lstm import ScanVariant
from .layers import Prepare

#: A HandLSTM (not imported: this module is below handlstm.modules.lstm, which imports it).
HandLSTM = Any


def options_default(module: HandLSTM) -> bool:
    """``module.options.is_default``, worked out once per options object (they are frozen)."""
    known = module.__dict__.get("_options_default_for")
    if known is None or known[0] is not module.options:
        known = (module.options, module.options.is_default)
        module.__dict__["_options_default_for"] = known
    return bool(known[1])


def preparation(module: HandLSTM, batch_sizes: list[int] | None, record: bool) -> Prepare | None:
    """The per-layer ``prepare`` of this call, or None when every direction is the plain cell."""
    tape: Any = module.__dict__.get("_per_sample_tape")  # set by per_sample for one opacus call
    if not record and options_default(module) and tape is None:
        return None
    count = module.num_directions

    def prepare(
        layer: int, layer_input: Tensor, layer_weights: list[DirectionWeights]
    ) -> tuple[Tensor, list[DirectionWeights], list[Any]]:
        layer_input = _variants.input_dropout(
            layer_input,
            batch_sizes,
            module.options.input_dropout,
            module.training,
            f"_l{layer}",
        )
        variants: list[Any] = [None] * count
        for d in range(count):
            layer_weights[d], variants[d] = direction_variant(
                module, layer_weights[d], layer, d, layer_input, batch_sizes, record
            )
            if tape is not None:
                layer_weights[d], variants[d] = tape.direction(
                    layer_weights[d], variants[d], batch_sizes
                )
        return layer_input, layer_weights, variants

    return prepare


def direction_variant(
    module: HandLSTM,
    weights: DirectionWeights,
    layer: int,
    direction: int,
    x: Tensor,
    batch_sizes: list[int] | None,
    record: bool,
) -> tuple[DirectionWeights, ScanVariant]:
    """The variant's parameters and this call's masks for one layer and direction.

    Weight drop replaces ``weight_hh`` by a dropped copy for this call only (the Parameter
    and its name are untouched).
    """
    suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    options = module.options
    weight_hh = _variants.drop_weight(
        weights.weight_hh, options.weight_drop, module.training, suffix
    )
    if batch_sizes is None:
        steps, batch = x.size(0), x.size(1)
    else:
        steps, batch = len(batch_sizes), batch_sizes[0]
    variant = _variants.direction_variant(
        options,
        lambda kind: getattr(module, kind + suffix),
        module.training,
        steps,
        batch,
        (module.output_size, module.hidden_size),
        x,
        suffix,
        record,
    )
    return weights._replace(weight_hh=weight_hh), variant
