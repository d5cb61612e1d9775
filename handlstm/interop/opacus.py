"""opacus integration: exact per-sample gradients of HandLSTM and HandLSTMCell in every mode.

``import handlstm.opacus`` (needs ``pip install "handlstm[opacus]"``) before building a
``GradSampleModule`` or calling ``PrivacyEngine.make_private``; nothing else changes::

    import handlstm.opacus  # noqa: F401
    model, optimizer, loader = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="hooks")

Why not a plain ``register_grad_sampler``: opacus's module hook sees only the gradient of the
first output (a loss through ``h_n``/``c_n`` is invisible to it), fires *before* the module's
backward when the input needs no gradient, and cannot take a PackedSequence. So opacus's hooks
are taken off HandLSTM modules when they are attached (``GradSampleHooks.add_hooks`` is wrapped)
and each module computes its per-sample gradients inside its own backward
(:mod:`handlstm.engines.per_sample`), handing them to opacus with opacus's own accumulation
(``create_or_accumulate_grad_sample``, ``promote_current_grad_sample``, ``_forward_counter``,
``loss_reduction`` scaling by the batch size). Modes:

* ``"hooks"`` and ``"functorch"``: ``p.grad_sample`` exactly (functorch's vmap is not needed);
* ``"ghost"``: ``p._norm_sample`` from per-sample Gram matrices, without per-sample gradients
  (a cell called several times per batch falls back to opacus's fast gradient clipping).
  opacus's loss wrapper then runs a second, clipped backward (``sum_n coeff_n loss_n``, hooks
  off): HandLSTM replays it from the first pass's records instead of running through time
  again (:class:`handlstm.engines.per_sample.blocks.BlockRun`), and inside that two-pass backward
  (``DPTensorFastGradientClipping.backward`` is wrapped to mark it) the first pass does not
  compute the summed ``p.grad`` that opacus zeroes right after it. Called without opacus's
  loss wrapper (``loss.backward()`` on a ``GradSampleModuleFastGradientClipping``), the first
  pass's ``p.grad`` is computed as usual;
* ``"ew"``: refused with a clear error (ExpandedWeights cannot run a recurrent module).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from opacus.grad_sample import GradSampleHooks, register_grad_sampler, register_norm_sampler
from opacus.grad_sample.grad_sample_module import (
    create_or_accumulate_grad_sample,
    promote_current_grad_sample,
)
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
    GradSampleHooksFastGradientClipping,
    create_norm_sample,
)
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..engines.per_sample import calls as _calls
from ..engines.per_sample import norms as _norms
from ..engines.per_sample import tape as _tape
from ..modules.cell import HandLSTMCell
from ..modules.lstm import HandLSTM

__all__ = ["MODULES", "SUPPORTED_MODES", "install"]

#: The module types this integration serves.
MODULES = (HandLSTM, HandLSTMCell)
#: The ``grad_sample_mode`` values that work with them.
SUPPORTED_MODES = ("hooks", "functorch", "ghost")

_ATTR = "_handlstm_opacus"  # on an adopted module: its _Sink
#: on a hooks object during opacus's two-pass backward: ids of the parameters it zeroes
_TWO_PASS = "_handlstm_two_pass"


class _Sink:
    """One adopted module's link to its opacus hooks object."""

    def __init__(self, hooks: GradSampleHooks) -> None:
        self.hooks = lambda: hooks  # a strong reference, as opacus's own hooks hold
        self.max_batch_len = 0  # over the forward calls not yet differentiated, as opacus

    def active(self, module: nn.Module) -> bool:
        """Record this call? The conditions of opacus's ``capture_activations_hook``."""
        hooks = self.hooks()
        return (
            hooks is not None
            and hooks.hooks_enabled
            and module.training
            and torch.is_grad_enabled()
            and bool(_calls.trainable(module))
        )

    def forwarded(self, tape: _tape.ModuleTape) -> None:
        for p in tape.params:
            p._forward_counter += 1  # type: ignore[attr-defined]
        self.max_batch_len = max(self.max_batch_len, tape.batch)

    def _ghost(self) -> bool:
        hooks = self.hooks()
        return isinstance(hooks, GradSampleHooksFastGradientClipping)

    def plan(self, tape: _tape.ModuleTape) -> _norms.Plan:
        hooks: Any = self.hooks()
        if hooks is None or not hooks.hooks_enabled:
            return _norms.Plan(_norms.NOTHING, 1.0)
        if hooks.loss_reduction == "mean":
            scale = float(self.max_batch_len)
        elif hooks.loss_reduction == "sum":
            scale = 1.0
        else:
            raise ValueError(
                f"loss_reduction = {hooks.loss_reduction}. Only 'sum' and 'mean' losses are "
                "supported"
            )
        if not self._ghost():
            return _norms.Plan(_norms.SAMPLES, scale)
        single = all(
            p._forward_counter == 1 and not hasattr(p, "_current_grad_sample")  # type: ignore[attr-defined]
            for p in tape.params
        )
        want = _norms.NORMS if hooks.use_ghost_clipping and single else _norms.SAMPLES
        # Inside opacus's two-pass backward (DPTensorFastGradientClipping.backward) the first
        # pass's p.grad is zeroed by optimizer.zero_grad() right after it: not computed then.
        # A clipped second pass will follow: keep the records so that it can be replayed.
        zeroed = getattr(hooks, _TWO_PASS, None)
        sums = zeroed is None or not all(id(p) in zeroed for p in tape.params)
        return _norms.Plan(want, scale, sums=sums, keep=True)

    def deliver(self, tape: _tape.ModuleTape, results: dict[int, Tensor]) -> None:
        hooks: Any = self.hooks()
        n = self.max_batch_len
        norms = self.plan(tape).want == _norms.NORMS
        for i, p in enumerate(tape.params):
            if norms:
                p._norm_sample = results[i].sqrt()  # type: ignore[attr-defined]
                p._forward_counter -= 1  # type: ignore[attr-defined]
                continue
            _accumulate(p, results[i], n)
            p._forward_counter -= 1  # type: ignore[attr-defined]
            if p._forward_counter == 0:  # type: ignore[attr-defined]
                promote_current_grad_sample(p)
                if self._ghost():
                    create_norm_sample(param=p, grad_sample=p.grad_sample, max_batch_len=n)  # type: ignore[attr-defined]
                    p.grad_sample = None  # type: ignore[attr-defined]
            if not hooks.grad_accumulation_allowed:
                gs = getattr(p, "grad_sample", None)
                if isinstance(gs, list) and len(gs) > 1:
                    raise ValueError(
                        "Poisson sampling is not compatible with grad accumulation. You need to "
                        "call optimizer.step() after every forward/backward pass or consider "
                        "using BatchMemoryManager"
                    )
        if all(p._forward_counter == 0 for p in tape.params):  # type: ignore[attr-defined]
            self.max_batch_len = 0


