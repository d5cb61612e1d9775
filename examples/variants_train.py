"""Train a layer-normalised LSTM with recurrent (variational) dropout on the adding problem.

The adding problem (Hochreiter & Schmidhuber 1997): each step carries a random value in [0, 1]
and a marker; exactly two steps are marked, and the target is the sum of their values. Always
answering the mean (1.0) gives a mean squared error of 1/6 ~ 0.167, so an error well below that
means the LSTM has learnt to find and add the marked values.

Run: python examples/variants_train.py  (about 10 s on one CPU core)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from handlstm import HandLSTM

TRIVIAL_MSE = 1.0 / 6.0  # error of always predicting the mean sum, 1.0


def adding_batch(batch: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Inputs ``(N, L, 2)`` (value, marker) and targets ``(N,)``."""
    values = torch.rand(batch, length, generator=generator)
    markers = torch.zeros(batch, length)
    first = torch.randint(0, length // 2, (batch,), generator=generator)
    second = torch.randint(length // 2, length, (batch,), generator=generator)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = (values * markers).sum(1)
    return torch.stack((values, markers), -1), target


class Model(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = HandLSTM(2, hidden, batch_first=True, layer_norm=True, recurrent_dropout=0.1)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.lstm(x)  # (N, L, H)
        return self.head(output[:, -1]).squeeze(-1)  # (N,)


def evaluate(model: Model, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        loss = nn.functional.mse_loss(model(x), y).item()
    model.train()
    return loss


def main(steps: int = 300, length: int = 20, hidden: int = 32, seed: int = 0) -> dict[str, float]:
    """Train and return the held-out MSE before and after, and the seconds taken."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = Model(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    test_x, test_y = adding_batch(512, length, generator)
    start = time.perf_counter()
    before = evaluate(model, test_x, test_y)
    for _ in range(steps):
        x, y = adding_batch(64, length, generator)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate(model, test_x, test_y)
    return {"mse_before": before, "mse_after": after, "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a small model: threads cost more than they give
    result = main(args.steps, args.length, seed=args.seed)
    print(
        f"adding problem, L={args.length}: held-out MSE {result['mse_before']:.4f} -> "
        f"{result['mse_after']:.4f} (always answering the mean: {TRIVIAL_MSE:.4f}) "
        f"in {result['seconds']:.1f} s"
    )
