"""Train an ensemble of HandLSTMs as one vmapped model (torch.func.stack_module_state + vmap).

nn.LSTM cannot do this: ``torch.func.vmap`` has no batching rule for its fused kernel
("Batching rule not implemented for aten::lstm.input"). HandLSTM is ordinary tensor ops, so K
members with their own weights run as one batched computation, and one optimizer steps them all.

Run: ``python examples/ensemble_vmap.py`` (a few seconds on CPU).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from handlstm import HandLSTM


class Regressor(nn.Module):
    """HandLSTM over the sequence, a linear head on the last step."""

    def __init__(self, input_size: int = 3, hidden_size: int = 16) -> None:
        super().__init__()
        self.lstm = HandLSTM(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:  # (N, L, H_in) -> (N,)
        out, _ = self.lstm(x)  # (N, L, H)
        return self.head(out[:, -1]).squeeze(-1)


def make_data(n: int = 64, length: int = 12) -> tuple[Tensor, Tensor]:
    """A toy task: predict the running mean of the first feature."""
    x = torch.randn(n, length, 3)
    return x, x[:, :, 0].mean(1)


def main(members: int = 5, steps: int = 30, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    models = [Regressor() for _ in range(members)]
    params, buffers = stack_module_state(models)  # each value: (K, *shape)
    base = copy.deepcopy(models[0]).to("meta")  # the structure, without storage

    def predict(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(base, (p, b), (x,))

    x, y = make_data()
    # 1. One vmapped forward equals running each member on its own.
    ensemble_out = vmap(predict, in_dims=(0, 0, None))(params, buffers, x)  # (K, N)
    looped = torch.stack([m(x) for m in models])
    forward_diff = (ensemble_out - looped).abs().max().item()

    # 2. Train all members at once: vmap(grad) gives each member its own gradient.
    def loss(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return (predict(p, b, x) - y).square().mean()

    step = vmap(grad_and_value(loss), in_dims=(0, 0, None, None))
    params = {k: v.detach() for k, v in params.items()}
    first = last = torch.zeros(members)
    for i in range(steps):
        grads, losses = step(params, buffers, x, y)  # grads: (K, *shape); losses: (K,)
        params = {k: v - 0.1 * grads[k] for k, v in params.items()}
        first = losses if i == 0 else first
        last = losses

    # 3. The ensemble's mean prediction and spread (an uncertainty estimate).
    x_test, y_test = make_data(16)
    predictions = vmap(predict, in_dims=(0, 0, None))(params, buffers, x_test)  # (K, N)
    result = {
        "forward_max_diff_vs_loop": forward_diff,
        "first_loss_mean": first.mean().item(),
        "last_loss_mean": last.mean().item(),
        "test_mse_of_mean": (predictions.mean(0) - y_test).square().mean().item(),
        "mean_spread": predictions.std(0).mean().item(),
    }
    return result


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key:>26}: {value:.3g}")
