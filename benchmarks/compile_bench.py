"""Compile time and compiled speed of HandLSTM: the traced loop (scan) against the unrolled loop.

What is measured (one process, CPU, float32, ``torch.set_num_threads(2)`` unless ``--threads``):

* ``compile``: wall time of the first call of ``torch.compile(lstm, backend=..., fullgraph=True)``
  plus its backward (a training step), minus the same call's time once compiled, after
  ``torch._dynamo.reset()``, HandLSTM(32, 64), batch 8, for each time loop
  (``scan`` with ``dynamic=True``; ``unrolled`` with fixed shapes) and sequence length;
* ``train``: one training step (forward, ``out.backward(grad)``, gradients of every parameter)
  at the medium size (L=64, N=32, H_in=128, H_cell=256), timed with ``torch.utils.benchmark``
  for eager ``nn.LSTM``, eager HandLSTM (the fast path), and the compiled HandLSTM (scan, and
  unrolled), interleaved round by round; reported as ratios to the eager HandLSTM of the same
  round (median over rounds), and to nn.LSTM;
* ``graphs``: Dynamo frames compiled for five lengths with ``dynamic=True`` (scan).

Inductor's caches are disabled unless ``--cache`` (the scan's graph is the same at every length,
so a second compile would be a cache hit), and one small compile runs first (start-up costs).

Usage::

    python benchmarks/compile_bench.py                  # inductor: several minutes on 2 cores
    python benchmarks/compile_bench.py --backend aot_eager --quick
    python benchmarks/compile_bench.py --json out.json
    python benchmarks/compile_bench.py --table          # compile/export/AOTI/ONNX x fixed/any

The machine and torch version are printed with the results.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
import torch._dynamo.testing
from torch import Tensor, nn
from torch.utils import benchmark

from handlstm import HandLSTM
from handlstm.engines.tracing import time_loop

MEDIUM = {"length": 64, "batch": 32, "input": 128, "hidden": 256}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def train_step(module: nn.Module, x: Tensor, grad: Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in module.parameters():
            p.grad = None
        out, _ = module(x)
        out.backward(grad)

    return step


def compile_seconds(
    loop: str, length: int, backend: str, batch: int = 8, features: int = 32, hidden: int = 64
) -> float:
    """First call (forward + backward) of a freshly compiled HandLSTM(features, hidden)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    lstm = HandLSTM(features, hidden)
    x = torch.randn(length, batch, features)
    with time_loop(loop):  # type: ignore[arg-type]
        compiled = torch.compile(
            lstm, backend=backend, fullgraph=True, dynamic=True if loop == "scan" else None
        )
        seconds = []
        for _ in range(2):  # the first call compiles and runs; the second only runs
            start = time.perf_counter()
            out, _ = compiled(x)
            out.sum().backward()
            seconds.append(time.perf_counter() - start)
        return seconds[0] - seconds[1]


def graphs_for_lengths(
    backend: str, lengths: tuple[int, ...] = (5, 17, 64, 3, 200)
) -> dict[str, int]:
    """Dynamo graphs (``unique_graphs``) after the first length and after all five, training."""
    torch._dynamo.reset()
    counter = torch._dynamo.utils.counters
    counter.clear()
    lstm = HandLSTM(8, 16)
    compiled = torch.compile(lstm, backend=backend, fullgraph=True, dynamic=True)
    seen = []
    for length in lengths:
        compiled(torch.randn(length, 4, 8))[0].sum().backward()
        seen.append(counter["stats"]["unique_graphs"])
    return {"after_first": seen[0], "after_five": seen[-1]}


