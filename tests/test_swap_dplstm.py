"""A DPLSTM model's checkpoints (model and Adam state) resume after swap_lstms, with real opacus.

The oracle is the DPLSTM model itself, trained on: a model restored from its checkpoint and
swapped must continue with the same losses and parameters (float64, to rounding).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

opacus = pytest.importorskip("opacus", reason="opacus is an optional extra: pip install .[opacus]")
from opacus import PrivacyEngine  # noqa: E402
from opacus.layers.dp_rnn import DPLSTM, DPLSTMCell  # noqa: E402

from handlstm import HandLSTM, HandLSTMCell, swap_lstms  # noqa: E402

DT = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = DPLSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.lstm(x)
        return self.fc(h[-2:].transpose(0, 1).flatten(1))


def data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 5, 3, dtype=DT, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def private(model: nn.Module, optimizer_state: dict | None = None):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    return PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=data(), noise_multiplier=0.5,
        max_grad_norm=0.5, poisson_sampling=False, grad_sample_mode="hooks",
    )


def epoch(module: nn.Module, optimizer, loader) -> list[float]:
    losses = []
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(module(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_dplstm_checkpoint_and_adam_state_resume_after_the_swap():
    torch.manual_seed(0)
    model = Classifier().to(DT)
    module, optimizer, loader = private(model)
    epoch(module, optimizer, loader)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.original_optimizer.state_dict())  # a file
    assert any(".l0.ih.weight" in key for key in saved_model)  # opacus's 8-key form

    torch.manual_seed(1)  # another init: everything must come from the checkpoint
    fresh = Classifier().to(DT)
    report = swap_lstms(fresh)
    assert type(fresh.lstm) is HandLSTM and "order" in report.swapped[0].note
    assert list(fresh.state_dict()) == list(saved_model)  # the keys and their order kept
    fresh.load_state_dict(saved_model)  # strict
    restored = private(fresh, saved_optimizer)

    torch.manual_seed(7)
    want = epoch(module, optimizer, loader)
    torch.manual_seed(7)
    got = epoch(*restored)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(fresh.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=name)


def test_nn_lstm_state_dicts_load_into_a_swapped_dplstm_too():
    model = nn.Sequential(DPLSTM(3, 4, num_layers=2)).to(DT)
    swap_lstms(model)
    plain = nn.Sequential(nn.LSTM(3, 4, num_layers=2)).to(DT)
    model.load_state_dict(plain.state_dict())  # strict
    for name, p in plain[0].named_parameters():
        torch.testing.assert_close(getattr(model[0], name), p, rtol=0, atol=0)


def test_dplstmcell_checkpoint_and_adam_state_resume_after_the_swap():
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(DPLSTMCell(3, 4, True)).to(DT)

    x = torch.randn(6, 3, dtype=DT)

    def step(model: nn.Module, optimizer) -> float:
        optimizer.zero_grad()
        h, c = model[0](x)
        loss = h.square().sum() + c.sin().sum()
        loss.backward()
        optimizer.step()
        return loss.item()

    model = build(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    step(model, optimizer)
    saved = copy.deepcopy(model.state_dict())  # as if from a file
    saved_opt = copy.deepcopy(optimizer.state_dict())
    fresh = build(1)
    swap_lstms(fresh)
    assert type(fresh[0]) is HandLSTMCell
    fresh.load_state_dict(saved)  # DPLSTMCell's keys, strict
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    fresh_opt.load_state_dict(saved_opt)
    for _ in range(3):
        got, want = step(fresh, fresh_opt), step(model, optimizer)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
