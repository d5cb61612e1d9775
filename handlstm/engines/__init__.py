"""The middle layer: how one direction (or one layer in lockstep) runs over time.

- :mod:`~handlstm.engines.choose`: the one choice, a short table of conditions -> engine;
- :mod:`~handlstm.engines.composed`: the reference loop over any cell kind's step;
- :mod:`~handlstm.engines.traced`: the same step as one ``scan`` for compile and export;
- :mod:`~handlstm.engines.tracing`: what a trace is doing (compile/export, ``time_loop``);
- :mod:`~handlstm.engines.opaque`: compiled training through one opaque op over the eager path;
- :mod:`~handlstm.engines.fast`: the CPU fast path (per cell kind, hand-written backward);
- :mod:`~handlstm.engines.per_sample`: recording for per-sample gradients (opacus).

Engines import :mod:`handlstm.core` and each other downwards only; none calls the chooser.
"""
