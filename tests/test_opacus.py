"""opacus: HandLSTM's p.grad_sample and ghost norms equal a per-example torch.autograd.grad loop.

Oracle: a deep copy of the model, not hooked, the same forward (same seed, so the same random
masks), and for every example ``torch.autograd.grad`` of that example's loss. Float64, 1e-10.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

opacus = pytest.importorskip("opacus", reason="opacus is an optional extra: pip install .[opacus]")
#: opacus's own warnings, for every opacus test module (test_opacus_*.py import it)
OPACUS_WARNINGS = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
]
pytestmark = OPACUS_WARNINGS

from opacus import GradSampleModule  # noqa: E402
from opacus.grad_sample import GradSampleModuleFastGradientClipping  # noqa: E402

import handlstm.opacus  # noqa: E402,F401  (registers HandLSTM with opacus)
from handlstm import HandLSTM, HandLSTMCell  # noqa: E402

DT = torch.float64
TOL = {"atol": 1e-10, "rtol": 0.0}
L, N, H_IN, H = 4, 3, 3, 4


class Net(nn.Module):
    """HandLSTM (optionally after an Embedding) returning everything a loss may use."""

    def __init__(self, embed: bool = False, **kwargs: object) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, H_IN) if embed else None
        self.lstm = HandLSTM(H_IN, H, **kwargs)  # type: ignore[arg-type]

    def forward(self, x: Tensor | PackedSequence) -> tuple[object, Tensor, Tensor]:
        if self.embed is not None:
            x = self.embed(x)
        out, (h, c) = self.lstm(x)
        return out, h, c


def per_sample_loss(out: object, h: Tensor, c: Tensor, which: str, batch_first: bool) -> Tensor:
    """A nonlinear loss of each example, through output, h_n, c_n or all three: ``(N,)``."""
    if isinstance(out, PackedSequence):
        out, _ = pad_packed_sequence(out, batch_first=True)  # (N, L, F), caller's order
    elif not batch_first:
        out = out.transpose(0, 1)  # type: ignore[union-attr]
    terms = []
    if which in ("output", "all"):
        terms.append((out.sin() * out).flatten(1).sum(1))  # type: ignore[union-attr]
    if which in ("h_n", "all"):
        terms.append(h.transpose(0, 1).flatten(1).pow(2).sum(1))
    if which in ("c_n", "all"):
        terms.append(c.transpose(0, 1).flatten(1).cos().sum(1))
    return torch.stack(terms).sum(0)


def make_input(
    batch_first: bool, packed: str | None, embed: bool, n: int = N, grad: bool = False
) -> Tensor | PackedSequence:
    g = torch.Generator().manual_seed(1)
    if embed:
        return torch.randint(0, 7, (n, L), generator=g)
    x = torch.randn(n, L, H_IN, generator=g, dtype=DT)  # (N, L, H_in)
    x.requires_grad_(grad)
    if packed is None:
        return x if batch_first else x.transpose(0, 1)
    lengths = torch.tensor([L, 2, 3, 1, L][:n])
    if packed == "sorted":
        lengths = lengths.sort(descending=True).values
    return pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=packed == "sorted")


def oracle(
    model: nn.Module, x: object, which: str, batch_first: bool, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-example gradients ``{name: (N, *shape)}`` and the ordinary gradient of the sum."""
    params = dict(model.named_parameters())
    torch.manual_seed(seed)
    losses = per_sample_loss(*model(x), which, batch_first)
    per: dict[str, list[Tensor]] = {name: [] for name in params}
    for i in range(losses.numel()):
        grads = torch.autograd.grad(
            losses[i], list(params.values()), retain_graph=True, allow_unused=True
        )
        for (name, p), g in zip(params.items(), grads, strict=True):
            per[name].append(torch.zeros_like(p) if g is None else g)
    stacked = {
        name: torch.stack(gs) if gs else p.new_zeros((0, *p.shape))
        for (name, gs), p in zip(per.items(), params.values(), strict=True)
    }
    total = {name: gs.sum(0) for name, gs in stacked.items()}
    return stacked, total


