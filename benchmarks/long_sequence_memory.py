"""Peak memory of forward + backward against sequence length: HandLSTM and nn.LSTM (CPU).

Each (module, length) runs in a fresh subprocess, so peaks do not mix. Two measures:

* ``saved``: bytes of the distinct storages behind the tensors autograd saves for backward
  (through ``torch.autograd.graph.saved_tensors_hooks``), the part of memory that grows with T;
* ``peak RSS``: the process's peak resident set (``VmHWM``) minus its resident set just before
  the forward, so interpreter and torch are not counted.

Memory grows linearly in T when bytes per step stay flat between lengths. Run:

    python benchmarks/long_sequence_memory.py [--lengths 10000 40000] [--hidden 3]

Not a test: the numbers go to the README/report, never into an assert.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import json, sys, torch
from torch import nn
from handlstm import HandLSTM

kind, length, hidden = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
torch.set_num_threads(1)
cls = HandLSTM if kind == "HandLSTM" else nn.LSTM
module = cls(2, hidden, dtype=torch.float64)
x = torch.randn(length, 1, 2, dtype=torch.float64, requires_grad=True)

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return -1

storages = {}
def pack(t):
    storage = t.untyped_storage()  # count each storage once, however many views are saved
    storages[storage.data_ptr()] = storage.nbytes()
    return t

before = status("VmRSS:")
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    out, (h, c) = module(x)
(out.sum() + c.sum()).backward()
peak = status("VmHWM:")
saved = sum(storages.values())
print(json.dumps({"kind": kind, "T": length, "saved": saved, "peak": peak - before}))
"""


def measure(kind: str, length: int, hidden: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(length), str(hidden)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--hidden", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} CPU, python "
        f"{platform.python_version()}; input_size=2 hidden={args.hidden} batch=1 float64"
    )
    rows = [measure(k, t, args.hidden) for k in ("HandLSTM", "LSTM") for t in args.lengths]
    print(
        f"{'module':<10}{'T':>9}{'saved MiB':>12}{'saved B/step':>14}"
        f"{'peak MiB':>11}{'peak B/step':>13}"
    )
    for row in rows:
        t = row["T"]
        print(
            f"{row['kind']:<10}{t:>9}{row['saved'] / 2**20:>12.1f}{row['saved'] / t:>14.0f}"
            f"{row['peak'] / 2**20:>11.1f}{row['peak'] / t:>13.0f}"
        )
    for kind in ("HandLSTM", "LSTM"):
        mine = [r for r in rows if r["kind"] == kind]
        first, last = mine[0], mine[-1]
        growth = last["T"] / first["T"]
        print(
            f"{kind}: T x{growth:g} -> saved x{last['saved'] / first['saved']:.2f}, "
            f"peak x{last['peak'] / max(first['peak'], 1):.2f} (linear: x{growth:g})"
        )
    hand = {r["T"]: r for r in rows if r["kind"] == "HandLSTM"}
    torch_rows = {r["T"]: r for r in rows if r["kind"] == "LSTM"}
    for t in args.lengths:
        print(
            f"T={t}: HandLSTM/nn.LSTM peak ratio "
            f"{hand[t]['peak'] / max(torch_rows[t]['peak'], 1):.1f}, saved ratio "
            f"{hand[t]['saved'] / max(torch_rows[t]['saved'], 1):.1f}"
        )


if __name__ == "__main__":
    main()