def train_ratios(
    backend: str,
    rounds: int,
    min_run_time: float,
    loops: tuple[str, ...] = ("auto", "scan", "unrolled"),
) -> dict[str, Any]:
    size = MEDIUM
    torch.manual_seed(0)
    ref = nn.LSTM(size["input"], size["hidden"])
    eager = HandLSTM(size["input"], size["hidden"])
    eager.load_state_dict(ref.state_dict())
    x = torch.randn(size["length"], size["batch"], size["input"])
    grad = torch.randn(size["length"], size["batch"], size["hidden"])
    steps: dict[str, Callable[[], None]] = {
        "nn.LSTM": train_step(ref, x, grad),
        "HandLSTM eager": train_step(eager, x, grad),
    }
    compile_s: dict[str, float] = {}
    for loop in loops:  # auto: the opaque op (compiled training)
        torch._dynamo.reset()
        module = HandLSTM(size["input"], size["hidden"])
        module.load_state_dict(ref.state_dict())
        with time_loop(loop):  # type: ignore[arg-type]
            compiled = torch.compile(
                module,
                backend=backend,
                fullgraph=True,
                dynamic=True if loop != "unrolled" else None,
            )
            step = train_step(compiled, x, grad)
            start = time.perf_counter()
            step()
            compile_s[loop] = time.perf_counter() - start
            step()  # warm
        steps[f"HandLSTM compiled {loop}"] = step
    per_round: dict[str, list[float]] = {name: [] for name in steps}
    medians: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        times = {}
        for name, fn in steps.items():
            # the time loop is read at trace time only: the compiled graphs are already made
            m = benchmark.Timer("fn()", globals={"fn": fn}, label="train", sub_label=name)
            times[name] = m.blocked_autorange(min_run_time=min_run_time).median
        for name, value in times.items():
            per_round[name].append(value / times["HandLSTM eager"])
            medians[name].append(value)
    return {
        "size": size,
        "compile_seconds": compile_s,
        "ms": {k: 1e3 * statistics.median(v) for k, v in medians.items()},
        "ratio_to_eager_handlstm": {k: statistics.median(v) for k, v in per_round.items()},
    }