def run_hooked(
    model: nn.Module, x: object, which: str, batch_first: bool, reduction: str, seed: int, **kw
) -> None:
    gsm = GradSampleModule(model, loss_reduction=reduction, **kw)
    torch.manual_seed(seed)
    losses = per_sample_loss(*gsm(x), which, batch_first)
    (losses.mean() if reduction == "mean" else losses.sum()).backward()


CONFIGS = [
    # (HandLSTM kwargs, which loss, packed, embed)
    ({}, "output", None, False),
    ({}, "h_n", None, False),
    ({}, "c_n", None, False),
    ({}, "all", None, False),
    ({"batch_first": True}, "all", None, False),
    ({"num_layers": 2}, "h_n", None, False),
    ({"num_layers": 3, "batch_first": True}, "all", None, False),
    ({"bidirectional": True}, "output", None, False),
    ({"bidirectional": True, "num_layers": 2}, "all", None, False),
    ({"proj_size": 2}, "all", None, False),
    ({"proj_size": 3, "num_layers": 2, "bidirectional": True}, "c_n", None, False),
    ({"bias": False}, "all", None, False),
    ({}, "all", "sorted", False),
    ({}, "h_n", "unsorted", False),
    ({"num_layers": 2, "bidirectional": True, "proj_size": 2}, "all", "unsorted", False),
    ({"batch_first": True}, "all", None, True),
    ({"batch_first": True, "bidirectional": True}, "h_n", None, True),
]


def check_grad_samples(model: nn.Module, per: dict[str, Tensor], total: dict[str, Tensor]):
    for name, p in model.named_parameters():
        assert isinstance(p.grad_sample, Tensor), name
        torch.testing.assert_close(p.grad_sample, per[name], **TOL, msg=name)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("kwargs", "which", "packed", "embed"), CONFIGS)
def test_grad_sample_equals_per_example_autograd(kwargs, which, packed, embed, reduction):
    torch.manual_seed(0)
    model = Net(embed, **kwargs).to(DT)
    reference = copy.deepcopy(model)
    bf = kwargs.get("batch_first", False)
    x = make_input(bf, packed, embed)
    per, total = oracle(reference, x, which, bf, seed=3)
    run_hooked(model, x, which, bf, reduction, seed=3)
    check_grad_samples(model, per, total)
    scale = 1.0 / N if reduction == "mean" else 1.0
    for name, p in model.named_parameters():  # the ordinary gradient is right too
        torch.testing.assert_close(p.grad, total[name] * scale, **TOL, msg=name)


def test_lengths_keyword_passes_through():
    """``lstm(x, lengths=...)`` (beyond nn.LSTM) in per-sample mode: exact as well."""

    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = HandLSTM(H_IN, H, batch_first=True, bidirectional=True)

        def forward(self, x: Tensor, lengths: Tensor) -> tuple[object, Tensor, Tensor]:
            out, (h, c) = self.lstm(x, lengths=lengths)
            return out, h, c

    torch.manual_seed(0)
    model = Padded().to(DT)
    reference = copy.deepcopy(model)
    x = torch.randn(N, L, H_IN, dtype=DT)
    lengths = torch.tensor([L, 2, 3])
    losses = per_sample_loss(*reference(x, lengths), "all", True)
    per_sample_loss(*GradSampleModule(model)(x, lengths), "all", True).mean().backward()
    for i in range(N):
        grads = torch.autograd.grad(losses[i], list(reference.parameters()), retain_graph=True)
        for (name, p), g in zip(model.named_parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad_sample[i], g, **TOL, msg=name)
            if i == 1:
                assert p.grad_sample[i].abs().max() > 0, name


