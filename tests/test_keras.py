"""rnn.keras against real Keras 3 (torch backend): same weights -> same outputs, states and gradients.

Every parity case moves random weights from the Keras layer with set_keras_weights, runs both on
the same input (with masks that hide first, middle and last steps, and one fully masked row),
applies random upstream gradients to every returned tensor (outputs and final states) and compares
the outputs and the gradients of the input, the initial states and every Keras weight.
"""
import problems
import itertools

import numpy as np
import pytest
import torch

keras = pytest.importorskip("keras")  # conftest sets KERAS_BACKEND=torch before this import

import rnn.keras as rk  # noqa: E402
from tolerances import assert_close  # noqa: E402

F32 = torch.float32
B, T, I, U = 4, 7, 5, 6
KERAS = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU, "SimpleRNN": keras.layers.SimpleRNN}
OURS = {"LSTM": rk.LSTM, "GRU": rk.GRU, "SimpleRNN": rk.SimpleRNN}
N_STATES = {"LSTM": 2, "GRU": 1, "SimpleRNN": 1}


def ragged_mask():
    return problems.ragged_mask(B, T)


def as_list(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def randomize(klayer, rng, scale=0.4):
    klayer.set_weights([rng.normal(0.0, scale, w.shape).astype(np.float32) for w in klayer.get_weights()])


def keras_params(layer):
    """Our parameters in Keras's get_weights() order."""
    if isinstance(layer, rk.Bidirectional):
        return keras_params(layer.forward_layer) + keras_params(layer.backward_layer)
    if isinstance(layer, rk.RNN):
        return [p for c in layer._cells() for p in c.keras_parameters()]
    return layer.keras_parameters()


def compare(klayer, ours, rng, x, mask=None, states=None, call_ours=None, name="layer"):
    """Run both with the same inputs, check outputs and all gradients."""
    xk = torch.tensor(x, requires_grad=True)
    xo = torch.tensor(x, requires_grad=True)
    sk = None if states is None else [torch.tensor(s, requires_grad=True) for s in states]
    so = None if states is None else [torch.tensor(s, requires_grad=True) for s in states]
    kw_k, kw_o = {}, {}
    if mask is not None:
        kw_k["mask"] = kw_o["mask"] = mask
    if states is not None:
        kw_k["initial_state"], kw_o["initial_state"] = sk, so
    yk = as_list(klayer(xk, **kw_k))
    raw = ours(xo, **kw_o) if call_ours is None else call_ours(xo, **kw_o)
    yo = as_list(raw)
    assert len(yk) == len(yo), f"{name}: Keras returned {len(yk)} tensors, ours {len(yo)}"
    for k, (a, e) in enumerate(zip(yo, yk)):
        assert_close(f"{name} output[{k}]", a, e, F32)
    grads = [torch.tensor(rng.normal(size=tuple(e.shape)).astype(np.float32)) for e in yk]
    sum((e * g).sum() for e, g in zip(yk, grads)).backward()
    sum((a * g).sum() for a, g in zip(yo, grads)).backward()
    assert_close(f"{name} dx", xo.grad, xk.grad, F32)
    for k in range(len(states or [])):
        assert_close(f"{name} d initial_state[{k}]", so[k].grad, sk[k].grad, F32)
    kparams = [v.value for v in klayer.trainable_weights]
    oparams = keras_params(ours)
    assert len(kparams) == len(oparams)
    for k, (a, e) in enumerate(zip(oparams, kparams)):
        assert_close(f"{name} d weight[{k}] {tuple(e.shape)}", a.grad, e.grad, F32)
    return raw


def make_pair(kind, rng, x, scale=0.4, **kwargs):
    klayer = KERAS[kind](U, **kwargs)
    klayer(x)  # build (and fix the batch size of a stateful layer)
    randomize(klayer, rng, scale)
    if kwargs.get("stateful"):
        klayer.reset_state()
    ours = OURS[kind](U, backend="torch", **kwargs)
    ours.set_keras_weights(klayer.get_weights())
    return klayer, ours


KINDS = [("LSTM", {}), ("GRU", {"reset_after": True}), ("GRU", {"reset_after": False}), ("SimpleRNN", {})]


# ----------------------------------------------------------------------------- layers
@pytest.mark.parametrize("kind,extra", KINDS, ids=["lstm", "gru", "gru_ra_false", "simple"])
@pytest.mark.parametrize("go_backwards,return_sequences,masked",
                         list(itertools.product([False, True], repeat=3)))
def test_layer_matches_keras(kind, extra, go_backwards, return_sequences, masked, rng):
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    return_state = go_backwards != return_sequences  # both settings appear for every kind
    kwargs = dict(extra, go_backwards=go_backwards, return_sequences=return_sequences,
                  return_state=return_state)
    klayer, ours = make_pair(kind, rng, x, **kwargs)
    states = None
    if masked:  # initial states together with masks: masked steps must keep h0 / c0
        states = [rng.normal(size=(B, U)).astype(np.float32) for _ in range(N_STATES[kind])]
    y = compare(klayer, ours, rng, x, ragged_mask() if masked else None, states, name=f"{kind}{kwargs}")
    assert isinstance(y, list) == return_state
    if return_state:
        assert len(y) == 1 + N_STATES[kind]


ACTIVATIONS = [
    dict(activation="relu", recurrent_activation="hard_sigmoid"),
    dict(activation=None, recurrent_activation="sigmoid", use_bias=False),
    dict(activation="sigmoid", recurrent_activation="tanh"),
    # linear gates are unbounded: small weights keep the values (and float32 rounding) moderate
    dict(activation="hard_sigmoid", recurrent_activation="linear", scale=0.15),
]


@pytest.mark.parametrize("kind,extra", KINDS, ids=["lstm", "gru", "gru_ra_false", "simple"])
@pytest.mark.parametrize("acts", ACTIVATIONS, ids=["relu", "linear_nobias", "sigmoid", "hard_sigmoid"])
def test_activations_and_bias_match_keras(kind, extra, acts, rng):
    kwargs = dict(extra, **acts, return_sequences=True)
    if kind == "SimpleRNN":
        kwargs.pop("recurrent_activation")
    if kind == "LSTM":
        kwargs["unit_forget_bias"] = False
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    klayer, ours = make_pair(kind, rng, x, **kwargs)
    compare(klayer, ours, rng, x, ragged_mask(), name=f"{kind}{kwargs}")


def test_unroll_mask_go_backwards_runs(rng):
    """Keras's torch backend crashes on unroll=True + mask + go_backwards; ours ignores unroll."""
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    klayer, ours = make_pair("LSTM", rng, x, go_backwards=True, return_sequences=True)
    unrolled = rk.LSTM(U, go_backwards=True, return_sequences=True, unroll=True, backend="torch")
    unrolled.set_keras_weights(klayer.get_weights())
    expected = keras.ops.convert_to_numpy(klayer(x, mask=ragged_mask()))
    assert_close("LSTM unroll=True mask go_backwards", unrolled(x, mask=ragged_mask()), expected, F32)


def test_numpy_input_and_default_training_flag(rng):
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    klayer, ours = make_pair("LSTM", rng, x, dropout=0.5, return_sequences=True)
    ours.eval()  # training=None follows module.training: no dropout in eval mode
    expected = keras.ops.convert_to_numpy(klayer(x, training=False))
    assert_close("LSTM numpy input", ours(x), expected, F32)
    assert_close("LSTM x float64 is cast", ours(x.astype(np.float64)), expected, F32)


@pytest.mark.parametrize("kind,extra", KINDS, ids=["lstm", "gru", "gru_ra_false", "simple"])
def test_stateful_matches_keras(kind, extra, rng):
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    klayer, ours = make_pair(kind, rng, x, stateful=True, return_sequences=True, **extra)
    for step in range(2):  # second call starts from the first call's final states
        xs = rng.normal(size=(B, T, I)).astype(np.float32)
        expected = keras.ops.convert_to_numpy(klayer(xs))
        assert_close(f"{kind} stateful call {step}", ours(xs), expected, F32)
    klayer.reset_state()
    ours.reset_state()
    assert all(float(s.abs().max()) == 0 for s in ours.states)
    xs = rng.normal(size=(B, T, I)).astype(np.float32)
    assert_close(f"{kind} after reset_state", ours(xs), keras.ops.convert_to_numpy(klayer(xs)), F32)
    with pytest.raises(ValueError, match="batch size"):
        ours(xs[:2])


def test_stateful_gradients_do_not_cross_calls(rng):
    ours = rk.GRU(U, stateful=True, backend="torch")
    x = torch.tensor(rng.normal(size=(B, T, I)).astype(np.float32))
    ours(x).sum().backward()
    ours(x).sum().backward()  # would fail if the kept state still pointed into the first graph
    assert not any(s.requires_grad for s in ours.states)


# ----------------------------------------------------------------------------- Bidirectional
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_matches_keras(merge_mode, return_sequences, rng):
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    kl = keras.layers.Bidirectional(keras.layers.LSTM(U, return_sequences=return_sequences),
                                    merge_mode=merge_mode)
    kl(x)
    randomize(kl, rng)
    ours = rk.Bidirectional(rk.LSTM(U, return_sequences=return_sequences, backend="torch"),
                            merge_mode=merge_mode)
    ours.set_keras_weights(kl.get_weights())
    assert ours.count_params() == kl.count_params()
    compare(kl, ours, rng, x, ragged_mask(), name=f"Bidirectional({merge_mode}, rs={return_sequences})")


@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_lstm_forward_gru_backward(return_sequences, rng):
    """Different cell types, return_state and a flat initial_state (LSTM h, c then GRU h)."""
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    common = dict(return_sequences=return_sequences, return_state=True)
    kl = keras.layers.Bidirectional(keras.layers.LSTM(U, **common),
                                    backward_layer=keras.layers.GRU(U, go_backwards=True, **common))
    kl(x)
    randomize(kl, rng)
    ours = rk.Bidirectional(rk.LSTM(U, backend="torch", **common),
                            backward_layer=rk.GRU(U, go_backwards=True, backend="torch", **common))
    ours.set_keras_weights(kl.get_weights())
    assert ours.count_params() == kl.count_params()
    compare(kl, ours, rng, x, ragged_mask(), name="Bidirectional(LSTM, GRU)")
    # Keras splits initial_state in half, so it needs equal state counts: check with GRU + GRU.
    kl2 = keras.layers.Bidirectional(keras.layers.GRU(U, **common), merge_mode="sum")
    kl2(x)
    randomize(kl2, rng)
    ours2 = rk.Bidirectional(rk.GRU(U, backend="torch", **common), merge_mode="sum")
    ours2.set_keras_weights(kl2.get_weights())
    states = [rng.normal(size=(B, U)).astype(np.float32) for _ in range(2)]
    compare(kl2, ours2, rng, x, ragged_mask(), states, name="Bidirectional(GRU) initial_state")
    # Our split follows each layer's state count: LSTM (h, c) forward, GRU (h) backward.
    h = [torch.tensor(rng.normal(size=(B, U)).astype(np.float32)) for _ in range(3)]
    out = ours(torch.tensor(x), initial_state=h)
    fwd = ours.forward_layer(torch.tensor(x), initial_state=h[:2])
    assert_close("Bidirectional split forward h", out[1], fwd[1], F32)


def test_bidirectional_stateful_matches_keras(rng):
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    kl = keras.layers.Bidirectional(keras.layers.GRU(U, stateful=True, return_sequences=True), merge_mode="ave")
    kl(x)
    randomize(kl, rng)
    kl.reset_state()
    ours = rk.Bidirectional(rk.GRU(U, stateful=True, return_sequences=True, backend="torch"), merge_mode="ave")
    ours.set_keras_weights(kl.get_weights())
    for step in range(2):
        xs = rng.normal(size=(B, T, I)).astype(np.float32)
        assert_close(f"stateful Bidirectional call {step}", ours(xs), keras.ops.convert_to_numpy(kl(xs)), F32)
    kl.reset_state()
    ours.reset_state()
    xs = rng.normal(size=(B, T, I)).astype(np.float32)
    assert_close("stateful Bidirectional after reset", ours(xs), keras.ops.convert_to_numpy(kl(xs)), F32)


def test_bidirectional_rejects_mismatched_backward_layer():
    with pytest.raises(ValueError, match="go_backwards"):
        rk.Bidirectional(rk.LSTM(3), backward_layer=rk.GRU(3))
    with pytest.raises(ValueError, match="return_sequences"):
        rk.Bidirectional(rk.LSTM(3), backward_layer=rk.GRU(3, go_backwards=True, return_sequences=True))
    with pytest.raises(ValueError, match="stateful"):
        rk.Bidirectional(rk.LSTM(3), backward_layer=rk.LSTM(3, go_backwards=True, stateful=True))
    with pytest.raises(ValueError, match="merge_mode"):
        rk.Bidirectional(rk.LSTM(3), merge_mode="max")


# ----------------------------------------------------------------------------- cells
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "GRUCell_ra_false", "SimpleRNNCell"])
def test_cells_match_keras(kind, rng):
    name, extra = kind.split("_")[0], ({"reset_after": False} if kind.endswith("false") else {})
    kcell = getattr(keras.layers, name)(U, **extra)
    n = 2 if name == "LSTMCell" else 1
    x = rng.normal(size=(B, I)).astype(np.float32)
    states = [rng.normal(size=(B, U)).astype(np.float32) for _ in range(n)]
    kcell(x, [torch.tensor(s) for s in states])
    randomize(kcell, rng)
    ours = getattr(rk, name)(U, backend="torch", **extra)
    ours.set_keras_weights(kcell.get_weights())
    assert ours.count_params() == kcell.count_params()
    yk, sk = kcell(x, [torch.tensor(s) for s in states])
    yo, so = ours(x, [torch.tensor(s) for s in states])
    assert isinstance(so, list) and len(so) == n
    assert_close(f"{kind} output", yo, yk, F32)
    for k in range(n):
        assert_close(f"{kind} state[{k}]", so[k], sk[k], F32)


