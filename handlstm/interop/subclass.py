"""Hand-backed subclasses: a user's ``nn.LSTM`` subclass whose ``super().forward`` is HandLSTM's.

A library class such as pytorch-forecasting's ``LSTM(nn.LSTM)`` wraps nn.LSTM's forward (it
handles zero-length sequences, then calls ``super().forward``). Swapping it for a plain HandLSTM
would drop that code and the type. Instead the module's class is changed, in place, to a class
derived from the user's, with HandLSTM's forward placed between the user's class and nn.LSTM in
the method resolution order::

    HandBacked[TheirLSTM] -> TheirLSTM -> _HandLSTMLayer -> HandLSTM -> nn.LSTM -> RNNBase -> Module

The user's code runs unchanged, its ``super().forward`` lands on HandLSTM's forward,
``isinstance(m, TheirLSTM)`` stays true and the object (its parameters, buffers, hooks and
attributes) is the same object, so the state dict is unchanged. Swapping back restores the
user's exact class. One derived class is made per user class and cached.

Whether a subclass reaches nn.LSTM's forward through ``super()`` is read from the source of each
``forward`` it defines; when that cannot be confirmed the module is left alone, with the reason.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

from torch import nn

from ..core.options import LSTMOptions
from ..modules.cell import HandLSTMCell
from ..modules.lstm import HandLSTM

__all__ = ["hand_backed_class", "is_hand_backed", "user_class", "why_not_hand_backed"]


class _HandLSTMLayer(HandLSTM, nn.LSTM):  # type: ignore[misc]
    """HandLSTM's forward and helpers over a module built by ``nn.LSTM.__init__``."""

    options = LSTMOptions()  # default options: the module is exactly nn.LSTM
    _variant_weights_names: list[tuple[str, str]] = []
    __init__ = nn.LSTM.__init__  # type(m)(...) builds like the user's class does

    def _init_flat_weights(self) -> None:
        """No cached weight list: HandLSTM reads its parameters at every call."""

    _replicate_for_data_parallel = nn.Module._replicate_for_data_parallel

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_flat_weight_refs", None)  # weak references do not pickle (nor in nn.LSTM)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        nn.Module.__setstate__(self, state)  # RNNBase's would rebuild the cached list
        self.__dict__.setdefault("_flat_weight_refs", [])

    def __reduce_ex__(self, protocol: Any) -> Any:
        # The derived class is made at run time: pickle and deepcopy go through the user's class.
        return (_new_hand_backed, (user_class(type(self)),), self.__getstate__())


class _HandLSTMCellLayer(HandLSTMCell, nn.LSTMCell):  # type: ignore[misc]
    """HandLSTMCell's forward over a module built by ``nn.LSTMCell.__init__``."""

    options = LSTMOptions()
    _variant_weights_names: list[str] = []
    __init__ = nn.LSTMCell.__init__

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (_new_hand_backed, (user_class(type(self)),), self.__dict__)


_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.LSTM: _HandLSTMLayer,
    nn.LSTMCell: _HandLSTMCellLayer,
}
_CACHE: dict[type[nn.Module], type[nn.Module]] = {}

# Methods of nn.LSTM / nn.LSTMCell that the hand forward does not call or replaces: a subclass
# overriding one of them relies on behaviour that would silently change.
_NOT_REPRODUCED = (
    "__call__",
    "_call_impl",
    "_apply",
    "__setattr__",
    "__getattr__",
    "__setstate__",
    "_init_flat_weights",
    "_replicate_for_data_parallel",
    "_flat_weights",
    "check_input",
    "check_forward_args",
    "check_hidden_size",
    "get_expected_hidden_size",
    "get_expected_cell_size",
    "permute_hidden",
)
# Names whose use in a forward means it runs torch's kernel itself, not through super().
_KERNEL_NAMES = {"_VF", "lstm", "lstm_cell", "_flat_weights"}


