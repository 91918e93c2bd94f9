"""Shared bits of the examples: seeding, a plain PyTorch training loop, saving plots."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

OUT_DIR = Path(__file__).resolve().parent / "out"


def seed_everything(seed=0):
    """Seed every generator; also use one intra-op thread: these models are tiny, and one thread
    is several times faster than two that wait on each other (or on anything else running)."""
    torch.set_num_threads(1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(model, x, y, *, epochs, batch_size, lr, loss_fn=None, clip=None):
    """Mini-batch Adam; returns the mean training loss of every epoch."""
    loss_fn = loss_fn or torch.nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    n = len(x)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / n)
    return history


@torch.no_grad()
def predict(model, x):
    model.eval()
    return model(x)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, name):
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    print(f"plot saved to {os.path.relpath(path)}")
    return path