def test_stacked_cells_match_keras(rng):
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    kl = keras.layers.RNN([keras.layers.LSTMCell(U), keras.layers.GRUCell(U + 1)], return_sequences=True)
    kl(x)
    randomize(kl, rng)
    ours = rk.RNN([rk.LSTMCell(U, backend="torch"), rk.GRUCell(U + 1, backend="torch")],
                  return_sequences=True)
    ours.set_keras_weights(kl.get_weights())
    assert ours.count_params() == kl.count_params()
    compare(kl, ours, rng, x, ragged_mask(), name="RNN([LSTMCell, GRUCell])")


# ----------------------------------------------------------------------------- weights, counts
@pytest.mark.parametrize("kind,extra", KINDS + [("LSTM", {"use_bias": False})],
                         ids=["lstm", "gru", "gru_ra_false", "simple", "lstm_nobias"])
def test_weights_and_param_counts(kind, extra, rng):
    x = rng.normal(size=(2, 3, I)).astype(np.float32)
    klayer = KERAS[kind](U, **extra)
    klayer(x)
    randomize(klayer, rng)
    ours = OURS[kind](U, **extra)
    assert not ours.cell.built
    ours.set_keras_weights(klayer.get_weights())  # builds from the array shapes
    assert ours.cell.input_dim == I
    assert ours.count_params() == klayer.count_params() == sum(p.numel() for p in ours.parameters())
    for a, e in zip(ours.get_keras_weights(), klayer.get_weights()):
        assert a.shape == e.shape and np.array_equal(a, e)
    names = [n for n, _ in ours.named_parameters()]
    assert names == ["cell.kernel", "cell.recurrent_kernel"] + (["cell.bias"] if extra.get("use_bias", True) else [])
    with pytest.raises(ValueError, match="recurrent_kernel"):
        ours.set_keras_weights([w[..., :-1] if k == 1 else w for k, w in enumerate(klayer.get_weights())])


