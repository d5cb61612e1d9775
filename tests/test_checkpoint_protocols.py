"""A zip checkpoint pickled with protocol 0 or 1 is reported as such, never rewritten as protocol 2.

Protocols 0 and 1 write no PROTO opcode; torch's weights-only unpickler reads neither, and the
protocol 4/5 rewrite is not for them.
"""

from __future__ import annotations

import pytest
import torch

from handlstm.tools import checkpoint


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_pickle_protocol_is_the_one_saved(tmp_path, protocol):
    path = tmp_path / "p.pt"
    torch.save({"weight_ih_l0": torch.zeros(4, 1)}, path, pickle_protocol=protocol)
    assert checkpoint._pickle_protocol(path) == protocol


@pytest.mark.parametrize("protocol", [0, 1])
def test_protocol_0_or_1_is_refused_naming_its_protocol(tmp_path, monkeypatch, protocol):
    path = tmp_path / "p.pt"
    torch.save({"weight_ih_l0": torch.zeros(4, 1)}, path, pickle_protocol=protocol)

    def no_rewrite(data):
        raise AssertionError("a protocol 0/1 stream sent down the protocol-2 rewrite")

    monkeypatch.setattr(checkpoint, "_as_protocol_2", no_rewrite)
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load_checkpoint(str(path))
    message = str(caught.value)
    assert f"pickled with protocol {protocol} " in message, message
    assert f"pickle_protocol={protocol})" in message, message
    assert "not a torch checkpoint" not in message, message
