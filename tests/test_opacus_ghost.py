"""Ghost clipping's two backward passes: the clipped second pass is replayed from the first.

opacus's ``DPLossFastGradientClipping`` runs ``mean_n loss_n`` (norms only) and then
``sum_n coeff_n loss_n`` (hooks off). HandLSTM's forward is one autograd node; the second pass
is replayed from the first pass's records when its incoming gradient is, sample by sample, a
multiple of the first one's, and the first pass skips the summed gradient that opacus zeroes.

Oracle: a per-example ``torch.autograd.grad`` loop on an unhooked copy (float64, 1e-10); the
clipped gradient is ``sum_n coeff_n grad loss_n`` with opacus's coefficient
``min(1, C / (||g_n|| + 1e-6))`` from the materialised per-example gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

opacus = pytest.importorskip("opacus", reason="opacus is an optional extra: pip install .[opacus]")
from test_opacus import OPACUS_WARNINGS  # noqa: E402

pytestmark = OPACUS_WARNINGS

from opacus.grad_sample import GradSampleModuleFastGradientClipping  # noqa: E402
from opacus.optimizers import DPOptimizerFastGradientClipping  # noqa: E402
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping  # noqa: E402
from test_opacus import (  # noqa: E402
    DT,
    H_IN,
    TOL,
    H,
    L,
    N,
    Net,
    Seq2Seq,
    make_input,
    oracle,
    per_sample_loss,
)

import handlstm.opacus  # noqa: E402,F401
from handlstm import HandLSTMCell  # noqa: E402
from handlstm.engines.per_sample import blocks, tape  # noqa: E402


class PerSampleLoss(nn.Module):
    """A criterion opacus's ghost loss wrapper can call: per-example losses ``(N,)``."""

    def __init__(self, which: str, batch_first: bool, reduction: str) -> None:
        super().__init__()
        self.which, self.batch_first, self.reduction = which, batch_first, reduction

    def forward(self, outputs: tuple[object, Tensor, Tensor]) -> Tensor:
        losses = per_sample_loss(*outputs, self.which, self.batch_first)
        if self.reduction == "none":
            return losses
        return losses.mean() if self.reduction == "mean" else losses.sum()


@pytest.fixture
def spy(monkeypatch):
    """Counts replayed backward passes and records each first pass's ``Plan``."""
    seen: dict[str, list] = {"replays": [], "plans": []}
    replay, finish = blocks.BlockRun._replay, tape.ModuleTape.finish

    def counting_replay(self, alpha):
        seen["replays"].append(alpha)
        return replay(self, alpha)

    def recording_finish(self, plan):
        seen["plans"].append(plan)
        return finish(self, plan)

    monkeypatch.setattr(blocks.BlockRun, "_replay", counting_replay)
    monkeypatch.setattr(tape.ModuleTape, "finish", recording_finish)
    return seen


def clipped_oracle(per: dict[str, Tensor], max_norm: float) -> tuple[Tensor, dict[str, Tensor]]:
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per.values()]).norm(dim=0)  # (N,)
    coeff = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return coeff, {name: torch.einsum("n,n...->...", coeff, g) for name, g in per.items()}


def two_pass(model: nn.Module, x: object, which: str, bf: bool, reduction: str, seed: int):
    """opacus's ghost protocol: returns the max_grad_norm used (clipping some, not all)."""
    per, _ = oracle(copy.deepcopy(model), x, which, bf, seed=seed)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per.values()]).norm(dim=0)
    max_norm = float(norms.median())  # some examples clipped, some not
    gsm = GradSampleModuleFastGradientClipping(
        model, max_grad_norm=max_norm, loss_reduction=reduction
    )
    optimizer = DPOptimizerFastGradientClipping(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=max_norm,
        expected_batch_size=N,
        loss_reduction=reduction,
    )
    criterion = DPLossFastGradientClipping(
        gsm, optimizer, PerSampleLoss(which, bf, reduction), reduction
    )
    torch.manual_seed(seed)
    criterion(gsm(x)).backward()
    return per, max_norm


CONFIGS = [
    # (HandLSTM kwargs, which loss, packed, embed)
    ({}, "all", None, False),
    ({"num_layers": 2, "bidirectional": True, "proj_size": 2}, "all", "unsorted", False),
    ({"batch_first": True}, "h_n", None, True),  # after an Embedding: its gradient is replayed
    ({"batch_first": True, "bias": False, "num_layers": 2}, "output", "sorted", False),
    ({"peepholes": True, "proj_size": 2}, "all", "unsorted", False),
    ({"layer_norm": True, "bidirectional": True}, "all", "unsorted", False),
]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("kwargs", "which", "packed", "embed"), CONFIGS)
def test_clipped_pass_is_replayed_and_exact(spy, kwargs, which, packed, embed, reduction):
    torch.manual_seed(0)
    model = Net(embed, **kwargs).to(DT)
    bf = kwargs.get("batch_first", False)
    x = make_input(bf, packed, embed)
    per, max_norm = two_pass(model, x, which, bf, reduction, seed=2)
    coeff, expected = clipped_oracle(per, max_norm)
    assert (coeff < 1).any() and (coeff == 1).any()
    assert len(spy["replays"]) == 1  # the second pass did not run through time
    assert [p.sums for p in spy["plans"]] == [False]  # opacus zeroes the first pass's p.grad
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], **TOL, msg=name)


