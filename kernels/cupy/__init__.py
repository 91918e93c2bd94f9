"""CuPy backend: persistent CUDA C recurrence kernels (forward.cu, backward.cu) and their loader.

One cooperative launch runs a whole sequence (forward) or its reverse (backward). The grid's
blocks split the hidden units; each keeps its slice of W_hh in shared memory for the whole
sequence and exchanges h (or the gate gradients) through global memory and a grid barrier.
On sm_80+ the per-step matvec runs on tensor cores (mma.sync) for bf16 / fp16, and for fp32 as
tf32 when torch allows tf32 matmuls (`torch.backends.cuda.matmul.allow_tf32`); accumulation is
fp32 and the cell state stays fp32. fp64, older GPUs and FUSED_RNN_CUPY_MMA=off use FMA.
On sm_90 "auto" prefers the thread-block-cluster kernels (cluster.cu, one cluster per layer and
direction, h exchanged through distributed shared memory) where W_hh fits one cluster
(FUSED_RNN_CUPY_KERNEL=grid|cluster pins a family); their waits are bounded, and a wait that
timed out raises ClusterTimeoutError after the launch instead of returning wrong outputs.
Both directions of a bidirectional layer run as ONE launch (forward_both / backward_both): two
groups of blocks on half of the SMs each (grid-wide) or one cluster per direction.

Everything up to the launch is pure Python and runs without a GPU or CuPy: `plan(...)` picks the
configuration (units per block, grid, batch tile, shared memory) from device limits and says why a
size cannot run; `kernel_source(...)` returns the exact source, compiler options and kernel name
that get compiled. CuPy is imported lazily, only to compile and launch; CuPy never allocates:
every buffer is a torch tensor, passed by pointer, on torch's current stream.

Legend: T steps, B batch, H hidden, G gates (LSTM 4, GRU 3, RNN 1).
"""
from __future__ import annotations

import dataclasses
import math
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import Saved, env_choice, new_empty

__all__ = ["CupyBackend", "DeviceLimits", "Config", "SizeLimitError", "ClusterTimeoutError", "plan", "plan_cluster",
           "choose", "max_hidden", "use_mma", "kernel_source"]

SOURCE_DIR = Path(__file__).resolve().parent
INSTALL_HINT = "cupy is not installed (pip install fused-rnn[cuda12] or [cuda13])"
BARRIER_ENV = "FUSED_RNN_CUPY_BARRIER"  # "cg" (cooperative_groups grid.sync, default) or "atomic"
MMA_ENV = "FUSED_RNN_CUPY_MMA"  # "auto" (default: tensor cores where they apply) or "off" (FMA only)

KIND_CODES = {"lstm": 0, "gru": 1, "rnn": 2}
N_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
ACT_CODES = {"tanh": 0, "relu": 1, "sigmoid": 2, "hard_sigmoid": 3, "linear": 4}
# torch dtype -> (CUDA storage type, bytes per element, accumulation dtype)
DTYPES = {
    torch.float32: ("float", 4, torch.float32),
    torch.float64: ("double", 8, torch.float64),
    torch.bfloat16: ("frnn::bf16", 2, torch.float32),
    torch.float16: ("frnn::f16", 2, torch.float32),
}
THREADS = 256  # threads per block: 8 warps
ROWS = 4  # batch rows per warp tile (FMA path)
MMA_MIN_COMPUTE_CAPABILITY = (8, 0)  # mma.sync m16n8k16 bf16 / m16n8k8 tf32
# ptxas reports 90-240 for forward.cu / backward.cu (sm_90; fp64 FMA the highest, bf16 / fp16 MMA
# 128-184), none spilling: they are built for one block per SM (__launch_bounds__(THREADS, 1), what
# every plan uses), so that the values loaded ahead of the grid barrier stay in registers. The
# launch re-checks the co-residency with the compiled kernel's count.
REGS_PER_THREAD_ESTIMATE = 240
MIN_COMPUTE_CAPABILITY = (7, 0)
CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14  # CUfunction_attribute (cuda.h)  # ld.acquire in the atomic barrier; Volta+ cooperative launches


class SizeLimitError(ValueError):
    """The problem does not fit the persistent kernels on this device (W_hh must stay on chip)."""


class ClusterTimeoutError(RuntimeError):
    """A cluster kernel gave up waiting for another CTA's exchange (its bounded mbarrier wait ran
    out and set its status flag); the outputs of the call were not returned."""


@dataclass(frozen=True)
class DeviceLimits:
    """What the configuration choice needs to know about a GPU (all sizes in bytes)."""

    name: str
    sm_count: int
    smem_per_block_optin: int
    smem_per_sm: int
    max_threads_per_sm: int = 2048
    regs_per_sm: int = 65536
    max_blocks_per_sm: int = 32
    reserved_smem_per_block: int = 1024
    compute_capability: tuple = (9, 0)
    cooperative_launch: bool = True
    max_cluster: int = 0  # CTAs per thread-block cluster the cluster kernels may use (0: none)


H100 = DeviceLimits("H100 SXM", 132, 232448, 233472, compute_capability=(9, 0), max_cluster=16)
A100 = DeviceLimits("A100", 108, 166912, 167936, compute_capability=(8, 0))


@dataclass(frozen=True)
class Config:
    """One compiled-and-launched configuration of a kernel (forward or backward)."""

    direction: str  # "forward" | "backward"
    kind: str
    activation: str
    recurrent_activation: str
    reset_after: bool
    dtype: torch.dtype
    rec_mask: bool
    hidden: int
    batch: int
    units: int  # hidden units per block (U)
    grid: int  # blocks
    batch_tile: int  # batch rows staged in shared memory at a time (BB)
    smem: int  # dynamic shared memory per block, bytes
    blocks_per_sm: int  # co-resident blocks per SM the plan relies on
    mma: bool = False  # tensor-core matvec (bf16 / fp16; fp32 as tf32)
    threads: int = THREADS
    rows: int = ROWS
    # the family: "grid" (forward.cu / backward.cu, cooperative grid) or "cluster" (cluster.cu,
    # one thread-block cluster of `grid` CTAs; sm_90). Cluster-only fields:
    kernel: str = "grid"
    ks: int = 1  # k splits of the MMA schedule
    reg_frags: int = 0  # weight fragment pairs per warp held in registers (RF)
    ntiles: int = 1  # 8-row batch tiles (NT), MMA
    mpw: int = 1  # 16-row m-tiles per warp (MPW), MMA: the accumulators are ntiles x mpw fragments
    # directions of a bidirectional layer in the launch: 2 launches 2 x `grid` blocks (grid family,
    # planned on half of the SMs) or two clusters, group d running direction d (recurrence.cuh)
    directions: int = 1

    @property
    def template_args(self) -> str:
        head = (KIND_CODES[self.kind], ACT_CODES[self.activation], ACT_CODES[self.recurrent_activation],
                "true" if self.reset_after else "false", DTYPES[self.dtype][0], "true" if self.rec_mask else "false",
                "true" if self.mma else "false")
        tail = (self.grid, self.reg_frags, self.ntiles, self.mpw, self.threads) if self.kernel == "cluster" else \
            (self.rows, self.threads)
        return ", ".join(str(a) for a in head + tail + (self.directions,))

    @property
    def name(self) -> str:
        """The kernel's name expression (what NVRTC is asked for)."""
        stem = "rnn_cluster_" if self.kernel == "cluster" else "rnn_"
        return f"frnn::{stem}{self.direction}<{self.template_args}>"

    @property
    def compile_key(self) -> tuple:
        """What the compiled code depends on (sizes are run-time arguments)."""
        return (self.kernel, self.direction, self.template_args)


