"""``handlstm check --impl-cell`` fails a cell that swaps h_0 and c_0: the sweep's cell states
differ, so a swap changes the result (equal h_0 and c_0 would hide it)."""

from __future__ import annotations

import pytest
import torch

from handlstm.tools import cli, sweep

SWAPPING_CELL = """
import handlstm

class SwapsStates(handlstm.HandLSTMCell):
    def forward(self, input, hx=None):
        return super().forward(input, hx if hx is None else (hx[1], hx[0]))
"""


def test_sweep_cell_inputs_give_distinct_h0_and_c0():
    generator = torch.Generator().manual_seed(0)
    config = dict(input_size=3, hidden_size=4, bias=True)
    hxs = [hx for _, _, hx in sweep.cell_inputs(config, torch.float64, generator) if hx]
    assert hxs
    for h0, c0 in hxs:
        assert not torch.equal(h0, c0)


@pytest.fixture()
def swapping_cell(tmp_path, monkeypatch):
    (tmp_path / "swapping_cell_for_check.py").write_text(SWAPPING_CELL)
    monkeypatch.syspath_prepend(str(tmp_path))
    cells = [check for check in cli.default_checks() if check.kind == "cell"]
    monkeypatch.setattr(cli, "default_checks", lambda: cells[:2])
    return "swapping_cell_for_check:SwapsStates"


def test_impl_cell_that_swaps_h0_and_c0_fails(swapping_cell, capsys):
    code = cli.main(["check", "--impl-cell", swapping_cell])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "max abs difference" in out, out