def test_cell_loop_clipped_pass_is_replayed_call_by_call(spy):
    """HandLSTMCell unrolled in a loop (opacus's fast-gradient-clipping fallback in the first
    pass): every call's second pass is replayed, and the clipped gradient is exact."""

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = HandLSTMCell(H_IN, H)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # x: (L, N, H_in)
            h = c = x.new_zeros(x.size(1), H)
            outs = []
            for t in range(x.size(0)):
                h, c = self.cell(x[t], (h, c))
                outs.append(h)
            return torch.stack(outs), h.unsqueeze(0), c.unsqueeze(0)

    torch.manual_seed(0)
    model = Loop().to(DT)
    x = make_input(False, None, False)
    per, max_norm = two_pass(model, x, "all", False, "mean", seed=0)
    _, expected = clipped_oracle(per, max_norm)
    assert len(spy["replays"]) == L
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], **TOL, msg=name)


def grads_of(model: nn.Module, loss: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters()), retain_graph=True))


def test_any_proportional_second_pass_is_replayed(spy):
    """Outside opacus's protocol (GradSampleModuleFastGradientClipping used directly): the
    first pass returns the full p.grad, and a second pass with hooks off whose loss weights
    each example differently is replayed through hx as well; p.grad is the sum of both."""
    torch.manual_seed(0)
    model = Seq2Seq().to(DT)
    reference = copy.deepcopy(model)
    x = make_input(False, None, False)
    weights = torch.tensor([0.3, 2.0, -1.5], dtype=DT)
    gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=1.0)
    losses = per_sample_loss(*gsm(x), "output", False)
    losses.mean().backward(retain_graph=True)
    assert [p.sums for p in spy["plans"]] == [True, True]
    first = [p.grad.clone() for p in model.parameters()]
    gsm.disable_hooks()
    (weights * losses).sum().backward()
    assert len(spy["replays"]) == 2  # decoder and encoder
    ref_losses = per_sample_loss(*reference(x), "output", False)
    expected_first = grads_of(reference, ref_losses.mean())
    expected_second = grads_of(reference, (weights * ref_losses).sum())
    params = list(model.parameters())
    for p, f, e1, e2 in zip(params, first, expected_first, expected_second, strict=True):
        torch.testing.assert_close(f, e1, **TOL)
        torch.testing.assert_close(p.grad, e1 + e2, **TOL)


def test_a_second_pass_that_is_not_proportional_runs_the_full_backward(spy):
    """A second loss that is not a per-example multiple of the first (here: another function of
    the output) cannot be replayed: the inner graph is differentiated again, exactly."""
    torch.manual_seed(0)
    model = Net(num_layers=2, proj_size=2).to(DT)
    reference = copy.deepcopy(model)
    x = make_input(False, "unsorted", False, grad=True)
    gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=1.0)
    out = gsm(x)
    per_sample_loss(*out, "all", False).mean().backward(retain_graph=True)
    gsm.disable_hooks()
    per_sample_loss(*out, "h_n", False).sum().backward()
    assert spy["replays"] == []
    ref_out = reference(x)
    expected = grads_of(reference, per_sample_loss(*ref_out, "all", False).mean())
    second = grads_of(reference, per_sample_loss(*ref_out, "h_n", False).sum())
    for p, e1, e2 in zip(model.parameters(), expected, second, strict=True):
        torch.testing.assert_close(p.grad, e1 + e2, **TOL)


def test_hooks_mode_keeps_no_records_and_frees_the_inner_graph(monkeypatch):
    """A single backward (hooks mode, no retain_graph): nothing kept for a replay, the inner
    graph released; a second backward through it raises as autograd does."""
    runs: list[blocks.BlockRun] = []
    forward = blocks.BlockRun.forward

    def recording(self, inputs):
        runs.append(self)
        return forward(self, inputs)

    monkeypatch.setattr(blocks.BlockRun, "forward", recording)
    model = Net(bidirectional=True).to(DT)
    gsm = opacus.GradSampleModule(model)
    out, h, c = gsm(make_input(False, None, False))
    (h.sum() + c.sum()).backward()
    (run,) = runs
    assert run.outputs is None and run.first is None and run.tape.recorded == []
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        (h.sum() + c.sum()).backward()


def test_double_backward_through_per_sample_mode_raises():
    """The one-node forward is differentiable once: a second-order gradient raises autograd's
    error instead of silently missing the module's share."""
    model = Net().to(DT)
    gsm = opacus.GradSampleModule(model)
    x = make_input(False, None, False, grad=True)
    (gx,) = torch.autograd.grad(per_sample_loss(*gsm(x), "all", False).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.pow(2).sum().backward()
