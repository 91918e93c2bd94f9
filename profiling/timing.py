"""Timers with one return shape: (median_ms, q20_ms, q80_ms).

On CUDA: `triton.testing.do_bench` (CUDA events, L2 flushed between runs; its warm-up and
repeat arguments are milliseconds). On a CPU do_bench cannot run, so `cpu_bench` does the same
with `time.perf_counter`: a warm-up for `warmup_ms`, then as many repeats as fit in `rep_ms`.
"""
from __future__ import annotations

import time

import numpy as np
import torch


def bench(fn, device, warmup_ms=25, rep_ms=100):
    """Median and 20/80 % quantiles of fn's run time in ms."""
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        med, q20, q80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return float(med), float(q20), float(q80)
    return cpu_bench(fn, warmup_ms, rep_ms)


def cpu_bench(fn, warmup_ms=25, rep_ms=100, min_reps=5, max_reps=1000):
    """do_bench's return shape on the host clock (no device to synchronise on a CPU)."""
    start = time.perf_counter()
    fn()
    estimate = max(time.perf_counter() - start, 1e-7)
    deadline = time.perf_counter() + warmup_ms * 1e-3
    while time.perf_counter() < deadline:
        fn()
    reps = int(min(max(rep_ms * 1e-3 / estimate, min_reps), max_reps))
    times = np.empty(reps)
    for k in range(reps):
        start = time.perf_counter()
        fn()
        times[k] = (time.perf_counter() - start) * 1e3
    med, q20, q80 = np.quantile(times, [0.5, 0.2, 0.8])
    return float(med), float(q20), float(q80)


def peak_memory_bytes(fn, device):
    """Device memory one call of fn needs beyond what was allocated before it (activations,
    saved tensors, outputs, gradients); None on a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)
