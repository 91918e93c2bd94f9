"""(c) Stacked LSTM -> GRU -> Flatten -> Dense regressor.

The Keras tutorial model, as Keras code: LSTM(32, return_sequences=True) -> GRU(16,
return_sequences=True) -> Flatten() -> Dense(1), on windows of a noisy two-frequency signal with a
slow trend; the model predicts the value HORIZON steps after each window. Last 20% of the windows test.
"""
import numpy as np

from ._common import keras, pyplot, report, save, setup

WINDOW, HORIZON = 24, 3


def main():
    setup()
    rng = np.random.default_rng(0)
    n = 1200
    t = np.arange(n)
    series = (np.sin(2 * np.pi * t / 50) + 0.5 * np.sin(2 * np.pi * t / 13) + t / n
              + 0.1 * rng.normal(size=n)).astype("float32")
    idx = np.arange(n - WINDOW - HORIZON + 1)
    x = np.stack([series[i:i + WINDOW] for i in idx])[..., None]
    y = series[idx + WINDOW + HORIZON - 1, None]
    split = int(0.8 * len(x))
    model = keras.Sequential([
        keras.Input((WINDOW, 1)),
        keras.layers.LSTM(32, return_sequences=True),
        keras.layers.GRU(16, return_sequences=True),
        keras.layers.Flatten(),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    history = model.fit(x[:split], y[:split], epochs=8, batch_size=64, verbose=0).history["loss"]
    pred = model.predict(x[split:], verbose=0)
    mse = float(((pred - y[split:]) ** 2).mean())
    naive = float(((x[split:, -1] - y[split:]) ** 2).mean())  # "same as the last value"
    print(f"final train MSE {history[-1]:.3e}; test MSE {mse:.3e} (last-value baseline {naive:.3e}; "
          f"noise floor {0.1 ** 2:.0e})")
    counts = report(model)

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.semilogy(history)
    a.set(title="training loss (Keras 3 + rnn.keras3)", xlabel="epoch", ylabel="MSE")
    b.plot(y[split:].squeeze(), label="target")
    b.plot(pred.squeeze(), "--", label="LSTM -> GRU -> Dense")
    b.set(title=f"test windows, {HORIZON} steps ahead", xlabel="window")
    b.legend(loc="lower left")
    save(fig, "keras3_stacked_regressor")
    return {"test_mse": float(f"{mse:.3g}"), "last_value_mse": float(f"{naive:.3g}"), **counts}


if __name__ == "__main__":
    main()
