"""(f) The adding problem: LSTM and GRU learn a long dependency, SimpleRNN lags far behind.

Each sequence has T steps of two features: a random value in [0, 1) and a marker that is 1 at
exactly two steps (one in each half) and 0 elsewhere; the target is the sum of the two marked
values. Always answering 1 scores MSE ~ 1/6 = 0.167.

The Keras tutorial models, as Keras code: LSTM(H) / GRU(H) / SimpleRNN(H) -> Dense(1), Adam, MSE,
trained with fit on the same STEPS fresh batches each. Sequences are shorter (T=20) and the budget
smaller than in the PyTorch version so that the three fits take seconds on a CPU.
"""
import numpy as np

from ._common import keras, pyplot, report, save, setup

T, H, BATCH, STEPS, LR = 20, 32, 64, 400, 1e-2


def data(n, seed):
    g = np.random.default_rng(seed)
    values = g.random((n, T))
    markers = np.zeros((n, T))
    rows = np.arange(n)
    first, second = g.integers(0, T // 2, n), g.integers(T // 2, T, n)
    markers[rows, first] = markers[rows, second] = 1.0
    x = np.stack([values, markers], -1).astype("float32")
    return x, (values[rows, first] + values[rows, second])[:, None].astype("float32")


class BatchLosses(keras.callbacks.Callback):
    """The loss Keras logs after every batch (the running mean over the epoch)."""

    def on_train_begin(self, logs=None):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])


def main():
    setup()
    x, y = data(BATCH * STEPS, 0)
    test_x, test_y = data(1000, 123)
    curves, mses, models = {}, {}, []
    for layer in (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN):
        model = keras.Sequential([keras.Input((T, 2)), layer(H), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(LR, clipnorm=1.0), loss="mse")
        log = BatchLosses()
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[log])
        name = layer.__name__
        curves[name] = log.losses
        mses[name] = float(model.evaluate(test_x, test_y, verbose=0))
        models.append(model)
    baseline = float(((test_y - 1.0) ** 2).mean())
    print(f"adding problem, T={T}, {STEPS} batches of {BATCH}; test MSE (predict-1 baseline {baseline:.3f}):")
    for name, mse in mses.items():
        print(f"  {name:9s} {mse:.4f}")
    counts = report(*models)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, losses in curves.items():
        ax.semilogy(losses, label=f"{name} (test {mses[name]:.3f})")
    ax.axhline(baseline, color="gray", ls=":", label="predict 1")
    ax.set(title=f"adding problem, T = {T} (Keras 3 + rnn.keras3)", xlabel="training batch (running mean)",
           ylabel="MSE")
    ax.legend()
    save(fig, "keras3_adding_problem")
    return {**{name: round(m, 4) for name, m in mses.items()}, **counts}


if __name__ == "__main__":
    main()