def test_lazy_parameters_keep_identity_and_state_dict(rng):
    layer = rk.GRU(U, backend="torch")
    params = list(layer.parameters())
    opt = torch.optim.SGD(params, lr=0.1)  # made before the first call, like a lazy torch module
    x = torch.tensor(rng.normal(size=(B, T, I)).astype(np.float32))
    before = layer.cell.kernel.detach().clone() if layer.cell.built else None
    assert before is None
    layer(x).sum().backward()
    opt.step()
    assert list(layer.parameters())[0] is params[0] and params[0].shape == (I, 3 * U)
    fresh = rk.GRU(U, backend="torch")
    fresh.load_state_dict(layer.state_dict())  # builds from the state dict's shapes
    assert_close("GRU state_dict round trip", fresh(x), layer(x), F32)
    up_front = rk.LSTM(U, input_shape=(T, I))
    assert up_front.cell.built and up_front.count_params() == 4 * (I * U + U * U + U)


# ----------------------------------------------------------------------------- initializers
def _structure_checks(kernel, rk_, bias, units, n):
    """Properties Keras's defaults have: glorot over (in, n*u), orthogonal over (u, n*u)."""
    fan_in, fan_out = kernel.shape
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= limit + 1e-6
    assert np.abs(kernel).max() > 0.8 * limit  # a per-gate glorot would have a larger limit
    np.testing.assert_allclose(rk_ @ rk_.T, np.eye(units), atol=1e-5)  # orthonormal rows
    return bias