@pytest.mark.parametrize("packed", [None, "unsorted"])
def test_grad_sample_equals_independent_single_example_runs(packed):
    """Each example alone through an unhooked copy (its own forward, batch of one)."""
    torch.manual_seed(0)
    model = Net(num_layers=2, bidirectional=True, proj_size=2).to(DT)
    reference = copy.deepcopy(model)
    x = torch.randn(N, L, H_IN, dtype=DT)
    lengths = [L, 2, 3]
    whole: object = x.transpose(0, 1)
    if packed:
        whole = pack_padded_sequence(x, torch.tensor(lengths), True, enforce_sorted=False)
    run_hooked(model, whole, "all", False, "mean", seed=0)
    for i in range(N):
        xi: object = x[i : i + 1].transpose(0, 1)
        if packed:
            xi = pack_padded_sequence(x[i : i + 1, : lengths[i]], torch.tensor([lengths[i]]), True)
        loss = per_sample_loss(*reference(xi), "all", False).sum()
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        for (name, p), g in zip(model.named_parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad_sample[i], g, **TOL, msg=name)


def test_input_with_grad_and_a_head_hooked_by_opacus():
    """Input that needs a gradient (the module hook would fire after backward) and an
    nn.Linear head that opacus itself hooks, in the same model."""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = HandLSTM(H_IN, H, batch_first=True, num_layers=2)
            self.fc = nn.Linear(H, 2)

        def forward(self, x: Tensor) -> Tensor:
            out, (h, _) = self.lstm(x)
            return self.fc(h[-1]) + out[:, -1, :2]

    torch.manual_seed(0)
    model = Head().to(DT)
    reference = copy.deepcopy(model)
    x = torch.randn(N, L, H_IN, dtype=DT, requires_grad=True)
    gsm = GradSampleModule(model)
    gsm(x).pow(2).sum(1).mean().backward()
    for i in range(N):
        loss = reference(x[i : i + 1]).pow(2).sum()
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        for (name, p), g in zip(model.named_parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad_sample[i], g, **TOL, msg=name)
    assert x.grad is not None


def test_functorch_mode_is_exact_too():
    torch.manual_seed(0)
    model = Net(bidirectional=True, proj_size=2).to(DT)
    reference = copy.deepcopy(model)
    x = make_input(False, "unsorted", False)
    per, total = oracle(reference, x, "all", False, seed=0)
    run_hooked(model, x, "all", False, "mean", seed=0, force_functorch=True)
    check_grad_samples(model, per, total)


def test_two_backward_calls_accumulate_as_opacus_does():
    """Two forward/backward passes before a step: grad_sample becomes a list of two."""
    torch.manual_seed(0)
    model = Net(num_layers=2).to(DT)
    reference = copy.deepcopy(model)
    x1, x2 = make_input(False, None, False), make_input(True, None, False).flip(0) * 0.5
    per1, _ = oracle(reference, x1, "all", False, seed=0)
    per2, _ = oracle(reference, x2.transpose(0, 1), "all", False, seed=0)
    gsm = GradSampleModule(model)
    for x in (x1, x2.transpose(0, 1)):
        per_sample_loss(*gsm(x), "all", False).mean().backward()
    for name, p in model.named_parameters():
        assert isinstance(p.grad_sample, list) and len(p.grad_sample) == 2, name
        torch.testing.assert_close(p.grad_sample[0], per1[name], **TOL)
        torch.testing.assert_close(p.grad_sample[1], per2[name], **TOL)


def test_empty_batch():
    model = Net(num_layers=2, bidirectional=True).to(DT)
    gsm = GradSampleModule(model, loss_reduction="sum")
    x = torch.randn(L, 0, H_IN, dtype=DT)
    per_sample_loss(*gsm(x), "all", False).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad_sample.shape == (0, *p.shape), name
    optimizer = opacus.optimizers.DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
        loss_reduction="sum",
    )
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()  # opacus's empty-batch path: a zero update without noise
    for b, p in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), b, **TOL)