def short_lengths(backend: str, lengths: tuple[int, ...] = (4, 16, 64)) -> list[dict[str, Any]]:
    """Compiled inference of HandLSTM(32, 64), batch 8, fixed length: the scan against the
    unrolled loop (time per call, interleaved, median of 5 rounds), and each one's compile time
    (first call minus a compiled call)."""
    rows = []
    torch.manual_seed(0)
    lstm = HandLSTM(32, 64).eval()
    for length in lengths:
        x = torch.randn(length, 8, 32)
        runs: dict[str, Callable[[], Any]] = {}
        compile_s = {}
        for loop in ("scan", "unrolled"):
            torch._dynamo.reset()
            with time_loop(loop), torch.no_grad():  # type: ignore[arg-type]
                compiled = torch.compile(lstm, backend=backend, fullgraph=True)
                start = time.perf_counter()
                compiled(x)
                first = time.perf_counter() - start
                start = time.perf_counter()
                compiled(x)
                compile_s[loop] = first - (time.perf_counter() - start)

            def call(c: Any = compiled, x: Tensor = x) -> Any:
                with torch.no_grad():
                    return c(x)

            runs[loop] = call
        times: dict[str, list[float]] = {loop: [] for loop in runs}
        for _ in range(5):
            for loop, fn in runs.items():
                timer = benchmark.Timer("fn()", globals={"fn": fn})
                times[loop].append(timer.blocked_autorange(min_run_time=0.2).median)
        row = {
            "length": length,
            "compile_seconds": compile_s,
            "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        }
        row["scan_over_unrolled"] = row["ms"]["scan"] / row["ms"]["unrolled"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


TABLE_LENGTHS = (16, 37, 300)  # the first is the traced (fixed) length


def _table_cell(kind: str, module: nn.Module, any_length: bool, tmp: Path) -> dict[str, Any]:
    """Build one transform of ``module`` (eval, HandLSTM(32, 64) or nn.LSTM(32, 64), batch 8)
    and run it at TABLE_LENGTHS (fixed: only the first); seconds to build, or the error."""
    from torch.export import Dim

    torch._dynamo.reset()
    x = torch.randn(TABLE_LENGTHS[0], 8, 32)
    dims = ({0: Dim("L")},) if any_length else None
    lengths = TABLE_LENGTHS if any_length else TABLE_LENGTHS[:1]
    start = time.perf_counter()
    try:
        with torch.no_grad():
            if kind == "compile":  # fullgraph where it exists: HandLSTM (nn.LSTM breaks the graph)
                counter = torch._dynamo.utils.counters
                counter.clear()
                run = torch.compile(
                    module,
                    dynamic=True if any_length else None,
                    fullgraph=isinstance(module, HandLSTM),
                )
                run(x)
            elif kind == "export":
                run = torch.export.export(module, (x,), dynamic_shapes=dims).module()
            elif kind == "aoti":
                program = torch.export.export(module, (x,), dynamic_shapes=dims)
                path = torch._inductor.aoti_compile_and_package(
                    program, package_path=str(tmp / f"{kind}{any_length}.pt2")
                )
                run = torch._inductor.aoti_load_package(path)
            else:
                import onnxruntime as ort

                onnx_program = torch.onnx.export(
                    module, (x,), dynamo=True, dynamic_shapes=dims, verbose=False
                )
                session = ort.InferenceSession(onnx_program.model_proto.SerializeToString())
                name = session.get_inputs()[0].name

                def run(xx: Tensor) -> Any:
                    return [torch.from_numpy(a) for a in session.run(None, {name: xx.numpy()})]

            seconds = time.perf_counter() - start
            worst = 0.0
            for length in lengths:
                xx = torch.randn(length, 8, 32)
                got = run(xx)
                got = [got[0], *got[1]] if isinstance(got, tuple) else list(got)
                out, (h, c) = module(xx)
                for a, b in zip(got, (out, h, c), strict=True):
                    worst = max(worst, (a - b).abs().max().item())
        row = {"ok": worst < 1e-4, "seconds": seconds, "max_diff": worst}
        if kind == "compile":
            row["graphs"] = counter["stats"]["unique_graphs"]
        return row
    except Exception as error:  # noqa: BLE001 - the table records what fails
        return {"ok": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}


def measure_table(kinds: list[str]) -> list[dict[str, Any]]:
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            for any_length in (False, True):
                for name in ("nn.LSTM", "HandLSTM"):
                    torch.manual_seed(0)
                    module = (nn.LSTM if name == "nn.LSTM" else HandLSTM)(32, 64).eval()
                    cell = _table_cell(kind, module, any_length, Path(tmp))
                    row = {"transform": kind, "any_length": any_length, "module": name, **cell}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def warm_up(backend: str) -> None:
    """One small compile first, so that no measured compile pays the backend's start-up."""
    torch._dynamo.reset()
    torch.compile(lambda t: torch.tanh(t) * 2, backend=backend)(torch.randn(3, requires_grad=True))
    torch._dynamo.reset()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--quick", action="store_true", help="fewer lengths and rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--loops", default="auto,scan,unrolled", help="with --train-only")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--table", action="store_true", help="only the transforms table of docs/works_with.md"
    )
    parser.add_argument("--kinds", default="compile,export,aoti,onnx", help="with --table")
    parser.add_argument(
        "--short", action="store_true", help="only: compiled inference, scan vs unrolled"
    )
    parser.add_argument(
        "--cache", action="store_true", help="keep inductor's caches (default: disabled)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.cache:  # else a graph compiled before (same scan at every L) is a cache hit
        torch._inductor.config.force_disable_caches = True
    warm_up(args.backend)
    info = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": args.threads,
        "backend": args.backend,
    }
    print(json.dumps(info))
    if args.short:
        rows = short_lengths(args.backend)
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "short": rows}, indent=1))
        return 0
    if args.table:
        rows = measure_table(args.kinds.split(","))
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "table": rows}, indent=1))
        return 0
    if args.train_only:
        loops = tuple(args.loops.split(","))
        train = train_ratios(args.backend, args.rounds or 3, 0.1 if args.quick else 0.3, loops)
        for name, ms in train["ms"].items():
            ratio = train["ratio_to_eager_handlstm"][name]
            print(f"train {name:<28} {ms:8.2f} ms  x{ratio:.2f} of eager HandLSTM")
        print("compile seconds of the medium training step:", train["compile_seconds"])
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "train": train}, indent=1))
        return 0
    lengths = (16, 1024) if args.quick else (16, 64, 1024)
    compile_rows = []
    for loop in ("scan", "unrolled"):
        for length in lengths:
            if loop == "unrolled" and length > 64:
                continue  # minutes per compile: the point is made at 16 and 64
            seconds = compile_seconds(loop, length, args.backend)
            compile_rows.append({"loop": loop, "length": length, "seconds": seconds})
            print(f"compile {loop:>8} L={length:<5} {seconds:7.2f} s", flush=True)
    scan = {r["length"]: r["seconds"] for r in compile_rows if r["loop"] == "scan"}
    result: dict[str, Any] = {"machine": info, "compile": compile_rows}
    result["compile_ratio_scan_1024_over_16"] = scan[1024] / scan[16]
    print(f"compile time scan L=1024 / L=16: {result['compile_ratio_scan_1024_over_16']:.2f}")
    result["graphs_for_5_lengths"] = graphs_for_lengths(args.backend)
    print(f"dynamic=True, Dynamo graphs after 1 and 5 lengths: {result['graphs_for_5_lengths']}")
    if not args.skip_train:
        rounds = args.rounds or (3 if args.quick else 5)
        train = train_ratios(args.backend, rounds, 0.1 if args.quick else 0.3)
        result["train"] = train
        for name, ms in train["ms"].items():
            ratio = train["ratio_to_eager_handlstm"][name]
            print(f"train {name:<28} {ms:8.2f} ms  x{ratio:.2f} of eager HandLSTM")
        print("compile seconds of the medium training step:", train["compile_seconds"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