def _accumulate(p: nn.Parameter, grad_sample: Tensor, max_batch_len: int) -> None:
    """opacus's ``create_or_accumulate_grad_sample``, without its zero-fill and copy when the
    fresh ``grad_sample`` already has ``max_batch_len`` rows (it is ours: no one else holds it)."""
    fresh = p.requires_grad and not hasattr(p, "_current_grad_sample")
    if fresh and grad_sample.shape[0] == max_batch_len:
        p._current_grad_sample = grad_sample  # type: ignore[attr-defined]
        return
    create_or_accumulate_grad_sample(param=p, grad_sample=grad_sample, max_batch_len=max_batch_len)


def _lstm_forward(self: HandLSTM, input: Any, hx: Any = None, **kwargs: Any) -> Any:
    sink: _Sink = self.__dict__[_ATTR]
    if not isinstance(input, (Tensor, PackedSequence)) or not sink.active(self):
        return type(self).forward(self, input, hx, **kwargs)
    tape, _, result = _calls.lstm_forward(self, input, hx, sink, **kwargs)
    sink.forwarded(tape)
    return result


def _cell_forward(self: HandLSTMCell, input: Tensor, hx: Any = None) -> Any:
    sink: _Sink = self.__dict__[_ATTR]
    if not isinstance(input, Tensor) or not sink.active(self):
        return type(self).forward(self, input, hx)
    tape, _, result = _calls.cell_forward(self, input, hx, sink)
    sink.forwarded(tape)
    return result


