"""(a) Many-to-one LSTM with relu activation: learn (n, n+1, n+2) -> n+3, predict the next number.

Keras tutorial model: LSTM(50, activation="relu", input_shape=(3, 1)) -> Dense(1), Adam, MSE.
Numbers are divided by SCALE so that the relu LSTM trains in a few seconds. Windows start at
n = 0..199; every fifth one is held out as the test set.
"""
import torch
from torch import nn

import rnn.keras as rk

from ._common import fit, predict, pyplot, save, seed_everything

SCALE = 100.0


def windows(starts):
    x = torch.stack([starts + k for k in range(3)], 1).unsqueeze(-1) / SCALE  # (N, 3, 1)
    y = (starts + 3).unsqueeze(-1) / SCALE
    return x, y


def main():
    seed_everything(0)
    model = nn.Sequential(rk.LSTM(50, activation="relu", input_shape=(3, 1)), nn.Linear(50, 1))
    starts = torch.arange(0, 200, dtype=torch.float32)
    test = torch.arange(200) % 5 == 2
    x, y = windows(starts[~test])
    history = fit(model, x, y, epochs=100, batch_size=32, lr=3e-3)
    test_x, test_y = windows(starts[test])
    pred = predict(model, test_x) * SCALE
    mse = float(((pred - test_y * SCALE) ** 2).mean())
    nxt = float(predict(model, torch.tensor([[[100.0], [101.0], [102.0]]]) / SCALE)) * SCALE
    print(f"final train MSE (scaled) {history[-1]:.2e}; held-out test MSE: {mse:.4f}")
    print(f"(100, 101, 102) -> {nxt:.2f} (expected 103)")

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.semilogy(history)
    a.set(title="training loss", xlabel="epoch", ylabel="MSE (scaled)")
    b.plot(test_y.squeeze() * SCALE, "o", label="true n+3")
    b.plot(pred.squeeze(), "x", label="predicted")
    b.set(title="held-out windows", xlabel="window")
    b.legend()
    save(fig, "next_number")
    return {"test_mse": round(mse, 4), "pred(100,101,102)": round(nxt, 2)}


if __name__ == "__main__":
    main()
