"""The top layer: the ``handlstm`` command (:mod:`~handlstm.tools.cli`), checkpoint reading,
the parity sweep, the comparator and the property-testing toolkit behind ``handlstm.testing``.
"""
