"""opacus imported before or after handlstm: the same per-sample gradients (fresh processes).

Each case runs in a new interpreter, so that neither module is imported before the order under
test; the oracle is a loop of single-sample backward passes in the same process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("opacus", reason="opacus is an optional extra: pip install .[opacus]")

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    if sys.argv[1] == "handlstm-first":
        import handlstm
        from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
    else:
        from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
        import handlstm
    import torch
    from torch import nn
    mode, reduction = sys.argv[2], sys.argv[3]
    torch.manual_seed(0)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = handlstm.HandLSTM(3, 4, batch_first=True, dtype=torch.float64)
            self.fc = nn.Linear(4, 2, dtype=torch.float64)
        def forward(self, x):
            _, (h, _) = self.lstm(x)  # a head on h_n
            return self.fc(h[-1])

    model = Head()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    want = []
    for i in range(5):  # the oracle: one backward per sample
        model.zero_grad()
        model(x[i : i + 1]).square().sum().backward()
        want.append([p.grad.clone() for p in model.parameters()])
    n = len(want)
    if mode == "ghost":
        wrapped = GradSampleModuleFastGradientClipping(
            model, loss_reduction=reduction, use_ghost_clipping=True)
    else:
        wrapped = GradSampleModule(model, loss_reduction=reduction)
    loss = wrapped(x).square().sum(1)
    (loss.sum() if reduction == "sum" else loss.mean()).backward()
    scale = 1.0  # opacus scales a mean loss back by the batch size: loss_i per sample
    for j, p in enumerate(model.parameters()):
        if mode == "ghost":
            norms = torch.stack([w[j].flatten().norm() for w in want]) * scale
            torch.testing.assert_close(p._norm_sample, norms, rtol=1e-9, atol=1e-12)
        else:
            per_sample = torch.stack([w[j] for w in want]) * scale
            torch.testing.assert_close(p.grad_sample, per_sample, rtol=1e-9, atol=1e-12)
    print("ok")
    """
)


@pytest.mark.parametrize("order", ["handlstm-first", "opacus-first"])
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_per_sample_gradients_do_not_depend_on_the_import_order(order, mode, reduction):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, order, mode, reduction],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_import_handlstm_alone_never_imports_opacus():
    code = "import sys, handlstm; assert 'opacus' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
