"""The CPU fast path: in-place loops into preallocated buffers and a hand-written backward.

Cell-specific by nature (a hand-written backward is per cell): ``lstm*.py`` serve the LSTM;
:mod:`~handlstm.engines.fast.serves` says what the fast path can compute and counts what ran,
:mod:`~handlstm.engines.fast.layout` lays directions out in processing order.
"""
