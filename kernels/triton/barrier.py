"""The grid-wide barrier of the persistent Triton kernels: bounded, so that no launch can hang, and
a probe that measures its latency on a GPU.

Every persistent launch gets a zeroed int32 status buffer of STATUS_WORDS words:
    [COUNTER]    arrivals: each program adds 1 per barrier, so the k-th barrier (1-based) is passed
                 once it reads k * programs. ABORT (bit 30) is OR-ed in by a program that gave up.
    [TIMEOUTS]   the error flag: how many programs hit the spin cap themselves (0 = healthy launch).
    [FAILED_AT]  the largest target (k * programs) a program timed out on: where it stuck.
A program that times out sets TIMEOUTS and ABORT and leaves its step loop; every other program,
waiting now or arriving later, sees ABORT in the counter, stops waiting and leaves its loop too.
So an aborted launch ends within one spin cap, and the host (which reads the buffer after the
launch) raises instead of returning its outputs. Arrivals must stay below ABORT: launchers split
long sequences into launches of at most `steps_per_launch(...)` steps.

The spin cap, SPIN_CAP = 2**24 polls of the counter: one poll is an acquire load from L2 plus two
block-wide barriers that broadcast its result, roughly 0.3-1 us on an H100 (an estimate, not a
measurement; `measure_barrier` measures whole barriers). So a stuck launch reports after about
5-17 s, while a healthy wait lasts at most one step of the slowest program (microseconds, under a
millisecond even at B=256; the first barrier also waits for every program to load its W_hh slice,
again microseconds): four orders of magnitude of margin or more. Preemption cannot trip it: the
whole grid is swapped out together, so nobody spins while a peer is descheduled.

The Triton interpreter (TRITON_INTERPRET=1) runs programs one after another: a wait on a program
that runs later never ends there, and the cap turns it into the error (tests use a tiny cap).

Legend: P programs in the grid, N barriers per launch.
"""
from __future__ import annotations

import statistics

import torch
import triton
import triton.language as tl

STATUS_WORDS = 4
COUNTER, TIMEOUTS, FAILED_AT = 0, 1, 2
ABORT_BIT = 1 << 30
SPIN_CAP = 1 << 24

_ABORT = tl.constexpr(ABORT_BIT)


@triton.jit
def grid_barrier(status_ptr, target, spin_cap):
    """Grid-wide barrier number target / P: returns 1 once every program arrived, 0 if the launch
    is aborted (this program waited spin_cap polls, or another program gave up). Release: the
    stores of all threads of this program (ordered by the block barrier) become visible before the
    arrival; acquire: the others' stores are visible after it."""
    tl.debug_barrier()
    seen = tl.atomic_add(status_ptr, 1, sem="acq_rel", scope="gpu") + 1  # the last to arrive never spins
    spins = 0
    while (seen < target) & (spins < spin_cap):
        seen = tl.atomic_add(status_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    # an abort sets bit 30, which ends the wait with seen > target: so this program timed out itself.
    # Masked atomics, not an `if`: a branch here grew the LSTM bf16 H=768 forward step loop's local
    # memory from 10.9 to 15.8 KB per thread (sm_90, Triton 3.9)
    timed_out = seen < target
    tl.atomic_add(status_ptr + 1, 1, mask=timed_out, sem="relaxed", scope="gpu")  # TIMEOUTS
    tl.atomic_max(status_ptr + 2, target, mask=timed_out, sem="relaxed", scope="gpu")  # FAILED_AT
    tl.atomic_or(status_ptr, _ABORT, mask=timed_out, sem="release", scope="gpu")  # releases the others
    tl.debug_barrier()
    return ((seen >= target) & (seen < _ABORT)).to(tl.int32)


def steps_per_launch(programs: int, barriers_per_step: int) -> int:
    """The most steps one launch may run so that its arrivals stay below ABORT_BIT."""
    if programs < 1 or barriers_per_step < 1:
        raise ValueError(f"programs and barriers_per_step must be >= 1, got {programs}, {barriers_per_step}")
    return max(1, (ABORT_BIT - 1) // (programs * barriers_per_step))


def new_status(launches: int, device) -> torch.Tensor:
    """One zeroed status buffer per launch, (launches, STATUS_WORDS) int32."""
    return torch.zeros((launches, STATUS_WORDS), dtype=torch.int32, device=device)


def failed_launch(status: torch.Tensor):
    """None if every launch recorded in `status` (launches, STATUS_WORDS) passed all its barriers,
    else (launch index, programs that timed out, target they stuck at). Reads the buffer back: one
    16-byte-per-launch device-to-host copy, which waits for the launches to finish."""
    rows = status.cpu().tolist()
    for i, row in enumerate(rows):
        if row[TIMEOUTS] != 0 or row[COUNTER] & ABORT_BIT:
            return i, row[TIMEOUTS], row[FAILED_AT]
    return None


# ---------------------------------------------------------------------------------------------
# latency probe
# ---------------------------------------------------------------------------------------------
@triton.jit
def barrier_probe_kernel(
    status_ptr,  # int32 (STATUS_WORDS,) zeroed: see the module docstring
    n_iters,     # N barriers to pass
    spin_cap,    # polls before a wait gives up
):
    """N back-to-back grid barriers across P programs, nothing else."""
    n_prog = tl.num_programs(0) * tl.num_programs(1)
    arrived = 0
    live = 1
    for _ in range(n_iters):
        if live != 0:
            arrived += n_prog
            live = grid_barrier(status_ptr, arrived, spin_cap)


def measure_barrier(n_programs: int, n_iters: int = 1000, device="cuda", repeats: int = 5) -> float:
    """Microseconds per grid barrier across `n_programs` co-resident programs: the CUDA-event time
    of a launch passing `n_iters` barriers minus that of a launch passing none, over n_iters
    (median of `repeats`). Raises if the programs cannot all be resident or a barrier timed out."""
    from .backend import DeviceLimits, check_resident, cooperative_options  # backend imports this module

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(f"measure_barrier needs a CUDA device, got {device} "
                           f"(CUDA available: {torch.cuda.is_available()})")
    if n_programs < 1 or n_iters < 1 or repeats < 1:
        raise ValueError(f"n_programs, n_iters and repeats must be >= 1, got {n_programs}, {n_iters}, {repeats}")
    if n_programs * n_iters >= ABORT_BIT:
        raise ValueError(f"n_programs * n_iters must stay below {ABORT_BIT}, got {n_programs * n_iters}")
    limits = DeviceLimits.of(device)
    with torch.cuda.device(device):
        status = new_status(1, device)
        options = cooperative_options()
        kernel = barrier_probe_kernel.warmup(status, n_iters, SPIN_CAP, grid=(n_programs,), num_warps=4, **options)
        check_resident(kernel, (n_programs, 1), limits, "the barrier probe")

        def timed(iters):
            status.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            barrier_probe_kernel[(n_programs,)](status, iters, SPIN_CAP, num_warps=4, **options)
            end.record()
            end.synchronize()
            failed = failed_launch(status)
            if failed is not None:
                raise RuntimeError(f"the barrier probe with {n_programs} programs timed out at a grid barrier "
                                   f"({failed[1]} programs gave up): they were not all resident at once")
            return start.elapsed_time(end) * 1000.0  # ms -> us

        timed(n_iters)  # warm: module load, clocks, and both integer specializations compiled
        timed(0)
        samples = [(timed(n_iters) - timed(0)) / n_iters for _ in range(repeats)]
    return statistics.median(samples)
