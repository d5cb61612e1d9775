"""Per-sample gradients of a HandLSTM with vmap(grad), and a DP-SGD step (clip + noise) on top.

Differentially private training (DP-SGD) needs each example's own gradient, to clip its norm to
C before averaging and adding Gaussian noise. With nn.LSTM, ``vmap(grad(loss))`` fails (no
batching rule for aten::lstm), which is why opacus ships its own DPLSTM. HandLSTM works as is.
Variable lengths are handled by the user: pad, and mask the loss by each example's length.

Run: ``python examples/per_sample_grads_dp.py`` (a few seconds on CPU). This shows the mechanics
only; a real DP deployment also needs a privacy accountant (e.g. opacus's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from handlstm import HandLSTM


class Tagger(nn.Module):
    """Per-step classification: HandLSTM then a linear layer over each step."""

    def __init__(self, input_size: int = 4, hidden_size: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.lstm = HandLSTM(input_size, hidden_size)
        self.head = nn.Linear(hidden_size, classes)

    def forward(self, x: Tensor) -> Tensor:  # (L, N, H_in) -> (L, N, classes)
        return self.head(self.lstm(x)[0])


def example_loss(
    model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, length: Tensor
) -> Tensor:
    """Cross-entropy of one example (L, H_in) over its first ``length`` steps only."""
    logits = functional_call(model, params, (x.unsqueeze(1),)).squeeze(1)  # (L, classes)
    per_step = nn.functional.cross_entropy(logits, y, reduction="none")  # (L,)
    mask = (torch.arange(x.size(0)) < length).to(per_step.dtype)
    return (per_step * mask).sum() / length


def per_sample_grads(model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor) -> dict[str, Tensor]:
    """Each example's gradient, batched along dim 0: x (B, L, H_in), y (B, L), lengths (B,)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    one = grad(lambda p, x, y, n: example_loss(model, p, x, y, n))
    return vmap(one, in_dims=(None, 0, 0, 0))(params, x, y, lengths)


def dp_sgd_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lengths: Tensor,
    lr: float = 0.5,
    clip: float = 1.0,
    noise_multiplier: float = 1.0,
) -> Tensor:
    """Clip each example's gradient to norm ``clip``, sum, add N(0, (noise*clip)^2), average.

    Returns the per-example gradient norms after clipping.
    """
    grads = per_sample_grads(model, x, y, lengths)
    batch = x.size(0)
    norms = torch.cat([g.reshape(batch, -1) for g in grads.values()], 1).norm(dim=1)  # (B,)
    scale = (clip / (norms + 1e-6)).clamp(max=1.0)  # (B,)
    with torch.no_grad():
        for name, param in model.named_parameters():
            clipped = grads[name] * scale.view(-1, *[1] * (grads[name].dim() - 1))
            noise = torch.randn_like(param) * noise_multiplier * clip
            param -= lr * (clipped.sum(0) + noise) / batch
    return norms * scale


def make_batch(batch: int = 32, length: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Tag each step with the argmax of its first three features; random lengths 3..length."""
    x = torch.randn(batch, length, 4)
    y = x[..., :3].argmax(-1)
    lengths = torch.randint(3, length + 1, (batch,))
    return x, y, lengths


def main(steps: int = 40, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    model = Tagger()
    x, y, lengths = make_batch()

    # Check: vmap(grad) equals a per-example autograd loop on the unpadded sequences.
    grads = per_sample_grads(model, x, y, lengths)
    worst = 0.0
    for i in range(4):
        n = int(lengths[i])
        logits = model(x[i, :n].unsqueeze(1)).squeeze(1)
        loss = nn.functional.cross_entropy(logits, y[i, :n])
        loop = torch.autograd.grad(loss, list(model.parameters()))
        for (name, _), g in zip(model.named_parameters(), loop, strict=True):
            worst = max(worst, (grads[name][i] - g).abs().max().item())

    def mean_loss() -> float:
        params = dict(model.named_parameters())
        with torch.no_grad():
            losses = vmap(lambda x, y, n: example_loss(model, params, x, y, n))(x, y, lengths)
        return losses.mean().item()

    before = mean_loss()
    clipped_max = 0.0
    for _ in range(steps):
        norms = dp_sgd_step(model, *make_batch(), noise_multiplier=0.5)
        clipped_max = max(clipped_max, norms.max().item())
    return {
        "max_diff_vs_autograd_loop": worst,
        "loss_before": before,
        "loss_after": mean_loss(),
        "max_clipped_norm": clipped_max,
    }


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key:>26}: {value:.3g}")
