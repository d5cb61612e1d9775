"""Benchmark HandLSTM against nn.LSTM (and opacus DPLSTM when installed) on CPU.

What is timed (all in one process, implementations interleaved round by round):

* ``inference``: ``module(x)`` under ``torch.no_grad()``, module in eval mode;
* ``train``: one training step without the optimizer: ``zero_grad(set_to_none=True)``,
  ``out, (h, c) = module(x)``, ``out.backward(grad)`` with a fixed random ``grad`` (so every
  parameter gradient is computed; ``x`` does not require grad, as for a first layer).

Each round runs ``blocked_autorange`` for every implementation in turn; a round's ratio is
``median(impl) / median(nn.LSTM)`` of that round, and the reported ratio is the median of the
rounds' ratios (pairing rounds cancels slow drifts caused by other load on the machine). The
reported absolute times are medians over all rounds.

Implementations: ``nn.LSTM`` (torch's fused oneDNN kernel on CPU), ``HandLSTM`` (default: fast
path where it serves), ``HandLSTM-composed`` (fast path switched off, the composed-ops path),
``DPLSTM`` (opacus, pure PyTorch; only if ``opacus`` imports).

Usage::

    python benchmarks/bench.py                 # full: 1 and 2 threads, float32 + float64
    python benchmarks/bench.py --quick         # 2 threads, float32, QUICK_CONFIGS, < 2 minutes
    python benchmarks/bench.py --memory        # peak memory of one training step
    python benchmarks/bench.py --json out.json --png out.png

Memory mode runs each implementation in a fresh subprocess (``MALLOC_MMAP_THRESHOLD_=65536`` so
large tensors are mmapped and returned to the OS when freed), resets the peak resident set size
with ``/proc/self/clear_refs``, runs one training step, and reports ``VmHWM`` (peak RSS) during the
step minus the RSS just before it: the extra resident memory the step needed, in MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils import benchmark

# This checkout's handlstm, not whichever one is installed (an editable install of another
# checkout would otherwise be timed): the repository root goes first on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import handlstm  # noqa: E402
from handlstm import HandLSTM  # noqa: E402

try:
    from handlstm.engines import choose as _choose  # noqa: E402
except ImportError:  # pragma: no cover - before the engines existed
    _choose = None  # type: ignore[assignment]

try:
    from opacus.layers import DPLSTM  # noqa: E402
except Exception:  # noqa: BLE001 - any import failure means "not installed"
    DPLSTM = None


@dataclass(frozen=True)
class Config:
    name: str
    seq_len: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    options: tuple[tuple[str, Any], ...] = ()  # HandLSTM variant options (nn.LSTM runs plain)
    packed: bool = False  # a PackedSequence, lengths drawn in [seq_len/2, seq_len], unsorted

    def label(self) -> str:
        shape = f"({self.seq_len},{self.batch},{self.input_size},{self.hidden_size})"
        extra = ""
        if self.num_layers > 1:
            extra += f" L{self.num_layers}"
        if self.bidirectional:
            extra += " bi"
        if self.packed:
            extra += " packed"
        for key, value in self.options:
            extra += f" {key}={value}"
        return f"{self.name} {shape}{extra}"


MEDIUM = (64, 32, 128, 256)
CONFIGS = [
    Config("small", 32, 8, 32, 64),
    Config("medium", *MEDIUM),
    Config("large", 128, 64, 512, 512),
    Config("long-thin", 512, 4, 64, 128),
    Config("streaming", 1, 1, 64, 128),
    Config("2L-bi", 64, 16, 128, 128, num_layers=2, bidirectional=True),
    Config("medium-2L-bi", *MEDIUM, num_layers=2, bidirectional=True),
    Config("medium-packed", *MEDIUM, packed=True),
    Config("medium-packed-bi", *MEDIUM, bidirectional=True, packed=True),
    Config("medium-layer_norm", *MEDIUM, options=(("layer_norm", True),)),
    Config("medium-recurrent_dropout", *MEDIUM, options=(("recurrent_dropout", 0.25),)),
    Config("medium-zoneout", *MEDIUM, options=(("zoneout_h", 0.1), ("zoneout_c", 0.1))),
    Config("medium-peepholes", *MEDIUM, options=(("peepholes", True),)),
    Config("medium-weight_drop", *MEDIUM, options=(("weight_drop", 0.25),)),
]
VARIANT_TARGET = (2.0, 1.6)
#: What ``--quick`` times (under 2 minutes on a quiet 2-core machine): one row of each kind.
QUICK_CONFIGS = (
    "small",
    "medium",
    "long-thin",
    "streaming",
    "2L-bi",
    "medium-packed",
    "medium-recurrent_dropout",
)

TARGETS = {  # (inference, train) ratio targets HandLSTM / nn.LSTM, float32, 2 threads (#14)
    "small": (2.0, 2.0),
    "medium": (2.0, 1.5),
    "large": (1.5, 1.3),
    "long-thin": (3.0, 2.5),
    "streaming": (0.5, 0.6),
    "2L-bi": (2.0, 1.5),
    "medium-2L-bi": (1.6, 1.0),
    "medium-packed": (0.8, 0.5),
    **{c.name: VARIANT_TARGET for c in CONFIGS if c.options},
}

BASELINE = "nn.LSTM"


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """Switch HandLSTM's fast path on or off (no-op if the fast path does not exist)."""
    if _choose is None or enabled:
        yield
        return
    with _choose.fast_disabled():
        yield


