"""torch.compile a model that contains HandLSTM, with fullgraph=True, and handle varying lengths.

nn.LSTM cannot be captured (``fullgraph=True`` raises "Dynamo does not support RNN, GRU, or
LSTM"); HandLSTM compiles into one graph. The time loop is unrolled in that graph, so every new
sequence length is a new compile (``dynamic=True`` does not help). Two cheap ways out, both here:

* bucketing: pad each batch at the end to one of a few lengths, compile once per bucket, and mask
  the loss by the true lengths (exact for a unidirectional LSTM: padding at the end cannot change
  earlier steps);
* a compiled step: compile the LSTM for L=1 and loop over time in Python, carrying ``(h, c)``;
  one graph serves every length, exact for any unidirectional stack (layers, proj_size).

Run: ``python examples/compiled_model.py [backend]``. The default, "aot_eager" (Dynamo capture
plus AOTAutograd's forward and backward graphs, run eagerly), takes well under a minute on CPU.
``python examples/compiled_model.py inductor`` generates C++ kernels: it gives the same results,
but compiling the unrolled loops (fwd+bwd, 5 graphs) takes minutes on a 2-core box.
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
