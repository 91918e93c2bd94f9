"""rnn.keras3: Keras 3's own recurrent layers, accelerated, against the same Keras layers unaccelerated.

Every parity case builds the layer (or model) twice from the same seed (keras.utils.set_random_seed
before building and calling: same initial weights, same dropout masks), once with rnn.keras3
installed and once without, runs both on the same inputs (masks hide first, middle and last steps
and one whole row), applies random upstream gradients to every returned tensor and compares the
outputs and the gradients of the loss with respect to every Keras variable, the input and the
initial states. `stats` proves which path ran.
"""
import problems
import contextlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

keras = pytest.importorskip("keras")  # conftest sets KERAS_BACKEND=torch before this import

import rnn.keras3 as k3  # noqa: E402
from tolerances import assert_close  # noqa: E402

F32 = torch.float32
B, T, I, U = 4, 7, 5, 6
L = keras.layers


@pytest.fixture(autouse=True)
def _clean():
    k3.uninstall()
    k3.reset_stats()
    yield
    k3.uninstall()


def ragged_mask():
    return problems.ragged_mask(B, T)


def flat(y):
    return keras.tree.flatten(y)


def randomize(layer, seed=5, scale=0.4):
    g = np.random.default_rng(seed)
    layer.set_weights([g.normal(0.0, scale, w.shape).astype(np.float32) for w in layer.get_weights()])


def upstream_loss(outputs, seed=11):
    g = np.random.default_rng(seed)
    return sum((o * torch.tensor(g.normal(size=tuple(o.shape)).astype(np.float32))).sum() for o in outputs)


def run_layer(build, fused, *, mask=False, states=0, nest=None, training=False, calls=1, seed=3, backend="auto"):
    """Build, randomize and call a layer `calls` times; outputs of every call, then the gradients
    of one loss over all of them (every trainable variable in order, the input, initial states).
    `states` initial states (B, U), passed as `nest(list)` if given."""
    g = np.random.default_rng(0)
    x = torch.tensor(g.normal(size=(B, T, I)).astype(np.float32), requires_grad=True)
    s0 = [torch.tensor(g.normal(size=(B, U)).astype(np.float32), requires_grad=True) for _ in range(states)]
    with k3.enabled(backend) if fused else contextlib.nullcontext():
        keras.utils.set_random_seed(seed)
        layer = build()
        layer.build((B, T, I))
        randomize(layer)
        kw = {"training": training}
        if mask:
            kw["mask"] = torch.tensor(ragged_mask())
        if states:
            kw["initial_state"] = nest(s0) if nest else s0
        outs = []
        for _ in range(calls):
            outs += flat(layer(x, **kw))
        upstream_loss(outs).backward()
    grads = [v.value.grad for v in layer.trainable_variables] + [x.grad] + [s.grad for s in s0]
    return layer, [o.detach() for o in outs], grads


def check_same(name, plain, fused):
    (_, out_p, grad_p), (_, out_f, grad_f) = plain, fused
    assert len(out_p) == len(out_f) and len(grad_p) == len(grad_f)
    for k, (a, b) in enumerate(zip(out_f, out_p)):
        assert_close(f"{name} output {k}", a, b, F32)
    for k, (a, b) in enumerate(zip(grad_f, grad_p)):
        assert a is not None and b is not None, f"{name}: gradient {k} missing"
        assert_close(f"{name} gradient {k}", a, b, F32)


