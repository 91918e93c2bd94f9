"""Keras 3 (torch backend) with and without rnn.keras3, side by side in one process.

    python -m profiling.keras3_bench [--batch 32 --steps 50 --features 32 --units 64 --rounds 5]

The workload the issue names: a masked LSTM with recurrent dropout (ragged, right-padded lengths;
dropout and recurrent_dropout 0.2). Timed rows, each on the same Keras objects with the
acceleration switched off and on in alternating rounds (so that drifting machine load hits both):

    layer train step   lstm(x, mask=..., training=True) and backward of a loss
    layer inference    lstm(x, mask=..., training=False) under torch.no_grad()
    model train step   model.train_on_batch on Embedding(mask_zero=True) -> LSTM -> Dense

Before timing, both paths are checked to give the same outputs from the same seed, and the fused
path to have run (rnn.keras3.stats). Medians and 20/80 % quantiles over every timed call of every
round, in ms. `--json PATH` also writes the rows with the machine, versions and settings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=50, help="time steps T")
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--vocab", type=int, default=1000, help="Embedding size of the model row")
    p.add_argument("--rate", type=float, default=0.2, help="dropout and recurrent_dropout")
    p.add_argument("--rounds", type=int, default=5, help="alternating off/on rounds")
    p.add_argument("--calls", type=int, default=5, help="timed calls per round and path")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared CPU)")
    p.add_argument("--backend", default="auto", help="rnn.keras3.install(backend=...)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def lengths_mask(batch, steps, rng):
    """Right-padded ragged lengths between steps/4 and steps; (B, T) bool, True = valid."""
    lengths = rng.integers(max(1, steps // 4), steps + 1, size=batch)
    lengths[0] = steps
    return np.arange(steps)[None, :] < lengths[:, None]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, calls, device):
    fn()  # warm-up (and any lazy set-up)
    out = []
    for _ in range(calls):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import keras

    import rnn.keras3 as k3

    if keras.backend.backend() != "torch":
        raise SystemExit(f"Keras runs on {keras.backend.backend()!r}: set KERAS_BACKEND=torch")
    rng = np.random.default_rng(0)
    B, T, F, H = args.batch, args.steps, args.features, args.units
    keras.utils.set_random_seed(0)
    lstm = keras.layers.LSTM(H, dropout=args.rate, recurrent_dropout=args.rate)
    x = torch.tensor(rng.normal(size=(B, T, F)).astype(np.float32))
    mask_np = lengths_mask(B, T, rng)
    lstm.build((B, T, F))
    device = lstm.cell.kernel.value.device
    x, mask = x.to(device), torch.tensor(mask_np, device=device)

    model = keras.Sequential([keras.Input((T,), dtype="int32"), keras.layers.Embedding(args.vocab, F, mask_zero=True),
                              keras.layers.LSTM(H, dropout=args.rate, recurrent_dropout=args.rate),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    tokens = np.where(mask_np, rng.integers(1, args.vocab, size=(B, T)), 0).astype("int32")
    targets = rng.normal(size=(B, 1)).astype("float32")

    def layer_train():
        lstm(x, mask=mask, training=True).square().sum().backward()

    def layer_infer():
        with torch.no_grad():
            lstm(x, mask=mask, training=False)

    def model_train():
        model.train_on_batch(tokens, targets)

    # Same seed, same outputs and gradients, on and off; and the fused path really ran.
    results = {}
    for on in (False, True):
        (k3.install(args.backend) if on else k3.uninstall())
        k3.reset_stats()
        keras.utils.set_random_seed(1)
        for v in lstm.trainable_variables:
            v.value.grad = None
        y = lstm(x, mask=mask, training=True)
        y.square().sum().backward()
        results[on] = (y.detach().cpu(), lstm.cell.recurrent_kernel.value.grad.detach().cpu().clone())
        assert k3.stats["fused"] == (1 if on else 0), dict(k3.stats)
    for (a, b), what in zip(zip(results[True], results[False]), ("output", "recurrent_kernel gradient")):
        err = float((a - b).abs().max())
        assert err <= 1e-4 * max(1.0, float(b.abs().max())), f"{what} differs on/off: max abs err {err:.2e}"

    rows = [("layer train step", layer_train), ("layer inference", layer_infer), ("model train step", model_train)]
    times = {(name, on): [] for name, _ in rows for on in (False, True)}
    for _ in range(args.rounds):
        for on in (False, True):
            (k3.install(args.backend) if on else k3.uninstall())
            for name, fn in rows:
                times[(name, on)] += timed(fn, args.calls, device)
    k3.uninstall()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Keras {keras.__version__} (torch {torch.__version__}) on {device}, {args.threads} thread(s), "
          f"load average {load:.1f}; LSTM B={B} T={T} F={F} H={H}, mask (ragged lengths), dropout = "
          f"recurrent_dropout = {args.rate}; {args.rounds} rounds x {args.calls} calls; median [q20, q80] ms")
    print(f"{'':18s} {'Keras':>24s} {'rnn.keras3 (' + args.backend + ')':>24s} {'speed-up':>9s}")
    out_rows = []
    for name, _ in rows:
        stats = {}
        for on in (False, True):
            med, q20, q80 = np.quantile(times[(name, on)], [0.5, 0.2, 0.8])
            stats[on] = (float(med), float(q20), float(q80))
        cells = [f"{m:8.2f} [{a:7.2f}, {b:7.2f}]" for m, a, b in (stats[False], stats[True])]
        speedup = stats[False][0] / stats[True][0]
        print(f"{name:18s} {cells[0]:>24s} {cells[1]:>24s} {speedup:8.2f}x")
        out_rows.append({"row": name, "keras_ms": stats[False], "fused_ms": stats[True], "speedup": speedup})
    if args.json:
        record = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
                  "device": str(device), "keras": keras.__version__, "torch": torch.__version__,
                  "load_average": load, "settings": vars(args), "rows": out_rows}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return out_rows


if __name__ == "__main__":
    main()
