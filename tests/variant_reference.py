"""Reference LSTM variants written from the papers' equations, for the tests only.

A plain loop over sequences, layers, directions and time steps, one batch row at a time, in the
input's dtype (float64 in the tests). It imports nothing from handlstm: the only things it shares
with the package are the parameter values and the random masks (recorded from the package and
handed in), so a test that compares the two compares two independent writings of the equations.

Equations (per step, for one row; W, b from nn.LSTM's state dict; gates in the order i, f, g, o):

    a_x = W_ih (x_t * m_x)                               input dropout mask m_x (Gal 2016)
    a_h = (W_hh * M_w) (h_{t-1} * m_h)                   weight drop M_w (Merity 2017),
                                                         recurrent dropout m_h (Gal 2016)
    a_x, a_h = LN(a_x) * g_x, LN(a_h) * g_h              layer norm (Ba 2016), if enabled
    a = a_x + b_ih + a_h + b_hh
    i = act_gate(a_i + p_i * c_{t-1}),  f = act_gate(a_f + p_f * c_{t-1})   peepholes (Gers 2002)
    g = act_cell(a_g)
    c~ = clip(f * c_{t-1} + i * g, cell_clip)                               (Sak 2014)
    o = act_gate(a_o + p_o * c~)
    h~ = o * act_cell(LN(c~) * g_c + b_c)                (LN only with layer norm)
    h~ = clip(W_hr h~, proj_clip)                        with a projection (Sak 2014)
    h_t = d_h * h_{t-1} + (1 - d_h) * h~,  c_t = d_c * c_{t-1} + (1 - d_c) * c~   zoneout
                                                         (Krueger 2016): d ~ Bernoulli(p) in
                                                         training, d = p in eval

Dropout masks are inverted: a kept unit is scaled by 1/(1-p).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

EPS = 1e-5


def _norm(v: Tensor) -> Tensor:
    mean = v.sum() / v.numel()
    var = ((v - mean) ** 2).sum() / v.numel()
    return (v - mean) / torch.sqrt(var + EPS)


def _scaled(keep: Tensor | None, p: float) -> Tensor | None:
    if keep is None:
        return None
    if p >= 1.0:
        return keep * 0.0
    return keep / (1.0 - p)


def reference_step(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    p: dict[str, Tensor | None],
    opt: dict[str, Any],
    noise: dict[str, Tensor | None],
    training: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step for one row. ``p``: this layer/direction's parameters by kind (``weight_ih``,
    ``ln_weight_c`` ...); ``noise``: ``h_mask`` (scaled), ``zone_h``, ``zone_c`` (0/1).

    Returns ``(h_t, c_t, gates)`` with gates the activations ``[i, f, g, o]`` concatenated.
    """
    hidden = c.numel()
    gate_act = opt.get("gate_activation", torch.sigmoid)
    cell_act = opt.get("cell_activation", torch.tanh)
    w_hh = p["weight_hh"]
    h_in = h if noise.get("h_mask") is None else h * noise["h_mask"]
    a_x = p["weight_ih"] @ x
    a_h = w_hh @ h_in
    if opt.get("layer_norm"):
        a_x = _norm(a_x) * p["ln_weight_ih"]
        a_h = _norm(a_h) * p["ln_weight_hh"]
    a = a_x + a_h
    if p.get("bias_ih") is not None:
        a = a + p["bias_ih"] + p["bias_hh"]
    a_i, a_f, a_g, a_o = (a[k * hidden : (k + 1) * hidden] for k in range(4))
    if opt.get("peepholes"):
        a_i = a_i + p["weight_ci"] * c
        a_f = a_f + p["weight_cf"] * c
    i, f, g = gate_act(a_i), gate_act(a_f), cell_act(a_g)
    c_new = f * c + i * g
    if opt.get("cell_clip") is not None:
        c_new = torch.clamp(c_new, -opt["cell_clip"], opt["cell_clip"])
    if opt.get("peepholes"):
        a_o = a_o + p["weight_co"] * c_new
    o = gate_act(a_o)
    c_shown = c_new
    if opt.get("layer_norm"):
        c_shown = _norm(c_new) * p["ln_weight_c"] + p["ln_bias_c"]
    h_new = o * cell_act(c_shown)
    if p.get("weight_hr") is not None:
        h_new = p["weight_hr"] @ h_new
        if opt.get("proj_clip") is not None:
            h_new = torch.clamp(h_new, -opt["proj_clip"], opt["proj_clip"])
    for name, prev, new in (("h", h, h_new), ("c", c, c_new)):
        prob = opt.get(f"zoneout_{name}", 0.0)
        if prob:
            d = noise[f"zone_{name}"] if training else prob
            new = d * prev + (1 - d) * new
        if name == "h":
            h_new = new
        else:
            c_new = new
    return h_new, c_new, torch.cat([i, f, g, o])


