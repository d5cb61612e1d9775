"""Property-based testing toolkit for recurrent modules: hypothesis strategies and a comparator.

Strategies draw an LSTM configuration together with inputs that fit it, so a test reads::

    from hypothesis import given
    from handlstm.testing import assert_lstm_close, lstm_cases

    @given(lstm_cases())
    def test_mine_matches_torch(case):
        expected = case.make(torch.nn.LSTM)
        actual = case.make(MyLSTM, state_dict=expected.state_dict())
        assert_lstm_close(actual, expected, case.input, case.hx)

The public path of :mod:`handlstm.tools.testing` (its full documentation). Needs hypothesis
(``pip install hypothesis``, or ``pip install "handlstm[test]"``).
"""

from __future__ import annotations

from .tools.testing import *  # noqa: F403
from .tools.testing import __all__ as __all__
