"""(b) SimpleRNN on a 0.1-step sequence: sin(t) for t = 0, 0.1, 0.2, ...; predict the next value.

Keras tutorial model: SimpleRNN(32, input_shape=(WINDOW, 1)) -> Dense(1). The first 80% of the
series trains, the last 20% tests (one-step-ahead predictions from true windows).
"""
import numpy as np
import torch
from torch import nn

import rnn.keras as rk

from ._common import fit, predict, pyplot, save, seed_everything

WINDOW = 20


def main():
    seed_everything(0)
    t = np.arange(0, 100, 0.1)
    series = np.sin(t).astype(np.float32)
    x = np.stack([series[i:i + WINDOW] for i in range(len(series) - WINDOW)])[..., None]
    y = series[WINDOW:, None]
    split = int(0.8 * len(x))
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = nn.Sequential(rk.SimpleRNN(32, input_shape=(WINDOW, 1)), nn.Linear(32, 1))
    history = fit(model, x[:split], y[:split], epochs=15, batch_size=32, lr=3e-3)
    pred = predict(model, x[split:])
    mse = float(((pred - y[split:]) ** 2).mean())
    print(f"final train MSE {history[-1]:.2e}; test MSE (last 20% of the series) {mse:.2e}")

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.semilogy(history)
    a.set(title="training loss", xlabel="epoch", ylabel="MSE")
    tt = t[WINDOW:][split:]
    b.plot(tt, y[split:].squeeze(), label="sin(t)")
    b.plot(tt, pred.squeeze(), "--", label="SimpleRNN one-step prediction")
    b.set(title=f"test part, step 0.1, window {WINDOW}", xlabel="t")
    b.legend(loc="lower left")
    save(fig, "sine_simplernn")
    return {"test_mse": float(f"{mse:.3g}")}


if __name__ == "__main__":
    main()
