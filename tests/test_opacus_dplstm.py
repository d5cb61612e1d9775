"""Same DP training as opacus's DPLSTM: same weights, same seeds, equal parameters every step.

A classifier (LSTM, then a Linear head on h_n of the last layer) is built twice, once with
HandLSTM and once with opacus's DPLSTM loaded from the same state dict, and trained through
``PrivacyEngine.make_private`` (Poisson sampling, clipping active, noise on or off). The
optimizer lists DPLSTM's parameters in HandLSTM's (nn.LSTM's) order so that both draw the noise
for the same parameter from the same generator state.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

opacus = pytest.importorskip("opacus", reason="opacus is an optional extra: pip install .[opacus]")
from test_opacus import OPACUS_WARNINGS  # noqa: E402

pytestmark = OPACUS_WARNINGS

from opacus import PrivacyEngine  # noqa: E402
from opacus.layers import DPLSTM  # noqa: E402

import handlstm.opacus  # noqa: E402,F401
from handlstm import HandLSTM  # noqa: E402

DT = torch.float64
L, H_IN, H, CLASSES, SAMPLES = 5, 3, 4, 3, 24


class Classifier(nn.Module):
    def __init__(self, lstm: nn.Module) -> None:
        super().__init__()
        self.lstm = lstm
        self.fc = nn.Linear(lstm.hidden_size * (2 if lstm.bidirectional else 1), CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.lstm(x)  # the loss only through h_n: invisible to opacus's module hook
        last = h[-2:].transpose(0, 1).flatten(1) if self.lstm.bidirectional else h[-1]
        return self.fc(last)


def named(model: Classifier) -> dict[str, nn.Parameter]:
    """Parameters under nn.LSTM's names (DPLSTM renames them only when it is the root)."""
    found = {f"lstm.{name}": p for name, p in model.lstm.named_parameters()}
    return found | {f"fc.{name}": p for name, p in model.fc.named_parameters()}


def train(model: nn.Module, order: list[str], mode: str, noise: float) -> tuple[list, float]:
    torch.manual_seed(11)
    x = torch.randn(SAMPLES, L, H_IN, dtype=DT)
    y = torch.randint(0, CLASSES, (SAMPLES,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)
    params = named(model)
    optimizer = torch.optim.SGD([params[name] for name in order], lr=0.5)
    engine = PrivacyEngine(accountant="rdp")
    kwargs = {"criterion": nn.CrossEntropyLoss()} if mode == "ghost" else {}
    prepared = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=0.3,  # small enough that every example is clipped
        noise_generator=torch.Generator().manual_seed(5),
        grad_sample_mode=mode,
        **kwargs,
    )
    if mode == "ghost":  # ghost also returns the criterion that runs both backward passes
        module, optimizer, criterion, loader = prepared
    else:
        (module, optimizer, loader), criterion = prepared, nn.CrossEntropyLoss()
    history = []
    torch.manual_seed(3)  # Poisson sampling draws from the default generator
    for _ in range(1):
        for xb, yb in loader:
            optimizer.zero_grad()
            criterion(module(xb), yb).backward()
            optimizer.step()
            history.append([params[name].detach().clone() for name in order])
    return history, engine.get_epsilon(1e-5)


DEEP = {"num_layers": 2, "bidirectional": True}
CASES = [
    *[(mode, noise, {}) for mode in ("hooks", "ghost") for noise in (0.0, 1.3)],
    ("hooks", 1.3, DEEP),
    *[
        pytest.param(m, n, DEEP, marks=pytest.mark.slow)
        for m, n in [("hooks", 0.0), ("ghost", 0.0)]
    ],
    pytest.param("ghost", 1.3, DEEP, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("mode", "noise", "kwargs"), CASES)
def test_make_private_trains_exactly_like_dplstm(mode, noise, kwargs):
    torch.manual_seed(0)
    hand = Classifier(HandLSTM(H_IN, H, batch_first=True, **kwargs)).to(DT)
    dp = Classifier(DPLSTM(H_IN, H, batch_first=True, **kwargs)).to(DT)
    dp.lstm.load_state_dict(hand.lstm.state_dict())
    dp.fc.load_state_dict(hand.fc.state_dict())
    order = [name for name, _ in hand.named_parameters()]
    hand_history, hand_eps = train(hand, order, mode, noise)
    dp_history, dp_eps = train(dp, order, mode, noise)
    assert len(hand_history) == len(dp_history) == 4
    for step, (a, b) in enumerate(zip(hand_history, dp_history, strict=True)):
        for name, pa, pb in zip(order, a, b, strict=True):
            torch.testing.assert_close(pa, pb, atol=1e-10, rtol=0, msg=f"step {step} {name}")
    assert hand_eps == dp_eps
    assert not torch.equal(hand_history[0][0], hand_history[-1][0])  # training moved weights


def test_functorch_mode_trains_like_hooks_mode():
    torch.manual_seed(0)
    first = Classifier(HandLSTM(H_IN, H, batch_first=True, proj_size=2)).to(DT)
    first.fc = nn.Linear(2, CLASSES).to(DT)
    second = Classifier(HandLSTM(H_IN, H, batch_first=True, proj_size=2)).to(DT)
    second.fc = nn.Linear(2, CLASSES).to(DT)
    second.load_state_dict(first.state_dict())
    order = [name for name, _ in first.named_parameters()]
    a, _ = train(first, order, "hooks", 1.0)
    b, _ = train(second, order, "functorch", 1.0)
    for pa, pb in zip(a[-1], b[-1], strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-10, rtol=0)