def test_default_initializers_match_keras_structure(rng):
    x = rng.normal(size=(2, 3, 40)).astype(np.float32)
    u = 10
    kl = keras.layers.LSTM(u)
    kl(x)
    ours = rk.LSTM(u)
    ours(x)
    for weights in (kl.get_weights(), ours.get_keras_weights()):
        kernel, rk_, bias = weights
        _structure_checks(kernel, rk_, bias, u, 4)
        np.testing.assert_array_equal(bias, np.r_[np.zeros(u), np.ones(u), np.zeros(2 * u)])
    for weights in (_built(keras.layers.LSTM(u, bias_initializer="ones"), x).get_weights(),
                    _built(rk.LSTM(u, bias_initializer="ones"), x).get_keras_weights()):
        np.testing.assert_array_equal(weights[2], np.ones(4 * u))  # forget bias is *set* to 1, not 2
    for weights in (_built(keras.layers.GRU(u), x).get_weights(), _built(rk.GRU(u), x).get_keras_weights()):
        _structure_checks(*weights, u, 3)
        assert weights[2].shape == (2, 3 * u) and not weights[2].any()


def _built(layer, x):
    layer(x)
    return layer


@pytest.mark.parametrize("name,check", [
    ("glorot_uniform", lambda w, fi, fo: (np.abs(w).max() <= np.sqrt(6 / (fi + fo)), np.sqrt(2 / (fi + fo)))),
    ("glorot_normal", lambda w, fi, fo: (np.abs(w).max() <= 2 * np.sqrt(2 / (fi + fo)) / .8796, np.sqrt(2 / (fi + fo)))),
    ("he_normal", lambda w, fi, fo: (np.abs(w).max() <= 2 * np.sqrt(2 / fi) / .8796, np.sqrt(2 / fi))),
    ("he_uniform", lambda w, fi, fo: (np.abs(w).max() <= np.sqrt(6 / fi), np.sqrt(2 / fi))),
    ("lecun_normal", lambda w, fi, fo: (True, np.sqrt(1 / fi))),
    ("random_normal", lambda w, fi, fo: (True, 0.05)),
    ("random_uniform", lambda w, fi, fo: (np.abs(w).max() <= 0.05, 0.05 / np.sqrt(3))),
    ("truncated_normal", lambda w, fi, fo: (np.abs(w).max() <= 0.1, 0.05 * .8796)),
])
def test_initializer_statistics(name, check):
    fi, fo = 300, 200
    w = rk.initializers.get(name)((fi, fo)).numpy()
    assert w.shape == (fi, fo) and w.dtype == np.float32
    bounded, std = check(w, fi, fo)
    assert bounded
    assert abs(w.std() - std) < 0.03 * std, f"{name}: std {w.std():.4g}, expected {std:.4g}"
    assert abs(w.mean()) < 0.05 * std


