"""opacus integration: exact per-sample gradients of HandLSTM and HandLSTMCell in every mode.

``import handlstm.opacus`` (needs ``pip install "handlstm[opacus]"``) before building a
``GradSampleModule`` or calling ``PrivacyEngine.make_private``; nothing else changes::

    import handlstm.opacus  # noqa: F401
    model, optimizer, loader = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="hooks")

The public path of :mod:`handlstm.interop.opacus` (where the integration and its design notes
live); importing either installs it.
"""

from __future__ import annotations

from .interop.opacus import MODULES, SUPPORTED_MODES, install

__all__ = ["MODULES", "SUPPORTED_MODES", "install"]