LAYERS = {
    "lstm_mask_dropout_state": (lambda: L.LSTM(U, return_sequences=True, return_state=True, dropout=0.3,
                                               recurrent_dropout=0.4), dict(mask=True, training=True)),
    "lstm_backwards_initial_state": (lambda: L.LSTM(U, go_backwards=True, return_state=True),
                                     dict(mask=True, states=2)),
    "lstm_dropout_relu_hard_sigmoid_nobias": (
        lambda: L.LSTM(U, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False,
                       dropout=0.3, return_sequences=True), dict(training=True)),
    "lstm_dropout_inference": (lambda: L.LSTM(U, dropout=0.5, recurrent_dropout=0.5), dict(mask=True)),
    "gru_mask_dropout_state": (lambda: L.GRU(U, return_sequences=True, return_state=True, dropout=0.3,
                                             recurrent_dropout=0.4), dict(mask=True, training=True)),
    "gru_classic_backwards": (lambda: L.GRU(U, reset_after=False, go_backwards=True, return_sequences=True,
                                            recurrent_dropout=0.3, recurrent_activation="hard_sigmoid"),
                              dict(mask=True, training=True, states=1)),
    "gru_classic_nobias_dropout_relu": (lambda: L.GRU(U, reset_after=False, use_bias=False, dropout=0.4,
                                                      activation="relu"), dict(training=True)),
    "gru_nobias_linear": (lambda: L.GRU(U, use_bias=False, activation=None, return_state=True), dict(mask=True)),
    "simplernn_relu_dropout": (lambda: L.SimpleRNN(U, activation="relu", return_sequences=True, dropout=0.3,
                                                   recurrent_dropout=0.4), dict(mask=True, training=True)),
    "simplernn_linear_backwards_state": (lambda: L.SimpleRNN(U, activation=None, use_bias=False, go_backwards=True,
                                                             return_state=True), dict(mask=True, states=1)),
    "simplernn_sigmoid_unroll": (lambda: L.SimpleRNN(U, activation="sigmoid", unroll=True, return_sequences=True),
                                 {}),
    "rnn_stacked_cells_backwards_state": (
        lambda: L.RNN([L.LSTMCell(U, dropout=0.2, recurrent_dropout=0.3),
                       L.GRUCell(U, reset_after=False, dropout=0.2, recurrent_dropout=0.3),
                       L.SimpleRNNCell(U, activation="relu", dropout=0.1)],
                      return_sequences=True, return_state=True, go_backwards=True),
        dict(mask=True, training=True, states=4, nest=lambda s: [[s[0], s[1]], [s[2]], s[3]])),
    "rnn_lstmcell_unroll_dropout": (lambda: L.RNN(L.LSTMCell(U, dropout=0.2, recurrent_dropout=0.2), unroll=True,
                                                  return_sequences=True), dict(mask=True, training=True)),
}
BIDIRECTIONAL = {
    "bi_lstm_concat_dropout": (lambda: L.Bidirectional(L.LSTM(U, return_sequences=True, dropout=0.2,
                                                              recurrent_dropout=0.3)), dict(mask=True, training=True)),
    "bi_gru_sum_state": (lambda: L.Bidirectional(L.GRU(U, return_state=True), merge_mode="sum"),
                         dict(mask=True, states=2)),
    "bi_lstm_fwd_gru_bwd_mul": (lambda: L.Bidirectional(
        L.LSTM(U, return_sequences=True),
        backward_layer=L.GRU(U, return_sequences=True, go_backwards=True, reset_after=False), merge_mode="mul"),
        dict(mask=True)),
    "bi_simplernn_none": (lambda: L.Bidirectional(L.SimpleRNN(U, return_sequences=True), merge_mode=None),
                          dict(training=True)),
}


@pytest.mark.parametrize("case", list(LAYERS) + list(BIDIRECTIONAL) + [f"{c}-triton" for c in BIDIRECTIONAL])
def test_layer_parity(case):
    """Against Keras's own loop. The Bidirectional cases also on the Triton backend (interpreted
    here), whose one launch for both directions they then take: one call for the two directions,
    except where the two layers differ (LSTM forward, GRU backward); on the CPU's torch backend
    each direction stays its own call."""
    name, _, backend = case.partition("-")
    backend = backend or "auto"
    if backend == "triton":
        pytest.importorskip("triton")
    build, kw = {**LAYERS, **BIDIRECTIONAL}[name]
    plain = run_layer(build, False, **kw)
    assert k3.stats["fused"] == 0
    fused = run_layer(build, True, backend=backend, **kw)
    directions = 2 if name in BIDIRECTIONAL else 1
    recurrences = 3 if "stacked" in name else directions  # one per cell and direction
    assert k3.stats["fused"] == directions and k3.stats["fallback"] == 0, dict(k3.stats)
    assert sum(v for k, v in k3.stats.items() if k.startswith("fused_")) == recurrences, dict(k3.stats)
    one_call = backend == "triton" and "fwd_gru_bwd" not in name
    assert k3.stats["bidirectional_one_call"] == one_call, dict(k3.stats)
    check_same(case, plain, fused)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_stateful_two_calls_then_reset(kind):
    build = lambda: getattr(L, kind)(U, stateful=True, return_sequences=True, return_state=True)  # noqa: E731
    plain = run_layer(build, False, mask=True, calls=2)
    fused = run_layer(build, True, mask=True, calls=2)
    assert k3.stats["fused"] == 2
    check_same(kind, plain, fused)
    n = len(plain[1]) // 2  # outputs of one call: sequence + states
    assert not np.allclose(fused[1][0], fused[1][n])  # the second call started from the kept states
    for a, b in zip(fused[0].states, plain[0].states):
        assert_close(f"{kind} kept state", a.value, b.value, F32)
    fused[0].reset_state()
    assert all(float(abs(s.value).max()) == 0.0 for s in fused[0].states)


