"""torch.compile and torch.export of a model that contains HandLSTM, at any sequence length.

nn.LSTM cannot be captured (``fullgraph=True`` raises "Dynamo does not support RNN, GRU, or
LSTM"); HandLSTM compiles into one graph. When the sequence length is symbolic
(``dynamic=True``, ``torch._dynamo.mark_dynamic(x, 0)``, the automatic-dynamic recompile after a
second length, or ``torch.export`` with a ``Dim`` on it) each direction's time loop is one
``scan`` (handlstm/engines/traced.py): one graph and one exported program serve every length.
Shown here:

* any length, one graph: ``mark_dynamic`` on the time dimension, five lengths, one compile;
* any length, one exported program, with per-sequence lengths (``forward(x, lengths=)``: a
  padded batch with PackedSequence semantics), run at lengths it never saw;
* fixed shapes: one graph (short fixed lengths are unrolled, see docs/works_with.md);
* bucketing and a compiled step: the older ways around per-length compiles, still exact.

Run: ``python examples/compiled_model.py [backend]``. The default, "aot_eager" (Dynamo capture
plus AOTAutograd's forward and backward graphs, run eagerly), takes about a minute on CPU.
``python examples/compiled_model.py inductor`` generates C++ kernels: same results, minutes on a
2-core box.
"""

from __future__ import annotations

import sys
import time

import torch
import torch._dynamo.testing
from torch import Tensor, nn

from handlstm import HandLSTM


class Model(nn.Module):
    """Linear -> HandLSTM -> Linear, per-step outputs."""

    def __init__(self, features: int = 4, hidden: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Linear(features, hidden)
        self.lstm = HandLSTM(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:  # (L, N, features) -> (L, N)
        out, _ = self.lstm(torch.relu(self.encoder(x)))
        return self.head(out).squeeze(-1)


class PaddedLSTM(nn.Module):
    """``lstm(x, lengths=lengths)`` as a module with two tensor inputs, for torch.export."""

    def __init__(self, lstm: HandLSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return self.lstm(x, lengths=lengths)


def pad_to_bucket(x: Tensor, buckets: tuple[int, ...]) -> Tensor:
    """Pad a time-major batch at the end to the smallest bucket length that holds it."""
    bucket = next((b for b in buckets if b >= x.size(0)), x.size(0))
    return torch.cat([x, x.new_zeros(bucket - x.size(0), *x.shape[1:])])


def run_by_steps(step: nn.Module, x: Tensor, hx: tuple[Tensor, Tensor]) -> Tensor:
    """Feed a compiled HandLSTM one step at a time; returns the outputs (L, N, H_out)."""
    outputs = []
    for t in range(x.size(0)):
        out, hx = step(x[t : t + 1], hx)
        outputs.append(out)
    return torch.cat(outputs)


def main(
    backend: str = "aot_eager",
    lengths: tuple[int, ...] = (5, 7, 3, 8, 6),
    buckets: tuple[int, ...] = (4, 8),
    seed: int = 0,
) -> dict[str, float]:
    torch.manual_seed(seed)
    model = Model()
    batches = [torch.randn(length, 4, 4) for length in lengths]

    # 1. Fixed shapes: one graph, same outputs and gradients as eager.
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    start = time.perf_counter()
    y = compiled(batches[0])
    y.square().sum().backward()
    compile_s = time.perf_counter() - start
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    y_eager = model(batches[0])
    y_eager.square().sum().backward()
    eager_grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_diff = max((a - b).abs().max().item() for a, b in zip(grads, eager_grads, strict=True))
    output_diff = (y - y_eager).abs().max().item()

    # 1b. Any length, one graph: the time dimension marked dynamic.
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    dynamic_diff = 0.0
    with torch.no_grad():
        for x in batches:
            torch._dynamo.mark_dynamic(x, 0)
            dynamic_diff = max(dynamic_diff, (compiled(x) - model(x)).abs().max().item())
    dynamic_graphs = counter.frame_count

    # 1c. One exported program for every length, with per-sequence lengths.
    lstm = model.lstm.eval()
    padded = torch.randn(max(lengths), len(lengths), 8)
    program = torch.export.export(
        PaddedLSTM(lstm),
        (padded, torch.tensor(lengths)),
        dynamic_shapes=(
            {0: torch.export.Dim("L"), 1: torch.export.Dim("N")},
            {0: torch.export.Dim("N")},
        ),
    )
    export_diff = 0.0
    with torch.no_grad():
        new_lengths = [length + 3 for length in lengths[:-1]]  # never seen: other L, other N
        padded = torch.randn(max(new_lengths), len(new_lengths), 8)
        _, (h_n, _) = program.module()(padded, torch.tensor(new_lengths))
        for n, length in enumerate(new_lengths):  # each sequence's own last state
            _, (alone, _) = lstm(padded[:length, n : n + 1])
            export_diff = max(export_diff, (h_n[:, n : n + 1] - alone).abs().max().item())
    lstm.train()

    # 2. Bucketing: one graph per bucket used; outputs at the valid steps are exact.
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    bucket_diff = 0.0
    with torch.no_grad():
        for x in batches:
            y = compiled(pad_to_bucket(x, buckets))[: x.size(0)]
            bucket_diff = max(bucket_diff, (y - model(x)).abs().max().item())
    bucket_graphs = counter.frame_count

    # 3. A compiled step: one graph for every length.
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    step = torch.compile(model.lstm, backend=counter, fullgraph=True)
    step_diff = 0.0
    with torch.no_grad():
        for x in batches:
            hidden = torch.relu(model.encoder(x))
            zeros = hidden.new_zeros(1, x.size(1), 8)
            y = model.head(run_by_steps(step, hidden, (zeros, zeros))).squeeze(-1)
            step_diff = max(step_diff, (y - model(x)).abs().max().item())
    return {
        "dynamic_lengths": float(len(lengths)),
        "dynamic_graphs": float(dynamic_graphs),
        "dynamic_max_diff": dynamic_diff,
        "export_lengths_max_diff": export_diff,
        "first_compile_seconds": compile_s,
        "output_max_diff": output_diff,
        "grad_max_diff": grad_diff,
        "bucketed_lengths": float(len(lengths)),
        "bucketed_graphs": float(bucket_graphs),
        "bucketed_max_diff": bucket_diff,
        "step_graphs": float(counter.frame_count),
        "step_max_diff": step_diff,
    }


if __name__ == "__main__":
    for key, value in main(*sys.argv[1:2]).items():
        print(f"{key:>22}: {value:.3g}")
