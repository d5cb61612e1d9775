"""``swap_lstms``: replace every LSTM inside a model, all or nothing.

Two phases. Planning looks at every LSTM-like module, decides what happens to it and builds
every replacement (on the meta device, holding the source's very Parameters), changing nothing.
Applying then changes the model; if a change fails there, the ones already made are undone
before the error propagates, so the model is never left half swapped.

What is swapped (``to="hand"``): exact ``nn.LSTM`` / ``nn.LSTMCell`` (replaced by HandLSTM /
HandLSTMCell), opacus ``DPLSTM`` / ``DPLSTMCell`` (replaced, sharing their Parameters), and
subclasses of nn.LSTM / nn.LSTMCell that reach torch's forward through ``super()`` (their class
is changed in place, see :mod:`handlstm.interop.subclass`). ``to="torch"`` undoes each of these.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..modules.cell import HandLSTMCell
from ..modules.conversion import build_on_meta as _build_on_meta
from ..modules.conversion import cell_config, lstm_config
from ..modules.lstm import HandLSTM
from . import opacus_layers as _dp
from . import subclass as _subclass
from .opacus_layers import Cannot as _Cannot

__all__ = ["Skipped", "SwapReport", "Swapped", "swap_lstms"]


@dataclass(frozen=True)
class Swapped:
    """One module replaced by :func:`swap_lstms`. ``note`` says anything the swap changes
    beyond the module's type (e.g. state-dict keys), empty when nothing."""

    path: str
    old: str
    new: str
    config: dict[str, Any]
    note: str = ""


@dataclass(frozen=True)
class Skipped:
    """One LSTM-like module that :func:`swap_lstms` left alone, and why."""

    path: str
    type: str
    reason: str