def test_initializer_names_and_classes():
    init = rk.initializers
    assert isinstance(init.get("GlorotUniform"), init.GlorotUniform)
    assert isinstance(init.get("normal"), init.RandomNormal)
    np.testing.assert_array_equal(init.Constant(2.5)((2, 3)).numpy(), np.full((2, 3), 2.5))
    np.testing.assert_array_equal(init.get("ones")((3,)).numpy(), np.ones(3))
    np.testing.assert_array_equal(init.Identity(2.0)((2, 3)).numpy(), 2 * np.eye(2, 3))
    q = init.Orthogonal(seed=3)((12, 4)).numpy()
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(init.Orthogonal(seed=3)((5, 5)).numpy(), init.Orthogonal(seed=3)((5, 5)).numpy())
    layer = rk.SimpleRNN(3, kernel_initializer=init.Constant(0.5), recurrent_initializer="identity",
                         input_dim=2)
    np.testing.assert_array_equal(layer.get_keras_weights()[1], np.eye(3))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("make,match", [
    (lambda: rk.LSTM(4, activation="swish"), "activation.*swish"),
    (lambda: rk.GRU(4, recurrent_activation="gelu"), "recurrent_activation.*gelu"),
    (lambda: rk.SimpleRNN(4, kernel_initializer="glorot_magic"), "kernel_initializer.*glorot_magic"),
    (lambda: rk.LSTM(0), "units.*0"),
    (lambda: rk.GRUCell(-3), "units.*-3"),
    (lambda: rk.LSTM(4, dropout=1.0), r"dropout.*1\.0"),
    (lambda: rk.GRU(4, recurrent_dropout=-0.1), r"recurrent_dropout.*-0\.1"),
    (lambda: rk.LSTM(4, backend="cuda"), "backend.*cuda"),
])
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_calls_raise(rng):
    layer = rk.LSTM(U, backend="torch")
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    with pytest.raises(ValueError, match=r"3-D.*\(4, 5\)"):
        layer(x[:, 0])
    layer(x)
    with pytest.raises(ValueError, match=r"5 features.*\(4, 7, 3\)"):
        layer(x[..., :3])
    with pytest.raises(ValueError, match=r"mask.*\(4, 7\).*\(7, 4\)"):
        layer(x, mask=np.ones((T, B), bool))
    with pytest.raises(ValueError, match="initial_state.*2 tensors"):
        layer(x, initial_state=[np.zeros((B, U), np.float32)])
    with pytest.raises(ValueError, match=r"initial_state\[1\].*\(4, 6\).*\(4, 5\)"):
        layer(x, initial_state=[np.zeros((B, U), np.float32), np.zeros((B, U - 1), np.float32)])
    with pytest.raises(ValueError, match=r"inputs must have 5 features"):
        layer.cell(x[:, 0, :2], [np.zeros((B, U), np.float32)] * 2)