def build(impl: str, cfg: Config, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    ref = nn.LSTM(
        cfg.input_size,
        cfg.hidden_size,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        dtype=dtype,
    )
    if impl == BASELINE:
        return ref
    if impl.startswith("HandLSTM"):
        cls = BEFORE.HandLSTM if impl == BEFORE_NAME and BEFORE is not None else HandLSTM
        if not cfg.options:
            return cls.from_torch(ref)
        module = cls(
            cfg.input_size,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            bidirectional=cfg.bidirectional,
            dtype=dtype,
            **dict(cfg.options),
        )
        module.load_state_dict(ref.state_dict(), strict=False)  # variant parameters: their init
        return module
    if impl == "DPLSTM" and DPLSTM is not None:
        module = DPLSTM(
            cfg.input_size,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            bidirectional=cfg.bidirectional,
        ).to(dtype)
        module.load_state_dict(ref.state_dict())
        return module
    raise ValueError(f"unknown implementation {impl!r}")


#: ``--before DIR``: another checkout's ``handlstm`` package, timed as "HandLSTM-before".
BEFORE: Any = None
BEFORE_NAME = "HandLSTM-before"


def load_before(directory: Path) -> Any:
    """Import the ``handlstm`` package in ``directory`` under another name (``handlstm_before``),
    so the "before" and "after" of a change run in the same process, interleaved."""
    init = directory / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--before expects a handlstm package directory, got {directory}")
    spec = importlib.util.spec_from_file_location(
        "handlstm_before", init, submodule_search_locations=[str(directory)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["handlstm_before"] = module
    spec.loader.exec_module(module)
    return module


def implementations(with_composed: bool = True) -> list[str]:
    impls = [BASELINE, "HandLSTM"]
    if BEFORE is not None:
        impls.append(BEFORE_NAME)
    if with_composed and _choose is not None:
        impls.append("HandLSTM-composed")
    if DPLSTM is not None:
        impls.append("DPLSTM")
    return impls


def make_step(impl: str, cfg: Config, mode: str, dtype: torch.dtype) -> Callable[[], Any]:
    """The callable timed for one implementation, configuration and mode."""
    module = build(impl, cfg, dtype)
    gen = torch.Generator().manual_seed(1)
    x: Any = torch.randn(cfg.seq_len, cfg.batch, cfg.input_size, dtype=dtype, generator=gen)
    directions = 2 if cfg.bidirectional else 1
    rows = cfg.seq_len * cfg.batch
    if cfg.packed:
        lengths = torch.randint(cfg.seq_len // 2, cfg.seq_len + 1, (cfg.batch,), generator=gen)
        lengths[cfg.batch // 2] = cfg.seq_len
        x = pack_padded_sequence(x, lengths, enforce_sorted=False)  # packed once, outside
        rows = int(lengths.sum())
    grad = torch.randn(rows, directions * cfg.hidden_size, dtype=dtype, generator=gen)
    fast = impl != "HandLSTM-composed"

    if mode == "inference":
        module.eval()

        def infer() -> Any:
            with torch.no_grad(), fast_path(fast):
                return module(x)

        return infer

    module.train()

    def train() -> Any:
        module.zero_grad(set_to_none=True)
        with fast_path(fast):
            out, _ = module(x)
            out = out.data if cfg.packed else out
            out.backward(grad.view(out.shape))

    return train


@dataclass
class Result:
    config: str
    mode: str
    threads: int
    dtype: str
    impl: str
    median_us: float
    ratio: float  # median over rounds of (impl / nn.LSTM) in the same round
    rounds: int


def time_group(
    cfg: Config,
    mode: str,
    threads: int,
    dtype: torch.dtype,
    impls: list[str],
    rounds: int,
    min_run_time: float,
    cpu_time: bool = False,
) -> list[Result]:
    """Time every implementation on one (config, mode, threads, dtype), interleaved by rounds."""
    torch.set_num_threads(threads)
    steps = {impl: make_step(impl, cfg, mode, dtype) for impl in impls}
    for step in steps.values():  # warm-up: allocator, oneDNN primitive cache, lazy init
        for _ in range(3):
            began = time.perf_counter()
            step()
            if time.perf_counter() - began > 0.05:
                break
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            timer = benchmark.Timer(
                stmt="step()",
                globals={"step": steps[impl]},
                num_threads=threads,
                label=f"{mode} {dtype_name(dtype)}",
                sub_label=cfg.label(),
                description=impl,
                timer=time.process_time if cpu_time else time.perf_counter,
            )
            times[impl].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    base = times[BASELINE]
    results = []
    for impl in impls:
        ratios = [t / b for t, b in zip(times[impl], base, strict=True)]
        results.append(
            Result(
                config=cfg.name,
                mode=mode,
                threads=threads,
                dtype=dtype_name(dtype),
                impl=impl,
                median_us=statistics.median(times[impl]) * 1e6,
                ratio=statistics.median(ratios),
                rounds=rounds,
            )
        )
    return results


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def markdown_table(results: list[Result]) -> str:
    """One row per (config, mode, threads, dtype): absolute medians and ratios to nn.LSTM."""
    impls: list[str] = []
    for r in results:
        if r.impl not in impls:
            impls.append(r.impl)
    keys: list[tuple[str, str, int, str]] = []
    for r in results:
        key = (r.config, r.mode, r.threads, r.dtype)
        if key not in keys:
            keys.append(key)
    by_key = {(r.config, r.mode, r.threads, r.dtype, r.impl): r for r in results}
    others = [i for i in impls if i != BASELINE]
    head = ["config", "mode", "thr", "dtype", f"{BASELINE} us"]
    head += [f"{i} us" for i in others]
    head += [f"{i} ratio (median of per-round ratios)" for i in others] + ["target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cfg_by_name = {c.name: c for c in CONFIGS}
    for key in keys:
        row = [cfg_by_name[key[0]].label(), key[1], str(key[2]), key[3]]
        base = by_key.get((*key, BASELINE))
        row.append(f"{base.median_us:.0f}" if base else "-")
        for impl in others:
            r = by_key.get((*key, impl))
            row.append(f"{r.median_us:.0f}" if r else "-")
        for impl in others:
            r = by_key.get((*key, impl))
            row.append(f"{r.ratio:.2f}" if r else "-")
        target = TARGETS.get(key[0])
        row.append(f"<= {target[0 if key[1] == 'inference' else 1]}" if target else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def draw_chart(results: list[Result], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart drawn (pip install matplotlib)"
    chosen = [r for r in results if r.impl != BASELINE and r.dtype == "float32"]
    threads = max(r.threads for r in chosen)
    chosen = [r for r in chosen if r.threads == threads]
    impls = sorted({r.impl for r in chosen}, key=[r.impl for r in chosen].index)
    modes = ["inference", "train"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, mode in zip(axes, modes, strict=True):
        configs = [c.name for c in CONFIGS if any(r.config == c.name for r in chosen)]
        width = 0.8 / max(len(impls), 1)
        for k, impl in enumerate(impls):
            vals = []
            for name in configs:
                match = [
                    r.ratio
                    for r in chosen
                    if r.config == name and r.mode == mode and r.impl == impl
                ]
                vals.append(match[0] if match else float("nan"))
            xs = [i + k * width for i in range(len(configs))]
            ax.bar(xs, vals, width=width, label=impl)
        for i, name in enumerate(configs):
            if name in TARGETS:
                t = TARGETS[name][modes.index(mode)]
                ax.hlines(t, i - 0.1, i + 0.8, colors="k", linestyles="dashed")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(configs))])
        ax.set_xticklabels(configs, rotation=20)
        ax.set_yscale("log")
        ax.set_title(f"{mode}, float32, {threads} threads (dashed: target)")
    axes[0].set_ylabel("time / nn.LSTM time (lower is better)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return f"chart written to {path}"


# -- memory mode -------------------------------------------------------------------------------

MEMORY_CHILD = r"""
import json, sys, torch
sys.path.insert(0, {bench_dir!r})
import bench
def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
torch.set_num_threads({threads})
cfg = [c for c in bench.CONFIGS if c.name == {config!r}][0]
step = bench.make_step({impl!r}, cfg, "train", torch.float32)
step()  # warm-up: lazy initialisation, allocator
before = rss_kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
step()
peak = rss_kib("VmHWM")
print(json.dumps({{"extra_mib": (peak - before) / 1024}}))
"""


def measure_memory(configs: list[Config], threads: int) -> list[dict[str, Any]]:
    rows = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    bench_dir = str(Path(__file__).resolve().parent)
    for cfg in configs:
        for impl in implementations():
            code = MEMORY_CHILD.format(
                bench_dir=bench_dir, threads=threads, config=cfg.name, impl=impl
            )
            progress(f"memory {cfg.name} {impl}")
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
            )
            if proc.returncode != 0:
                rows.append({"config": cfg.name, "impl": impl, "error": proc.stderr[-300:]})
                continue
            value = json.loads(proc.stdout.strip().splitlines()[-1])["extra_mib"]
            rows.append({"config": cfg.name, "impl": impl, "extra_mib": value})
    return rows


def memory_table(rows: list[dict[str, Any]]) -> str:
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    lines = ["| config | " + " | ".join(f"{i} MiB" for i in impls) + " | HandLSTM / nn.LSTM |"]
    lines.append("|" + "---|" * (len(impls) + 2))
    for name in configs:
        vals = {r["impl"]: r.get("extra_mib") for r in rows if r["config"] == name}
        cells = [f"{vals[i]:.1f}" if vals.get(i) is not None else "err" for i in impls]
        base, hand = vals.get(BASELINE), vals.get("HandLSTM")
        ratio = f"{hand / base:.2f}" if base and hand is not None else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json(args: argparse.Namespace, info: dict[str, Any], results: list[Result]) -> None:
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {"machine": info, "args": options, "results": [asdict(r) for r in results]}
    args.json.write_text(json.dumps(payload, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 threads, float32, few rounds")
    parser.add_argument("--memory", action="store_true", help="peak memory of a training step")
    parser.add_argument("--threads", type=int, nargs="*", help="thread counts (default 1 2)")
    parser.add_argument(
        "--configs", nargs="*", choices=[c.name for c in CONFIGS], help="config names (default all)"
    )
    parser.add_argument("--modes", nargs="*", default=["inference", "train"])
    parser.add_argument("--rounds", type=int, help="interleaved rounds per group")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time instead of wall time (a loaded machine, 1 thread)",
    )
    parser.add_argument("--float64", action="store_true", help="also time float64")
    parser.add_argument("--json", type=Path, help="write raw results here")
    parser.add_argument("--png", type=Path, help="draw the ratio chart here")
    parser.add_argument(
        "--composed", action="store_true", help="time HandLSTM-composed also with --quick"
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="a handlstm package directory of another checkout, timed as HandLSTM-before",
    )
    args = parser.parse_args(argv)
    global BEFORE
    if args.before is not None:
        BEFORE = load_before(args.before)

    by_name = {c.name: c for c in CONFIGS}
    if args.configs:
        configs = [by_name[name] for name in args.configs]
    else:
        configs = [by_name[name] for name in QUICK_CONFIGS] if args.quick else list(CONFIGS)
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch']}, "
        f"loadavg {info['loadavg']}, {info['date_utc']} UTC"
    )
    print(f"handlstm timed: {Path(handlstm.__file__).parent}")
    if DPLSTM is None:
        print("opacus is not installed: DPLSTM skipped (pip install opacus)")

    if args.memory:
        threads = (args.threads or [2])[0]
        rows = measure_memory([c for c in configs if c.name != "streaming"], threads)
        print(f"\nExtra resident memory of one training step (float32, {threads} threads):\n")
        print(memory_table(rows))
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "memory": rows}, indent=1))
        return 0

    threads_list = args.threads or ([2] if args.quick else [1, 2])
    dtypes = [torch.float32] + ([torch.float64] if args.float64 and not args.quick else [])
    rounds = args.rounds or (3 if args.quick else 7)
    min_run_time = 0.02 if args.quick else 0.2
    impls = implementations(with_composed=args.composed or not args.quick)
    groups = [
        (cfg, mode, threads, dtype)
        for dtype in dtypes
        for threads in threads_list
        for cfg in configs
        for mode in args.modes
    ]
    results: list[Result] = []
    start = time.perf_counter()
    for k, (cfg, mode, threads, dtype) in enumerate(groups, 1):
        progress(
            f"{k}/{len(groups)} {cfg.label()} {mode} {threads} thr {dtype_name(dtype)} "
            f"({time.perf_counter() - start:.0f}s elapsed)"
        )
        chosen = impls
        if args.quick or cfg.packed or cfg.options:  # the peer: full runs, plain dense rows
            chosen = [i for i in impls if i != "DPLSTM"]
        results += time_group(
            cfg, mode, threads, dtype, chosen, rounds, min_run_time, args.cpu_time
        )
        if args.json:  # after every group, so an interrupted run keeps what it measured
            write_json(args, info, results)

    print(
        f"\nMedian times (us) over {rounds} interleaved rounds, and the median of the per-round "
        f"ratios to {BASELINE} (not the ratio of the medians):\n"
    )
    print(markdown_table(results))
    if args.json:
        write_json(args, info, results)
        print(f"\nraw results written to {args.json}")
    if args.png:
        print(draw_chart(results, args.png))
    progress(f"done in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
