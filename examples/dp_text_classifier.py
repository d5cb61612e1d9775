"""DP-SGD text classification with HandLSTM through opacus's PrivacyEngine.

A synthetic task: each sequence is noise tokens of random length with one "signal" token
somewhere; the label is which signal token it is. The model is Embedding -> HandLSTM (packed,
variable lengths) -> Linear on h_n. Training is differentially private: per-sample gradients
(computed exactly inside HandLSTM's own backward), clipping and noise, with Poisson sampling and
a privacy accountant. Prints epsilon and the held-out accuracy.

Run:  python examples/dp_text_classifier.py [--epochs 4] [--mode hooks|ghost|functorch]
"""

from __future__ import annotations

import argparse

import torch
from opacus import PrivacyEngine
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import handlstm.opacus  # noqa: F401  (teaches opacus about HandLSTM; import before make_private)
from handlstm import HandLSTM

CLASSES, NOISE_TOKENS, MAX_LEN = 4, 12, 12
VOCAB = NOISE_TOKENS + CLASSES


def make_data(n: int, generator: torch.Generator) -> torch.utils.data.TensorDataset:
    """``(tokens (n, MAX_LEN), lengths (n,), labels (n,))``; padding is token 0."""
    lengths = torch.randint(3, MAX_LEN + 1, (n,), generator=generator)
    tokens = torch.randint(1, NOISE_TOKENS, (n, MAX_LEN), generator=generator)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    where = (torch.rand(n, generator=generator) * lengths).long()
    tokens[torch.arange(n), where] = NOISE_TOKENS + labels
    tokens[torch.arange(MAX_LEN) >= lengths[:, None]] = 0
    return torch.utils.data.TensorDataset(tokens, lengths, labels)


class Classifier(nn.Module):
    def __init__(self, embed: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, embed)
        self.lstm = HandLSTM(embed, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, CLASSES)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(
            self.embed(tokens), lengths.clamp(min=1), batch_first=True, enforce_sorted=False
        )
        _, (h_n, _) = self.lstm(packed)  # h_n: (2, N, hidden), each sequence's own last step
        return self.fc(h_n.transpose(0, 1).flatten(1))


def accuracy(model: nn.Module, data: torch.utils.data.TensorDataset) -> float:
    model.eval()
    tokens, lengths, labels = data.tensors
    with torch.no_grad():
        predicted = model(tokens, lengths).argmax(1)
    model.train()
    return (predicted == labels).double().mean().item()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--mode", default="hooks", choices=handlstm.opacus.SUPPORTED_MODES)
    parser.add_argument("--noise", type=float, default=0.8)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train, test = make_data(args.samples, generator), make_data(500, generator)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loader = torch.utils.data.DataLoader(train, batch_size=64)
    criterion = nn.CrossEntropyLoss()
    engine = PrivacyEngine()
    prepared = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=args.noise,
        max_grad_norm=1.0,
        grad_sample_mode=args.mode,
        criterion=criterion,
    )
    if args.mode == "ghost":  # ghost returns a criterion that runs its two backward passes
        module, optimizer, criterion, loader = prepared
    else:
        module, optimizer, loader = prepared
    for epoch in range(args.epochs):
        for tokens, lengths, labels in loader:
            optimizer.zero_grad()
            criterion(module(tokens, lengths), labels).backward()
            optimizer.step()
        eps = engine.get_epsilon(delta=1e-5)
        print(
            f"epoch {epoch + 1}: epsilon {eps:.2f} (delta 1e-5), "
            f"held-out accuracy {accuracy(model, test):.3f}"
        )
    return accuracy(model, test)


if __name__ == "__main__":
    main()
