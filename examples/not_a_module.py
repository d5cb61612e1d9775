"""Property-test LSTMs that are not nn.Modules: a function of the weights, an exported program,
an onnxruntime session.

``handlstm.testing.FunctionLSTM(fn, state_dict)`` gives anything callable as
``fn(weights, input, hx) -> (output, (h_n, c_n))`` the face of a module holding nn.LSTM's state
dict, so ``assert_lstm_close`` compares it with nn.LSTM: outputs, final states and, when ``fn``
is differentiable, every gradient (input, h_0, c_0, each weight, under nn.LSTM's names).

1. ``lstm_from_weights``: a one-layer LSTM written as a plain function of a weights dict, tested
   with hypothesis on drawn sizes, lengths, batches, initial states and dtypes.
2. A ``torch.export`` program of a HandLSTM (fixed shapes: one program per input shape).
3. An onnxruntime session of an ONNX export (no autograd: outputs only), if onnx, onnxscript
   and onnxruntime are installed (``pip install -e ".[onnx]"``); skipped otherwise.

Run: python examples/not_a_module.py   (the test_* function is an ordinary hypothesis test)
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from hypothesis import given, settings
from torch import Tensor, nn

from handlstm import HandLSTM
from handlstm.testing import FunctionLSTM, assert_lstm_close, lstm_cases


def lstm_from_weights(
    weights: dict[str, Tensor], input: Tensor, hx: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One layer, batched ``(L, N, H_in)`` input, nn.LSTM's gate order (i, f, g, o)."""
    w_ih, w_hh = weights["weight_ih_l0"], weights["weight_hh_l0"]  # (4*H, H_in), (4*H, H)
    bias = weights["bias_ih_l0"] + weights["bias_hh_l0"]  # (4*H,)
    hidden = w_hh.size(1)
    if hx is None:
        h = c = input.new_zeros(input.size(1), hidden)  # (N, H)
    else:
        h, c = hx[0][0], hx[1][0]
    steps = []
    for x_t in input:  # (N, H_in)
        ingate, forgetgate, cellgate, outgate = (x_t @ w_ih.T + h @ w_hh.T + bias).chunk(4, 1)
        c = torch.sigmoid(forgetgate) * c + torch.sigmoid(ingate) * torch.tanh(cellgate)
        h = torch.sigmoid(outgate) * torch.tanh(c)
        steps.append(h)
    return torch.stack(steps), (h.unsqueeze(0), c.unsqueeze(0))  # (L, N, H), (1, N, H) x 2


# What lstm_from_weights supports: one layer, bias, sequence-first dense batches.
one_layer_cases = lstm_cases(
    dtypes=(torch.float32, torch.float64),
    kinds=("dense",),
    fixed={"num_layers": 1, "bias": True, "batch_first": False, "bidirectional": False}
    | {"proj_size": 0, "dropout": 0.0},
)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(one_layer_cases)
def test_function_of_weights_matches_nn_lstm(case) -> None:
    oracle = case.make(nn.LSTM)
    mine = FunctionLSTM(lstm_from_weights, oracle.state_dict())
    assert_lstm_close(mine, oracle, case.input, case.hx)  # gradients included


def check_exported_program() -> str:
    """A torch.export program of a HandLSTM against nn.LSTM, gradients included."""
    torch.manual_seed(0)
    oracle = nn.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
    hand = HandLSTM(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
    hand.load_state_dict(oracle.state_dict())
    x = torch.randn(6, 2, 3, dtype=torch.float64)  # (L, N, H_in): the program's fixed shape
    program = torch.export.export(hand, (x,))

    def run_program(weights, input, hx):
        module = program.module()  # the program's weights are replaced by the given ones
        return torch.func.functional_call(module, weights, (input,))

    assert_lstm_close(FunctionLSTM(run_program, oracle.state_dict()), oracle, x)
    return "torch.export program of HandLSTM(3, 5, 2 layers, bidirectional) matches nn.LSTM"


def check_onnx_session() -> str:
    """An onnxruntime session of a HandLSTM's ONNX export against nn.LSTM, outputs only."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not importlib.util.find_spec(m)]
    if missing:
        return f"onnxruntime check skipped: {', '.join(missing)} not installed"
    import onnxruntime

    torch.manual_seed(0)
    oracle = nn.LSTM(3, 5, proj_size=2).eval()
    hand = HandLSTM(3, 5, proj_size=2).eval()
    hand.load_state_dict(oracle.state_dict())
    x = torch.randn(6, 2, 3)  # (L, N, H_in)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(hand, (x,), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(onnx_program.model_proto.SerializeToString())
    (input_name,) = [i.name for i in session.get_inputs()]

    def run_session(weights, input, hx):  # the weights are baked into the ONNX graph
        output, h_n, c_n = session.run(None, {input_name: input.detach().numpy()})
        return torch.from_numpy(output), (torch.from_numpy(h_n), torch.from_numpy(c_n))

    wrapped = FunctionLSTM(run_session, oracle.state_dict(), requires_grad=False)
    assert_lstm_close(wrapped, oracle, x, check_grad=False)
    return "onnxruntime session of HandLSTM(3, 5, proj_size=2) matches nn.LSTM (outputs, states)"


def main() -> int:
    torch.set_num_threads(1)  # tiny matrices: threads cost more than they bring
    test_function_of_weights_matches_nn_lstm()
    print("a function of (weights, input, hx) matches nn.LSTM on 40 drawn cases, gradients too")
    print(check_exported_program())
    print(check_onnx_session())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
