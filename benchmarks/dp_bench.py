"""One DP-SGD training step: HandLSTM vs opacus DPLSTM vs torch.func vmap(grad), as ratios to
nn.LSTM's plain (non-private) training step measured in the same process.

What one step is (every implementation, same model, same batch): a classifier ``LSTM -> Linear``
on the last layer's ``h_n`` (the loss goes through ``h_n`` only), cross-entropy, then

* ``nn.LSTM`` (the baseline): forward, ``backward``, ``SGD.step``, ``zero_grad`` (no privacy);
* ``HandLSTM`` / ``DPLSTM`` through ``PrivacyEngine.make_private`` (``grad_sample_mode`` hooks
  or ghost, noise 1.0, max_grad_norm 1.0, no Poisson sampling so the batch is fixed):
  forward, backward (per-sample gradients or their norms), ``DPOptimizer.step`` (clipping,
  noise, SGD), ``zero_grad`` (which also drops ``grad_sample``);
* ``vmap(grad)``: HandLSTM's per-sample gradients with ``torch.func.vmap(grad(...))``, then the
  same clipping and noise by hand, then the SGD update.

Memory (``--memory``): each (implementation, mode) in a fresh subprocess; after a warm-up step
(which ends with ``zero_grad``, so no gradient or per-sample state is resident) the peak RSS is
reset (``/proc/self/clear_refs``), one step runs, and the reported number is the peak
resident set (``VmHWM``) minus the resident set before the step, in MiB (Linux only).

Usage::

    python benchmarks/dp_bench.py                       # small, medium, large; time
    python benchmarks/dp_bench.py --configs medium --rounds 5
    python benchmarks/dp_bench.py --memory --configs large
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.utils.benchmark as benchmark
from torch import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import handlstm.opacus  # noqa: E402,F401
from handlstm import HandLSTM  # noqa: E402


@dataclass(frozen=True)
class Config:
    name: str
    T: int
    B: int
    I: int  # noqa: E741
    H: int


CONFIGS = [
    Config("small", 32, 8, 32, 64),
    Config("medium", 64, 32, 128, 256),
    Config("large", 128, 64, 512, 512),
]
CLASSES = 10
IMPLS = ["nn.LSTM", "HandLSTM-hooks", "HandLSTM-ghost", "DPLSTM-hooks", "DPLSTM-ghost", "vmap"]


class Classifier(nn.Module):
    def __init__(self, lstm: nn.Module, hidden: int) -> None:
        super().__init__()
        self.lstm = lstm
        self.fc = nn.Linear(hidden, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.lstm(x)
        return self.fc(h[-1])


def build(impl: str, cfg: Config):
    """A zero-argument function running one step of ``impl`` (state kept in the closure)."""
    torch.manual_seed(0)
    x = torch.randn(cfg.B, cfg.T, cfg.I)
    y = torch.randint(0, CLASSES, (cfg.B,))
    base = nn.LSTM(cfg.I, cfg.H, batch_first=True)
    kind = impl.split("-")[0]
    if kind == "nn.LSTM":
        lstm: nn.Module = base
    elif kind == "DPLSTM":
        from opacus.layers import DPLSTM

        lstm = DPLSTM(cfg.I, cfg.H, batch_first=True)
        lstm.load_state_dict(base.state_dict())
    else:
        lstm = HandLSTM.from_torch(base)
    model = Classifier(lstm, cfg.H)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    if kind == "nn.LSTM":

        def step() -> None:
            criterion(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # at the end: nothing of a step outlives it

        return step
    if kind == "vmap":
        return vmap_step(model, optimizer, criterion, x, y)
    from opacus import PrivacyEngine

    mode = impl.split("-")[1]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=cfg.B)
    prepared = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
        grad_sample_mode=mode,
        criterion=criterion,
    )
    module, dp_optimizer = prepared[0], prepared[1]
    loss_fn = prepared[2] if mode == "ghost" else criterion

    def dp_step() -> None:
        loss_fn(module(x), y).backward()
        dp_optimizer.step()
        dp_optimizer.zero_grad(set_to_none=True)  # also drops grad_sample / _norm_sample

    return dp_step


def vmap_step(model: nn.Module, optimizer, criterion, x: Tensor, y: Tensor):
    from torch.func import functional_call, grad, vmap

    names = [n for n, _ in model.named_parameters()]

    def loss_one(params: dict, xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, params, (xi.unsqueeze(0),))
        return criterion(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))

    def step() -> None:
        params = {n: p.detach() for n, p in model.named_parameters()}
        grads = per_sample(params, x, y)
        norms = torch.stack([grads[n].flatten(1).norm(dim=1) for n in names]).norm(dim=0)
        coef = (1.0 / (norms + 1e-6)).clamp(max=1.0)
        for n, p in model.named_parameters():
            summed = torch.einsum("n,n...->...", coef, grads[n])
            p.grad = (summed + torch.randn_like(summed)) / x.size(0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_rounds(cfg: Config, impls: list[str], threads: int, rounds: int) -> list[dict]:
    """``rounds`` rounds; each round times one ``blocked_autorange`` of every implementation in
    turn (interleaved, so the load of a shared machine hits all of them alike)."""
    steps = {impl: build(impl, cfg) for impl in impls}
    for step in steps.values():
        step()
        step()  # warm-up (oneDNN primes its kernels on the first calls)
    out = []
    for _ in range(rounds):
        row = {}
        for impl, step in steps.items():
            timer = benchmark.Timer("step()", globals={"step": step}, num_threads=threads)
            row[impl] = timer.blocked_autorange(min_run_time=0.3).median
        out.append(row)
    return out


def memory_one(cfg_name: str, impl: str) -> float:
    """Peak extra resident memory of one step, in MiB (run in a fresh subprocess)."""
    code = f"""
import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import dp_bench, resource
cfg = [c for c in dp_bench.CONFIGS if c.name == {cfg_name!r}][0]
step = dp_bench.build({impl!r}, cfg); step()
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) / 1024
before = rss('VmRSS:')
open('/proc/self/clear_refs', 'w').write('5')
step()
print(rss('VmHWM:') - before)
"""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", choices=[c.name for c in CONFIGS])
    parser.add_argument("--impls", nargs="*", choices=IMPLS, default=IMPLS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="peak memory instead of time")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    configs = [c for c in CONFIGS if not args.configs or c.name in args.configs]
    impls = ["nn.LSTM", *[i for i in args.impls if i != "nn.LSTM"]]
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads"
    )
    results: dict[str, dict] = {}
    for cfg in configs:
        if args.memory:
            mem = {impl: memory_one(cfg.name, impl) for impl in impls}
            results[cfg.name] = {"memory_mib": mem}
            line = ", ".join(f"{impl} {mib:.0f}" for impl, mib in mem.items())
            print(f"{cfg.name} (T={cfg.T} B={cfg.B} I={cfg.I} H={cfg.H}) MiB: {line}")
            continue
        rounds = time_rounds(cfg, impls, args.threads, args.rounds)
        ratios = {impl: statistics.median(r[impl] / r["nn.LSTM"] for r in rounds) for impl in impls}
        times = {impl: statistics.median(r[impl] for r in rounds) for impl in impls}
        results[cfg.name] = {"ratio": ratios, "seconds": times}
        print(
            f"{cfg.name} (T={cfg.T} B={cfg.B} I={cfg.I} H={cfg.H}), "
            f"nn.LSTM step {times['nn.LSTM'] * 1e3:.1f} ms"
        )
        for impl in impls:
            print(f"  {impl:16s} {times[impl] * 1e3:9.1f} ms  {ratios[impl]:6.2f}x nn.LSTM")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