def reference_lstm(
    params: dict[str, Tensor],
    config: dict[str, Any],
    opt: dict[str, Any],
    x: Tensor,
    lengths: list[int],
    h0: Tensor,
    c0: Tensor,
    masks: dict[str, Tensor],
    training: bool,
) -> dict[str, Tensor]:
    """The whole stacked, maybe bidirectional LSTM, row by row.

    Args:
        params: parameters by nn.LSTM-style name (``weight_ih_l0_reverse``, ``ln_weight_c_l1``).
        config: nn.LSTM's constructor arguments (``num_layers``, ``bidirectional``, ...).
        opt: the variant options.
        x: time-major padded input ``(L, N, H_in)``; row n is valid for ``lengths[n]`` steps.
        h0, c0: ``(D*num_layers, N, H_out)``, ``(D*num_layers, N, H_cell)``.
        masks: raw 0/1 masks by name as the package drew them (rows in x's order):
            ``input_dropout_l{k}`` (N, H_in_k), ``weight_drop{sfx}`` (4H, H_out),
            ``recurrent_dropout{sfx}`` (N, H_out), ``zoneout_h{sfx}`` (L, N, H_out),
            ``zoneout_c{sfx}`` (L, N, H_cell).
        training: zoneout uses the masks in training, its expectation in eval.

    Returns:
        ``output`` (L, N, D*H_out) zero past each length, ``h_n``, ``c_n``, and per step
        ``hiddens`` (D*layers, L, N, H_out), ``cells`` (D*layers, L, N, H), ``gates``
        (D*layers, L, N, 4H), zero past each length.
    """
    num_layers = config["num_layers"]
    dirs = 2 if config["bidirectional"] else 1
    hidden = config["hidden_size"]
    seq_len, batch = x.shape[0], x.shape[1]
    h_out = config["proj_size"] or hidden
    kinds = [
        "weight_ih",
        "weight_hh",
        "bias_ih",
        "bias_hh",
        "weight_hr",
        "ln_weight_ih",
        "ln_weight_hh",
        "ln_weight_c",
        "ln_bias_c",
        "weight_ci",
        "weight_cf",
        "weight_co",
    ]
    outputs = []
    h_n, c_n, hiddens, cells, gates = [], [], [], [], []
    for n in range(batch):
        length = lengths[n]
        layer_in = [x[t, n] for t in range(length)]
        row_h, row_c, row_hid, row_cells, row_gates = [], [], [], [], []
        for layer in range(num_layers):
            m_x = masks.get(f"input_dropout_l{layer}")
            if m_x is not None:
                keep = _scaled(m_x[n], opt["input_dropout"])
                layer_in = [v * keep for v in layer_in]
            per_dir = []
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                p = {k: params.get(k + sfx) for k in kinds}
                if f"weight_drop{sfx}" in masks:
                    p["weight_hh"] = p["weight_hh"] * _scaled(
                        masks[f"weight_drop{sfx}"], opt["weight_drop"]
                    )
                h_mask = masks.get(f"recurrent_dropout{sfx}")
                h = h0[layer * dirs + d, n]
                c = c0[layer * dirs + d, n]
                outs: list[Tensor] = [torch.zeros(h_out, dtype=x.dtype)] * seq_len
                cs: list[Tensor] = [torch.zeros(hidden, dtype=x.dtype)] * seq_len
                gs: list[Tensor] = [torch.zeros(4 * hidden, dtype=x.dtype)] * seq_len
                order = range(length - 1, -1, -1) if d == 1 else range(length)
                for t in order:
                    noise = {
                        "h_mask": None
                        if h_mask is None
                        else _scaled(h_mask[n], opt["recurrent_dropout"]),
                        "zone_h": masks[f"zoneout_h{sfx}"][t, n]
                        if f"zoneout_h{sfx}" in masks
                        else None,
                        "zone_c": masks[f"zoneout_c{sfx}"][t, n]
                        if f"zoneout_c{sfx}" in masks
                        else None,
                    }
                    h, c, g = reference_step(layer_in[t], h, c, p, opt, noise, training)
                    outs[t], cs[t], gs[t] = h, c, g
                per_dir.append(outs)
                row_h.append(h)
                row_c.append(c)
                row_hid.append(torch.stack(outs))
                row_cells.append(torch.stack(cs))
                row_gates.append(torch.stack(gs))
            layer_in = [torch.cat([outs[t] for outs in per_dir]) for t in range(length)]
            last = per_dir
        outputs.append(torch.stack([torch.cat([outs[t] for outs in last]) for t in range(seq_len)]))
        h_n.append(torch.stack(row_h))
        c_n.append(torch.stack(row_c))
        hiddens.append(torch.stack(row_hid))
        cells.append(torch.stack(row_cells))
        gates.append(torch.stack(row_gates))
    return {
        "output": torch.stack(outputs, 1),
        "h_n": torch.stack(h_n, 1),
        "c_n": torch.stack(c_n, 1),
        "hiddens": torch.stack(hiddens, 2),
        "cells": torch.stack(cells, 2),
        "gates": torch.stack(gates, 2),
    }


def reference_cell(
    params: dict[str, Tensor],
    opt: dict[str, Any],
    x: Tensor,
    h: Tensor,
    c: Tensor,
    masks: dict[str, Tensor],
    training: bool,
) -> tuple[Tensor, Tensor]:
    """One LSTMCell step for a batch ``(N, H_in)``, row by row; masks ``zoneout_h`` and
    ``zoneout_c`` are ``(N, H)``."""
    hs, cs = [], []
    for n in range(x.shape[0]):
        noise = {
            "zone_h": masks["zoneout_h"][n] if "zoneout_h" in masks else None,
            "zone_c": masks["zoneout_c"][n] if "zoneout_c" in masks else None,
        }
        h_n, c_n, _ = reference_step(x[n], h[n], c[n], dict(params), opt, noise, training)
        hs.append(h_n)
        cs.append(c_n)
    return torch.stack(hs), torch.stack(cs)
