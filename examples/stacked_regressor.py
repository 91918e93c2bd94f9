"""(c) Stacked LSTM -> GRU -> Flatten -> Dense regressor.

Keras tutorial model: LSTM(32, return_sequences=True) -> GRU(16, return_sequences=True) ->
Flatten() -> Dense(1), on windows of a noisy two-frequency signal with a slow trend; the model
predicts the value HORIZON steps after each window. Last 20% of the windows test.
"""
import numpy as np
import torch
from torch import nn

import rnn.keras as rk

from ._common import fit, predict, pyplot, save, seed_everything

WINDOW, HORIZON = 24, 3


class StackedRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rk.LSTM(32, return_sequences=True, input_shape=(WINDOW, 1))
        self.gru = rk.GRU(16, return_sequences=True, input_dim=32)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(WINDOW * 16, 1))

    def forward(self, x):
        return self.head(self.gru(self.lstm(x)))


def main():
    seed_everything(0)
    rng = np.random.default_rng(0)
    n = 1200
    t = np.arange(n)
    series = (np.sin(2 * np.pi * t / 50) + 0.5 * np.sin(2 * np.pi * t / 13) + t / n
              + 0.1 * rng.normal(size=n)).astype(np.float32)
    idx = np.arange(n - WINDOW - HORIZON + 1)
    x = torch.from_numpy(np.stack([series[i:i + WINDOW] for i in idx])[..., None])
    y = torch.from_numpy(series[idx + WINDOW + HORIZON - 1, None])
    split = int(0.8 * len(x))
    model = StackedRegressor()
    history = fit(model, x[:split], y[:split], epochs=20, batch_size=64, lr=3e-3)
    pred = predict(model, x[split:])
    mse = float(((pred - y[split:]) ** 2).mean())
    naive = float(((x[split:, -1] - y[split:]) ** 2).mean())  # "same as the last value"
    print(f"final train MSE {history[-1]:.3e}; test MSE {mse:.3e} (last-value baseline {naive:.3e}; "
          f"noise floor {0.1 ** 2:.0e})")

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.semilogy(history)
    a.set(title="training loss", xlabel="epoch", ylabel="MSE")
    b.plot(y[split:].squeeze(), label="target")
    b.plot(pred.squeeze(), "--", label="LSTM -> GRU -> Dense")
    b.set(title=f"test windows, {HORIZON} steps ahead", xlabel="window")
    b.legend(loc="lower left")
    save(fig, "stacked_regressor")
    return {"test_mse": float(f"{mse:.3g}"), "last_value_mse": float(f"{naive:.3g}")}


if __name__ == "__main__":
    main()