@dataclass
class SwapReport:
    """What :func:`swap_lstms` did. ``str(report)`` is a readable summary."""

    to: str
    swapped: list[Swapped] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"swapped {len(self.swapped)} module(s) to {self.to}"]
        for s in self.swapped:
            config = ", ".join(f"{k}={v!r}" for k, v in s.config.items())
            lines.append(f"  {s.path}: {s.old} -> {s.new}({config})")
            if s.note:
                lines.append(f"    note: {s.note}")
        if self.skipped:
            lines.append(f"left alone {len(self.skipped)} module(s)")
            lines += [f"  {s.path}: {s.type}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


@dataclass
class _Plan:
    """What happens to one module: a new module at every path, or a class change in place."""

    module: nn.Module
    paths: list[str]
    record: Swapped
    new: nn.Module | None = None  # None: the module itself changes class
    retype: Callable[[nn.Module], None] | None = None


# -- which modules, and how ----------------------------------------------------------------------


def _kind(module: nn.Module, to: str) -> str | None:
    """How ``module`` is swapped ``to`` the given side, or None if it is not LSTM-like."""
    dp_lstm, dp_cell = _dp.dp_classes()
    if to == "hand":
        if _subclass.is_hand_backed(module) or isinstance(module, HandLSTM | HandLSTMCell):
            return None
        if type(module) is nn.LSTM or type(module) is nn.LSTMCell:
            return "plain"
        if isinstance(module, nn.LSTM | nn.LSTMCell):
            return "subclass"
        if dp_lstm is not None and isinstance(module, dp_lstm):
            return "dp" if type(module) is dp_lstm else "dp-subclass"
        if dp_cell is not None and isinstance(module, dp_cell):
            return "dp" if type(module) is dp_cell else "dp-subclass"
        return None
    if _subclass.is_hand_backed(module):
        return "subclass"
    if type(module) is HandLSTM or type(module) is HandLSTMCell:
        return "plain"
    if isinstance(module, HandLSTM | HandLSTMCell):
        return "hand-subclass"
    return None


def _check_hooks(module: nn.Module) -> None:
    for path, sub in module.named_modules():
        hooks = [
            name
            for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
            if getattr(sub, name, None)
        ]
        if hooks:
            where = f" on its submodule {path}" if path else ""
            raise _Cannot(
                f"has hooks registered{where} ({', '.join(hooks)}): re-register them after "
                "swapping (with opacus: swap before wrapping the model in GradSampleModule)"
            )


def _own_parameters(module: nn.Module, names: list[str]) -> dict[str, nn.Parameter]:
    """``module``'s Parameters under torch's ``names``; refuses anything else it holds."""
    if parametrize.is_parametrized(module):
        raise _Cannot("is parametrized (torch.nn.utils.parametrize): its weights are computed")
    params: dict[str, nn.Parameter] = {}
    for name in names:
        param = module._parameters.get(name)
        if not isinstance(param, nn.Parameter):
            raise _Cannot(
                f"{name} is not a registered nn.Parameter (weight-dropped or parametrized?)"
            )
        params[name] = param
    extra = _dp.extra_state(module, set(names))
    extra += [f"submodule {name}" for name, _ in module.named_children()]
    if extra:
        raise _Cannot(f"holds state beyond the LSTM's own ({', '.join(extra)}): a swap drops it")
    return params


def _torch_names(config: dict[str, Any], cell: bool) -> list[str]:
    """The parameter names nn.LSTM (or nn.LSTMCell) with ``config`` registers, in order."""
    target = nn.LSTMCell if cell else nn.LSTM
    return [name for name, _ in _build_on_meta(target, config, torch.float32).named_parameters()]


def _share(
    params: dict[str, nn.Parameter],
    target: type[nn.Module],
    config: dict[str, Any],
    training: bool,
) -> nn.Module:
    """A ``target`` module holding the very Parameters ``params``, checked name and shape."""
    reference = next(iter(params.values()))
    new = _build_on_meta(target, config, reference.dtype)
    wanted = dict(new.named_parameters())
    if set(wanted) != set(params) or any(True for _ in new.buffers()):
        raise _Cannot(
            f"{target.__name__} with this configuration has parameters {sorted(wanted)}, "
            f"the module has {sorted(params)}"
        )
    for name, param in params.items():
        if param.shape != wanted[name].shape:
            raise _Cannot(
                f"{name} has shape {tuple(param.shape)} but its configuration "
                f"({', '.join(f'{k}={v!r}' for k, v in config.items())}) needs "
                f"{tuple(wanted[name].shape)}: the module's attributes and weights disagree"
            )
        setattr(new, name, param)
    new.train(training)
    return new


def _plan(module: nn.Module, path: str, kind: str, to: str) -> _Plan:
    """Build what ``module`` becomes, changing nothing; raises _Cannot with the reason."""
    name = type(module).__name__
    if kind == "hand-subclass":
        raise _Cannot(f"subclass of {type(module).__mro__[1].__name__}: it has no torch twin")
    if kind == "dp-subclass":
        raise _Cannot("subclass of an opacus layer: its extra behaviour cannot be kept")
    if kind == "subclass":
        return _plan_subclass(module, path, to)
    dp_cell = _dp.dp_classes()[1]
    cell = isinstance(module, nn.LSTMCell | HandLSTMCell) or (
        dp_cell is not None and isinstance(module, dp_cell)
    )
    config = cell_config(module) if cell else lstm_config(module)
    if to == "torch" and module.variant_options():  # type: ignore[operator]
        options = ", ".join(f"{k}={v!r}" for k, v in module.variant_options().items())  # type: ignore[operator]
        raise _Cannot(f"variant options ({options}) have no torch equivalent")
    _check_hooks(module)
    note, keys = "", None
    if kind == "dp":
        params, keys, note = _dp.dp_parameters(module, _torch_names(config, cell), cell)
    else:
        params = _own_parameters(module, _torch_names(config, cell))
    if not params:
        raise _Cannot("has no parameters to share")
    target: type[nn.Module]
    if to == "hand":
        target = HandLSTMCell if cell else HandLSTM
    else:
        target = nn.LSTMCell if cell else nn.LSTM
    try:
        new = _share(params, target, config, module.training)
    except _Cannot:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to build means: leave it alone
        raise _Cannot(
            f"its replacement could not be built: {type(error).__name__}: {error}"
        ) from None
    _dp.keep_order(new, module)  # an optimizer's state refers to parameters by position
    if keys is not None:
        keys.register(new)
    else:
        note = _dp.carry(module, new)
    if isinstance(new, nn.LSTM):
        new.flatten_parameters()
    return _Plan(module, [path], Swapped(path, name, target.__name__, config, note), new)


def _plan_subclass(module: nn.Module, path: str, to: str) -> _Plan:
    name = type(module).__name__
    if to == "torch":
        original = _subclass.user_class(type(module))
        record = Swapped(path, name, original.__name__, _config(module))
        return _Plan(module, [path], record, retype=_subclass.to_user)
    reason = _subclass.why_not_hand_backed(module)
    if reason is not None:
        raise _Cannot(reason)
    config = _config(module)
    cell = isinstance(module, nn.LSTMCell)
    expected = _torch_names(config, cell)
    if parametrize.is_parametrized(module):
        raise _Cannot("is parametrized (torch.nn.utils.parametrize): its weights are computed")
    for param_name in expected:
        if not isinstance(module._parameters.get(param_name), nn.Parameter):
            raise _Cannot(f"{param_name} is not a registered nn.Parameter (weight-dropped?)")
    try:  # the hand module accepts this configuration
        _build_on_meta(HandLSTMCell if cell else HandLSTM, config, torch.float32)
    except Exception as error:  # noqa: BLE001
        raise _Cannot(
            f"HandLSTM refuses its configuration: {type(error).__name__}: {error}"
        ) from None
    derived = _subclass.hand_backed_class(type(module))
    record = Swapped(path, name, derived.__name__, config, f"{name}'s own code kept, in place")
    return _Plan(module, [path], record, retype=_subclass.to_hand)


def _config(module: nn.Module) -> dict[str, Any]:
    return cell_config(module) if isinstance(module, nn.LSTMCell) else lstm_config(module)


def _lstm_like(model: nn.Module, to: str) -> Iterator[tuple[str, nn.Module, str]]:
    """(path, module, kind) for every LSTM-like module, outermost first; the insides of an
    LSTM-like module (DPLSTM's cells, a subclass's own submodules) are not visited."""
    claimed: list[str] = []
    for path, module in model.named_modules(remove_duplicate=False):
        if any(path.startswith(prefix + ".") for prefix in claimed):
            continue
        kind = _kind(module, to)
        if kind is not None:
            claimed.append(path)
            yield path, module, kind


# -- the public function ---------------------------------------------------------------------------


def swap_lstms(
    model: nn.Module, *, to: Literal["hand", "torch"] = "hand", strict: bool = False
) -> SwapReport:
    """Replace, in place, every LSTM inside ``model`` by its counterpart on the other side.

    With ``to="hand"``: each ``nn.LSTM`` becomes a :class:`~handlstm.HandLSTM` and each
    ``nn.LSTMCell`` a :class:`~handlstm.HandLSTMCell`; opacus ``DPLSTM`` / ``DPLSTMCell`` become
    them too (sharing their Parameters); a subclass of nn.LSTM or nn.LSTMCell whose ``forward``
    reaches torch's through ``super()`` keeps its class and code, with HandLSTM's forward placed
    under it (``isinstance`` and the state dict unchanged). ``to="torch"`` goes back (opacus
    layers come back as nn.LSTM / nn.LSTMCell, subclasses as their exact own class). Modules
    are found at any depth; a module reachable under several paths is replaced everywhere.

    Replacements hold the *same* ``nn.Parameter`` objects in the same order, so an optimizer
    built before the swap keeps stepping them and an optimizer state saved before it loads into
    one built after it. ``model.state_dict()`` keeps its keys and their order, DPLSTM's
    ``l0.ih.weight``-style aliases included, and old state dicts load strictly; except that
    DPLSTMCell's keys become nn.LSTMCell's (its old state dicts still load; see the report's
    note and :mod:`handlstm.interop.opacus_layers`). The ``training`` flag is kept.

    Left alone, and listed with the reason: subclasses whose forward never calls
    ``super().forward`` (or where that cannot be confirmed), modules with hooks, modules whose
    weights are not plain registered Parameters (weight-drop, parametrizations), modules
    holding state of their own (a registered buffer, parameter, submodule or extra state),
    and hand modules with variant options when going to torch.

    All or nothing: every replacement is built before the model is touched; a module whose
    replacement cannot be built is left alone and listed, and if changing the model fails
    midway the changes already made are undone before the error propagates.

    Args:
        model: any module; it cannot itself be an LSTM (use ``HandLSTM.from_torch`` there).
        to: ``"hand"`` or ``"torch"``.
        strict: if True, raise ValueError (changing nothing) when any LSTM-like module would be
            left alone, instead of swapping the others.

    Returns:
        A :class:`SwapReport` listing every swapped module (path, types, configuration) and every
        module left alone with its reason.

    Example:
        >>> import torch
        >>> from handlstm import HandLSTM, swap_lstms
        >>> model = torch.nn.Sequential(torch.nn.LSTM(3, 4))
        >>> report = swap_lstms(model)
        >>> type(model[0]).__name__, report.swapped[0].path
        ('HandLSTM', '0')
    """
    if to not in ("hand", "torch"):
        raise ValueError(f'to must be "hand" or "torch", got {to!r}')
    if _kind(model, to) is not None:
        raise ValueError(
            f"swap_lstms replaces LSTMs inside a model, but the model itself is a "
            f"{type(model).__name__}: use HandLSTM.from_torch(...) or .to_torch() instead"
        )
    report = SwapReport(to)
    plans: dict[int, _Plan | None] = {}
    for path, module, kind in _lstm_like(model, to):
        if id(module) in plans:
            plan = plans[id(module)]
            if plan is not None and plan.new is not None:
                plan.paths.append(path)
            continue
        try:
            plans[id(module)] = _plan(module, path, kind, to)
        except Exception as error:  # noqa: BLE001 - planning changes nothing: list, go on
            reason = (
                str(error)
                if isinstance(error, _Cannot)
                else (f"its replacement could not be planned: {type(error).__name__}: {error}")
            )
            plans[id(module)] = None
            report.skipped.append(Skipped(path, type(module).__name__, reason))
    if strict and report.skipped:
        raise ValueError(f"swap_lstms(strict=True) changed nothing:\n{report}")
    ready = [plan for plan in plans.values() if plan is not None]
    _apply(model, ready)
    report.swapped = [plan.record for plan in ready]
    return report


def _apply(model: nn.Module, plans: list[_Plan]) -> None:
    """Make every planned change; on a failure undo the ones made, then raise."""
    undo: list[Callable[[], None]] = []
    try:
        for plan in plans:
            if plan.retype is not None:
                old_class = type(plan.module)
                plan.retype(plan.module)
                undo.append(functools.partial(setattr, plan.module, "__class__", old_class))
                continue
            for path in plan.paths:
                parent_path, _, name = path.rpartition(".")
                parent = model.get_submodule(parent_path)
                setattr(parent, name, plan.new)
                undo.append(functools.partial(setattr, parent, name, plan.module))
    except BaseException:
        for step in reversed(undo):
            step()
        raise
