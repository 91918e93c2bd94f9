"""Dropout in rnn.keras (no Keras needed): masks read back from the layers' outputs.

With a linear SimpleRNN whose kernel is the identity and whose recurrent kernel is zero, the output
at every step is x_t * input_mask; with an identity recurrent kernel and an impulse input, the
output after k steps is recurrent_mask^k. The LSTM / GRU per-gate masks are checked at the
rnn.functional boundary (what the layer passes to the kernels), the kernels' use of them is
tested against the NumPy reference elsewhere.
"""
import numpy as np
import pytest
import torch

import rnn.functional
import rnn.keras as rk
from tolerances import assert_close

F32 = torch.float32
B, T, I, U = 400, 5, 50, 6


def input_mask_layer(rate, **kw):
    return rk.SimpleRNN(I, activation=None, use_bias=False, kernel_initializer="identity",
                        recurrent_initializer="zeros", dropout=rate, input_dim=I, backend="torch", **kw)


def check_mask_values(m, rate):
    scale = 1.0 / (1.0 - rate)
    kept = m[m != 0]
    assert_close("kept mask entries = 1/(1-rate)", kept, np.full(kept.shape, scale), F32)
    dropped = float((m == 0).mean())
    assert abs(dropped - rate) < 0.02, f"dropped fraction {dropped:.3f}, rate {rate}"


def test_input_mask_constant_over_time_per_sample_and_scaled():
    rate = 0.3
    layer = input_mask_layer(rate, return_sequences=True).train()
    x = torch.ones(B, T, I, requires_grad=True)
    out = layer(x)
    m = out[:, 0].detach().numpy()
    check_mask_values(m, rate)
    for t in range(1, T):  # the same mask at every step
        assert np.array_equal(out[:, t].detach().numpy(), m)
    assert not all(np.array_equal(m[0], m[b]) for b in range(1, B))  # differs across samples
    assert not np.array_equal(m[:, 0], m[:, 1])  # and across features
    out.sum().backward()  # dx carries the mask at every step
    assert_close("dx = T * mask", x.grad.sum(1), T * m, F32)
    again = layer(x)[:, 0].detach().numpy()
    assert not np.array_equal(again, m)  # a fresh mask on every call


def test_no_dropout_in_eval_mode_or_training_false():
    layer = input_mask_layer(0.5, return_sequences=True)
    x = torch.randn(8, T, I)
    layer.eval()
    assert_close("eval: no dropout", layer(x), x, F32)
    layer.train()
    assert_close("training=False: no dropout", layer(x, training=False), x, F32)
    dropped = layer(x)
    assert (dropped == 0).any()
    layer.eval()
    assert (layer(x, training=True) == 0).any()  # training=True overrides eval mode


def test_recurrent_mask_reused_at_every_step():
    rate = 0.25
    layer = rk.SimpleRNN(I, activation=None, use_bias=False, kernel_initializer="identity",
                         recurrent_initializer="identity", recurrent_dropout=rate, input_dim=I,
                         return_sequences=True, backend="torch").train()
    x = torch.zeros(B, T, I)
    x[:, 0] = 1.0  # impulse: h_0 = 1, h_k = r^k
    out = layer(x).detach().numpy()
    np.testing.assert_array_equal(out[:, 0], np.ones((B, I), np.float32))
    r = out[:, 1]
    check_mask_values(r, rate)
    for k in range(2, T):
        assert_close(f"h_{k} = r^{k}", out[:, k], r ** k, F32)


def test_seed_makes_masks_reproducible():
    x = torch.ones(16, T, I)
    a = input_mask_layer(0.4, seed=7).train()(x)
    b = input_mask_layer(0.4, seed=7).train()(x)
    c = input_mask_layer(0.4, seed=8).train()(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


class Spy:
    """Records the dropout masks the layers pass to rnn.functional.recurrence."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = rnn.functional.recurrence

        def spy(*args, **kwargs):
            self.calls.append((kwargs.get("in_mask"), kwargs.get("rec_mask")))
            return real(*args, **kwargs)

        monkeypatch.setattr(rnn.functional, "recurrence", spy)


@pytest.mark.parametrize("make,G", [(rk.LSTM, 4), (rk.GRU, 3), (lambda *a, **k: rk.GRU(*a, reset_after=False, **k), 3)],
                         ids=["lstm", "gru", "gru_ra_false"])
@pytest.mark.parametrize("dropout,recurrent_dropout", [(0.3, 0.0), (0.3, 0.2), (0.0, 0.2)])
def test_per_gate_masks(make, G, dropout, recurrent_dropout, monkeypatch):
    spy = Spy(monkeypatch)
    layer = make(U, dropout=dropout, recurrent_dropout=recurrent_dropout, backend="torch").train()
    x = torch.randn(B, T, I)
    layer(x)
    in_mask, rec_mask = spy.calls[-1]
    if dropout == 0:
        assert in_mask is None
    elif recurrent_dropout == 0:
        assert in_mask.shape == (B, I)  # one mask shared by all gates
        check_mask_values(in_mask.numpy(), dropout)
    else:
        assert in_mask.shape == (G, B, I)  # one independent mask per gate
        for g in range(G):
            check_mask_values(in_mask[g].numpy(), dropout)
        assert not any(torch.equal(in_mask[0], in_mask[g]) for g in range(1, G))
    if recurrent_dropout == 0:
        assert rec_mask is None
    else:
        assert rec_mask.shape == (G, B, U)
        for g in range(G):
            check_mask_values(rec_mask[g].numpy(), recurrent_dropout)
        assert not any(torch.equal(rec_mask[0], rec_mask[g]) for g in range(1, G))
    layer.eval()
    layer(x)
    assert spy.calls[-1] == (None, None)


def test_dropout_changes_lstm_output_only_in_training():
    layer = rk.LSTM(U, dropout=0.5, recurrent_dropout=0.5, input_dim=I, backend="torch")
    x = torch.randn(8, T, I)
    ref = rk.LSTM(U, input_dim=I, backend="torch")
    ref.set_keras_weights(layer.get_keras_weights())
    assert_close("eval LSTM == no-dropout LSTM", layer.eval()(x), ref(x), F32)
    assert not torch.allclose(layer.train()(x), ref(x))


def test_stand_alone_cell_caches_masks_until_reset():
    cell = rk.SimpleRNNCell(I, activation=None, use_bias=False, kernel_initializer="identity",
                            recurrent_initializer="zeros", dropout=0.5, backend="torch").train()
    x = torch.ones(32, I)
    m1, _ = cell(x, [torch.zeros(32, I)])
    m2, _ = cell(x, [torch.zeros(32, I)])
    assert torch.equal(m1, m2)  # the same mask for every step of a hand-written loop
    cell.reset_dropout_mask()
    m3, _ = cell(x, [torch.zeros(32, I)])
    assert not torch.equal(m1, m3)
    m4, _ = cell(torch.ones(8, I), [torch.zeros(8, I)])  # another batch size draws new masks
    assert m4.shape == (8, I)
    assert torch.equal(cell.eval()(x, [torch.zeros(32, I)])[0], x)
