"""Timers: median and 20 / 80 % quantiles of a function's run time in ms, and peak memory.

On CUDA: `triton.testing.do_bench` (CUDA events, L2 flushed between runs; its warm-up and
repeat arguments are milliseconds), one implementation after another.

On a CPU `time.perf_counter`, built to survive a shared machine: on this project's busy 2-core
CPU, 47 of 300 calls of torch.nn's LSTM (H=32) took over 10 ms (up to 0.64 s) instead of 0.4 ms
(4 of 300 at one thread: likely its threads waiting for a descheduled sibling), and such stalls
come in bursts. So:
  * every implementation gets at least MIN_REPS timed calls and at least `rep_ms` of them, so
    a burst must cover half of them to move the median; only an implementation so slow that
    its calls add up to MAX_TIMING_S first stops earlier, with at least MIN_REPS_SLOW calls;
  * the implementations of one case are timed interleaved: round after round, each runs for a
    slice of about rep_ms / ROUNDS (A..A B..B, then B..B A..A, and so on), so a slow period of
    the machine hits all of them alike instead of one.
The quantiles then show what is left: `unstable(q20, q80)` is true when q80 / q20 exceeds
SPREAD_LIMIT, and the benchmark reports such a row as "unstable" with no speed-up.
"""
from __future__ import annotations

import time

import numpy as np
import torch

# A row is unstable when q80 / q20 > SPREAD_LIMIT: its middle 60 % of calls differ by more than
# 1.5x, so its median says too little for a speed-up figure. (Measured on this project's busy
# 2-core CPU: 1.8-3.4 for torch.nn's LSTM / GRU at H=32; a dedicated GPU is expected to stay far
# below the limit, not yet measured.)
SPREAD_LIMIT = 1.5
MIN_REPS = 20  # timed calls per implementation (CPU), at least
MIN_REPS_SLOW = 5  # ... unless MIN_REPS calls would take longer than MAX_TIMING_S: then this many
MAX_TIMING_S = 5.0
MAX_REPS = 5000
ROUNDS = 10  # time slices per implementation: how finely the implementations are interleaved


def unstable(q20, q80) -> bool:
    """True when the timing's spread q80 / q20 is wider than SPREAD_LIMIT."""
    return not q80 <= SPREAD_LIMIT * q20


def bench(fn, device, warmup_ms=25, rep_ms=100):
    """(median, q20, q80) of fn's run time in ms."""
    (result,) = bench_many({"fn": fn}, device, warmup_ms, rep_ms).values()
    if isinstance(result, BaseException):
        raise result
    return result


def bench_many(fns: dict, device, warmup_ms=25, rep_ms=100) -> dict:
    """{name: (median, q20, q80) in ms, or the exception that fn raised} for {name: fn}."""
    if torch.device(device).type != "cuda":
        return cpu_bench_many(fns, warmup_ms, rep_ms)
    from triton.testing import do_bench

    out = {}
    for name, fn in fns.items():
        try:
            med, q20, q80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
            out[name] = (float(med), float(q20), float(q80))
        except Exception as exc:  # one failing implementation must not lose the others' times
            out[name] = exc
    return out


def cpu_bench(fn, warmup_ms=25, rep_ms=100, clock=None):
    """(median, q20, q80) of fn's run time in ms on the host clock (see the module docstring)."""
    (result,) = cpu_bench_many({"fn": fn}, warmup_ms, rep_ms, clock).values()
    if isinstance(result, BaseException):
        raise result
    return result


def cpu_bench_many(fns: dict, warmup_ms=25, rep_ms=100, clock=None) -> dict:
    """Interleaved CPU timing of several functions: {name: (median, q20, q80) ms or exception}.

    clock: seconds as a float (time.perf_counter by default; the tests pass a fake one)."""
    clock = clock or time.perf_counter
    samples = {name: [] for name in fns}  # timed calls, ms
    fastest = {}  # fastest call seen so far, ms: sizes the slices
    out = {}

    def call(fn):
        start = clock()
        fn()
        return (clock() - start) * 1e3

    for name, fn in fns.items():  # warm-up: at least one call, then until warmup_ms is spent
        try:
            spent = fastest[name] = call(fn)
            while spent < warmup_ms:
                ms = call(fn)
                spent += ms
                fastest[name] = min(fastest[name], ms)
        except Exception as exc:
            out[name] = exc
    active = [name for name in fns if name not in out]
    slice_ms = rep_ms / ROUNDS
    reverse = False
    while active:
        for name in (active[::-1] if reverse else active[:]):  # a copy: finished ones leave active
            times = samples[name]
            n = int(min(max(slice_ms / max(fastest[name], 1e-6), 1), MAX_REPS - len(times)))
            try:
                for _ in range(n):
                    times.append(call(fns[name]))
            except Exception as exc:
                out[name] = exc
                active.remove(name)
                continue
            fastest[name] = min(fastest[name], min(times[-n:]))
            spent = sum(times)
            if (len(times) >= MAX_REPS or (len(times) >= MIN_REPS and spent >= rep_ms)
                    or (len(times) >= MIN_REPS_SLOW and spent >= MAX_TIMING_S * 1e3)):
                active.remove(name)
        reverse = not reverse
    for name, times in samples.items():
        if name not in out:
            med, q20, q80 = np.quantile(np.asarray(times), [0.5, 0.2, 0.8])
            out[name] = (float(med), float(q20), float(q80))
    return {name: out[name] for name in fns}


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