def test_unreached_layer_gets_zero_grad_samples():
    """A loss through h_n of the first layer only: the second layer's per-sample gradient is 0
    (the autograd oracle with allow_unused), not a missing grad_sample."""
    torch.manual_seed(0)
    model = Net(num_layers=2).to(DT)
    gsm = GradSampleModule(model)
    _, h, _ = gsm(make_input(False, None, False))
    h[0].pow(2).sum(1).mean().backward()
    assert model.lstm.weight_ih_l1.grad_sample.abs().max() == 0
    assert model.lstm.weight_ih_l0.grad_sample.abs().max() > 0


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"bias": False, "cell_clip": 0.3, "gate_activation": torch.nn.functional.hardsigmoid},
        {"peepholes": True},
        {"layer_norm": True, "peepholes": True},
        {"layer_norm": True, "bias": False},
    ],
)
def test_cell_unrolled_in_a_python_loop(options):
    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = HandLSTMCell(H_IN, H, **options)

        def forward(self, x: Tensor) -> Tensor:  # x: (N, L, H_in)
            h = c = x.new_zeros(x.size(0), H)
            total = x.new_zeros(x.size(0))
            for t in range(x.size(1)):
                h, c = self.cell(x[:, t], (h, c))
                total = total + (h.sin() * h).sum(1)
            return total + c.cos().sum(1)

    torch.manual_seed(0)
    model = Loop().to(DT)
    reference = copy.deepcopy(model)
    x = torch.randn(N, L, H_IN, dtype=DT)
    GradSampleModule(model)(x).mean().backward()
    for i in range(N):
        grads = torch.autograd.grad(reference(x[i : i + 1]).sum(), list(reference.parameters()))
        for (name, p), g in zip(model.named_parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad_sample[i], g, **TOL, msg=name)


@pytest.mark.parametrize(
    "options",
    [
        {"zoneout_h": 0.3, "zoneout_c": 0.2},
        {"recurrent_dropout": 0.3, "input_dropout": 0.2, "num_layers": 2},
        {"gate_activation": torch.nn.functional.hardsigmoid, "cell_clip": 0.5, "proj_clip": 0.4},
        {"forget_bias": 1.0, "dropout": 0.5, "num_layers": 2},
    ],
)
def test_variants_without_own_parameters(options):
    """Random masks included: the oracle replays the same seed, hence the same masks."""
    torch.manual_seed(0)
    kwargs = dict(options)
    if "proj_clip" in kwargs:
        kwargs["proj_size"] = 2
    model = Net(**kwargs).to(DT)
    reference = copy.deepcopy(model)
    x = make_input(False, "unsorted", False)
    per, total = oracle(reference, x, "all", False, seed=5)
    run_hooked(model, x, "all", False, "mean", seed=5)
    check_grad_samples(model, per, total)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"peepholes": True},
        {"peepholes": True, "num_layers": 2, "bidirectional": True, "proj_size": 2},
        {"peepholes": True, "batch_first": True, "bias": False},
        {"layer_norm": True},
        {"layer_norm": True, "num_layers": 2, "bidirectional": True, "proj_size": 2},
        {"layer_norm": True, "peepholes": True, "bias": False, "batch_first": True},
    ],
)
@pytest.mark.parametrize("packed", [None, "unsorted"])
def test_variant_parameters_get_exact_per_sample_gradients(kwargs, packed):
    """The variants' own parameters too: peepholes (weight_ci, weight_cf, weight_co), layer
    norm gains and shifts (ln_weight_ih/hh/c, ln_bias_c; with layer norm the GEMM biases are
    the input norm's shift)."""
    torch.manual_seed(0)
    model = Net(**kwargs).to(DT)
    with torch.no_grad():  # nonzero peepholes (they start at 0)
        for name, p in model.named_parameters():
            if name.startswith(("lstm.weight_c", "lstm.ln_")):
                p.normal_()
    reference = copy.deepcopy(model)
    bf = kwargs.get("batch_first", False)
    x = make_input(bf, packed, False)
    per, total = oracle(reference, x, "all", bf, seed=0)
    run_hooked(model, x, "all", bf, "mean", seed=0)
    check_grad_samples(model, per, total)
    own = ("lstm.weight_c", "lstm.ln_")
    assert any(n.startswith(own) and per[n].abs().max() > 0 for n in per)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, total[name] / N, **TOL, msg=name)


