"""Run two recurrent modules on the same input and compare every output and every gradient.

Shared by ``handlstm.testing`` (``assert_lstm_close``) and the ``handlstm check`` command;
needs nothing but torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

LSTMInput = Tensor | PackedSequence
INPUT_KINDS = ("dense", "unbatched", "packed_sorted", "packed_unsorted")
HX = tuple[Tensor, Tensor] | Tensor | None
#: How an implementation names nn.LSTM's parameters: ``{"weight_ih_l0": "layers.0.w_x", ...}``
#: (names not listed are the same) or a function from nn.LSTM's name to yours.
ParameterNames = Mapping[str, str] | Callable[[str], str]


def parameter_name(names: ParameterNames | None, name: str) -> str:
    """The implementation's name for nn.LSTM's parameter ``name``."""
    if names is None:
        return name
    if callable(names):
        return names(name)
    return names.get(name, name)


# (rtol, atol) per dtype: float64 to rounding, float32 to a few ulps of a long sum.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` used for ``dtype`` (float32's for unknown dtypes)."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


@dataclass(frozen=True)
class Difference:
    """How one named tensor of the actual module differs from the expected one."""

    name: str
    max_abs: float
    where: tuple[int, ...] | None
    actual: float | None
    expected: float | None
    ok: bool
    reason: str = ""
    allowed: float | None = None

    def describe(self) -> str:
        """One line: the name, the largest difference, where it is and both values there."""
        # Branch-free (conditional expressions on one line): see assert_lstm_close.
        limit = self.allowed if self.allowed is not None and not self.ok else None
        allowed = "" if limit is None else f" (allowed difference there {limit:.3g})"
        detail = (
            f"max abs difference {self.max_abs:.3g}; at index {self.where} "
            f"actual {self.actual!r}, expected {self.expected!r}{allowed}"
        )
        return f"{self.name}: {self.reason or detail}"


def _clone_input(input: LSTMInput, grad: bool) -> tuple[LSTMInput, Tensor]:
    """A fresh leaf copy of ``input`` and the tensor whose gradient is the input's gradient."""
    if isinstance(input, PackedSequence):
        data = input.data.detach().clone().requires_grad_(grad)
        return PackedSequence(
            data, input.batch_sizes, input.sorted_indices, input.unsorted_indices
        ), data
    x = input.detach().clone().requires_grad_(grad)
    return x, x


def _as_pair(hx: Any) -> tuple[Tensor, ...]:
    if hx is None:
        return ()
    return tuple(hx) if isinstance(hx, tuple | list) else (hx,)


def run_with_grads(
    module: nn.Module, input: LSTMInput, hx: HX = None, seed: int = 0, grad: bool = True
) -> dict[str, Tensor]:
    """Run ``module(input, hx)`` and, with ``grad``, backpropagate a random projection of its
    outputs; return every named result.

    Names: ``output``, then ``h_n``/``c_n`` (or ``h_n`` for a cell returning one tensor pair),
    then ``grad.input``, ``grad.hx[i]``, and ``grad.<parameter name>`` for every parameter that
    requires grad. The projection weights come from a generator seeded with ``seed``, so two
    modules run with the same seed get the same loss function.
    """
    __tracebackhide__ = True  # an error in the module's forward shows the module's frames
    x, x_leaf = _clone_input(input, grad and input_is_float(input))
    states = tuple(
        s.detach().clone().requires_grad_(grad and s.is_floating_point()) for s in _as_pair(hx)
    )
    hx_arg: Any = None if hx is None else (states if isinstance(hx, tuple | list) else states[0])
    result = module(x) if hx is None else module(x, hx_arg)
    named = _name_outputs(result)
    out: dict[str, Tensor] = {k: v.detach() for k, v in named.items()}
    if not grad:
        return out
    generator = torch.Generator().manual_seed(seed)
    terms = [
        (
            value
            * torch.randn(value.shape, generator=generator, dtype=torch.float64)
            .to(value.dtype)
            .to(value.device)
        ).sum()
        for value in named.values()
    ]
    loss = torch.stack([t.to(torch.float64) for t in terms]).sum()
    inputs = [x_leaf, *states] if x_leaf.requires_grad else list(states)
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    wrt = [t for t in inputs if t.requires_grad] + [p for _, p in params]
    if not wrt or not loss.requires_grad:
        return out
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    names = ["input"] if x_leaf.requires_grad else []
    names += [f"hx[{i}]" for i, state in enumerate(states) if state.requires_grad]
    names += [n for n, _ in params]
    for name, g, t in zip(names, grads, wrt, strict=True):
        out[f"grad.{name}"] = torch.zeros_like(t) if g is None else g
    return out


def input_is_float(input: LSTMInput) -> bool:
    data = input.data if isinstance(input, PackedSequence) else input
    return data.is_floating_point()


