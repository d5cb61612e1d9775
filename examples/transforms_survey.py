"""Measure which PyTorch transforms work on nn.LSTM / nn.LSTMCell and on HandLSTM / HandLSTMCell.

Prints one line per (transform, module): "works" or the exception. This is how the nn.LSTM (CPU)
column of docs/works_with.md was measured; the HandLSTM column is backed by the named tests
(which compare results against oracles; this script only checks that each call runs).

Run: ``python examples/transforms_survey.py`` (about a minute on CPU; ONNX rows need onnx,
onnxscript and onnxruntime, else they say "skipped").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

from handlstm import HandLSTM, HandLSTMCell

DT = torch.float64


def checks(make: Callable[..., nn.Module]) -> dict[str, Callable[[], object]]:
    """Each transform as a thunk on a fresh (3 -> 4) LSTM, float64 unless noted."""
    torch.manual_seed(0)
    lstm = make(3, 4, dtype=DT)
    x = torch.randn(5, 2, 3, dtype=DT)
    params = {k: v.detach() for k, v in lstm.named_parameters()}

    def run(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(lstm, p, (x,))[0].sum()

    def forward_ad() -> object:
        with fwAD.dual_level():
            return fwAD.unpack_dual(lstm(fwAD.make_dual(x, torch.ones_like(x)))[0]).tangent

    def double_backward(train: bool) -> object:
        lstm.train(train)
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(lstm(xx)[0].sum(), xx, create_graph=True)
        return torch.autograd.grad(g.square().sum(), list(lstm.parameters()))

    def compile_fullgraph() -> object:
        torch._dynamo.reset()
        return torch.compile(lstm, backend="eager", fullgraph=True)(x)

    def autocast(proj: int) -> object:
        model = make(3, 4, proj_size=proj) if proj else make(3, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x.float())

    def onnx() -> object:
        for name in ("onnx", "onnxscript", "onnxruntime"):
            if importlib.util.find_spec(name) is None:
                return "skipped (no onnx packages)"
        import onnxruntime

        model = make(3, 4, proj_size=2).eval()
        program = torch.onnx.export(model, (x.float(),), dynamo=True, verbose=False)
        session = onnxruntime.InferenceSession(program.model_proto.SerializeToString())
        return session.run(None, {session.get_inputs()[0].name: x.float().numpy()})

    def modes() -> object:
        with torch.no_grad():
            lstm(x)
        with torch.inference_mode():
            return lstm(x)

    return {
        "functional_call": lambda: functional_call(lstm, params, (x,)),
        "vmap over inputs": lambda: vmap(lambda s: lstm(s)[0])(x.transpose(0, 1)),
        "per-sample grads vmap(grad)": lambda: vmap(grad(run), (None, 0))(params, x),
        "jvp": lambda: jvp(lambda s: lstm(s)[0], (x,), (torch.ones_like(x),)),
        "forward_ad dual numbers": forward_ad,
        "jacfwd / jacrev": lambda: (
            jacfwd(lambda s: lstm(s)[0])(x),
            jacrev(lambda s: lstm(s)[0])(x),
        ),
        "double backward (train)": lambda: double_backward(True),
        "double backward (eval)": lambda: double_backward(False),
        "compile fullgraph": compile_fullgraph,
        "torch.export": lambda: torch.export.export(lstm, (x,)).module()(x),
        "onnx (proj_size, onnxruntime)": onnx,
        "autocast bf16 (no proj)": lambda: autocast(0),
        "autocast bf16 (proj_size)": lambda: autocast(2),
        "no_grad / inference_mode": modes,
    }


def cell_checks(make: Callable[..., nn.Module]) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    cell = make(3, 4, dtype=DT)
    x = torch.randn(2, 3, dtype=DT)

    def compile_fullgraph() -> object:
        torch._dynamo.reset()
        return torch.compile(cell, backend="eager", fullgraph=True)(x)

    return {
        "cell vmap": lambda: vmap(lambda s: cell(s)[0])(x),
        "cell jvp": lambda: jvp(lambda s: cell(s)[0], (x,), (torch.ones_like(x),)),
        "cell compile fullgraph": compile_fullgraph,
        "cell torch.export": lambda: torch.export.export(cell, (x,)).module()(x),
    }


def outcome(thunk: Callable[[], object]) -> str:
    try:
        result = thunk()
    except Exception as error:  # noqa: BLE001 - the point is to report any failure
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"FAILS: {type(error).__name__}: {first[:90]}"
    return result if isinstance(result, str) else "works"


def main() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    theirs, mine = checks(nn.LSTM), checks(HandLSTM)
    theirs.update(cell_checks(nn.LSTMCell))
    mine.update(cell_checks(HandLSTMCell))
    for name in theirs:
        table[name] = (outcome(theirs[name]), outcome(mine[name]))
    return table


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}")
    for name, (theirs, mine) in main().items():
        print(f"{name:32} nn.LSTM: {theirs}\n{'':32} HandLSTM: {mine}")