@pytest.mark.parametrize(
    ("module", "option"),
    [
        (lambda: HandLSTM(3, 4, weight_drop=0.2), "weight_drop"),
    ],
)
def test_variants_with_own_parameters_are_refused_clearly(module, option):
    with pytest.raises(NotImplementedError, match=option):
        GradSampleModule(nn.Sequential(module()))


def test_ew_mode_is_refused_with_the_supported_modes():
    from opacus.grad_sample import GradSampleModuleExpandedWeights

    with pytest.raises(NotImplementedError, match="hooks"):
        GradSampleModuleExpandedWeights(nn.Sequential(HandLSTM(3, 4, batch_first=True)))


def test_eval_mode_and_no_grad_record_nothing():
    model = Net().to(DT)
    gsm = GradSampleModule(model)
    x = make_input(False, None, False)
    with torch.no_grad():
        gsm(x)
    gsm.eval()
    gsm(x)
    assert all(p._forward_counter == 0 for p in model.parameters())


def test_remove_hooks_restores_the_plain_module():
    model = Net().to(DT)
    gsm = GradSampleModule(model)
    assert "forward" in model.lstm.__dict__
    gsm.remove_hooks()
    assert "forward" not in model.lstm.__dict__


# -- ghost clipping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "which", "packed"),
    [
        ({}, "all", None),
        ({"num_layers": 2, "bidirectional": True, "proj_size": 2}, "all", "unsorted"),
        ({"batch_first": True, "bias": False}, "h_n", None),
        ({"peepholes": True, "bidirectional": True}, "all", "unsorted"),
        ({"layer_norm": True, "proj_size": 2}, "all", None),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ghost_norms_equal_the_materialised_norms(kwargs, which, packed, reduction):
    torch.manual_seed(0)
    model = Net(**kwargs).to(DT)
    reference = copy.deepcopy(model)
    bf = kwargs.get("batch_first", False)
    x = make_input(bf, packed, False)
    per, _ = oracle(reference, x, which, bf, seed=0)
    gsm = GradSampleModuleFastGradientClipping(model, loss_reduction=reduction, max_grad_norm=1.0)
    losses = per_sample_loss(*gsm(x), which, bf)
    (losses.mean() if reduction == "mean" else losses.sum()).backward()
    for name, p in model.named_parameters():
        assert getattr(p, "grad_sample", None) is None, name  # never materialised
        expected = per[name].flatten(1).norm(dim=1)
        torch.testing.assert_close(p._norm_sample, expected, **TOL, msg=name)


def test_ghost_gram_and_long_record_branches_agree(monkeypatch):
    from handlstm.engines.per_sample import norms

    torch.manual_seed(0)
    d_out, x = torch.randn(6, 3, 8, dtype=DT), torch.randn(6, 3, 5, dtype=DT)
    expected = torch.einsum("kng,kni->ngi", d_out, x).flatten(1).pow(2).sum(1)
    torch.testing.assert_close(norms.gram_norm2(d_out, x), expected, **TOL)
    monkeypatch.setattr(norms, "_GRAM_RATIO", 0.0)
    torch.testing.assert_close(norms.gram_norm2(d_out, x), expected, **TOL)


def test_ghost_gram_norms_of_tiny_and_decaying_gradients():
    """Gate gradients shrink geometrically back in time; whole samples can be tiny. The Gram
    path rescales each sample by a power of two (exact) and drops entries below eps**2 of the
    sample's largest: the norms still equal the materialised ones (relative 1e-12)."""
    from handlstm.engines.per_sample import norms

    torch.manual_seed(0)
    k, n = 12, 3
    decay = torch.logspace(-190, 0, k, dtype=DT).view(k, 1, 1)  # step 0: 1e-190
    d_out = torch.randn(k, n, 8, dtype=DT) * decay
    d_out[:, 1] *= 1e-120  # a whole sample near the bottom of float64's range
    x = torch.randn(k, n, 5, dtype=DT)
    x[:, 2] *= 1e-100
    expected = torch.einsum("kng,kni->ngi", d_out, x).flatten(1).pow(2).sum(1)
    got = norms.gram_norm2(d_out, x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0)


def test_ghost_cell_loop_falls_back_to_fast_gradient_clipping():
    cell = HandLSTMCell(H_IN, H).to(DT)
    reference = copy.deepcopy(cell)
    x = torch.randn(N, L, H_IN, dtype=DT)

    def run(module: nn.Module, inputs: Tensor) -> Tensor:
        h = c = inputs.new_zeros(inputs.size(0), H)
        for t in range(L):
            h, c = module(inputs[:, t], (h, c))
        return h.pow(2).sum(1)

    gsm = GradSampleModuleFastGradientClipping(nn.Sequential(cell), max_grad_norm=1.0)
    run(cell, x).mean().backward()
    del gsm
    for name, p in cell.named_parameters():
        norms = []
        for i in range(N):
            loss = run(reference, x[i : i + 1]).sum()
            (g,) = torch.autograd.grad(loss, [getattr(reference, name)])
            norms.append(g.norm())
        torch.testing.assert_close(p._norm_sample, torch.stack(norms), **TOL, msg=name)


# -- integration --------------------------------------------------------------------------------


def test_module_validator_reports_nothing():
    from opacus.validators import ModuleValidator

    model = nn.Sequential(HandLSTM(3, 4, proj_size=2, bidirectional=True), HandLSTMCell(3, 4))
    assert ModuleValidator.validate(model, strict=False) == []


def test_import_handlstm_does_not_import_opacus():
    code = "import sys, handlstm; sys.exit('opacus' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_hooks_without_a_wrapper_module():
    """opacus's GradSampleHooks (make_private(wrap_model=False)) attaches the same way."""
    from opacus.grad_sample import GradSampleHooks

    torch.manual_seed(0)
    model = Net(proj_size=2).to(DT)
    reference = copy.deepcopy(model)
    x = make_input(True, None, False).transpose(0, 1)
    per, _ = oracle(reference, x, "h_n", False, seed=0)
    hooks = GradSampleHooks(model)
    per_sample_loss(*model(x), "h_n", False).mean().backward()
    check_grad_samples(model, per, {})
    hooks.remove_hooks()
    assert "forward" not in model.lstm.__dict__


class Seq2Seq(nn.Module):
    """Encoder and decoder; the encoder's gradient arrives only through the decoder's hx."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = HandLSTM(H_IN, H, num_layers=2)
        self.decoder = HandLSTM(H_IN, H, num_layers=2)

    def forward(self, x: Tensor) -> tuple[object, Tensor, Tensor]:
        _, state = self.encoder(x)
        out, (h, c) = self.decoder(x.flip(0), state)
        return out, h, c


def test_encoder_decoder_through_hx():
    """Two HandLSTMs, the decoder started from the encoder's (h_n, c_n): gradients flow into
    the encoder only through hx."""
    torch.manual_seed(0)
    model = Seq2Seq().to(DT)
    reference = copy.deepcopy(model)
    x = make_input(False, None, False)
    per, total = oracle(reference, x, "output", False, seed=0)
    run_hooked(model, x, "output", False, "mean", seed=0)
    check_grad_samples(model, per, total)


def test_opacus_imported_first_registers_on_import_handlstm() -> None:
    # The usual order in DP scripts: opacus first, then handlstm: no extra import needed.
    code = (
        "import sys, opacus, handlstm\n"
        "from opacus.grad_sample import GradSampleModule\n"
        "print('handlstm.opacus' in sys.modules,\n"
        "      handlstm.HandLSTM in GradSampleModule.GRAD_SAMPLERS)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
