"""(f) The adding problem: LSTM and GRU learn a long dependency, SimpleRNN does not.

Each sequence has T steps of two features: a random value in [0, 1) and a marker that is 1 at
exactly two steps (one in the first half, one in the second half) and 0 elsewhere. The target is
the sum of the two marked values. Always answering 1 (the mean) scores MSE ~ 1/6 = 0.167; a model
that has learned the task scores far below that. The first marker is at least T/2 steps before
the end, which is where a SimpleRNN's gradient vanishes.

Keras tutorial models: LSTM(H) / GRU(H) / SimpleRNN(H) -> Dense(1), Adam, MSE, the same budget of
training batches for each (fresh random batches, so there is no overfitting).
"""
import torch
from torch import nn

import rnn.keras as rk

from ._common import predict, pyplot, save, seed_everything

T, H, BATCH, STEPS, LR = 50, 32, 64, 800, 1e-2


def batch(n, generator):
    values = torch.rand(n, T, generator=generator)
    markers = torch.zeros(n, T)
    rows = torch.arange(n)
    first = torch.randint(0, T // 2, (n,), generator=generator)
    second = torch.randint(T // 2, T, (n,), generator=generator)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], -1)
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return x, y


def train(layer, generator):
    model = nn.Sequential(layer, nn.Linear(H, 1))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    losses = []
    model.train()
    for _ in range(STEPS):
        x, y = batch(BATCH, generator)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return model, losses


def main():
    seed_everything(0)
    test_x, test_y = batch(1000, torch.Generator().manual_seed(123))
    layers = {"LSTM": rk.LSTM(H, input_dim=2), "GRU": rk.GRU(H, input_dim=2),
              "SimpleRNN": rk.SimpleRNN(H, input_dim=2)}
    curves, mses = {}, {}
    for name, layer in layers.items():
        model, curves[name] = train(layer, torch.Generator().manual_seed(0))
        mses[name] = float(nn.functional.mse_loss(predict(model, test_x), test_y))
    baseline = float(((test_y - 1.0) ** 2).mean())
    print(f"adding problem, T={T}, {STEPS} batches of {BATCH}; test MSE (predict-1 baseline {baseline:.3f}):")
    for name, mse in mses.items():
        print(f"  {name:9s} {mse:.4f}")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    kernel = torch.ones(10) / 10  # moving average for a readable curve
    for name, losses in curves.items():
        smooth = torch.conv1d(torch.tensor(losses)[None, None], kernel[None, None]).squeeze()
        ax.semilogy(smooth, label=f"{name} (test {mses[name]:.3f})")
    ax.axhline(baseline, color="gray", ls=":", label="predict 1")
    ax.set(title=f"adding problem, T = {T}", xlabel="training batch", ylabel="MSE")
    ax.legend()
    save(fig, "adding_problem")
    return {name: round(m, 4) for name, m in mses.items()}


if __name__ == "__main__":
    main()