def _name_outputs(result: Any) -> dict[str, Tensor]:
    """Name an LSTM's ``(output, (h_n, c_n))`` or a cell's ``(h, c)``."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], tuple):
        output, (h_n, c_n) = result
        data = output.data if isinstance(output, PackedSequence) else output
        return {"output": data, "h_n": h_n, "c_n": c_n}
    if isinstance(result, tuple) and len(result) == 2:
        return {"h": result[0], "c": result[1]}
    raise TypeError(f"cannot name the outputs of a module returning {type(result).__name__}")


def compare_results(
    actual: dict[str, Tensor],
    expected: dict[str, Tensor],
    rtol: float,
    atol: float,
) -> list[Difference]:
    """One ``Difference`` per name in either dict, in ``expected``'s order."""
    diffs = []
    for name in list(expected) + [n for n in actual if n not in expected]:
        if name not in actual or name not in expected:
            side = "actual" if name not in actual else "expected"
            diffs.append(
                Difference(
                    name,
                    float("inf"),
                    None,
                    None,
                    None,
                    False,
                    f"missing from the {side} module's results",
                )
            )
            continue
        a, e = actual[name], expected[name]
        if a.shape != e.shape:
            diffs.append(
                Difference(
                    name,
                    float("inf"),
                    None,
                    None,
                    None,
                    False,
                    f"shape {tuple(a.shape)} != expected {tuple(e.shape)}",
                )
            )
            continue
        diffs.append(_compare_tensor(name, a, e, rtol, atol))
    return diffs


def _compare_tensor(name: str, a: Tensor, e: Tensor, rtol: float, atol: float) -> Difference:
    a64, e64 = a.detach().double().cpu(), e.detach().double().cpu()
    if a64.numel() == 0:
        return Difference(name, 0.0, None, None, None, True)
    diff = (a64 - e64).abs()
    if not bool(torch.isfinite(diff).all()):
        # Equal infinities and NaN in the same places count as equal; anything else unequal.
        both_nan = torch.isnan(a64) & torch.isnan(e64)
        diff = torch.where(both_nan | (a64 == e64), torch.zeros_like(diff), diff)
        diff = torch.nan_to_num(diff, nan=float("inf"))
    allowed = atol + rtol * e64.abs().nan_to_num(0.0, posinf=0.0)
    excess = diff - allowed
    # Point at the worst violation when there is one, else at the largest difference.
    worst = int(torch.argmax(excess))
    ok = float(excess.reshape(-1)[worst]) <= 0
    flat = worst if not ok else int(torch.argmax(diff))
    where = unravel(flat, tuple(a64.shape))
    return Difference(
        name,
        float(diff.max()),
        where,
        float(a64[where]),
        float(e64[where]),
        ok,
        allowed=float(allowed[where]),
    )


def unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The multi-index of element ``flat`` of a C-contiguous tensor of ``shape``.

    Plain integer arithmetic: ``torch.unravel_index`` imports sympy on first use (about half a
    second), which made a first comparison miss hypothesis's default deadline.
    """
    index = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size)
        index.append(rest)
    return tuple(reversed(index))


def compare_modules(
    actual: nn.Module,
    expected: nn.Module,
    input: LSTMInput,
    hx: HX = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    grad: bool = True,
    seed: int = 0,
    run: Callable[..., dict[str, Tensor]] = run_with_grads,
    parameter_names: ParameterNames | None = None,
) -> list[Difference]:
    """Run both modules on copies of the same input and compare everything they produce.

    ``parameter_names`` maps ``expected``'s parameter names to ``actual``'s where they differ
    (see ``assert_lstm_close``).
    """
    __tracebackhide__ = True
    data = input.data if isinstance(input, PackedSequence) else input
    default_rtol, default_atol = tolerances(data.dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    actual_results = run(actual, input, hx, seed, grad)
    expected_results = run(expected, input, hx, seed, grad)
    if parameter_names is not None:
        actual_results = _as_expected_names(actual_results, expected_results, parameter_names)
    return compare_results(actual_results, expected_results, rtol, atol)


def _as_expected_names(
    actual: dict[str, Tensor], expected: dict[str, Tensor], names: ParameterNames
) -> dict[str, Tensor]:
    """``actual``'s results with its parameters' gradients renamed to ``expected``'s names."""
    theirs = {
        "grad." + parameter_name(names, key[5:]): key
        for key in expected
        if key.startswith("grad.") and key not in ("grad.input",) and not key.startswith("grad.hx[")
    }
    return {theirs.get(key, key): value for key, value in actual.items()}