def test_dropout_masks_are_the_ones_keras_draws():
    """Same seed: equal outputs; another seed: other masks, other outputs; inference: no dropout."""
    build = lambda: L.LSTM(U, return_sequences=True, dropout=0.4, recurrent_dropout=0.4)  # noqa: E731
    fused = run_layer(build, True, training=True, seed=3)[1][0]
    assert_close("seed 3 fused = plain", fused, run_layer(build, False, training=True, seed=3)[1][0], F32)
    assert not np.allclose(fused, run_layer(build, True, training=True, seed=4)[1][0])
    assert not np.allclose(fused, run_layer(build, True, training=False, seed=3)[1][0])


def make_text_model(vocab=13):
    model = keras.Sequential([
        keras.Input((T,), dtype="int32"),
        L.Embedding(vocab, 8, mask_zero=True),
        L.Bidirectional(L.GRU(U, reset_after=False, return_sequences=True, dropout=0.2, recurrent_dropout=0.3)),
        L.LSTM(U, dropout=0.2, recurrent_dropout=0.3),
        L.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def padded_tokens(n=8, vocab=13):
    g = np.random.default_rng(2)
    tokens = g.integers(1, vocab, size=(n, T))
    tokens[1, :3] = 0  # left padding
    tokens[2, 4:] = 0  # right padding
    tokens[3, 2] = 0  # a gap
    tokens[5, :] = 0  # nothing at all
    return tokens.astype("int32"), g.normal(size=(n, 1)).astype("float32")


def run_text_model(fused):
    tokens, y = padded_tokens()
    with k3.enabled() if fused else contextlib.nullcontext():
        keras.utils.set_random_seed(1)
        model = make_text_model()
        loss = upstream_loss([model(tokens[:4], training=True)])
        loss.backward()
        grads = [v.value.grad.clone() for v in model.trainable_variables]
        names = k3.fused_layers(model)
        keras.utils.set_random_seed(2)
        model.fit(tokens, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        pred = model.predict(tokens, verbose=0)
    return grads, model.get_weights(), pred, names


def test_embedding_mask_zero_model_gradients_and_fit():
    g_plain, w_plain, p_plain, names_plain = run_text_model(False)
    assert k3.stats["fused"] == 0 and names_plain == []
    g_fused, w_fused, p_fused, names_fused = run_text_model(True)
    # 3 recurrences per call: one training call, 4 fit steps, one predict batch
    assert k3.stats["fused"] == 3 * 6 and k3.stats["fallback"] == 0, dict(k3.stats)
    assert len(names_fused) == 3 and any(n.startswith("forward_") for n in names_fused), names_fused
    for k, (a, b) in enumerate(zip(g_fused, g_plain)):
        assert_close(f"gradient {k}", a, b, F32)
    for k, (a, b) in enumerate(zip(w_fused, w_plain)):
        assert_close(f"weight {k} after fit", a, b, F32)
    assert_close("predict after fit", p_fused, p_plain, F32)


class _MinimalCell(L.Layer):
    """A custom cell: h' = tanh(x W + h U)."""

    def __init__(self, units, **kw):
        super().__init__(**kw)
        self.units = self.state_size = units

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], self.units))
        self.u = self.add_weight(shape=(self.units, self.units))

    def call(self, x, states):
        h = keras.ops.tanh(x @ self.w + states[0] @ self.u)
        return h, [h]


