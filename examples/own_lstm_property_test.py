"""Property-test your own LSTM-based module with handlstm.testing, HandLSTM as the oracle.

``StackedLSTM`` below stands for code found in many research repositories: a layer-by-layer LSTM
written by hand (here to expose every layer's outputs), with parameters named like nn.LSTM's so
checkpoints load. It supports a subset of nn.LSTM (no bidirectional, no projections, no dropout,
no packed input) and its constructor takes only what it supports, so the strategy pins those
flags and input kinds and ``case.make(..., arguments=...)`` leaves the missing arguments out;
everything else (sizes, layers, bias, batch_first, unbatched input, given or zero initial
states, float32 and float64) is drawn. (A class whose parameters are named its own way passes
``parameter_names=`` to both ``case.make`` and ``assert_lstm_close``.)

``assert_lstm_close`` then compares outputs, final states and every gradient (input, h_0, c_0,
each parameter) with HandLSTM holding the same weights. A second, subtly wrong version (its
gates read in the order i, f, o, g) is caught and hypothesis shrinks it to a minimal example.

Run: python examples/own_lstm_property_test.py   (or collect it with pytest: the test_*
functions are ordinary hypothesis tests)
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from torch import Tensor, nn

from handlstm import HandLSTM
from handlstm.testing import assert_lstm_close, lstm_cases

GATE_ORDER = ("i", "f", "g", "o")


class StackedLSTM(nn.Module):
    """A hand-rolled multi-layer LSTM that also returns every layer's outputs."""

    gate_order = GATE_ORDER

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size, self.num_layers, self.batch_first = hidden_size, num_layers, batch_first
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size
            self.register_parameter(
                f"weight_ih_l{layer}", nn.Parameter(torch.randn(4 * hidden_size, size, dtype=dtype))
            )
            self.register_parameter(
                f"weight_hh_l{layer}",
                nn.Parameter(torch.randn(4 * hidden_size, hidden_size, dtype=dtype)),
            )
            if bias:
                for name in ("bias_ih", "bias_hh"):
                    self.register_parameter(
                        f"{name}_l{layer}", nn.Parameter(torch.zeros(4 * hidden_size, dtype=dtype))
                    )
        self.bias = bias
        self.layer_outputs: list[Tensor] = []

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)  # (L, N, H_in)
        n = x.size(1)
        if hx is None:
            zeros = x.new_zeros(self.num_layers, n, self.hidden_size)
            hx = (zeros, zeros)
        elif not batched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        h_n, c_n, self.layer_outputs = [], [], []
        for layer in range(self.num_layers):
            w_ih, w_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
            b = 0
            if self.bias:
                b = getattr(self, f"bias_ih_l{layer}") + getattr(self, f"bias_hh_l{layer}")
            h, c = hx[0][layer], hx[1][layer]
            steps = []
            for x_t in x:
                blocks = (x_t @ w_ih.T + h @ w_hh.T + b).chunk(4, 1)  # 4 x (N, H)
                gates = dict(zip(self.gate_order, blocks, strict=True))
                c = torch.sigmoid(gates["f"]) * c + torch.sigmoid(gates["i"]) * torch.tanh(
                    gates["g"]
                )
                h = torch.sigmoid(gates["o"]) * torch.tanh(c)
                steps.append(h)
            x = torch.stack(steps)  # (L, N, H)
            self.layer_outputs.append(x)
            h_n.append(h)
            c_n.append(c)
        h_out, c_out = torch.stack(h_n), torch.stack(c_n)
        if not batched:
            return x.squeeze(1), (h_out.squeeze(1), c_out.squeeze(1))
        return (x.transpose(0, 1) if self.batch_first else x), (h_out, c_out)


class SwappedGates(StackedLSTM):
    """The same module with a classic bug: the gate blocks read as i, f, o, g."""

    gate_order = ("i", "f", "o", "g")


# What StackedLSTM supports: dense and unbatched input; no bidirectional, projection or dropout.
supported_cases = lstm_cases(
    dtypes=(torch.float32, torch.float64),
    kinds=("dense", "unbatched"),
    fixed={"bidirectional": False, "proj_size": 0, "dropout": 0.0},
    max_layers=3,
)


#: nn.LSTM's arguments StackedLSTM does not take (the case must hold nn.LSTM's default there).
NOT_TAKEN = {"dropout": None, "bidirectional": None, "proj_size": None}


def check_against_handlstm(module_cls: type[nn.Module], case) -> None:
    oracle = case.make(HandLSTM)  # drawn config, torch's init, the case's dtype
    mine = case.make(module_cls, state_dict=oracle.state_dict(), arguments=NOT_TAKEN)
    assert_lstm_close(mine, oracle, case.input, case.hx)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(supported_cases)
def test_stacked_lstm_matches_handlstm(case) -> None:
    check_against_handlstm(StackedLSTM, case)


@settings(max_examples=60, deadline=None, derandomize=True, database=None, print_blob=False)
@given(supported_cases)
def test_swapped_gates_is_caught(case) -> None:
    check_against_handlstm(SwappedGates, case)


def main() -> int:
    torch.set_num_threads(1)  # tiny matrices: threads cost more than they bring
    test_stacked_lstm_matches_handlstm()
    print("StackedLSTM matches HandLSTM on 60 drawn cases (outputs, states, every gradient)")
    try:
        test_swapped_gates_is_caught()
    except AssertionError as error:
        notes = getattr(error, "__notes__", [])[:1]  # hypothesis's shrunk example
        print("SwappedGates is caught. Hypothesis's minimal failing case:")
        print("\n".join(f"    {' '.join(note.split())}" for note in notes))
        print("and what assert_lstm_close reports for it:")
        print("\n".join(f"    {line}" for line in str(error).splitlines()[:4]))
        return 0
    print("SwappedGates was NOT caught")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