def assert_lstm_close(
    actual: nn.Module,
    expected: nn.Module,
    input: LSTMInput,
    hx: HX = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    check_grad: bool = True,
    seed: int = 0,
    parameter_names: ParameterNames | None = None,
) -> None:
    """Assert two recurrent modules agree on outputs, final states and every gradient.

    Both modules run on fresh copies of ``input`` and ``hx`` (the caller's tensors are not
    touched); a random projection of all outputs is backpropagated and the gradients with
    respect to the input, each initial state and every parameter (matched by name) compared.
    Tolerances default by dtype: 1e-10 for float64, 1e-5 for float32.

    Works for LSTMs (``(output, (h_n, c_n))``) and cells (``(h, c)``). Modules with dropout
    must be in eval mode or have ``dropout=0``. For something that is not a module (a
    function of the weights, an onnxruntime session), wrap it in ``FunctionLSTM``.

    Args:
        actual: the module under test.
        expected: the oracle (``nn.LSTM``, ``nn.LSTMCell`` or a HandLSTM) holding the same
            weights.
        input: a Tensor or PackedSequence, as the modules take it.
        hx: initial states, or None.
        rtol: relative tolerance; by default by dtype (see above).
        atol: absolute tolerance; by default by dtype.
        check_grad: also compare the gradients (False for implementations without autograd,
            such as an onnxruntime session).
        seed: seeds the random projection that is backpropagated.
        parameter_names: where ``actual`` names its parameters differently, a mapping from
            ``expected``'s names to ``actual``'s (``{"weight_ih_l0": "w_x"}``; names left out
            are the same) or a function doing the same; their gradients are then compared
            under ``expected``'s names.

    Raises:
        AssertionError: naming each tensor that differs, the index of the largest difference,
            and both values there.

    Example:
        >>> import torch
        >>> from handlstm import HandLSTM
        >>> from handlstm.testing import assert_lstm_close
        >>> ref = torch.nn.LSTM(3, 4).double()
        >>> mine = HandLSTM(3, 4).double()
        >>> _ = mine.load_state_dict(ref.state_dict())
        >>> assert_lstm_close(mine, ref, torch.randn(5, 2, 3, dtype=torch.float64))
    """
    __tracebackhide__ = True  # pytest: report the caller's line and the message, not this body
    diffs = compare_modules(
        actual,
        expected,
        input,
        hx,
        rtol=rtol,
        atol=atol,
        grad=check_grad,
        seed=seed,
        parameter_names=parameter_names,
    )
    described = [(d.ok, d.describe()) for d in diffs]  # every one, passing or not (see below)
    failures = [text for ok, text in described if not ok]
    lines = "\n  ".join(failures)
    message = f"{len(failures)} of {len(diffs)} tensors differ:\n  {lines}"
    # One line for the check and the raise, run by passing and failing examples alike, so
    # hypothesis's explanation ("lines always and only run by failing test cases") names the
    # user's code and not this function. (An assert statement would vanish under python -O.)
    if failures: raise AssertionError(message)  # noqa: E701  # fmt: skip


def make_input(
    config: dict[str, Any],
    kind: str,
    lengths: Sequence[int],
    dtype: torch.dtype,
    generator: torch.Generator,
) -> Tensor | PackedSequence:
    """A random input of ``kind`` (one of ``INPUT_KINDS``) for ``config``.

    ``lengths`` are the batch's sequence lengths (one entry for ``unbatched``); dense input uses
    their maximum for every sequence.
    """
    seq_len, batch = max(lengths), len(lengths)
    size = config["input_size"]
    data = torch.randn(seq_len, batch, size, generator=generator, dtype=torch.float64).to(dtype)
    if kind == "unbatched":
        return data[:, 0]
    if kind == "dense":
        return data.transpose(0, 1).contiguous() if config["batch_first"] else data
    if kind in ("packed_sorted", "packed_unsorted"):
        if kind == "packed_sorted":  # enforce_sorted=True: no sorted/unsorted indices
            order = sorted(lengths, reverse=True)
            return pack_padded_sequence(data, torch.tensor(order), enforce_sorted=True)
        return pack_padded_sequence(data, torch.tensor(list(lengths)), enforce_sorted=False)
    raise ValueError(f"unknown input kind {kind!r}; expected one of {INPUT_KINDS}")


def make_hx(
    config: dict[str, Any], batch: int | None, dtype: torch.dtype, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random ``(h_0, c_0)`` for ``config``; ``batch`` None for unbatched input."""
    states = config["num_layers"] * (2 if config["bidirectional"] else 1)
    h_size = config["proj_size"] or config["hidden_size"]
    lead = (states,) if batch is None else (states, batch)
    h = torch.randn(*lead, h_size, generator=generator, dtype=torch.float64).to(dtype)
    c = torch.randn(*lead, config["hidden_size"], generator=generator, dtype=torch.float64).to(
        dtype
    )
    return h, c
