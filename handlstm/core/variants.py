"""From the options object to what one forward call needs: parameters, initialisation, masks.

The modules call in here only when an option is not neutral (or per-step states are asked for);
with default options none of this runs and the default path (and any fast path) is nn.LSTM's.

Every random mask of a call is drawn by :func:`bernoulli`, in this order: for each layer, the
input-dropout mask; then for each direction, the weight-drop mask, the recurrent-dropout mask,
the zoneout masks of h and of c (all steps at once). Masks are drawn from torch's default
generator for the input's device, in the input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .lstm import CellVariant, ScanVariant, StepNoise
from .options import LSTMOptions

ParamGetter = Callable[[str], Tensor | None]


def variant_param_shapes(options: LSTMOptions, hidden_size: int) -> list[tuple[str, int]]:
    """``(kind, size)`` of each variant parameter of one layer and direction, in order.

    Layer norm: ``ln_weight_ih``, ``ln_weight_hh`` (4*H_cell), ``ln_weight_c``, ``ln_bias_c``
    (H_cell). Peepholes: ``weight_ci``, ``weight_cf``, ``weight_co`` (H_cell).
    """
    shapes: list[tuple[str, int]] = []
    if options.layer_norm:
        shapes += [("ln_weight_ih", 4 * hidden_size), ("ln_weight_hh", 4 * hidden_size)]
        shapes += [("ln_weight_c", hidden_size), ("ln_bias_c", hidden_size)]
    if options.peepholes:
        shapes += [("weight_ci", hidden_size), ("weight_cf", hidden_size)]
        shapes += [("weight_co", hidden_size)]
    return shapes


@torch.no_grad()
def init_variant_param(kind: str, param: Tensor) -> None:
    """Layer-norm gains 1, its shift 0, peepholes 0 (so a fresh variant starts from the plain
    LSTM's gates); draws nothing from the random generator."""
    if kind.startswith("ln_weight"):
        nn.init.ones_(param)
    else:
        nn.init.zeros_(param)


@torch.no_grad()
def init_forget_bias(bias_ih: Tensor | None, bias_hh: Tensor | None, value: float) -> None:
    """Forget block (the second quarter) of ``bias_ih`` to ``value``, of ``bias_hh`` to 0."""
    if bias_ih is None or bias_hh is None:
        return
    hidden = bias_ih.size(0) // 4
    bias_ih[hidden : 2 * hidden].fill_(value)
    bias_hh[hidden : 2 * hidden].zero_()


def bernoulli(shape: Sequence[int], p: float, like: Tensor, name: str) -> Tensor:
    """A tensor of 0/1 with 1 drawn with probability ``p``, in ``like``'s dtype and device.

    ``name`` says what the mask is for (e.g. ``"recurrent_dropout_l0_reverse"``), so tests can
    record the masks a call drew.
    """
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device).bernoulli_(p)


def dropout_mask(shape: Sequence[int], p: float, like: Tensor, name: str) -> Tensor:
    """An inverted-dropout mask: 0 with probability ``p``, else ``1/(1-p)`` (all 0 when p = 1)."""
    keep = bernoulli(shape, 1.0 - p, like, name)
    return keep if p == 0.0 else keep * (0.0 if p == 1.0 else 1.0 / (1.0 - p))


def cell_variant(options: LSTMOptions, get: ParamGetter) -> CellVariant:
    """The step's variant for one layer and direction; ``get(kind)`` returns its parameter."""
    return CellVariant(
        gate_activation=options.gate_activation,
        cell_activation=options.cell_activation,
        peephole_i=get("weight_ci") if options.peepholes else None,
        peephole_f=get("weight_cf") if options.peepholes else None,
        peephole_o=get("weight_co") if options.peepholes else None,
        ln_hh=get("ln_weight_hh") if options.layer_norm else None,
        ln_c_weight=get("ln_weight_c") if options.layer_norm else None,
        ln_c_bias=get("ln_bias_c") if options.layer_norm else None,
        cell_clip=options.cell_clip,
        proj_clip=options.proj_clip,
        zoneout_h=options.zoneout_h,
        zoneout_c=options.zoneout_c,
    )


def zoneout_noise(
    options: LSTMOptions,
    lead: tuple[int, ...],
    sizes: tuple[int, int],
    like: Tensor,
    training: bool,
    name: str,
) -> tuple[Tensor | None, Tensor | None]:
    """Zoneout masks of h and c, shaped ``(*lead, H_out)`` and ``(*lead, H_cell)``: drawn in
    training, None in eval (the step then uses the expectation)."""
    masks: list[Tensor | None] = []
    for p, size, which in ((options.zoneout_h, sizes[0], "h"), (options.zoneout_c, sizes[1], "c")):
        masks.append(
            bernoulli((*lead, size), p, like, f"zoneout_{which}{name}") if training and p else None
        )
    return masks[0], masks[1]


def direction_variant(
    options: LSTMOptions,
    get: ParamGetter,
    training: bool,
    steps: int,
    batch: int,
    sizes: tuple[int, int],
    like: Tensor,
    name: str,
    record: bool,
) -> ScanVariant:
    """Everything one direction of one layer needs for one forward call.

    Args:
        steps, batch: L and N (for packed input: ``len(batch_sizes)`` and ``batch_sizes[0]``).
        sizes: ``(H_out, H_cell)``.
        name: the parameter suffix, e.g. ``_l1_reverse``.
    """
    h_mask = None
    if training and options.recurrent_dropout:
        h_mask = dropout_mask(
            (batch, sizes[0]), options.recurrent_dropout, like, f"recurrent_dropout{name}"
        )
    zone_h, zone_c = zoneout_noise(options, (steps, batch), sizes, like, training, name)
    return ScanVariant(
        cell=cell_variant(options, get),
        ln_ih=get("ln_weight_ih") if options.layer_norm else None,
        h_mask=h_mask,
        zone_h=zone_h,
        zone_c=zone_c,
        record=record,
    )


def drop_weight(weight_hh: Tensor, p: float, training: bool, name: str) -> Tensor:
    """DropConnect on the recurrent weights (AWD-LSTM): a new tensor, the Parameter untouched."""
    if not training or not p:
        return weight_hh
    return weight_hh * dropout_mask(weight_hh.shape, p, weight_hh, f"weight_drop{name}")


def input_dropout(
    x: Tensor, batch_sizes: Sequence[int] | None, p: float, training: bool, name: str
) -> Tensor:
    """Variational dropout on a layer's input: one mask per sequence, the same at every step.

    Args:
        x: ``(L, N, H_in)`` dense or ``(sum(batch_sizes), H_in)`` packed.
    """
    if not training or not p:
        return x
    if batch_sizes is None:
        return x * dropout_mask((x.size(1), x.size(2)), p, x, f"input_dropout{name}")
    mask = dropout_mask((batch_sizes[0], x.size(-1)), p, x, f"input_dropout{name}")
    rows = torch.cat([torch.arange(size, device=x.device) for size in batch_sizes])
    return x * mask.index_select(0, rows)  # (sum(batch_sizes), H_in)


def cell_noise(
    options: LSTMOptions, batch: int, hidden: int, like: Tensor, training: bool
) -> StepNoise:
    """HandLSTMCell's masks for one call (zoneout only)."""
    zone_h, zone_c = zoneout_noise(options, (batch,), (hidden, hidden), like, training, "")
    return StepNoise(None, zone_h, zone_c)