def test_fallback_warns_once_is_listed_and_matches_keras():
    def build():
        return keras.Sequential([keras.Input((T, I)), L.LSTM(U, activation="softsign", return_sequences=True),
                                 L.RNN(_MinimalCell(U), return_sequences=True), L.GRU(U)])

    x = np.random.default_rng(0).normal(size=(B, T, I)).astype("float32")
    keras.utils.set_random_seed(0)
    expected = build()(x)
    k3.install()
    keras.utils.set_random_seed(0)
    model = build()
    with pytest.warns(k3.FallbackWarning) as caught:
        got = model(x)
    messages = [str(w.message) for w in caught]
    assert any("softsign" in m for m in messages) and any("_MinimalCell" in m for m in messages), messages
    assert_close("fallback model output", got, expected, F32)
    assert k3.stats["fused"] == 1 and k3.stats["fallback"] == 2, dict(k3.stats)
    with warnings.catch_warnings():
        warnings.simplefilter("error", k3.FallbackWarning)
        model(x)  # warned once already
    lstm, custom, gru = model.layers
    assert k3.fused_layers(model) == [gru.name]
    why = k3.explain(model)
    assert "softsign" in why[lstm.name] and "_MinimalCell" in why[custom.name] and why[gru.name].startswith("fused")


def test_uninstall_restores_keras_exactly():
    from keras.src.layers.rnn import bidirectional, gru, lstm, rnn

    owners = [(rnn.RNN, "inner_loop"), (lstm.LSTM, "inner_loop"), (gru.GRU, "inner_loop"),
              (bidirectional.Bidirectional, "_can_attempt_fused_lstm"),
              (bidirectional.Bidirectional, "_can_attempt_fused_gru"), (bidirectional.Bidirectional, "call")]
    before = {key: key[0].__dict__[key[1]] for key in owners}
    k3.install()
    k3.install(backend="torch")  # idempotent: changes the backend, patches once
    assert k3.installed() and k3.backend() == "torch"
    for (klass, attr), original in before.items():
        assert klass.__dict__[attr] is not original and klass.__dict__[attr].__wrapped__ is original
    layer = L.GRU(U)
    layer(np.zeros((B, T, I), "float32"))
    assert k3.stats["fused"] == 1 and k3.explain(layer)[layer.name] == "fused (gru, backend 'torch')"
    k3.uninstall()
    k3.uninstall()
    assert not k3.installed()
    for (klass, attr), original in before.items():
        assert klass.__dict__[attr] is original
    layer(np.zeros((B, T, I), "float32"))
    assert k3.stats["fused"] == 1 and k3.fused_layers(layer) == []
    with k3.enabled():
        assert k3.installed()
    assert not k3.installed()


def test_install_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        k3.install(backend="cudnn")
    assert not k3.installed()


def test_saving_loading_summary_and_parameter_count(tmp_path):
    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((T, I)), L.Bidirectional(L.LSTM(U, return_sequences=True, name="l"),
                                                                      name="bi"),
                                 L.GRU(U, reset_after=False, name="g"), L.Dense(1, name="d")], name="m")

    def summary(model):
        lines = []
        model.summary(print_fn=lambda s, **kw: lines.append(s))
        return "\n".join(lines)

    x = np.random.default_rng(0).normal(size=(B, T, I)).astype("float32")
    plain = build()
    expected, count, text = plain.predict(x, verbose=0), plain.count_params(), summary(plain)
    k3.install()
    model = build()
    assert model.count_params() == count == 2 * 4 * (I * U + U * U + U) + 3 * (2 * U * U + U * U + U) + U + 1
    assert summary(model) == text
    assert_close("fused predict", model.predict(x, verbose=0), expected, F32)
    path = tmp_path / "model.keras"
    model.save(path)
    k3.reset_stats()
    loaded = keras.models.load_model(path)
    assert_close("reloaded predict", loaded.predict(x, verbose=0), expected, F32)
    assert k3.stats["fused"] == 3


def test_import_rnn_does_not_import_keras():
    code = "import sys, rnn, rnn.keras3; assert 'keras' not in sys.modules, 'keras imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_keras3_examples_are_listed_and_runnable():
    import importlib

    from examples.keras3 import EXAMPLES

    for name in EXAMPLES:
        assert callable(importlib.import_module(f"examples.keras3.{name}").main), name


def test_bench_runs_and_times_both_paths():
    from profiling import keras3_bench

    threads = torch.get_num_threads()
    try:
        rows = keras3_bench.main(["--batch", "4", "--steps", "6", "--features", "3", "--units", "5", "--vocab", "9",
                                  "--rounds", "1", "--calls", "1"])
    finally:
        torch.set_num_threads(threads)
    assert [r["row"] for r in rows] == ["layer train step", "layer inference", "model train step"]
    assert all(r["keras_ms"][0] > 0 and r["fused_ms"][0] > 0 for r in rows)
    assert not k3.installed()
