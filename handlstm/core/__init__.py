"""The bottom layer: each cell kind's step equations and the types every layer above shares.

Pure functions of tensors and small immutable types; nothing here knows about nn.Module,
layers, sequences or how a direction is run. Imports nothing of handlstm's from above.

- :mod:`~handlstm.core.kinds`: what a cell kind is (:class:`CellKind`) and one direction's
  parameters (:class:`DirectionWeights`);
- :mod:`~handlstm.core.lstm`: the LSTM's equations (the only copy) and the :data:`LSTM` kind;
- :mod:`~handlstm.core.options`, :mod:`~handlstm.core.variants`: the opt-in options and what
  one forward call makes of them (parameters, masks);
- :mod:`~handlstm.core.check_args`, :mod:`~handlstm.core.check_inputs`: validation with
  torch's exception classes, for constructor arguments and for forward inputs;
- :mod:`~handlstm.core.quiet_torch`: torch imported without its numpy warning.
"""