def _adopt(hooks: GradSampleHooks) -> None:
    """Take opacus's hooks off every HandLSTM module of ``hooks._module`` and link the module."""
    owned = [m for m in hooks._module.modules() if isinstance(m, MODULES)]
    if not owned:
        return
    for module in owned:  # refuse before changing anything
        _calls.check_options(module)
    dicts = {id(d) for m in owned for d in (m._forward_hooks, m._backward_hooks)}
    kept = []
    for handle in hooks.autograd_grad_sample_hooks:
        if id(handle.hooks_dict_ref()) in dicts:
            handle.remove()
        else:
            kept.append(handle)
    hooks.autograd_grad_sample_hooks[:] = kept
    for module in owned:
        module.__dict__[_ATTR] = _Sink(hooks)
        forward = _lstm_forward if isinstance(module, HandLSTM) else _cell_forward
        module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]


def _release(hooks: GradSampleHooks) -> None:
    for module in hooks._module.modules():
        sink = module.__dict__.get(_ATTR)
        if sink is not None and sink.hooks() in (hooks, None):
            del module.__dict__[_ATTR]
            module.__dict__.pop("forward", None)


def _refuse(module: nn.Module, mode: str) -> None:
    found = [type(m).__name__ for m in module.modules() if isinstance(m, MODULES)]
    if found:
        raise NotImplementedError(
            f"grad_sample_mode={mode!r} cannot run {found[0]}: ExpandedWeights has no recurrent "
            f"modules. Use grad_sample_mode in {SUPPORTED_MODES}."
        )


def install() -> None:
    """Teach opacus about HandLSTM and HandLSTMCell (idempotent; runs on import)."""
    if getattr(GradSampleHooks, "_handlstm_installed", False):
        return
    add_hooks, remove_hooks = GradSampleHooks.add_hooks, GradSampleHooks.remove_hooks
    ew_init = GradSampleModuleExpandedWeights.__init__

    def add_hooks_adopting(self: GradSampleHooks, *args: Any, **kwargs: Any) -> None:
        add_hooks(self, *args, **kwargs)
        _adopt(self)

    def remove_hooks_releasing(self: GradSampleHooks) -> None:
        _release(self)
        remove_hooks(self)

    def ew_init_refusing(self: Any, m: nn.Module, *args: Any, **kwargs: Any) -> None:
        _refuse(m, "ew")
        ew_init(self, m, *args, **kwargs)

    two_pass = DPTensorFastGradientClipping.backward

    def two_pass_marking(self: DPTensorFastGradientClipping) -> None:
        hooks = self.module
        before = hooks.__dict__.get(_TWO_PASS)
        zeroed = {id(p) for p in getattr(self.optimizer, "params", ())}
        object.__setattr__(hooks, _TWO_PASS, zeroed)
        try:
            two_pass(self)
        finally:
            object.__setattr__(hooks, _TWO_PASS, before)

    DPTensorFastGradientClipping.backward = two_pass_marking  # type: ignore[method-assign]
    GradSampleHooks.add_hooks = add_hooks_adopting  # type: ignore[method-assign]
    GradSampleHooks.remove_hooks = remove_hooks_releasing  # type: ignore[method-assign]
    GradSampleModuleExpandedWeights.__init__ = ew_init_refusing  # type: ignore[method-assign]
    GradSampleHooks._handlstm_installed = True  # type: ignore[attr-defined]

    def never(module: nn.Module, activations: Any, backprops: Any) -> Any:
        raise RuntimeError(
            f"{type(module).__name__} computes its per-sample gradients in its own backward; "
            "opacus's hooks should have been removed from it (was handlstm.opacus imported "
            "before the GradSampleModule was built?)"
        )

    register_grad_sampler(list(MODULES))(never)
    register_norm_sampler(list(MODULES))(never)


install()
