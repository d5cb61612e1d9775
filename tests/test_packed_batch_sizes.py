"""A PackedSequence whose batch_sizes are floating point or 2-D, with hx=None: nn.LSTM's class.

nn.LSTM reads ``batch_sizes[0]`` in Python to build zero states when hx is None, so such batch
sizes fail there with a TypeError before any C++ check; HandLSTM must raise the same class.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from handlstm import HandLSTM

F64 = torch.float64

BAD_BATCH_SIZES = {
    "float32": torch.tensor([2.0, 2.0, 1.0]),
    "float64": torch.tensor([2.0, 2.0, 1.0], dtype=F64),
    "float16": torch.tensor([2.0, 2.0, 1.0], dtype=torch.float16),
    "2-D int64": torch.tensor([[2, 2], [1, 0]]),
    "2-D float": torch.tensor([[2.0, 2.0], [1.0, 0.0]]),
}


def raised(module: nn.Module, packed: PackedSequence) -> type[BaseException] | None:
    try:
        module(packed)
    except Exception as error:  # noqa: BLE001 - the class is what is compared
        return type(error)
    return None


@pytest.mark.parametrize("name", list(BAD_BATCH_SIZES))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_bad_batch_sizes_without_hx_raise_like_torch(name, bidirectional):
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, bidirectional=bidirectional, dtype=F64)
    mine = HandLSTM(3, 4, bidirectional=bidirectional, dtype=F64)
    mine.load_state_dict(ref.state_dict())
    packed = PackedSequence(torch.randn(5, 3, dtype=F64), BAD_BATCH_SIZES[name], None, None)
    expected = raised(ref, packed)
    assert expected is TypeError, f"oracle: nn.LSTM raised {expected} for {name} batch_sizes"
    assert raised(mine, packed) is expected
    with pytest.raises(TypeError, match="batch_sizes"):
        mine(packed)
