"""(a) Many-to-one LSTM with relu activation: learn (n, n+1, n+2) -> n+3, predict the next number.

The Keras tutorial model, as Keras code: LSTM(50, activation="relu") -> Dense(1), Adam, MSE.
Numbers are divided by SCALE so that the relu LSTM trains in a few seconds. Windows start at
n = 0..199; every fifth one is held out as the test set.
"""
import numpy as np

from ._common import keras, pyplot, report, save, setup

SCALE = 100.0


def windows(starts):
    x = np.stack([starts + k for k in range(3)], 1)[..., None] / SCALE  # (N, 3, 1)
    return x.astype("float32"), ((starts + 3)[:, None] / SCALE).astype("float32")


def main():
    setup()
    model = keras.Sequential([keras.Input((3, 1)), keras.layers.LSTM(50, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    starts = np.arange(200, dtype=np.float64)
    test = np.arange(200) % 5 == 2
    x, y = windows(starts[~test])
    history = model.fit(x, y, epochs=60, batch_size=32, verbose=0).history["loss"]
    test_x, test_y = windows(starts[test])
    pred = model.predict(test_x, verbose=0) * SCALE
    mse = float(((pred - test_y * SCALE) ** 2).mean())
    nxt = float(model.predict(np.array([[[100.0], [101.0], [102.0]]], "float32") / SCALE, verbose=0)[0, 0]) * SCALE
    print(f"final train MSE (scaled) {history[-1]:.2e}; held-out test MSE: {mse:.4f}")
    print(f"(100, 101, 102) -> {nxt:.2f} (expected 103)")
    counts = report(model)

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.semilogy(history)
    a.set(title="training loss (Keras 3 + rnn.keras3)", xlabel="epoch", ylabel="MSE (scaled)")
    b.plot(test_y.squeeze() * SCALE, "o", label="true n+3")
    b.plot(pred.squeeze(), "x", label="predicted")
    b.set(title="held-out windows", xlabel="window")
    b.legend()
    save(fig, "keras3_next_number")
    return {"test_mse": round(mse, 4), "pred(100,101,102)": round(nxt, 2), **counts}


if __name__ == "__main__":
    main()