def _base_of(cls: type[nn.Module]) -> type[nn.Module] | None:
    if issubclass(cls, HandLSTM | HandLSTMCell):
        return None
    for base in (nn.LSTM, nn.LSTMCell):
        if issubclass(cls, base):
            return base
    return None


def is_hand_backed(module: nn.Module) -> bool:
    return isinstance(module, _HandLSTMLayer | _HandLSTMCellLayer)


def user_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The user's class a hand-backed class was derived from."""
    return cls.__bases__[0]


def _forward_calls_super(function: Any, owner: type) -> str | None:
    """None if ``function`` (``owner.forward``) calls ``super().forward`` and not the kernel."""
    name = f"{owner.__qualname__}.forward"
    try:
        source = textwrap.dedent(inspect.getsource(function))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return f"the source of {name} cannot be read to confirm that it calls super().forward"
    calls_super = False
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in _KERNEL_NAMES) or (
            isinstance(node, ast.Name) and node.id in _KERNEL_NAMES
        ):
            return f"{name} uses {ast.unparse(node)} itself: it runs torch's kernel, not super()"
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "forward"
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "super"
        ):
            calls_super = True
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "forward"
            and isinstance(node.value, ast.Attribute | ast.Name)
            and (getattr(node.value, "attr", None) or getattr(node.value, "id", None))
            in ("LSTM", "LSTMCell", "RNNBase")
        ):
            return f"{name} calls nn.LSTM.forward by name, bypassing the method resolution order"
    if not calls_super:
        return f"{name} never calls super().forward: its own computation is kept as it is"
    return None


def why_not_hand_backed(module: nn.Module) -> str | None:
    """Why the subclass instance ``module`` cannot be hand-backed, or None if it can."""
    cls = type(module)
    base = _base_of(cls)
    if base is None or cls is base:
        return f"{cls.__name__} is not a subclass of nn.LSTM or nn.LSTMCell"
    for klass in cls.__mro__[: cls.__mro__.index(base)]:
        overridden = [name for name in _NOT_REPRODUCED if name in vars(klass)]
        if overridden:
            return (
                f"subclass of {base.__name__} overriding {', '.join(overridden)}, which the "
                "hand-written forward does not reproduce"
            )
        if "forward" in vars(klass):
            reason = _forward_calls_super(vars(klass)["forward"], klass)
            if reason is not None:
                return f"subclass of {base.__name__}: {reason}"
    if vars(cls).get("__slots__"):
        return f"{cls.__name__} defines __slots__, so its class cannot be changed in place"
    return None


def hand_backed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The class derived from the user's ``cls`` with the hand forward under it (cached)."""
    if cls not in _CACHE:
        base = _base_of(cls)
        if base is None:
            raise TypeError(f"{cls.__name__} is not a subclass of nn.LSTM or nn.LSTMCell")
        layer = _LAYERS[base]
        metaclass: Any = type(cls)  # the user's metaclass (ABCMeta for abstract bases)
        derived = metaclass(
            f"Hand{cls.__name__}",
            (cls, layer),
            {
                "__module__": __name__,
                "__qualname__": f"Hand{cls.__qualname__}",
                "__doc__": f"{cls.__qualname__} whose {base.__name__}.forward is handlstm's.",
            },
        )
        _CACHE[cls] = derived
    return _CACHE[cls]


def _new_hand_backed(cls: type[nn.Module]) -> nn.Module:
    """An empty instance of ``cls``'s hand-backed class (for pickle and deepcopy)."""
    derived = hand_backed_class(cls)
    return derived.__new__(derived)  # type: ignore[call-overload,no-any-return]


def to_hand(module: nn.Module) -> None:
    """Make ``module`` hand-backed, in place."""
    module.__class__ = hand_backed_class(type(module))


def to_user(module: nn.Module) -> None:
    """Give ``module`` back its user's exact class, with nn.LSTM's cached weights refreshed."""
    module.__class__ = user_class(type(module))
    if isinstance(module, nn.LSTM):
        module._init_flat_weights()
