"""(b) SimpleRNN on a 0.1-step sequence: sin(t) for t = 0, 0.1, 0.2, ...; predict the next value.

The Keras tutorial model, as Keras code: SimpleRNN(32) on windows of WINDOW values -> Dense(1).
The first 80% of the series trains, the last 20% tests (one-step-ahead predictions from true windows).
"""
import numpy as np

from ._common import keras, pyplot, report, save, setup

WINDOW = 20


def main():
    setup()
    t = np.arange(0, 100, 0.1)
    series = np.sin(t).astype("float32")
    x = np.stack([series[i:i + WINDOW] for i in range(len(series) - WINDOW)])[..., None]
    y = series[WINDOW:, None]
    split = int(0.8 * len(x))
    model = keras.Sequential([keras.Input((WINDOW, 1)), keras.layers.SimpleRNN(32), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    history = model.fit(x[:split], y[:split], epochs=10, batch_size=32, verbose=0).history["loss"]
    pred = model.predict(x[split:], verbose=0)
    mse = float(((pred - y[split:]) ** 2).mean())
    print(f"final train MSE {history[-1]:.2e}; test MSE (last 20% of the series) {mse:.2e}")
    counts = report(model)

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.semilogy(history)
    a.set(title="training loss (Keras 3 + rnn.keras3)", xlabel="epoch", ylabel="MSE")
    tt = t[WINDOW:][split:]
    b.plot(tt, y[split:].squeeze(), label="sin(t)")
    b.plot(tt, pred.squeeze(), "--", label="SimpleRNN one-step prediction")
    b.set(title=f"test part, step 0.1, window {WINDOW}", xlabel="t")
    b.legend(loc="lower left")
    save(fig, "keras3_sine_simplernn")
    return {"test_mse": float(f"{mse:.3g}"), **counts}


if __name__ == "__main__":
    main()
