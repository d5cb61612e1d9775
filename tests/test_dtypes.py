"""Half precision runs and stays close to the float32 result."""

import pytest
import torch

from handlstm import HandLSTM


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_close_to_float32(dtype, tol):
    torch.manual_seed(0)
    reference = HandLSTM(4, 8, num_layers=2, bidirectional=True, proj_size=3)
    low = HandLSTM(4, 8, num_layers=2, bidirectional=True, proj_size=3, dtype=dtype)
    low.load_state_dict({k: v.to(dtype) for k, v in reference.state_dict().items()})
    x = torch.randn(6, 3, 4)
    out32, (h32, c32) = reference(x)
    out, (h, c) = low(x.to(dtype))
    assert out.dtype == h.dtype == c.dtype == dtype
    for a, e in ((out, out32), (h, h32), (c, c32)):
        torch.testing.assert_close(a.float(), e, rtol=tol, atol=tol)
    (out.float().sum()).backward()
    assert all(
        p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all()
        for p in low.parameters()
    )