def _gates(kind):
    if kind not in N_GATES:
        raise ValueError(f"cell kind must be one of {tuple(N_GATES)}, got {kind!r}")
    return N_GATES[kind]


def _dtype_info(dtype):
    if dtype not in DTYPES:
        raise ValueError(f"the cupy backend supports dtypes {[str(d) for d in DTYPES]}, got {dtype}")
    return DTYPES[dtype]


def _round_up(n, m):
    return -(-n // m) * m


def _align16(n):
    return _round_up(n, 16)


def _smem_bytes(direction, kind, hidden, dtype, rec_mask, units, batch_tile, mma=False, threads=THREADS):
    """Dynamic shared memory of one block, as carve_smem (recurrence.cuh) lays it out.
    FMA: staged rows (accumulation type) + the W_hh slice. MMA: staged rows (storage type, padded
    to 16 rows and ld columns) + the fp32 result tiles + the W_hh slice (units padded to 8, ld)."""
    g = _gates(kind)
    _, itemsize, acc = _dtype_info(dtype)
    copies = g if (direction == "backward" or rec_mask) else 1
    if not mma:
        acc_size = torch.empty((), dtype=acc).element_size()
        return _align16(copies * batch_tile * hidden * acc_size) + g * units * hidden * itemsize
    k = _k_tile(dtype, True)
    ld = _round_up(hidden, k) + k // 2
    ug, bbp = _round_up(units, 8), _round_up(batch_tile, 16)
    result_floats = g * bbp * max(8 * (threads // 32), ug)  # mma_result_floats: ksplit partial sums
    return _align16(copies * bbp * ld * itemsize) + _align16(result_floats * 4) + g * ug * ld * itemsize


def _k_tile(dtype, mma):
    """Reduction depth of one k-tile (MmaShape<T>::K, recurrence.cuh): the mma's K, 16 for 16-bit
    inputs and 8 for tf32; 8 for the FMA path."""
    return 8 * (4 // _dtype_info(dtype)[1]) if mma else 8


def use_mma(dtype, limits: DeviceLimits, tf32=False, mma=None):
    """Whether the tensor-core path runs: None picks it for bf16 / fp16 (and fp32 when `tf32`) on
    sm_80+; True insists (fp32 then runs as tf32; raises where it cannot run); False never uses it."""
    _dtype_info(dtype)
    possible = limits.compute_capability >= MMA_MIN_COMPUTE_CAPABILITY and dtype != torch.float64
    if mma is None:
        return possible and (dtype != torch.float32 or bool(tf32))
    if mma and not possible:
        raise ValueError(f"the tensor-core path needs bf16/fp16/fp32 on compute capability >= 8.0, got "
                         f"{str(dtype).replace('torch.', '')} on {limits.name} {limits.compute_capability}")
    return bool(mma)


def _largest_fitting(fits, want, step):
    """The largest batch tile b <= want with fits(b), b == want or a multiple of step; 0 if none."""
    if fits(want):
        return want
    lo, hi = 0, want // step + 1  # in units of step: fits(lo*step) or lo == 0; hi*step does not fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid * step):
            lo = mid
        else:
            hi = mid
    return lo * step


def _blocks_per_sm_limit(limits: DeviceLimits, threads, regs_per_thread):
    by_threads = limits.max_threads_per_sm // threads
    by_regs = limits.regs_per_sm // (threads * regs_per_thread)
    return max(0, min(limits.max_blocks_per_sm, by_threads, by_regs))


def plan(direction, kind, hidden, batch, dtype, limits: DeviceLimits, *, activation="tanh",
         recurrent_activation="sigmoid", reset_after=True, rec_mask=False, mma=None, tf32=False, threads=THREADS,
         rows=ROWS, regs_per_thread=REGS_PER_THREAD_ESTIMATE, max_blocks_per_sm=None, max_batch_tile=None) -> Config:
    """Choose units per block, grid and batch tile so that all blocks are co-resident and each
    block's W_hh slice fits in shared memory. Prefers one block per SM (the h exchange is staged
    once per block, so fewer, larger blocks move less data); raises SizeLimitError otherwise.
    `mma`/`tf32`: see use_mma. `max_batch_tile` caps the staged batch rows (tests use it to
    exercise batch tiling); the MMA path stages whole 16-row tiles, so when the batch does not fit
    at once its tile is the largest multiple of 16 that does."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    g = _gates(kind)
    _, itemsize, acc = _dtype_info(dtype)
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden size must be a positive int, got {hidden!r}")
    if not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch size must be a non-negative int, got {batch!r}")
    auto = mma is None
    mma = use_mma(dtype, limits, tf32, mma)
    batch_eff = max(batch, 1)
    want = min(batch_eff, max_batch_tile or batch_eff)
    bps_max = _blocks_per_sm_limit(limits, threads, regs_per_thread)
    if max_blocks_per_sm is not None:
        bps_max = min(bps_max, max_blocks_per_sm)

    def smem(units, batch_tile):
        return _smem_bytes(direction, kind, hidden, dtype, rec_mask, units, batch_tile, mma, threads)

    # the tensor-core layout pads rows and stages whole 16-row tiles; where it does not fit, the
    # automatic choice falls back to FMA, which fits more (an explicit mma=True does not)
    for mma in ((True, False) if mma and auto else (mma,)):
        # MMA: units in whole 8-row tiles (a block's time is set by its tiles, so fill them)
        # and a capped batch tile in whole 16-row tiles
        unit_step, row_step = (8, 16) if mma else (1, 1)
        tile = want if want == batch_eff else min(batch_eff, max(row_step, want // row_step * row_step))
        for bps in range(1, bps_max + 1):
            grid_max = bps * limits.sm_count
            units = _round_up(math.ceil(hidden / min(hidden, grid_max)), unit_step)
            grid = math.ceil(hidden / units)
            cap = min(limits.smem_per_block_optin, limits.smem_per_sm // bps - limits.reserved_smem_per_block)
            batch_tile = _largest_fitting(lambda bt: smem(units, bt) <= cap, tile, row_step)
            if batch_tile == 0:
                continue
            return Config(direction, kind, activation, recurrent_activation,
                          bool(reset_after) if kind == "gru" else True, dtype, bool(rec_mask), hidden, batch, units,
                          grid, batch_tile, smem(units, batch_tile), bps, mma, threads, rows)
    # nothing fits: report the one-block-per-SM numbers, the most room a block can get
    grid = min(hidden, limits.sm_count)
    units = _round_up(math.ceil(hidden / grid), unit_step)
    grid = math.ceil(hidden / units)
    w_bytes = smem(units, 0) - smem(0, 0)
    row_bytes = smem(0, 16 if mma else 1) - smem(0, 0)
    cap = min(limits.smem_per_block_optin, limits.smem_per_sm - limits.reserved_smem_per_block)
    limit = max_hidden(direction, kind, batch, dtype, limits, rec_mask=rec_mask, mma=mma, upper=hidden,
                       regs_per_thread=regs_per_thread, max_blocks_per_sm=max_blocks_per_sm)
    raise SizeLimitError(
        f"{direction} W_hh needs {w_bytes / 1024:.1f} KiB of shared memory per block with {grid} blocks "
        f"({units} of {hidden} hidden units each, {g} gates, {itemsize}-byte {str(dtype).replace('torch.', '')}"
        f"{', tensor-core layout' if mma else ''}) plus {row_bytes / 1024:.1f} KiB per staged "
        f"{'16-row batch tile' if mma else 'batch row'}; the device ({limits.name}) allows "
        f"{cap / 1024:.1f} KiB: hidden size {hidden} is above the cupy backend's limit {limit} for this "
        f"dtype/cell ({kind}{', recurrent dropout' if rec_mask else ''}); use backend='triton'"
    )


def max_hidden(direction, kind, batch, dtype, limits: DeviceLimits, *, rec_mask=False, mma=None, tf32=False,
               upper=1 << 16, regs_per_thread=REGS_PER_THREAD_ESTIMATE, max_blocks_per_sm=None) -> int:
    """The largest hidden size below `upper` that `plan` accepts (0 if none)."""

    def fits(h):
        try:
            plan(direction, kind, h, batch, dtype, limits, rec_mask=rec_mask, mma=mma, tf32=tf32,
                 regs_per_thread=regs_per_thread, max_blocks_per_sm=max_blocks_per_sm)
            return True
        except SizeLimitError:
            return False

    lo, hi = 0, upper  # invariant: fits(lo) or lo == 0; not fits(hi) or hi == upper
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


# ----------------------------------------------------------------------------------------------
# the cluster family (cluster.cu, sm_90): one thread-block cluster runs one layer / direction

CLUSTER_MIN_COMPUTE_CAPABILITY = (9, 0)
CLUSTER_PORTABLE = 8  # CTAs per cluster every sm_90 part allows; 16 needs the non-portable attribute
CLUSTER_NON_PORTABLE = 16
CLUSTER_MAX_BATCH = 64  # MMA: 8 batch tiles of accumulators per weight fragment
# "auto" takes the FMA cluster kernel only up to this batch: it reads its W_hh slice from shared
# memory once per batch row each step, so its step grows with B, the grid-wide kernel's barely
# (sm_90 estimates, LSTM fp32 H256 forward / backward us: B1 1.11 / 1.31 vs grid 1.73 / 2.12,
# B2 1.71 / 1.89 vs 1.74 / 2.39, B4 2.93 / 3.13 vs 1.75 / 2.43, B16 10.4 / 11.2 vs 2.28 / 3.98)
CLUSTER_FMA_AUTO_MAX_BATCH = 2
CLUSTER_THREADS = (256, 384, 512)
# The planner weighs a schedule by the static report's throughput terms (profiling/static.py,
# ESTIMATE_MODEL, an estimate): one mma.sync per warp every 16 clocks, 2 clocks per mma per SM,
# 128 bytes of shared memory per clock.
CLUSTER_MMA_WARP_CLK, CLUSTER_MMA_SM_CLK, CLUSTER_SMEM_BYTES_PER_CLK = 16, 2, 128
CLUSTER_REGS_BASE = 64  # registers besides weight fragments (4 each) and accumulators (4 per batch tile and
#   m-tile): ptxas (sm_90a) gives 242 for the LSTM B16 H768 forward (RF=40, NT=2, MPW=3, 256 threads: 248
#   planned, cap 255); the launch re-checks ptxas' count
CLUSTER_REGS_BACKWARD = 4  # more for the backward (ptxas spilled 12 B for LSTM bf16 B1 H768 at 252 planned)
CLUSTER_REGS_BOTH = 8  # more with both directions in the launch (DIRS = 2: the direction's shifted pointers;
#   ptxas spilled 16 B for the GRU B1 H768 backward at RF=24 on 384 threads without this allowance)


def _cluster_schedule(gates, units, ks, threads):
    """(m groups, m-tiles per warp) of the cluster MMA schedule (cl::geometry): warp w is k group
    w % ks of m group w // ks; m group i owns the 16-row m-tiles [i * mpw, (i + 1) * mpw)."""
    mg = threads // 32 // ks
    if mg < 1:
        raise ValueError(f"a k split of {ks} needs at least {ks} warps, got {threads} threads")
    return mg, -(-(gates * _round_up(units, 16) // 16) // mg)


def _cluster_geometry(direction, kind, reset_after, hidden, batch, dtype, rec_mask, mma, units, ntiles, ks, threads,
                      reg_frags):
    """(dynamic shared memory bytes, fragment pairs of the busiest warp, shared-memory bytes a step's
    matvec and epilogue move), as cl::geometry, cl::carve and cl::matvec (cluster.cu) lay them out."""
    g = _gates(kind)
    _, itemsize, acc = _dtype_info(dtype)
    acc_size = 8 if acc == torch.float64 else 4
    two_phase = kind == "gru" and not reset_after
    ug = _round_up(units, 16)
    bp = ntiles * 8 if mma else batch
    k = _k_tile(dtype, mma)
    kpad = _round_up(hidden, k)
    ld = kpad + 16 // itemsize
    if direction == "backward" or rec_mask:
        slots = g
    else:
        slots = 2 if two_phase else 1
    mt, nk, nw = g * ug // 16, kpad // k, threads // 32
    if mma:
        mg, mpw = _cluster_schedule(g, units, ks, threads)
        kper = -(-nk // ks)
        wpw = max(0, mpw * kper - reg_frags)
        # per step: weights from shared memory, one h (dA) fragment per k-tile and operand (the
        # backward's and dropout's operand differs per gate), partial sums out and back in
        per_gate = direction == "backward" or rec_mask
        operands = sum(len({m * 16 // ug for m in range(i * mpw, min(mt, (i + 1) * mpw))}) if per_gate else
                       int(i * mpw < mt) for i in range(mg))
        traffic = mg * ks * wpw * 512 + operands * ks * kper * ntiles * 256 + mt * ks * ntiles * 512 + \
            g * units * batch * ks * 4
    else:
        wpw, kper, mpw, traffic = 0, 0, 0, 0
    npin = g if direction == "forward" else g + 3
    a = _align16
    total = a(4 * 8) + a(2 * slots * bp * ld * itemsize)
    if mma:
        total += a(ks * g * ug * bp * 4) + a(nw * wpw * 512)
    else:
        total += a(g * ug * batch * acc_size) + a(g * ug * ld * itemsize)
    total += a(g * units * acc_size) + a(g * batch * units * acc_size if rec_mask else 0)
    pin_size = itemsize if direction == "forward" else acc_size  # forward stages xg as stored
    total += 2 * a(batch * units * acc_size) + a(2 * batch * units * npin * pin_size) + a(2 * batch * 4)
    busiest = mpw * kper if mma else -(-(g * ug * batch) // threads) * kpad
    return total, busiest, traffic


def plan_cluster(direction, kind, hidden, batch, dtype, limits: DeviceLimits, *, activation="tanh",
                 recurrent_activation="sigmoid", reset_after=True, rec_mask=False, mma=None, tf32=False,
                 max_cluster=None, threads=None, reg_frags=None, ks=None, units=None, directions=1) -> Config:
    """The cluster kernel's configuration: the largest cluster the device allows (fewest units per
    CTA), then the threads / k split / register-held weight fragments whose step the static model's
    throughput terms price lowest (tensor-core issue + shared-memory traffic) while the slice fits
    in shared memory + registers. Raises SizeLimitError where
    it does not fit (the grid-wide family takes over). Keyword overrides pin a choice (tests)."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    g = _gates(kind)
    _dtype_info(dtype)
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden size must be a positive int, got {hidden!r}")
    if not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch size must be a non-negative int, got {batch!r}")
    if limits.compute_capability < CLUSTER_MIN_COMPUTE_CAPABILITY or limits.max_cluster < 1:
        raise SizeLimitError(f"the cluster kernels need sm_90 thread-block clusters; {limits.name} has compute "
                             f"capability {limits.compute_capability}")
    mma = use_mma(dtype, limits, tf32, mma)
    batch_eff = max(batch, 1)
    if batch_eff > CLUSTER_MAX_BATCH:
        raise SizeLimitError(f"the cluster kernels take a batch of at most {CLUSTER_MAX_BATCH}, got {batch}")
    ntiles = -(-batch_eff // 8) if mma else 1
    nc_max = min(max_cluster or limits.max_cluster, limits.max_cluster)
    cap = min(limits.smem_per_block_optin, limits.smem_per_sm - limits.reserved_smem_per_block)
    unit_choices = [units] if units else sorted({_round_up(-(-hidden // nc), 8) for nc in range(1, nc_max + 1)})
    for u in unit_choices:  # smallest slice first: the largest cluster
        nc = -(-hidden // u)
        if nc > nc_max:
            continue
        best = None
        nk = -(-hidden // _k_tile(dtype, mma))
        for th in ([threads] if threads else CLUSTER_THREADS):
            regs_cap = min(255, limits.regs_per_sm // th // 8 * 8)
            nw = th // 32
            splits = [ks] if ks else ([d for d in range(1, nw + 1) if nw % d == 0 and d <= max(1, nk)] if mma else [1])
            for k_split in splits:
                mpw = _cluster_schedule(g, u, k_split, th)[1] if mma else 1
                for rf in ([reg_frags] if reg_frags is not None else (range(0, 65, 2) if mma else [0])):
                    regs = CLUSTER_REGS_BASE + 4 * rf + 4 * ntiles * mpw + (CLUSTER_REGS_BOTH if directions == 2 else 0) + \
                        (CLUSTER_REGS_BACKWARD if direction == "backward" else 0)
                    if regs > regs_cap and reg_frags is None:
                        break
                    smem, busiest, traffic = _cluster_geometry(direction, kind, reset_after, hidden, batch_eff, dtype,
                                                               rec_mask, mma, u, ntiles, k_split, th, rf)
                    if smem > cap:
                        continue
                    if mma:  # clocks a step: the tensor-core issue bound, then the shared-memory traffic
                        mmas = g * _round_up(u, 16) // 16 * nk * ntiles
                        cost = max(busiest * ntiles * CLUSTER_MMA_WARP_CLK, mmas * CLUSTER_MMA_SM_CLK) + \
                            traffic / CLUSTER_SMEM_BYTES_PER_CLK
                    else:
                        cost = busiest
                    score = (cost, th, rf)
                    if best is None or score < best[0]:
                        best = (score, Config(direction, kind, activation, recurrent_activation,
                                              bool(reset_after) if kind == "gru" else True, dtype, bool(rec_mask),
                                              hidden, batch, u, nc, batch_eff, smem, 1, mma, th, ROWS, "cluster",
                                              k_split, rf, ntiles, mpw))
                    break  # the fewest register-held fragments that fit
        if best is not None:
            return best[1]
    raise SizeLimitError(
        f"{direction} W_hh ({g} gates x {hidden} x {hidden}, {str(dtype).replace('torch.', '')}) does not fit in the "
        f"shared memory and registers of a {nc_max}-CTA cluster on {limits.name}")


FAMILIES = {"cluster": plan_cluster, "grid": plan}  # the launch-plan table; "auto" tries them in this order
KERNEL_ENV = "FUSED_RNN_CUPY_KERNEL"  # "auto" (default), "cluster" or "grid"


def choose(direction, kind, hidden, batch, dtype, limits: DeviceLimits, *, kernel="auto", directions=1,
           **options) -> Config:
    """The configuration the backend launches: `kernel` names a family of FAMILIES, or "auto":
    the first family whose plan fits (the cluster kernel on sm_90 where it fits, and for the FMA path
    only up to CLUSTER_FMA_AUTO_MAX_BATCH rows, else grid-wide).
    directions=2: both directions of a bidirectional layer in one launch; the grid-wide family then
    plans each direction on half of the SMs (all blocks of both must be co-resident; not where that
    loses the tensor-core path one direction has), the cluster family runs one cluster per
    direction (clusters need not be co-resident: they never wait on each other)."""
    if kernel != "auto" and kernel not in FAMILIES:
        raise ValueError(f"kernel must be 'auto' or one of {tuple(FAMILIES)}, got {kernel!r}")
    if directions not in (1, 2):
        raise ValueError(f"directions must be 1 or 2, got {directions!r}")
    names = tuple(FAMILIES) if kernel == "auto" else (kernel,)
    for i, name in enumerate(names):
        if name == "cluster":  # one cluster per direction, each planned for the registers of a two-direction kernel
            share, extra = limits, {"directions": directions}
        else:  # each direction on half of the SMs
            share, extra = dataclasses.replace(limits, sm_count=max(1, limits.sm_count // directions)), {}
        try:
            config = FAMILIES[name](direction, kind, hidden, batch, dtype, share, **options, **extra)
            if kernel == "auto" and name == "cluster" and not config.mma and batch > CLUSTER_FMA_AUTO_MAX_BATCH:
                continue  # fits, but the grid-wide FMA kernel is faster there
            if directions == 2 and not config.mma and FAMILIES[name](direction, kind, hidden, batch, dtype, limits,
                                                                      **options).mma:
                # half of the SMs fit W_hh only in the FMA layout: two tensor-core launches are faster
                raise SizeLimitError(f"both directions of {kind} H={hidden} in one launch fit only without tensor "
                                     "cores (FMA), one direction at a time with them")
            return dataclasses.replace(config, directions=directions)
        except SizeLimitError:
            if i == len(names) - 1:
                raise


# ----------------------------------------------------------------------------------------------
# sources

_INCLUDE = re.compile(r'^#include "cupy/recurrence\.cuh"\s*$', re.MULTILINE)


def _read(name):
    return (SOURCE_DIR / name).read_text()


def kernel_source(config: Config, barrier="cg"):
    """(source, compiler options, name expression) of one configuration.

    The shared header is inlined, so the text is self-contained (and CuPy's on-disk cache key,
    which hashes the source, changes whenever any of it changes); the default instantiations are
    switched off and the one configuration is instantiated explicitly."""
    if barrier not in ("cg", "atomic"):
        raise ValueError(f"barrier must be 'cg' or 'atomic', got {barrier!r}")
    cluster = config.kernel == "cluster"
    file = "cluster.cu" if cluster else ("forward.cu" if config.direction == "forward" else "backward.cu")
    header = _read("recurrence.cuh").replace("#pragma once", "")
    source, n = _INCLUDE.subn(lambda _: header, _read(file))
    if n != 1:
        raise RuntimeError(f"{file}: expected exactly one #include \"cupy/recurrence.cuh\"")
    macro = "FRNN_INSTANTIATE_" + ("CLUSTER_" if cluster else "") + config.direction.upper()
    source += f"\n{macro}({config.template_args})\n"
    options = ["-std=c++17", "-DFRNN_NO_DEFAULT_INSTANTIATIONS"]
    if barrier == "atomic" or cluster:  # the cluster kernels use no grid barrier: skip cooperative_groups.h
        options.append("-DFRNN_ATOMIC_BARRIER")
    return source, tuple(options), config.name


# ----------------------------------------------------------------------------------------------
# CUDA device attributes (cudaDeviceAttr values, stable across CUDA versions)
_ATTR = {
    "sm_count": 16,
    "max_threads_per_sm": 39,
    "cc_major": 75,
    "cc_minor": 76,
    "smem_per_sm": 81,
    "regs_per_sm": 82,
    "cooperative_launch": 95,
    "smem_per_block_optin": 97,
    "max_blocks_per_sm": 106,
    "reserved_smem_per_block": 111,
}


def _import_cupy():
    import cupy  # noqa: F401  (lazy: the package imports without it)

    return cupy


class CupyBackend:
    """The "cupy" backend of rnn.backends (see the interface there)."""

    name = "cupy"

    def __init__(self):
        self._lock = threading.Lock()
        self._limits = {}  # device index -> DeviceLimits
        self._kernels = {}  # (device index, barrier, compile key) -> cupy RawKernel
        self._barrier = env_choice(BARRIER_ENV, "cg", ("cg", "atomic"), "'cg' or 'atomic'")
        self._mma = None if env_choice(MMA_ENV, "auto", ("auto", "off"), "'auto' or 'off'") == "auto" else False
        self._family = env_choice(KERNEL_ENV, "auto", ("auto", *FAMILIES), f"'auto' or one of {tuple(FAMILIES)}")

    # ---- availability ------------------------------------------------------------------------
    def install_problem(self):
        """None if cupy imports, else why not (rnn.backends.available() reports it)."""
        try:
            _import_cupy()
        except ImportError:
            return INSTALL_HINT
        except Exception as exc:  # e.g. a cupy wheel for another CUDA major version
            return f"cupy is installed but cannot be imported: {type(exc).__name__}: {exc}"
        return None

    def device_limits(self, device) -> DeviceLimits:
        device = torch.device(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._limits:
            cupy = _import_cupy()
            get = cupy.cuda.runtime.deviceGetAttribute
            a = {key: get(code, index) for key, code in _ATTR.items()}
            self._limits[index] = DeviceLimits(
                name=f"cuda:{index} ({torch.cuda.get_device_name(index)})",
                sm_count=a["sm_count"],
                smem_per_block_optin=a["smem_per_block_optin"],
                smem_per_sm=a["smem_per_sm"],
                max_threads_per_sm=a["max_threads_per_sm"],
                regs_per_sm=a["regs_per_sm"],
                max_blocks_per_sm=a["max_blocks_per_sm"],
                reserved_smem_per_block=a["reserved_smem_per_block"],
                compute_capability=(a["cc_major"], a["cc_minor"]),
                cooperative_launch=bool(a["cooperative_launch"]),
                # sm_90 parts run clusters of 8 CTAs, 16 with the non-portable attribute the launch sets
                max_cluster=CLUSTER_NON_PORTABLE if (a["cc_major"], a["cc_minor"]) >= CLUSTER_MIN_COMPUTE_CAPABILITY else 0,
            )
        return self._limits[index]

    def unavailable_reason(self, device, spec, hidden, batch, dtype):
        """None if this call can run here, else one sentence saying why not."""
        device = torch.device(device)
        if device.type != "cuda":
            return f"the cupy backend runs on CUDA devices only, got device {device}"
        problem = self.install_problem()
        if problem:
            return problem
        if dtype not in DTYPES:
            return f"the cupy backend supports dtypes {', '.join(str(d) for d in DTYPES)}, got {dtype}"
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        try:
            limits = self.device_limits(device)
        except Exception as exc:  # driver/runtime trouble: report, do not crash "auto"
            return f"cannot query {device} through cupy: {exc}"
        if limits.compute_capability < MIN_COMPUTE_CAPABILITY:
            return f"the cupy backend needs compute capability >= 7.0, {device} has {limits.compute_capability}"
        if not limits.cooperative_launch:
            return f"{device} does not support cooperative launches"
        try:
            for direction in ("forward", "backward"):
                self._plan(direction, spec, int(hidden), int(batch), dtype, device, rec_mask=False)
        except SizeLimitError as exc:
            return str(exc)
        return None

    def describe(self, device, spec, hidden, batch, dtype, rec_mask=False) -> str:
        """How a call would run, per direction: kernel family, matvec path, CTAs, units per CTA."""
        parts = []
        for direction in ("forward", "backward"):
            c = self._plan(direction, spec, int(hidden), int(batch), dtype, torch.device(device), rec_mask)
            path = ("tf32 mma" if dtype == torch.float32 else "mma") if c.mma else "fma"
            if c.kernel == "cluster":
                parts.append(f"{direction} {path}, cluster of {c.grid} CTAs x {c.units} units, {c.threads} threads, "
                             f"{c.reg_frags} weight fragments per warp in registers")
            else:
                parts.append(f"{direction} {path}, {c.grid} blocks x {c.units} units, batch tile {c.batch_tile}")
        return "; ".join(parts)

    # ---- compile + launch --------------------------------------------------------------------
    def _kernel(self, index, config: Config):
        key = (index, self._barrier, config.compile_key)
        with self._lock:
            kernel = self._kernels.get(key)
            if kernel is None:
                kernel = self._compile(config)
                self._kernels[key] = kernel
        return kernel

    def _compile(self, config):
        cupy = _import_cupy()
        source, options, name = kernel_source(config, self._barrier)
        module = cupy.RawModule(code=source, options=options, name_expressions=(name,))
        try:
            kernel = module.get_function(name)
            kernel.kernel  # compile now, so that a missing header surfaces here
            return kernel
        except cupy.cuda.compiler.CompileException as exc:
            if self._barrier != "cg" or "cooperative_groups" not in str(exc):
                raise
        # NVRTC without the CUDA toolkit headers: same kernels with the hand-written barrier
        warnings.warn(
            "cooperative_groups.h is not reachable by NVRTC; the cupy backend uses its atomic grid "
            f"barrier instead (set {BARRIER_ENV}=atomic to silence this)",
            RuntimeWarning,
            stacklevel=3,
        )
        self._barrier = "atomic"
        source, options, name = kernel_source(config, "atomic")
        module = cupy.RawModule(code=source, options=options, name_expressions=(name,))
        kernel = module.get_function(name)
        kernel.kernel
        return kernel

    def _launch(self, device, config: Config, args):
        cupy = _import_cupy()
        index = device.index if device.index is not None else torch.cuda.current_device()
        with cupy.cuda.Device(index):
            kernel = self._kernel(index, config)
            function = kernel.kernel
            if config.smem > 48 * 1024 and kernel.max_dynamic_shared_size_bytes < config.smem:
                kernel.max_dynamic_shared_size_bytes = config.smem
            limits = self.device_limits(device)
            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
            if config.kernel == "cluster":
                if kernel.num_regs * config.threads > limits.regs_per_sm:
                    raise SizeLimitError(
                        f"the cupy cluster {config.direction} kernel uses {kernel.num_regs} registers x "
                        f"{config.threads} threads, above the {limits.regs_per_sm} of an SM of {limits.name}; "
                        f"set {KERNEL_ENV}=grid")
                if config.grid > CLUSTER_PORTABLE:  # 16-CTA clusters are opt-in per kernel
                    cupy.cuda.driver.funcSetAttribute(function.ptr, CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)
                # the cluster shape is compiled in (__cluster_dims__): an ordinary launch of one cluster
                # per direction
                function((config.directions * config.grid, 1, 1), (config.threads, 1, 1), args,
                         shared_mem=config.smem, stream=stream)
                return
            occupancy = getattr(cupy.cuda.driver, "occupancyMaxActiveBlocksPerMultiprocessor", None)
            resident = None
            if occupancy is not None:
                resident = occupancy(function.ptr, config.threads, config.smem) * limits.sm_count
            blocks = config.directions * config.grid
            if resident is not None and blocks > resident:
                raise SizeLimitError(
                    f"the cupy {config.direction} kernel needs {blocks} co-resident blocks of "
                    f"{config.threads} threads and {config.smem / 1024:.1f} KiB shared memory, but "
                    f"{limits.name} holds only {resident} ({kernel.num_regs} registers per thread); "
                    "use backend='triton'"
                )
            with warnings.catch_warnings():
                # CuPy would shrink an oversized cooperative grid; that would drop hidden units
                warnings.filterwarnings("error", message=".*grid size will be reduced.*")
                function(
                    (blocks, 1, 1),
                    (config.threads, 1, 1),
                    args,
                    shared_mem=config.smem,
                    stream=stream,
                    enable_cooperative_groups=True,
                )

    def _plan(self, direction, spec, hidden, batch, dtype, device, rec_mask, directions=1):
        return choose(direction, spec.kind, hidden, batch, dtype, self.device_limits(device), kernel=self._family,
                      directions=directions,
                      activation=spec.activation, recurrent_activation=spec.recurrent_activation,
                      reset_after=spec.reset_after, rec_mask=rec_mask, mma=self._mma,
                      tf32=torch.backends.cuda.matmul.allow_tf32)

    # ---- the backend interface ---------------------------------------------------------------
    def forward(self, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse):
        """One layer, one direction; see rnn.backends for the contract."""
        return self._forward(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, bool(reverse), 1)

    def forward_both(self, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask):
        """Both directions of a bidirectional layer in ONE launch (two groups of blocks on half of
        the SMs each, or two clusters): every tensor but mask has a leading dimension of 2,
        direction 0 forward in time, 1 reverse. Returns a Saved of such tensors. Where the
        both-directions plan does not fit (the grid-wide kernel's W_hh slices on half of the SMs),
        the two directions run one launch after the other, on the same kernels."""
        try:
            return self._forward(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, False, 2)
        except _NoBothPlan:
            s = [self.forward(spec, xg[d], w_hh[d], _of(b_hh, d), _of(h0, d), _of(c0, d), mask, _of(rec_mask, d),
                              bool(d)) for d in (0, 1)]
            return Saved(*(None if a is None else torch.stack((a, b)) for a, b in zip(*s)))

    def _forward(self, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, directions):
        lead = (2,) if directions == 2 else ()
        steps, batch, hidden, device, dtype, acc = _check_lead(spec, lead, xg, "xg", w_hh)
        lstm = spec.kind == "lstm"
        xg = xg.contiguous()
        w_hh, b_hh, h0, c0, mask, rec_mask = _prepare(spec, steps, batch, hidden, device, dtype, acc,
                                                      w_hh, b_hh, h0, c0, mask, rec_mask, lead)
        g = N_GATES[spec.kind]
        config = None
        if batch > 0:
            config = self._plan_call("forward", spec, hidden, batch, dtype, device, rec_mask is not None, directions)
        out = new_empty((*lead, steps, batch, hidden), dtype, device)
        hT = new_empty((*lead, batch, hidden), dtype, device)
        cT = new_empty((*lead, batch, hidden), dtype, device) if lstm else None
        gates = new_empty((*lead, steps, batch, g * hidden), acc, device)
        has_extra = lstm or (spec.kind == "gru" and spec.reset_after)
        extra = new_empty((*lead, steps, batch, hidden), acc, device) if has_extra else None
        if config is None:
            return Saved(out, hT, cT, gates, extra)
        tensors = (_ptr(xg), _ptr(w_hh), _ptr(b_hh), _ptr(h0), _ptr(c0), _ptr(mask), _ptr(rec_mask),
                   _ptr(out), _ptr(hT), _ptr(cT), _ptr(gates), _ptr(extra))
        if config.kernel == "cluster":
            status = torch.zeros(1, dtype=torch.int32, device=device)
            args = tensors + (_ptr(status), _i32(steps), _i32(batch), _i32(hidden), _i32(config.units),
                              _i32(config.ks), _i32(reverse))
            self._launch(device, config, args)
            _raise_on_timeout(status, config, device)
            return Saved(out, hT, cT, gates, extra)
        state = torch.empty((*lead, 2, batch, hidden), dtype=acc, device=device)
        two_phase = spec.kind == "gru" and not spec.reset_after
        scratch = torch.empty((*lead, batch, hidden), dtype=acc, device=device) if two_phase else None
        barrier = torch.zeros(1, dtype=torch.int32, device=device)
        args = tensors + (_ptr(state), _ptr(scratch), _ptr(barrier), _i32(steps), _i32(batch), _i32(hidden),
                          _i32(config.units), _i32(config.batch_tile), _i32(reverse))
        self._launch(device, config, args)
        return Saved(out, hT, cT, gates, extra)

    def backward(self, spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, saved, dout, dhT, dcT):
        """Reverse-time recurrence: (dxg, dh0, dc0); see rnn.backends for the contract."""
        return self._backward(spec, w_hh, b_hh, h0, c0, mask, rec_mask, bool(reverse), saved, dout, dhT, dcT, 1)

    def backward_both(self, spec, w_hh, b_hh, h0, c0, mask, rec_mask, saved, dout, dhT, dcT):
        """The backward of forward_both in ONE launch (or two, as there): every tensor but mask with
        a leading dimension of 2; returns (dxg, dh0, dc0) stacked the same way."""
        try:
            return self._backward(spec, w_hh, b_hh, h0, c0, mask, rec_mask, False, saved, dout, dhT, dcT, 2)
        except _NoBothPlan:
            g = [self.backward(spec, w_hh[d], _of(b_hh, d), _of(h0, d), _of(c0, d), mask, _of(rec_mask, d), bool(d),
                               Saved(*(_of(t, d) for t in saved)), _of(dout, d), _of(dhT, d), _of(dcT, d))
                 for d in (0, 1)]
            return tuple(None if a is None else torch.stack((a, b)) for a, b in zip(*g))

    def _backward(self, spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, saved, dout, dhT, dcT, directions):
        lead = (2,) if directions == 2 else ()
        steps, batch, hidden, device, dtype, acc = _check_lead(spec, lead, saved.out, "saved.out", w_hh,
                                                               gates_tensor=False)
        lstm = spec.kind == "lstm"
        g = N_GATES[spec.kind]
        w_hh, b_hh, h0, c0, mask, rec_mask = _prepare(spec, steps, batch, hidden, device, dtype, acc,
                                                      w_hh, b_hh, h0, c0, mask, rec_mask, lead)
        gates = _expect(saved.gates, "saved.gates", (*lead, steps, batch, g * hidden), acc, device)
        has_extra = lstm or (spec.kind == "gru" and spec.reset_after)
        extra = _expect(saved.extra, "saved.extra", (*lead, steps, batch, hidden), acc, device) if has_extra else None
        out = saved.out.contiguous()
        dout = _optional(dout, "dout", (*lead, steps, batch, hidden), dtype, device)
        dhT = _optional(dhT, "dhT", (*lead, batch, hidden), dtype, device)
        dcT = _optional(dcT, "dcT", (*lead, batch, hidden), dtype, device) if lstm else None
        config = None
        if batch > 0:
            config = self._plan_call("backward", spec, hidden, batch, dtype, device, rec_mask is not None, directions)
        dxg = new_empty((*lead, steps, batch, g * hidden), dtype, device)
        dh0 = new_empty((*lead, batch, hidden), dtype, device)
        dc0 = new_empty((*lead, batch, hidden), dtype, device) if lstm else None
        if config is None:
            return dxg, dh0, dc0
        tensors = (_ptr(w_hh), _ptr(h0), _ptr(c0), _ptr(mask), _ptr(rec_mask), _ptr(out), _ptr(gates), _ptr(extra),
                   _ptr(dout), _ptr(dhT), _ptr(dcT), _ptr(dxg), _ptr(dh0), _ptr(dc0))
        if config.kernel == "cluster":
            status = torch.zeros(1, dtype=torch.int32, device=device)
            args = tensors + (_ptr(status), _i32(steps), _i32(batch), _i32(hidden), _i32(config.units),
                              _i32(config.ks), _i32(reverse))
            self._launch(device, config, args)
            _raise_on_timeout(status, config, device)
            return dxg, dh0, dc0
        state = torch.empty((*lead, 2, batch, hidden), dtype=acc, device=device)
        # dA, exchanged between blocks each step in the storage type (half the bytes of fp32 for bf16 / fp16)
        scratch = torch.empty((*lead, 2, batch, g * hidden), dtype=dtype, device=device)
        barrier = torch.zeros(1, dtype=torch.int32, device=device)
        args = tensors + (_ptr(state), _ptr(scratch), _ptr(barrier), _i32(steps), _i32(batch), _i32(hidden),
                          _i32(config.units), _i32(config.batch_tile), _i32(reverse))
        self._launch(device, config, args)
        return dxg, dh0, dc0

    def _plan_call(self, direction, spec, hidden, batch, dtype, device, rec_mask, directions):
        """The configuration of one call; _NoBothPlan where both directions do not fit one launch."""
        try:
            return self._plan(direction, spec, hidden, batch, dtype, device, rec_mask, directions)
        except SizeLimitError:
            if directions == 1:
                raise
            self._plan(direction, spec, hidden, batch, dtype, device, rec_mask)  # one direction fits, or raise
            raise _NoBothPlan from None


class _NoBothPlan(Exception):
    """Both directions fit one launch each but not one launch together (forward_both runs two)."""


def _of(t, d):
    return None if t is None else t[d]


def _raise_on_timeout(status, config: Config, device):
    """Read a cluster launch's status word back and raise ClusterTimeoutError if a wait timed out.
    The 4-byte copy waits for the kernel (as the Triton persistent path reads its barrier status);
    inside CUDA-graph capture nothing can be read back, so the check is skipped there. The
    grid-wide kernels have no such flag: their cooperative launch guarantees co-residency."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    flags = int(status.item())
    if flags & 1:
        what = (f"the cupy cluster {config.direction} kernel ({config.kind}, H={config.hidden}, B={config.batch}, "
                f"{str(config.dtype).replace('torch.', '')}; {config.name}: a cluster of {config.grid} CTAs x "
                f"{config.units} units, {config.threads} threads)")
        raise ClusterTimeoutError(
            f"{what} timed out waiting for another CTA's exchange (status flags {flags:#x}): a CTA of the cluster "
            "stopped delivering its slice, so the outputs of this call are invalid and were not returned. Set "
            f"{KERNEL_ENV}=grid to run the grid-wide kernels instead, or use backend='triton'.")


# ----------------------------------------------------------------------------------------------
# argument checks and conversion (torch only; every tensor handed to a kernel is contiguous)

def _ptr(t):
    import numpy

    return numpy.uint64(0 if t is None else t.data_ptr())


def _i32(v):
    import numpy

    return numpy.int32(v)


def _shape(t):
    return tuple(t.shape)


def _check_common(spec, x, name, w_hh, gates_tensor=True):
    """(T, B, H, device, dtype, accumulation dtype) from the leading tensor and w_hh."""
    if spec.kind not in N_GATES:
        raise ValueError(f"cell kind must be one of {tuple(N_GATES)}, got {spec.kind!r}")
    for act in (spec.activation, spec.recurrent_activation):
        if act not in ACT_CODES:
            raise ValueError(f"activation must be one of {tuple(ACT_CODES)}, got {act!r}")
    g = N_GATES[spec.kind]
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{name} must be a 3-d tensor (T, B, {'G*H' if gates_tensor else 'H'}), got "
                         f"{_shape(x) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.device.type != "cuda":
        raise ValueError(f"the cupy backend needs CUDA tensors, {name} is on {x.device}")
    if x.dtype not in DTYPES:
        raise ValueError(f"the cupy backend supports dtypes {[str(d) for d in DTYPES]}, {name} is {x.dtype}")
    if not isinstance(w_hh, torch.Tensor) or w_hh.dim() != 2 or w_hh.shape[0] != g * w_hh.shape[1]:
        raise ValueError(f"w_hh must have shape (G*H, H) with G={g} for {spec.kind}, got "
                         f"{_shape(w_hh) if isinstance(w_hh, torch.Tensor) else type(w_hh).__name__}")
    hidden = w_hh.shape[1]
    steps, batch, width = x.shape
    expected = g * hidden if gates_tensor else hidden
    if width != expected:
        raise ValueError(f"{name} must have shape (T, B, {expected}) for {spec.kind} with H={hidden}, got {_shape(x)}")
    return steps, batch, hidden, x.device, x.dtype, DTYPES[x.dtype][2]


def _check_lead(spec, lead, x, name, w_hh, gates_tensor=True):
    """_check_common of one direction; with lead (2,) of both, stacked on a leading dimension of 2."""
    if not lead:
        return _check_common(spec, x, name, w_hh, gates_tensor)
    for what, t in ((name, x), ("w_hh", w_hh)):
        if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] != 2:
            raise ValueError(f"both directions: {what} must have a leading dimension of 2, got "
                             f"{_shape(t) if isinstance(t, torch.Tensor) else type(t).__name__}")
    return _check_common(spec, x[0], name, w_hh[0], gates_tensor)


def _expect(t, name, shape, dtype, device):
    if not isinstance(t, torch.Tensor) or _shape(t) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {_shape(t) if isinstance(t, torch.Tensor) else t!r}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    return t.to(dtype).contiguous()


def _optional(t, name, shape, dtype, device):
    return None if t is None else _expect(t, name, shape, dtype, device)


def _prepare(spec, steps, batch, hidden, device, dtype, acc, w_hh, b_hh, h0, c0, mask, rec_mask, lead=()):
    """Every tensor checked and contiguous; `lead` (2,): both directions stacked (all but mask)."""
    g = N_GATES[spec.kind]
    w_hh = _expect(w_hh, "w_hh", (*lead, g * hidden, hidden), dtype, device)
    b_hh = _optional(b_hh, "b_hh", (*lead, g * hidden), dtype, device)
    h0 = _optional(h0, "h0", (*lead, batch, hidden), dtype, device)
    c0 = _optional(c0, "c0", (*lead, batch, hidden), dtype, device) if spec.kind == "lstm" else None
    if mask is not None:
        if _shape(mask) != (steps, batch):
            raise ValueError(f"mask must have shape (T, B) = {(steps, batch)}, got {_shape(mask)}")
        mask = mask.to(device=device, dtype=torch.bool).contiguous()  # bool is one byte: 0 / 1
    rec_mask = _optional(rec_mask, "rec_mask", (*lead, g, batch, hidden), acc, device)
    return w_hh, b_hh, h0, c0, mask, rec_mask
