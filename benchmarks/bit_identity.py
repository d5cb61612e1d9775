"""Bit-for-bit identity of handlstm's results across a change (a refactor must change nothing).

Runs a grid of configurations in float64 (HandLSTM and HandLSTMCell; dense, packed, unbatched,
``lengths=``; fast and composed paths; training dropout and every variant with a fixed seed;
``forward_with_states``; vmap) and keeps every output, final state and gradient. ``--save F``
writes them; ``--compare F`` recomputes and requires ``torch.equal`` for each, naming any that
differ. Run ``--save`` on the old checkout and ``--compare`` on the new one::

    git stash / git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before python benchmarks/bit_identity.py --save /tmp/before.pt
    python benchmarks/bit_identity.py --compare /tmp/before.pt
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import handlstm
from handlstm import HandLSTM, HandLSTMCell


def composed_only() -> contextlib.AbstractContextManager[None]:
    """The switch that sends every direction to the composed engine, wherever it lives."""
    for path, name in (
        ("handlstm.engines.choose", "fast_disabled"),
        ("handlstm._fast", "disabled"),  # before the engines package (0.2.0)
    ):
        try:
            module = __import__(path, fromlist=[name])
        except ImportError:
            continue
        return getattr(module, name)()
    raise ImportError("no fast-path switch found")


def grads_of(module: torch.nn.Module, inputs: list[torch.Tensor], outputs: list[Any]) -> list:
    tensors = [t for t in outputs if isinstance(t, torch.Tensor) and t.requires_grad]
    loss = sum(
        (t * torch.linspace(0.5, 1.5, t.numel(), dtype=t.dtype).view_as(t)).sum() for t in tensors
    )
    wrt = [p for p in module.parameters()] + [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros(()) if g is None else g for g in grads]


def lstm_cases() -> Iterator[tuple[str, Callable[[], list[Any]]]]:
    grid = itertools.product(
        (1, 2), (False, True), (0, 3), (True, False), ("dense", "packed", "unbatched", "lengths")
    )
    for layers, bidi, proj, bias, layout in grid:
        for path in ("fast", "composed"):
            name = f"lstm L{layers} bi{bidi} p{proj} b{bias} {layout} {path}"

            def run(layers=layers, bidi=bidi, proj=proj, bias=bias, layout=layout, path=path):
                torch.manual_seed(0)
                m = HandLSTM(
                    4, 5, num_layers=layers, bidirectional=bidi, proj_size=proj, bias=bias
                ).double()
                x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
                ctx = composed_only() if path == "composed" else contextlib.nullcontext()
                with ctx:
                    if layout == "dense":
                        out, (h, c) = m(x)
                    elif layout == "unbatched":
                        out, (h, c) = m(x[:, 0])
                    elif layout == "lengths":
                        out, (h, c) = m(x, lengths=torch.tensor([6, 2, 4]))
                    else:
                        packed = pack_padded_sequence(
                            x, torch.tensor([6, 2, 4]), enforce_sorted=False
                        )
                        p_out, (h, c) = m(packed)
                        out = p_out.data
                    results = [out, h, c]
                    return results + grads_of(m, [x], results)

            yield name, run


VARIANTS: list[dict[str, Any]] = [
    {"layer_norm": True},
    {"peepholes": True},
    {"zoneout_h": 0.2, "zoneout_c": 0.1},
    {"recurrent_dropout": 0.3},
    {"weight_drop": 0.3},
    {"input_dropout": 0.3},
    {"cell_clip": 0.5, "proj_clip": 0.4, "proj_size": 3},
    {
        "gate_activation": torch.nn.functional.hardsigmoid,
        "cell_activation": torch.nn.functional.softsign,
    },
    {"layer_norm": True, "peepholes": True, "zoneout_h": 0.1},
    {"dropout": 0.4, "num_layers": 2},
]


def variant_cases() -> Iterator[tuple[str, Callable[[], list[Any]]]]:
    for k, kwargs in enumerate(VARIANTS):
        for training, bidi, layout in itertools.product(
            (True, False), (False, True), ("dense", "packed")
        ):
            for path in ("fast", "composed"):
                name = f"variant {k} train{training} bi{bidi} {layout} {path}"

                def run(kwargs=kwargs, training=training, bidi=bidi, layout=layout, path=path):
                    torch.manual_seed(1)
                    m = HandLSTM(4, 5, bidirectional=bidi, **kwargs).double().train(training)
                    with torch.no_grad():
                        for p in m.parameters():
                            p.add_(torch.rand_like(p) * 0.1)
                    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
                    ctx = composed_only() if path == "composed" else contextlib.nullcontext()
                    with ctx:
                        torch.manual_seed(2)
                        if layout == "dense":
                            out, (h, c) = m(x)
                        else:
                            packed = pack_padded_sequence(
                                x, torch.tensor([6, 2, 4]), enforce_sorted=False
                            )
                            p_out, (h, c) = m(packed)
                            out = p_out.data
                        results = [out, h, c]
                        return results + grads_of(m, [x], results)

                yield name, run


def other_cases() -> Iterator[tuple[str, Callable[[], list[Any]]]]:
    def states() -> list[Any]:
        torch.manual_seed(3)
        m = HandLSTM(4, 5, num_layers=2, bidirectional=True, peepholes=True).double()
        x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
        s = m.forward_with_states(x)
        results = [s.output, s.h_n, s.c_n, s.hiddens, s.cells, s.gates]
        return results + grads_of(m, [x], results)

    def cell() -> list[Any]:
        torch.manual_seed(4)
        out = []
        for kwargs in ({}, {"bias": False}, {"layer_norm": True, "peepholes": True}):
            m = HandLSTMCell(4, 5, **kwargs).double()
            x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
            h, c = m(x)
            h1, c1 = m(x[0])
            out += [h, c, h1, c1, *grads_of(m, [x], [h, c])]
        return out

    def vmapped() -> list[Any]:
        torch.manual_seed(5)
        m = HandLSTM(4, 5, bidirectional=True).double()
        x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
        out, (h, c) = torch.func.vmap(m)(x)
        return [out, h, c]

    def double_backward() -> list[Any]:
        torch.manual_seed(6)
        m = HandLSTM(4, 5, num_layers=2).double()
        x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
        out, _ = m(x)
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), x)
        return [out, g, gg]

    def init() -> list[Any]:
        torch.manual_seed(7)
        m = HandLSTM(
            4,
            5,
            num_layers=2,
            bidirectional=True,
            proj_size=2,
            layer_norm=True,
            peepholes=True,
            forget_bias=1.0,
        )
        return [*m.state_dict().values(), *m.state_dict().keys()]

    yield "forward_with_states", states
    yield "cell", cell
    yield "vmap", vmapped
    yield "double backward", double_backward
    yield "init", init


def compute() -> dict[str, list[Any]]:
    results = {}
    for name, run in itertools.chain(lstm_cases(), variant_cases(), other_cases()):
        results[name] = [t.detach() if isinstance(t, torch.Tensor) else t for t in run()]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", metavar="FILE")
    group.add_argument("--compare", metavar="FILE")
    args = parser.parse_args(argv)
    print(f"handlstm from {handlstm.__file__}", file=sys.stderr)
    results = compute()
    if args.save:
        torch.save(results, args.save)
        print(f"saved {len(results)} cases to {args.save}")
        return 0
    before = torch.load(args.compare)
    differ = []
    for name, values in before.items():
        now = results.get(name)
        same = (
            now is not None
            and len(now) == len(values)
            and all(
                (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b)
                for a, b in zip(values, now, strict=True)
            )
        )
        if not same:
            differ.append(name)
    missing = sorted(set(results) - set(before))
    print(
        f"{len(before) - len(differ)} of {len(before)} cases bit-identical"
        + (f"; new cases not compared: {missing}" if missing else "")
    )
    for name in differ:
        print(f"DIFFERS: {name}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
