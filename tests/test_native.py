""""auto" falling back to the torch backend uses torch's own fused RNN op when the call has exactly
torch.nn's semantics (and our loop otherwise); an explicit backend="torch" always runs our loop."""
import pytest
import torch

import rnn
from rnn import functional as F


@pytest.fixture
def native_calls(monkeypatch):
    calls = []
    real = F._native

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "_native", spy)
    return calls


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, batch_first=True),
                                dict(bias=False), dict(nonlinearity="relu")])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_auto_on_cpu_is_torch_nn_bitwise(kind, kw, native_calls):
    if "nonlinearity" in kw and kind != "RNN":
        pytest.skip("nonlinearity is an RNN argument")
    ref = getattr(torch.nn, kind)(5, 7, **kw).double()
    ours = getattr(rnn, kind)(5, 7, **kw).double()  # backend="auto"
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        out, h = m(xx)
        out.square().sum().backward()
        results.append((out, xx.grad, m.weight_hh_l0.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert len(native_calls) == ours.num_layers * (2 if ours.bidirectional else 1)


def test_explicit_torch_backend_runs_our_loop(native_calls):
    rnn.LSTM(5, 7, backend="torch")(torch.randn(4, 2, 5))
    assert native_calls == []


def test_env_override_counts_as_explicit(native_calls, monkeypatch):
    monkeypatch.setenv("FUSED_RNN_BACKEND", "torch")
    rnn.GRU(5, 7)(torch.randn(4, 2, 5))
    assert native_calls == []


def test_keras_semantics_run_our_loop(native_calls):
    """Masks, dropout masks, other activations and GRU reset_after=False are not torch.nn's."""
    x, G, H = torch.randn(6, 3, 5), 4, 7
    w_ih, w_hh = torch.randn(G * H, 5), torch.randn(G * H, H)
    F.lstm(x, w_ih, w_hh, mask=torch.ones(6, 3, dtype=torch.bool))
    F.lstm(x, w_ih, w_hh, rec_mask=torch.ones(G, 3, H))
    F.lstm(x, w_ih, w_hh, recurrent_activation="hard_sigmoid")
    F.gru(x, w_ih[:3 * H], w_hh[:3 * H], reset_after=False)
    assert native_calls == []
    F.lstm(x, w_ih, w_hh, reverse=True)
    assert native_calls == [torch.lstm]


def test_native_reverse_and_one_bias_match_our_loop():
    x, H = torch.randn(6, 3, 5, dtype=torch.float64), 7
    w_ih, w_hh, b = torch.randn(3 * H, 5).double(), torch.randn(3 * H, H).double(), torch.randn(3 * H).double()
    h0 = torch.randn(3, H, dtype=torch.float64)
    for b_ih, b_hh in ((b, None), (None, b)):
        got = F.gru(x, w_ih, w_hh, b_ih, b_hh, h0, reverse=True)
        want = F.gru(x, w_ih, w_hh, b_ih, b_hh, h0, reverse=True, backend="torch")
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-12)
