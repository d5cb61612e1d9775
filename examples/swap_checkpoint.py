"""Swap the nn.LSTM of an existing model for HandLSTM and continue training from its checkpoint.

The model is the usual shape: embedding -> nn.LSTM -> linear. We train it a little with torch's
LSTM and save a checkpoint (model and optimizer state), as a training script would. Then, in a
"new session", we rebuild the model, load the checkpoint, swap its LSTM with
``handlstm.swap_lstms`` and keep training. As a control, the same resume runs with torch's LSTM:
both give the same losses, step for step.

Run: python examples/swap_checkpoint.py   (about 10 s on a laptop CPU)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

import handlstm
from handlstm.cli import main as handlstm_command

VOCAB, CLASSES, LENGTH = 30, 4, 10


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, L) -> (N, CLASSES)
        output, _ = self.lstm(self.embed(tokens))  # (N, L, 32)
        return self.head(output[:, -1])


def batches(steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A synthetic task: the class is the most frequent of the first four tokens, mod 4."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (32, LENGTH), generator=generator)
        labels = tokens[:, :4].mode(dim=1).values % CLASSES
        out.append((tokens, labels))
    return out


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data: list) -> list[float]:
    losses = []
    for tokens, labels in data:
        loss = nn.functional.cross_entropy(model(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def resume(checkpoint: Path, swap: bool, data: list) -> list[float]:
    """A new session: rebuild, load the checkpoint, (swap,) continue training."""
    model = Tagger().double()
    state = torch.load(checkpoint, weights_only=True)
    model.load_state_dict(state["model"])
    if swap:
        report = handlstm.swap_lstms(model)  # same Parameter objects, same state-dict keys
        print(report)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    optimizer.load_state_dict(state["optimizer"])
    return train(model, optimizer, data)


def main() -> int:
    torch.set_num_threads(1)  # tiny matrices: threads cost more than they bring
    torch.manual_seed(0)
    model = Tagger().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = train(model, optimizer, batches(40, seed=1))
    print(f"session 1 (nn.LSTM): loss {first[0]:.4f} -> {first[-1]:.4f} over {len(first)} steps")

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "tagger.pt"
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)

        # Before trusting the swap, verify the checkpoint's LSTM with the command line tool.
        print(f"\n$ handlstm check {checkpoint.name}")
        if handlstm_command(["check", str(checkpoint), "--no-progress"]) != 0:
            return 1

        more = batches(40, seed=2)
        print("\nsession 2: resume from the checkpoint")
        with_hand = resume(checkpoint, swap=True, data=more)
        with_torch = resume(checkpoint, swap=False, data=more)

    worst = max(abs(a - b) for a, b in zip(with_hand, with_torch, strict=True))
    print(
        f"session 2 (HandLSTM): loss {with_hand[0]:.4f} -> {with_hand[-1]:.4f} over "
        f"{len(with_hand)} steps; largest difference from nn.LSTM resuming the same way: "
        f"{worst:.1e}"
    )
    ok = worst < 1e-9 and with_hand[-1] < first[0]
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
