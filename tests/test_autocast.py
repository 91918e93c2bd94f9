"""Under torch.autocast the drop-ins return what torch.nn returns there: the same dtypes (autocast's
lists differ per device and cell) and close values; gradients reach the float32 parameters."""
import pytest
import torch

import rnn
from tolerances import assert_rel_close

KINDS = ["LSTM", "GRU", "RNN"]


def _states(h):
    return list(h) if isinstance(h, tuple) else [h]


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_bf16_autocast_matches_torch_nn(kind, batch_first):
    ref = getattr(torch.nn, kind)(3, 8, num_layers=2, bidirectional=True, batch_first=batch_first)
    ours = getattr(rnn, kind)(3, 8, num_layers=2, bidirectional=True, batch_first=batch_first,
                              backend="torch")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 3)
    got = []
    for m in (ref, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, h = m(x)
        out.float().square().sum().backward()
        got.append((out, _states(h), m.weight_hh_l0.grad))
    (out_r, h_r, g_r), (out_o, h_o, g_o) = got
    assert out_o.dtype == out_r.dtype and [t.dtype for t in h_o] == [t.dtype for t in h_r]
    assert out_o.shape == out_r.shape and g_o.dtype == torch.float32
    # torch.nn's CPU GRU returns float32 under autocast but runs its inner matmuls in bf16, so the
    # reference is bf16-accurate for every cell (ours keeps float32 inside where it returns float32)
    rel = 5e-2
    assert_rel_close(f"{kind} autocast output", out_o.float(), out_r.float(), rel)
    assert_rel_close(f"{kind} autocast dW_hh", g_o, g_r, 10 * rel)


def test_autocast_dtype_follows_torch_nn_per_cell():
    """On a CPU, autocast lowers LSTM and RNN to bf16 but leaves GRU in float32, as torch.nn does."""
    x = torch.randn(5, 2, 3)
    for kind, want in (("LSTM", torch.bfloat16), ("GRU", torch.float32), ("RNN", torch.bfloat16)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = getattr(rnn, kind)(3, 4, backend="torch")(x)
        assert out.dtype == want, (kind, out.dtype)


def test_no_autocast_no_cast():
    out, _ = rnn.LSTM(3, 4, backend="torch")(torch.randn(5, 2, 3))
    assert out.dtype == torch.float32
