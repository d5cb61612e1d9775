"""CUDA parity and speed of HandLSTM against cuDNN's nn.LSTM, in one short run (< 5 minutes).

On a machine with an NVIDIA GPU::

    python benchmarks/cuda_check.py            # parity (float64, float32) + timing table
    python benchmarks/cuda_check.py --no-time  # parity only

Without CUDA it prints a message and exits with status 0.

Parity: HandLSTM on the GPU against nn.LSTM on the GPU (cuDNN) and against HandLSTM on the CPU,
outputs, final states and every gradient, over dense / batch_first / unbatched / packed input,
2 layers, bidirectional, proj_size; float64 at 1e-10 and float32 at 1e-4 (TF32 switched off).
Rows "fast-cuda" run HandLSTM's fast path on the GPU (it serves only the CPU by default; this
script enables it temporarily) to see whether it is worth enabling there.

Timing: the configurations of ``bench.py``, float32, inference (``no_grad``, eval) and one
training step (forward + backward), medians of ``torch.utils.benchmark`` ``blocked_autorange``
over interleaved rounds; every timed statement ends with ``torch.cuda.synchronize()``.
Exit status 1 if any parity check fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handlstm import HandLSTM  # noqa: E402
from handlstm.engines.fast import serves as fast_serves  # noqa: E402
from handlstm.testing import assert_lstm_close  # noqa: E402

PARITY_CONFIGS: list[dict[str, Any]] = [
    {"input_size": 5, "hidden_size": 7},
    {"input_size": 5, "hidden_size": 7, "num_layers": 2, "bidirectional": True},
    {"input_size": 5, "hidden_size": 7, "proj_size": 3, "batch_first": True},
    {"input_size": 5, "hidden_size": 7, "num_layers": 2, "proj_size": 3, "bidirectional": True},
    {"input_size": 5, "hidden_size": 7, "bias": False},
]
KINDS = ["dense", "unbatched", "packed"]


class FastOnCuda:
    """Let the fast path serve CUDA tensors inside this context (experimental)."""

    def __enter__(self) -> None:
        self.had = "cuda" in fast_serves.DEVICE_TYPES
        fast_serves.DEVICE_TYPES.add("cuda")

    def __exit__(self, *exc: object) -> None:
        if not self.had:
            fast_serves.DEVICE_TYPES.discard("cuda")


def make_input(config: dict[str, Any], kind: str, dtype: torch.dtype, device: str) -> Any:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, config["input_size"], generator=gen, dtype=torch.float64)
    x = x.to(device=device, dtype=dtype)
    if kind == "unbatched":
        return x[:, 0]
    if kind == "packed":
        lengths = torch.tensor([6, 2, 4])
        return pack_padded_sequence(x, lengths, enforce_sorted=False)
    return x.transpose(0, 1).contiguous() if config.get("batch_first") else x


def parity(device: str) -> list[tuple[str, bool, str]]:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        for config in PARITY_CONFIGS:
            for kind in KINDS:
                torch.manual_seed(0)
                ref = nn.LSTM(**config, dtype=dtype, device=device)
                mine = HandLSTM(**config, dtype=dtype, device=device)
                mine.load_state_dict(ref.state_dict())
                x = make_input(config, kind, dtype, device)
                name = f"{str(dtype)[6:]} {kind} {config}"
                mine_fast = HandLSTM(**config, dtype=dtype, device=device)
                mine_fast.load_state_dict(ref.state_dict())
                checks = [("vs cuDNN", mine, False), ("fast-cuda vs cuDNN", mine_fast, True)]
                for label, module, fast in checks:
                    try:
                        with FastOnCuda() if fast else _Null():
                            assert_lstm_close(module, ref, x, rtol=tol, atol=tol)
                        rows.append((f"{label}: {name}", True, ""))
                    except Exception as exc:  # noqa: BLE001 - report every failure
                        message = f"{type(exc).__name__}: {exc}"
                        rows.append((f"{label}: {name}", False, message[:300]))
    return rows


def timing(device: str, quick: bool) -> list[dict[str, Any]]:
    import bench

    torch.backends.cudnn.allow_tf32 = True  # defaults, as users run
    torch.backends.cuda.matmul.allow_tf32 = False
    impls = ["nn.LSTM", "HandLSTM", "HandLSTM fast-cuda"]
    results = []
    rounds = 2 if quick else 3
    for cfg in bench.CONFIGS:
        for mode in ("inference", "train"):
            steps = {}
            for impl in impls:
                torch.manual_seed(0)
                ref = nn.LSTM(
                    cfg.input_size,
                    cfg.hidden_size,
                    num_layers=cfg.num_layers,
                    bidirectional=cfg.bidirectional,
                    device=device,
                )
                module = ref if impl == "nn.LSTM" else HandLSTM.from_torch(ref)
                x = torch.randn(cfg.seq_len, cfg.batch, cfg.input_size, device=device)
                d = 2 if cfg.bidirectional else 1
                grad = torch.randn(cfg.seq_len, cfg.batch, d * cfg.hidden_size, device=device)
                steps[impl] = make_step(module, x, grad, mode, fast=impl.endswith("fast-cuda"))
            print(f"[cuda_check] timing {cfg.label()} {mode}", file=sys.stderr, flush=True)
            for step in steps.values():
                step()
                step()
            times: dict[str, list[float]] = {impl: [] for impl in impls}
            for _ in range(rounds):
                for impl in impls:
                    timer = benchmark.Timer(stmt="step()", globals={"step": steps[impl]})
                    times[impl].append(timer.blocked_autorange(min_run_time=0.1).median)
            base = times["nn.LSTM"]
            for impl in impls:
                ratio = statistics.median(t / b for t, b in zip(times[impl], base, strict=True))
                results.append(
                    {
                        "config": cfg.label(),
                        "mode": mode,
                        "impl": impl,
                        "median_us": statistics.median(times[impl]) * 1e6,
                        "ratio": ratio,
                    }
                )
    return results


def make_step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, mode: str, fast: bool) -> Any:
    def sync() -> None:
        if x.is_cuda:
            torch.cuda.synchronize()

    def context() -> Any:
        return FastOnCuda() if fast else _Null()

    if mode == "inference":
        module.eval()

        def infer() -> None:
            with torch.no_grad(), context():
                module(x)
            sync()

        return infer
    module.train()

    def train() -> None:
        module.zero_grad(set_to_none=True)
        with context():
            out, _ = module(x)
            out.backward(grad)
        sync()

    return train


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-time", action="store_true", help="parity checks only")
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: self-test
    args = parser.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available (torch.cuda.is_available() is False): nothing to check.")
        return 0
    start = time.perf_counter()
    card = torch.cuda.get_device_name(0) if device == "cuda" else f"{device} (self-test)"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        card += f" ({props.total_memory / 2**30:.0f} GiB)"
    print(
        f"card: {card}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}"
    )
    failures = 0
    try:
        rows = parity(device)
    except Exception:  # noqa: BLE001 - keep going to the timing table
        traceback.print_exc()
        rows = [("parity run", False, "crashed, see traceback")]
    failures = sum(not ok for _, ok, _ in rows)
    print(f"\nparity: {len(rows) - failures} of {len(rows)} checks pass")
    for name, ok, message in rows:
        if not ok:
            print(f"  FAIL {name}\n       {message}")
    if not args.no_time:
        results = timing(device, args.quick)
        print(f"\nTimes on {card}, float32 (ratio = time / cuDNN nn.LSTM):\n")
        print("| config | mode | nn.LSTM us | HandLSTM us | ratio | fast-cuda us | ratio |")
        print("|---|---|---|---|---|---|---|")
        keys = list(dict.fromkeys((r["config"], r["mode"]) for r in results))
        for config, mode in keys:
            row = {r["impl"]: r for r in results if r["config"] == config and r["mode"] == mode}
            base, hand, fast = row["nn.LSTM"], row["HandLSTM"], row["HandLSTM fast-cuda"]
            print(
                f"| {config} | {mode} | {base['median_us']:.0f} | {hand['median_us']:.0f} | "
                f"{hand['ratio']:.2f} | {fast['median_us']:.0f} | {fast['ratio']:.2f} |"
            )
    print(f"\ndone in {time.perf_counter() - start:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
