"""(d) Conv1D + MaxPool1D + Bidirectional(LSTM forward, GRU backward) on a real multivariate series.

Data: the US quarterly macroeconomic data set that statsmodels ships (statsmodels.datasets.macrodata,
1959Q1-2009Q3, 203 quarters; nothing is downloaded). Features: quarter-on-quarter growth (log
differences) of real GDP, consumption, investment, government spending, disposable income, CPI and
M1, plus the T-bill rate, the unemployment rate, inflation and the real interest rate, each
standardized with the training part's mean and std. Task: from the last WINDOW quarters, predict
next quarter's unemployment rate (the model predicts the change from the current quarter; the
"no change" forecast is the baseline to beat). The last 20% of the quarters test.

Keras tutorial model: Conv1D(16, 3, activation="relu", padding="same") -> MaxPooling1D(2) ->
Bidirectional(LSTM(16), backward_layer=GRU(16, go_backwards=True)) -> Dense(1).
torch's Conv1d / MaxPool1d are channels-first, so the model transposes around them. With only
~150 training windows the model overfits after a few dozen epochs, so it trains for 20.
"""
import numpy as np
import torch
from torch import nn

import rnn.keras as rk

from ._common import fit, predict, pyplot, save, seed_everything

WINDOW = 8
GROWTH = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1"]
LEVELS = ["tbilrate", "unemp", "infl", "realint"]


def load():
    """(features (N, F), unemployment (N,), quarter labels) or None without statsmodels."""
    try:
        from statsmodels.datasets import macrodata
    except ImportError:
        return None
    data = macrodata.load_pandas().data
    growth = np.diff(np.log(data[GROWTH].to_numpy(np.float64)), axis=0) * 100
    levels = data[LEVELS].to_numpy(np.float64)[1:]
    years = (data["year"] + (data["quarter"] - 1) / 4).to_numpy()[1:]
    return np.concatenate([growth, levels], axis=1), data["unemp"].to_numpy(np.float64)[1:], years


class ConvBiRNN(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(features, 16, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2))
        self.birnn = rk.Bidirectional(rk.LSTM(16, input_dim=16),
                                      backward_layer=rk.GRU(16, go_backwards=True, input_dim=16))
        self.head = nn.Linear(32, 1)

    def forward(self, x):  # x (B, T, F)
        z = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T/2, 16)
        return self.head(self.birnn(z))


def main():
    seed_everything(0)
    loaded = load()
    if loaded is None:
        print("skipped: this example needs statsmodels (pip install statsmodels), which ships the data")
        return {"skipped": "statsmodels not installed"}
    feats, unemp, years = loaded
    x, y, split, c_std = windows(feats, unemp)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = ConvBiRNN(feats.shape[1])
    history = fit(model, x[:split], y[:split], epochs=20, batch_size=32, lr=3e-3)
    pred, rmse, naive = evaluate(feats, unemp, split, predict(model, x[split:]).squeeze(1).numpy() * c_std)
    plot(history, years, unemp, pred, split, "macro_bidirectional", "training loss")
    return {"test_rmse": round(rmse, 3), "no_change_rmse": round(naive, 3)}


def windows(feats, unemp):
    """Standardized WINDOW-quarter windows and their targets (next quarter's unemployment change,
    scaled): (x (n, WINDOW, F) float32, y (n, 1) float32, split, c_std). Statistics come from the
    first 80% of the windows, the training part."""
    n = len(feats) - WINDOW  # window i covers quarters i..i+WINDOW-1, target quarter i+WINDOW
    split = int(0.8 * n)
    mean, std = feats[:split + WINDOW].mean(0), feats[:split + WINDOW].std(0)
    z = ((feats - mean) / std).astype(np.float32)
    change = unemp[WINDOW:] - unemp[WINDOW - 1:-1]  # target quarter minus the window's last one
    c_std = change[:split].std()
    x = np.stack([z[i:i + WINDOW] for i in range(n)])
    return x, (change / c_std).astype(np.float32)[:, None], split, c_std


def evaluate(feats, unemp, split, change_pred):
    """Forecast = last quarter + predicted change; prints and returns (pred, RMSE, no-change RMSE)."""
    n = len(feats) - WINDOW
    last = unemp[WINDOW - 1:-1][split:]
    pred = last + change_pred
    true = unemp[WINDOW:][split:]
    rmse = float(np.sqrt(((pred - true) ** 2).mean()))
    naive = float(np.sqrt(((last - true) ** 2).mean()))  # "no change" forecast
    print(f"{len(feats)} quarters x {feats.shape[1]} features; train {split} windows, test {n - split}")
    print(f"test RMSE of next-quarter unemployment: {rmse:.3f} points (no-change baseline {naive:.3f})")
    return pred, rmse, naive


def plot(history, years, unemp, pred, split, name, loss_title):
    """Training loss and the test-period forecast (shared with the Keras 3 version)."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.semilogy(history)
    a.set(title=loss_title, xlabel="epoch", ylabel="MSE (standardized)")
    t = years[WINDOW:]
    b.plot(t, unemp[WINDOW:], label="unemployment rate")
    b.plot(t[split:], pred, "--", label="Conv1D + BiRNN, test")
    b.axvline(t[split], color="gray", lw=0.8)
    b.set(title="US unemployment (statsmodels macrodata)", xlabel="year", ylabel="%")
    b.legend(loc="upper left")
    save(fig, name)


if __name__ == "__main__":
    main()
