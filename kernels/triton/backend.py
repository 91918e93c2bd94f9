"""Launchers for the Triton recurrence kernels: the launch plan (grid, block sizes, persistent or
per-step), the co-residency check of persistent launches, the CUDA-graph cache of the per-step
path, and `TritonBackend`, which implements the backend interface of rnn.backends (forward /
backward / unavailable_reason).

A persistent launch can never hang: its plan fits the device's shared memory (estimated here,
validated against sm_90 compiles by tests/test_hang_safety.py), the compiled kernel's real
resources are checked for co-residency before the launch, the launch is cooperative where Triton
supports it, and every grid-barrier wait is bounded (barrier.py); a timed-out launch raises
BarrierTimeoutError instead of returning its outputs.

Shapes follow rnn.cells: T time, B batch, H hidden, G gates; xg (T, B, G*H), w_hh (G*H, H).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import triton

from .. import Saved, compute_dtype, env_choice, new_empty
from .barrier import SPIN_CAP, failed_launch, new_status, steps_per_launch
from .recurrence import ACTIVATION_CODES, BOTH_DIRECTIONS, KIND_CODES, backward_kernel, forward_kernel

# Kernels are built as interpreted functions when TRITON_INTERPRET=1 at import time (triton decides
# at decoration time); then they run on CPU tensors, one program after another.
INTERPRET = type(forward_kernel).__name__ == "InterpretedFunction"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MIN_BLOCK = 16           # tl.dot needs M, N, K >= 16
W_BUDGET_BYTES = 128 * 1024  # on-chip W_hh slice per program for the persistent path (untuned)
H_OPERAND_ELEMS = 16 * 1024  # cap on BLOCK_B * K_PAD, the h operand loaded per step
# largest batch tile of a persistent plan: a larger one leaves SMs idle (fewer batch programs) and
# puts a split-K accumulator of N x BLOCK_B in every warp (sm_90 estimates, B64 / B256 at H256:
# LSTM bf16 forward 3.41 -> 2.44 / 5.36 -> 3.96 us with tiles of 32, SimpleRNN fp32 B256 8.32
# (788 B spill) -> 3.20, no spill; B <= 32 unchanged)
BLOCK_B_MAX = 32
# the reduce-scatter backward (_reduce_plan): warps, units per program (each gate's dot has K = 16),
# the largest batch tile, and the partial sums one program loads after the barrier (REDUCE x
# BLOCK_H x BLOCK_B elements, all in flight at once)
RS_WARPS = 8
RS_BLOCK_H = 16
RS_SUM_ELEMS = 32 * 1024
RS_BLOCK_B = 32
# the dot's output piece (M x BLOCK_B fp32): at most 32 registers a thread where three pieces still
# cover H (sm_90, LSTM bf16 B64 H768: a 512 x 32 piece spilled 64 B of the W_hh rows; 3 x 256 none)
RS_PIECE_ELEMS = 8 * 1024
MAX_REGISTERS = 255  # a thread's registers on sm_70 .. sm_90 (Plan.maxnreg)
SMEM_STATIC_BYTES = 1024    # static shared memory in the sm_90 cubins of these kernels (cuobjdump SHARED:1024
                            # wherever they use shared memory), on top of Triton's dynamic metadata.shared
SMEM_SLACK_BYTES = 1024     # margin of persistent_shared_bytes for buffers another Triton version may add
PERSISTENT_ENV = "FUSED_RNN_TRITON_PERSISTENT"  # "auto" (default), "off" (per step), "on" (or raise)
FP32_MATMUL_ENV = "FUSED_RNN_FP32_MATMUL"  # "3xtf32" (default) or "ieee": fp32 recurrent matmul without tf32
FP32_MATMULS = {"3xtf32": "tf32x3", "ieee": "ieee"}


class BarrierTimeoutError(RuntimeError):
    """A persistent launch gave up waiting at a grid barrier; its outputs were not returned."""


class NotResidentError(RuntimeError):
    """A persistent grid cannot be co-resident on the device (found before launching)."""


@dataclass(frozen=True)
class DeviceLimits:
    """What co-residency depends on (bytes, registers, counts per SM unless named per block)."""
    name: str
    n_sm: int
    smem_per_block_optin: int
    smem_per_sm: int
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    reserved_smem_per_block: int = 1024  # sm_80+: the driver keeps 1 KiB of each block's share
    max_regs_per_thread: int = 255
    max_threads_per_block: int = 1024

    @staticmethod
    def of(device) -> "DeviceLimits":
        return _device_limits(torch.device(device).index if torch.device(device).index is not None
                              else torch.cuda.current_device())


SM90 = DeviceLimits("sm_90 (H100 SXM)", n_sm=132, smem_per_block_optin=232448, smem_per_sm=233472)


@functools.lru_cache(maxsize=None)
def _device_limits(index):
    props = torch.cuda.get_device_properties(index)
    drv = triton.runtime.driver.active.utils.get_device_properties(index)
    optin = drv["max_shared_mem"]  # CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    cc = (props.major, props.minor)
    return DeviceLimits(
        name=f"cuda:{index} ({props.name}, sm_{props.major}{props.minor})",
        n_sm=props.multi_processor_count,
        smem_per_block_optin=optin,
        smem_per_sm=getattr(props, "shared_memory_per_multiprocessor", optin + 1024),
        regs_per_sm=getattr(props, "regs_per_multiprocessor", drv["max_num_regs"]),
        max_threads_per_sm=props.max_threads_per_multi_processor,
        # 32 on sm_70/80/90/100, 16 or more elsewhere: 16 is the safe side when unsure
        max_blocks_per_sm=32 if cc in ((7, 0), (8, 0), (9, 0), (10, 0)) else 16,
    )


def _round_up(n, m):
    return -(-n // m) * m


def blocks_per_sm(n_regs, num_warps, shared, limits: DeviceLimits = SM90) -> int:
    """Blocks of a kernel that fit on one SM at once (the CUDA occupancy rules): registers are
    allocated per warp in units of 256, shared memory per block in units of 128 bytes plus the
    driver's reserved share. 0 if one block alone does not fit."""
    threads = num_warps * 32
    if (threads > limits.max_threads_per_block or n_regs > limits.max_regs_per_thread
            or shared > limits.smem_per_block_optin):
        return 0
    by_threads = limits.max_threads_per_sm // threads
    by_regs = limits.regs_per_sm // _round_up(max(n_regs, 1) * 32, 256) // num_warps
    by_smem = limits.smem_per_sm // _round_up(shared + limits.reserved_smem_per_block, 128)
    return min(by_threads, by_regs, by_smem, limits.max_blocks_per_sm)


def check_resident(kernel, grid, limits: DeviceLimits, what: str) -> int:
    """Raise NotResidentError unless every program of `grid` can be resident at once, judged from
    the compiled kernel's resources: registers from the loaded module (where a Triton version does
    not expose them, the hardware maximum is assumed), Triton's dynamic shared memory plus the
    static SMEM_STATIC_BYTES (Triton does not report the static part). Returns blocks per SM."""
    programs = 1
    for n in grid:
        programs *= n
    try:
        getattr(kernel, "_init_handles", lambda: None)()  # loads the module: n_regs, Triton's own smem check
    except triton.runtime.errors.OutOfResources as exc:
        raise NotResidentError(f"{what}: the compiled kernel does not fit on {limits.name}: {exc}") from exc
    n_regs = getattr(kernel, "n_regs", None) or limits.max_regs_per_thread
    num_warps, shared = kernel.metadata.num_warps, kernel.metadata.shared + SMEM_STATIC_BYTES
    per_sm = blocks_per_sm(n_regs, num_warps, shared, limits)
    if per_sm * limits.n_sm < programs:
        raise NotResidentError(
            f"{what}: {programs} programs cannot all be resident on {limits.name}: {per_sm} per SM x "
            f"{limits.n_sm} SMs (compiled: {n_regs} registers x {num_warps * 32} threads, "
            f"{shared} bytes shared memory per block, {SMEM_STATIC_BYTES} of them static)")
    return per_sm


@functools.lru_cache(maxsize=None)
def cooperative_options() -> dict:
    """{"launch_cooperative_grid": True} where the installed Triton supports cooperative launches
    (the driver then refuses a grid that cannot be co-resident instead of letting it deadlock)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return {}
    return {"launch_cooperative_grid": True} if "launch_cooperative_grid" in CUDAOptions.__dataclass_fields__ else {}


def fp32_precision(tf32: bool) -> str:
    """tl.dot's input_precision for fp32 inputs. tf32 (torch allows tf32 matmuls): one tf32 product
    on tensor cores, as torch's matmuls and cuDNN's RNNs do then. Otherwise 3xtf32: each operand
    split into a tf32 high part and a tf32 remainder, three tensor-core products summed in fp32 (the
    remainder x remainder term dropped): a product error of about 2^-21 relative, the order of fp32's
    own rounding over a sum of H terms, at about a sixth of bf16's tensor-core rate where fp32 FMA
    runs at a fraction of that (sm_90 estimates: profiling.static). FUSED_RNN_FP32_MATMUL=ieee
    keeps fp32 FMA products (bitwise closer to a CPU, several times slower)."""
    if tf32:
        return "tf32"
    return FP32_MATMULS[env_choice(FP32_MATMUL_ENV, "3xtf32", FP32_MATMULS)]


def persistent_mode() -> str:
    return env_choice(PERSISTENT_ENV, "auto", ("auto", "on", "off"), "'auto', 'on' or 'off'")


@dataclass(frozen=True)
class Plan:
    persistent: bool   # one launch for all T (grid barrier) vs one launch per step and phase
    block_h: int       # hidden units per program
    block_b: int       # batch rows per tile
    block_k: int       # K chunk of the streamed recurrent matmul (per-step path)
    k_pad: int         # next power of two >= H (the per-step path's K extent)
    w_resident: bool   # W_hh slices loaded once per launch and kept on chip
    grid: tuple        # (hidden programs, batch programs)
    num_warps: int
    num_stages: int    # 1 for persistent launches: software pipelining of the batch-tile loop
                       # would multiply shared memory (the W_hh slices already live there)
    # persistent only (recurrence.py docstring): the split-K dot of a step
    split: int = 1         # K split = num_warps
    k_parts: tuple = ()    # K pieces (powers of two, multiples of 16 * split) covering K (forward H,
                           # backward G*H)
    w_reg: bool = False    # W_hh rows held in registers (2-byte matmul dtypes)
    # backward only: the reduce-scatter exchange (recurrence.py docstring), each program adding the
    # partial sums of all grid[0] hidden programs; k_parts are then the pieces of H (the dot's M)
    reduce_scatter: bool = False
    # ptxas's register cap. Where the grid fits on the SMs (every persistent plan, and per-step
    # ones up to n_sm programs) one program runs per SM and occupancy gains nothing, but without a
    # cap ptxas aims for one anyway and spills below it (sm_90, triton 3.6: SimpleRNN bf16 B64
    # H256, both directions forward: 64 registers and 24 B of spill; 92 and none with the cap).
    # None: ptxas chooses (larger per-step grids, where several programs share an SM).
    maxnreg: int | None = MAX_REGISTERS

    @property
    def compile_options(self) -> dict:
        """Triton's compile options of this plan's launches."""
        opts = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        return opts if self.maxnreg is None else dict(opts, maxnreg=self.maxnreg)


def _pow2(n, lo=MIN_BLOCK):
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def gates_padded(n_gates) -> int:
    """Gate rows per unit in the forward's fused dot: G rounded up to a power of two."""
    return _pow2(n_gates, 1)


# the largest K piece per matmul operand size: a piece's W rows and h operand are live in registers
# together, and 4-byte pieces of 1024 spill (sm_90, triton 3.6: LSTM fp32 B16 H1024 forward 368 B a
# thread as one piece of 1024, none as two of 512, same estimate)
K_PIECE_MAX = {4: 512}


def k_parts(hidden, split, itemsize=2, cap=None) -> tuple:
    """K pieces of the split-K dot: K rounded up to 16 * split, as at most three powers of two
    (the last one rounded up when more would be needed), each a multiple of 16 * split and, where
    three pieces of `cap` (default K_PIECE_MAX[itemsize]) cover K with no more padding, at most that."""
    def pieces(cap):
        left, parts = _round_up(hidden, 16 * split), []
        while left > 0:
            p = triton.next_power_of_2(left) if len(parts) == 2 else 1 << (left.bit_length() - 1)
            parts.append(min(p, cap))
            left -= min(parts[-1], left)
        return tuple(parts)

    free = pieces(1 << 62)
    cap = K_PIECE_MAX.get(itemsize) if cap is None else cap
    if cap is None or cap < 16 * split:
        return free
    capped = pieces(cap)
    return capped if len(capped) <= 3 and sum(capped) == sum(free) else free


def forward_split(hidden) -> int:
    """K split (= warps) of the forward's fused dot: the largest of 8, 4, 2, 1 with H rounded up to
    16 a multiple of 16 * split, so the K padding stays below one MMA tile (16)."""
    h16 = _round_up(hidden, 16)
    return next(s for s in (8, 4, 2, 1) if h16 % (16 * s) == 0)


# registers for the W_hh rows held per thread (of 255): the rest of a forward step needs ~120, of a
# backward step (no gate activations on the dot's output, dh / dc carried) fewer
W_REG_BYTES_PER_THREAD = {"forward": 256, "backward": 384}


def _splitk_shared_bytes(n_rows, block_b, k, k_op, itemsize, split, w_reg) -> int:
    """Upper bound of a split-K persistent kernel's shared memory (static + dynamic), n_rows of
    K = k on chip: the rows (in shared memory without w_reg; with it, staged once for the identity
    dot beside the identity), or the staged [k_op, block_b] operand (kept twice by 2-byte types),
    the split-K partial sums and a layout change, whichever is larger at once, plus
    SMEM_STATIC_BYTES and SMEM_SLACK_BYTES. A sum of upper bounds: tests/test_hang_safety.py
    checks it against sm_90 compiles."""
    w = n_rows * k * itemsize
    init = w + (split * n_rows * n_rows * itemsize if w_reg else 0)
    cdt = 8 if itemsize == 8 else 4
    step = (2 if itemsize == 2 else 1) * block_b * k_op * itemsize + split * n_rows * block_b * cdt + n_rows * block_b * cdt
    return (max(init, step) if w_reg else w + step) + SMEM_STATIC_BYTES + SMEM_SLACK_BYTES


def forward_shared_bytes(n_gates, block_h, block_b, hidden, itemsize, split, w_reg) -> int:
    """Forward persistent kernel: _splitk_shared_bytes of its NGP * BLOCK_H gate rows x H."""
    k = sum(k_parts(hidden, split, itemsize))
    return _splitk_shared_bytes(gates_padded(n_gates) * block_h, block_b, k, k, itemsize, split, w_reg)


def backward_shared_bytes(n_gates, block_h, block_b, hidden, itemsize, split, w_reg) -> int:
    """Backward persistent kernel: _splitk_shared_bytes of its BLOCK_H rows of W_hh^T x G*H. Its
    operand is staged one K piece at a time (sm_90 compiles: the buffer is reused across pieces)."""
    parts = k_parts(n_gates * hidden, split, itemsize)
    return _splitk_shared_bytes(block_h, block_b, sum(parts), max(parts), itemsize, split, w_reg)


def reduce_shared_bytes(n_gates, block_h, block_b, hidden, itemsize, w_reg) -> int:
    """Reduce-scatter backward (_reduce_plan): an upper bound like _splitk_shared_bytes. Set-up: one
    piece of W_hh rows staged for the identity dot beside the identity (without w_reg: all of them,
    kept); a step: the G dgates tiles [BLOCK_H, BLOCK_B] staged as dot operands (twice, as slack)."""
    n = n_gates * block_h
    parts = _rs_parts(hidden, itemsize, block_b)
    w = n * sum(parts) * itemsize
    init = max(parts) * block_h * itemsize + block_h * block_h * itemsize
    step = 2 * n * block_b * itemsize
    return (max(init, step) if w_reg else w + step) + SMEM_STATIC_BYTES + SMEM_SLACK_BYTES


def _rs_parts(hidden, itemsize, block_b) -> tuple:
    """The reduce-scatter dot's M pieces of H (RS_PIECE_ELEMS: one piece's fp32 output per block)."""
    return k_parts(hidden, RS_WARPS, itemsize, RS_PIECE_ELEMS // block_b)


def plan_shared_bytes(plan, n_gates, hidden, itemsize, direction) -> int:
    """forward_shared_bytes / backward_shared_bytes of a persistent plan."""
    if plan.reduce_scatter:
        return reduce_shared_bytes(n_gates, plan.block_h, plan.block_b, hidden, itemsize, plan.w_reg)
    f = forward_shared_bytes if direction == "forward" else backward_shared_bytes
    return f(n_gates, plan.block_h, plan.block_b, hidden, itemsize, plan.split, plan.w_reg)


def plan_constexprs(plan, direction) -> dict:
    """The kernel constexprs that come from the plan (the same set for both directions)."""
    parts = (tuple(plan.k_parts) or (plan.k_pad,)) + (0, 0, 0)
    out = dict(W_RESIDENT=plan.w_resident, BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_K=plan.block_k,
               SPLIT=plan.split, K1=parts[0], K2=parts[1], K3=parts[2], W_REG=plan.w_reg)
    return out if direction == "forward" else dict(out, REDUCE=plan.grid[0] if plan.reduce_scatter else 0)


def _reduce_plan(hidden, batch, n_gates, itemsize, n_sm, interpret, smem_per_block):
    """The persistent backward with the reduce-scatter exchange (recurrence.py), or None. Each program
    owns the G gate rows of BLOCK_H units and multiplies their dgates by those rows of W_hh over all
    H columns (one dot a gate, M = H in k_parts pieces, N = the batch tile, K = BLOCK_H): a partial
    dh of every unit, exchanged in CDT; after the barrier it sums the partials of its own units.
    Against the all-gather it moves the same L2 bytes for the LSTM (8 B x B x H a program, written
    and read, against 4 gates x 2 B read) without staging G*H dgates in shared memory, and its dots
    have no split-K sum (sm_90 estimates: LSTM bf16 B16 H768 3.48 -> 2.27 us). Cells with 3 or 4
    gates (SimpleRNN's partials would be 4x its dgates), W_hh rows in registers (2-byte types) or
    shared memory (within W_BUDGET_BYTES); M pieces capped so that one dot's fp32 output stays at
    32 registers a thread."""
    if n_gates < 3 or itemsize > 4:  # fp64 keeps the all-gather (the partials are stored as fp32)
        return None
    if interpret:
        parts = k_parts(hidden, RS_WARPS, itemsize)
        bh, bb = _pow2(hidden), _pow2(batch)
        return Plan(True, bh, bb, bh, _pow2(hidden), True, (1, 1), RS_WARPS, 1, RS_WARPS, parts, itemsize == 2,
                    reduce_scatter=True)
    block_h = RS_BLOCK_H
    block_b = min(_pow2(batch), RS_BLOCK_B)
    parts = _rs_parts(hidden, itemsize, block_b)
    grid = (triton.cdiv(hidden, block_h), triton.cdiv(batch, block_b))
    if grid[0] * grid[1] > n_sm or grid[0] * block_h * block_b > RS_SUM_ELEMS:
        return None
    w_bytes = n_gates * block_h * sum(parts) * itemsize
    w_reg = itemsize == 2 and w_bytes <= W_REG_BYTES_PER_THREAD["backward"] * 32 * RS_WARPS
    if not w_reg and w_bytes > W_BUDGET_BYTES:
        return None
    if reduce_shared_bytes(n_gates, block_h, block_b, hidden, itemsize, w_reg) > smem_per_block:
        return None
    return Plan(True, block_h, block_b, block_h, _pow2(hidden), True, grid, RS_WARPS, 1, RS_WARPS, parts, w_reg,
                reduce_scatter=True)


def _splitk_plan(hidden, batch, n_gates, itemsize, n_sm, interpret, smem_per_block, direction):
    """The persistent plan of either direction (one split-K dot per step, recurrence.py), or None.
    Forward: M = NGP gate rows per unit, K = H. Backward: M = the units themselves (rows of W_hh^T),
    K = G*H gate rows. Programs: as many as fit on the SMs with the fewest rows each (a step's
    matmul, shared-memory and register work shrink with them), at least 16 rows (one MMA tile).
    B16 H768 bf16 LSTM: forward 96 programs of 8 units (32 gate rows x 768 in registers, 192 bytes
    a thread), backward 48 programs of 16 units (16 x 3072 in registers, 384 bytes a thread)."""
    fwd = direction == "forward"
    per_unit = gates_padded(n_gates) if fwd else 1
    k = hidden if fwd else n_gates * hidden
    split = forward_split(k)
    parts = k_parts(k, split, itemsize)
    if interpret:  # one program covers everything (the interpreter cannot wait across programs)
        bh, bb = _pow2(hidden, max(1, MIN_BLOCK // per_unit)), _pow2(batch)
        return Plan(True, bh, bb, bh, _pow2(hidden), True, (1, 1), split, 1, split, parts, itemsize == 2)
    cap = max(MIN_BLOCK, 2 * H_OPERAND_ELEMS // sum(parts))  # operand per step: at most 32 Ki elements
    block_b = min(_pow2(batch), 1 << (cap.bit_length() - 1), BLOCK_B_MAX)
    while block_b >= MIN_BLOCK:  # the largest batch tile up to BLOCK_B_MAX that fits
        plan = _splitk_tile_plan(hidden, batch, n_gates, itemsize, n_sm, smem_per_block, per_unit, split, parts,
                                 block_b, direction)
        if plan is not None:
            return plan
        block_b //= 2
    return None


def _splitk_tile_plan(hidden, batch, n_gates, itemsize, n_sm, smem_per_block, per_unit, split, parts, block_b,
                      direction):
    n_b = triton.cdiv(batch, block_b)
    block_h = max(1, MIN_BLOCK // per_unit)
    while triton.cdiv(hidden, block_h) * n_b > n_sm and block_h < 128:
        block_h *= 2
    if triton.cdiv(hidden, block_h) * n_b > n_sm:
        return None
    w_bytes = per_unit * block_h * sum(parts) * itemsize
    w_reg = itemsize == 2 and w_bytes <= W_REG_BYTES_PER_THREAD[direction] * 32 * split
    if not w_reg and w_bytes > W_BUDGET_BYTES:
        return None
    shared = (forward_shared_bytes if direction == "forward" else backward_shared_bytes)(
        n_gates, block_h, block_b, hidden, itemsize, split, w_reg)
    if shared > smem_per_block:
        return None
    return Plan(True, block_h, block_b, block_h, _pow2(hidden), True, (triton.cdiv(hidden, block_h), n_b),
                split, 1, split, parts, w_reg)


def make_plan(hidden, batch, n_gates, itemsize, n_sm, interpret, per_step=False,
              smem_per_block=SM90.smem_per_block_optin, direction="forward", reduce_scatter=False) -> Plan:
    """Pure function choosing how to launch one direction's kernel (itemsize: bytes of the matmul
    dtype). Interpreter: programs run one after another, so the persistent path is ONE program
    covering all of H and B (no cross-program wait), and the per-step path uses small blocks to
    exercise the multi-program slicing. GPU: the persistent path needs every program co-resident
    (grid <= n_sm, one program per SM) and everything on chip within smem_per_block; otherwise one
    fused launch per step (CUDA-graph replayed). Persistent plans of both directions: _splitk_plan;
    reduce_scatter: the backward call may use _reduce_plan (no recurrent dropout, one phase a step)."""
    if hidden < 1 or batch < 1 or n_gates < 1:
        raise ValueError(f"hidden, batch and n_gates must be >= 1, got {hidden}, {batch}, {n_gates}")
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    k_pad = _pow2(hidden)
    if interpret and per_step:
        return Plan(False, MIN_BLOCK, MIN_BLOCK, MIN_BLOCK, k_pad, False,
                    (triton.cdiv(hidden, MIN_BLOCK), triton.cdiv(batch, MIN_BLOCK)), 4, 1)
    if (interpret or not per_step) and reduce_scatter and direction == "backward":
        plan = _reduce_plan(hidden, batch, n_gates, itemsize, n_sm, interpret, smem_per_block)
        if plan is not None:
            return plan
    if interpret or not per_step:
        plan = _splitk_plan(hidden, batch, n_gates, itemsize, n_sm, interpret, smem_per_block, direction)
        if plan is not None:
            return plan
    block_b = min(_pow2(batch), 64)
    block_h = 32 if hidden <= 2048 else 64
    if block_b == 64 and triton.cdiv(hidden, 16) * triton.cdiv(batch, block_b) <= n_sm:
        # 64-row batch tiles (a wgmma's M) with 16-unit programs where the grid still fits on the
        # SMs: twice the programs, each with half of the step's matmul (sm_90 estimates, LSTM B64
        # H768 per step, forward / backward us: bf16 6.64 / 11.45 -> 4.56 / 9.19, fp32 24.5 / 24.9 ->
        # 15.3 / 15.9; with 16-row tiles (mma.sync) 16 units are slower than 32: fp32 B16 H768
        # backward 19.7 -> 32.0)
        block_h = 16
    # the forward's 64-row tiles on 8 warps: with 4, a thread holds 64 fp32 gate accumulators and
    # spills (sm_90, LSTM bf16 B256 H768: 255 registers and 56 B of spill -> 179 and none); the
    # backward's single accumulator does not need them (8 warps: 6.69 -> 6.82 us estimated)
    num_warps = 8 if block_b == 64 and direction == "forward" else 4
    # K chunk of the streamed matmul. At batch tiles of 16 a step is a chain of L2 round trips, one
    # per chunk (the two-stage pipeline waits for a chunk before issuing the next): 256-deep chunks
    # for 2-byte types (sm_90, LSTM bf16 B16 H1024 backward 29.2 -> 15.9 us estimated); fp32 spills
    # from 128 on (152 B), and larger tiles are bandwidth-bound (LSTM bf16 B256 H768 forward 12.4 ->
    # 13.8 with 256)
    block_k = 256 if itemsize == 2 and block_b <= 16 else 64
    grid = (triton.cdiv(hidden, block_h), triton.cdiv(batch, block_b))
    return Plan(False, block_h, block_b, block_k, k_pad, False, grid, num_warps, 2,
                maxnreg=MAX_REGISTERS if grid[0] * grid[1] <= n_sm else None)


def _n_sm(device):
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _issue(kernel, plan, consts, args, T, phases, barriers_per_step, device, spin_cap, what, D=1):
    """Issue every launch of one direction (D = 2: of both, REVERSE=BOTH, grid axis 2 the direction).
    args(status) gives the kernel's arguments up to and including H (status: this launch's barrier
    status rows, one per direction, None without a grid barrier).

    Per-step plan: one launch per step and phase, the kernel boundaries ordering the phases.
    Persistent plan: launches of up to steps_per_launch(...) steps (one, unless T is huge), every
    phase inside (PHASE=0); on a GPU the compiled kernel is checked for co-residency first and
    launched cooperatively where Triton can; with a grid barrier (SYNC) the status rows are read
    back afterwards and a timeout raises BarrierTimeoutError (the outputs are never returned)."""
    options = dict(consts, **plan.compile_options)
    grid = plan.grid + ((D,) if D > 1 else ())
    if not plan.persistent:
        for step in range(T):
            for phase in phases:
                kernel[grid](*args(None), step, step + 1, PHASE=phase, SYNC=False, **options)
        return
    programs = plan.grid[0] * plan.grid[1]  # of one direction: the programs that meet at a barrier
    sync = programs > 1
    chunk = steps_per_launch(programs, barriers_per_step)
    begins = range(0, T, chunk)
    status = new_status(len(begins) * D, device).view(len(begins), D, -1) if sync else None
    if device.type == "cuda" and not INTERPRET:
        options.update(cooperative_options())
        compiled = kernel.warmup(*args(None if status is None else status[0]), 0, min(chunk, T), grid=grid,
                                 PHASE=0, SYNC=sync, **options)
        check_resident(compiled, grid, DeviceLimits.of(device), what)
    for i, begin in enumerate(begins):
        kernel[grid](*args(None if status is None else status[i]), begin, min(begin + chunk, T),
                     PHASE=0, SYNC=sync, **options)
    if sync and not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        failed = failed_launch(status.flatten(0, 1))  # 16 bytes per launch and direction back to the host
        if failed is not None:
            row, timeouts, target = failed
            launch = row // D
            barrier = target // programs
            step = begins[launch] + (barrier - 1) // barriers_per_step
            raise BarrierTimeoutError(
                f"{what}: timed out at grid barrier {barrier} (step {step}): {timeouts} of {programs} programs "
                f"waited {spin_cap} polls for the others, so the grid was not all running at once (another "
                "stream or process holding SMs, MPS, or fewer resident blocks than planned). The outputs of "
                f"this call are invalid and were not returned. Set {PERSISTENT_ENV}=off (one launch per step, "
                "no grid barrier) or use another backend ('cupy' or 'torch').")


class _GraphCache:
    """Per-step launches captured once per configuration in a torch.cuda.CUDAGraph. Inputs are
    copied into the graph's static buffers and the outputs cloned out, so a replay never aliases
    the caller's tensors. At most `max_entries` graphs are kept (oldest dropped first): each holds
    its static buffers and private memory pool."""

    def __init__(self, max_entries=8):
        self._graphs = {}
        self.max_entries = max_entries

    def run(self, key, launch, inputs):
        """launch(inputs) -> tuple of output tensors, issuing only kernel launches (no syncs)."""
        entry = self._graphs.get(key)
        if entry is None:
            static = [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                launch(static)  # compiles the kernels outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = launch(static)
            if len(self._graphs) >= self.max_entries:
                self._graphs.pop(next(iter(self._graphs)))
            entry = self._graphs[key] = (graph, static, outputs)
        graph, static, outputs = entry
        for dst, src in zip(static, inputs):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        graph.replay()
        return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in outputs)


class TritonBackend:
    """The Triton recurrence backend. `per_step=True` forces the per-step path (tests use it to
    cover that path in the interpreter), as FUSED_RNN_TRITON_PERSISTENT=off does; "on" makes a
    size or device that cannot take the persistent path an error instead of a per-step fallback.
    `use_graphs=False` launches the steps eagerly on GPU. `spin_cap`: polls before a grid-barrier
    wait gives up (barrier.SPIN_CAP; tests make it tiny)."""

    def __init__(self, per_step: bool = False, use_graphs: bool = True, spin_cap: int = SPIN_CAP):
        if not 1 <= spin_cap < 2 ** 31:
            raise ValueError(f"spin_cap must be in [1, 2**31), got {spin_cap}")
        self.per_step = per_step
        self.use_graphs = use_graphs
        self.spin_cap = int(spin_cap)
        self._not_resident = set()  # configurations whose persistent grid failed the residency check
        self._graphs = _GraphCache()

    # ---- availability ----------------------------------------------------------------------
    def unavailable_reason(self, device, spec, hidden, batch, dtype):
        device = torch.device(device)
        if dtype not in SUPPORTED_DTYPES:
            return f"dtype {dtype} is not supported: expected one of float32, float16, bfloat16, float64"
        if getattr(spec, "kind", None) not in KIND_CODES:
            return f"cell kind must be one of {tuple(KIND_CODES)}, got {getattr(spec, 'kind', spec)!r}"
        for attr in ("activation", "recurrent_activation"):
            if getattr(spec, attr) not in ACTIVATION_CODES:
                return f"{attr} must be one of {tuple(ACTIVATION_CODES)}, got {getattr(spec, attr)!r}"
        if hidden < 1 or batch < 1:
            return f"hidden size and batch must be >= 1, got hidden={hidden}, batch={batch}"
        if device.type == "cpu":
            if not INTERPRET:
                return ("device is CPU and the Triton interpreter is off "
                        "(set TRITON_INTERPRET=1 before kernels.triton is imported)")
            return None
        if device.type != "cuda":
            return f"device {device} is neither CUDA nor CPU (interpreter)"
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if not INTERPRET:
            major, _ = torch.cuda.get_device_capability(device)
            if major < 8:
                return f"needs compute capability >= 8.0, device {device} has {major}.x"
        return None

    # ---- shared argument preparation ---------------------------------------------------------
    def _check_both(self, spec, xg, w_hh, h0, both):
        """_check of one direction, or with `both` of each of the two stacked on a leading dimension."""
        if not both:
            return self._check(spec, xg, w_hh, h0)
        for name, t in (("xg", xg), ("w_hh", w_hh), ("h0", h0)):
            if t.dim() < 1 or t.shape[0] != 2:
                raise ValueError(f"both directions: {name} must have a leading dimension of 2, got shape "
                                 f"{tuple(t.shape)}")
        shape = self._check(spec, xg[0], w_hh[0], h0[0])
        self._check(spec, xg[1], w_hh[1], h0[1])
        return shape

    def _check(self, spec, xg, w_hh, h0):
        reason = self.unavailable_reason(xg.device, spec, w_hh.shape[-1] if w_hh.dim() == 2 else 0,
                                         xg.shape[1] if xg.dim() == 3 else 0, xg.dtype)
        if reason:
            raise RuntimeError(f"triton backend cannot run: {reason}")
        if xg.dim() != 3:
            raise ValueError(f"xg must be (T, B, G*H), got shape {tuple(xg.shape)}")
        T, B, GH = xg.shape
        H = w_hh.shape[1]
        if tuple(w_hh.shape) != (spec.n_gates * H, H) or GH != spec.n_gates * H:
            raise ValueError(f"w_hh must be ({spec.n_gates}*H, H) and xg (T, B, {spec.n_gates}*H); "
                             f"got w_hh {tuple(w_hh.shape)}, xg {tuple(xg.shape)}")
        if tuple(h0.shape) != (B, H):
            raise ValueError(f"h0 must be (B, H) = {(B, H)}, got {tuple(h0.shape)}")
        return T, B, H

    def _common(self, spec, xg_dtype, device, w_hh, h0, c0, mask, rec_mask, T, B, H, lead=()):
        """Kernel arguments and constexprs; `lead` (2,) with both directions stacked."""
        cdt = compute_dtype(xg_dtype)
        # bf16 tl.dot is wrong in the Triton interpreter: there the matmul runs in fp32 on the same
        # (bf16-representable) values, as tensor cores would with fp32 accumulation.
        mm = torch.float32 if (INTERPRET and xg_dtype == torch.bfloat16) else xg_dtype
        args = dict(
            w=w_hh.detach().to(mm).contiguous(),
            h0=h0.detach().to(xg_dtype).contiguous(),
            c0=(c0.detach().to(cdt).contiguous() if c0 is not None else torch.zeros(*lead, B, H, dtype=cdt, device=device))
            if spec.kind == "lstm" else None,
            mask=None,
            rmask=None,
        )
        if mask is not None:
            if tuple(mask.shape) != (T, B):
                raise ValueError(f"mask must be (T, B) = {(T, B)}, got {tuple(mask.shape)}")
            args["mask"] = mask.detach().to(torch.int8).contiguous()
        if rec_mask is not None:
            if tuple(rec_mask.shape) != (*lead, spec.n_gates, B, H):
                raise ValueError(f"rec_mask must be ({'2, ' if lead else ''}G, B, H) = {(*lead, spec.n_gates, B, H)}, "
                                 f"got {tuple(rec_mask.shape)}")
            args["rmask"] = rec_mask.detach().to(cdt).contiguous()
        # the interpreter computes dots in the operands' dtype whatever the precision asked
        prec = fp32_precision(torch.backends.cuda.matmul.allow_tf32) if xg_dtype == torch.float32 and not INTERPRET \
            else "ieee"
        consts = dict(
            KIND=KIND_CODES[spec.kind], NG=spec.n_gates, ACT=ACTIVATION_CODES[spec.activation],
            RACT=ACTIVATION_CODES[spec.recurrent_activation], RESET_AFTER=bool(spec.reset_after),
            HAS_MASK=mask is not None, HAS_RMASK=rec_mask is not None,
            TWO_PHASE=spec.kind == "gru" and not spec.reset_after, PREC=prec,
        )
        return cdt, args, consts

    def runs_persistent(self, device, spec, hidden, batch, dtype, both=False) -> bool:
        """Whether this call's forward and backward both get a persistent plan on `device`
        (rnn.backends.auto_order weighs it: the per-step path streams W_hh from L2 every step)."""
        device = torch.device(device)
        w = torch.empty((), dtype=dtype)  # the matmul dtype is the I/O dtype
        try:
            return all(self._plan(spec, device, batch, hidden, w, False, d, 2 if both else 1).persistent
                       for d in ("forward", "backward"))
        except RuntimeError:  # FUSED_RNN_TRITON_PERSISTENT=on without a persistent plan: the call raises
            return False

    def _plan(self, spec, device, B, H, w, per_step, direction="forward", D=1, rmask=False):
        """The plan for this call (make_plan with this device's limits and the persistent mode); with
        both directions in one launch (D = 2) each direction gets half of the SMs. A backward may
        exchange partial sums (reduce-scatter) unless it has recurrent dropout or two phases a step."""
        mode = persistent_mode()
        on_gpu = device.type == "cuda" and not INTERPRET
        limits = DeviceLimits.of(device) if on_gpu else SM90
        plan = make_plan(H, B, spec.n_gates, w.element_size(), max(1, limits.n_sm // D) if on_gpu else 1, INTERPRET,
                         per_step or self.per_step or mode == "off", limits.smem_per_block_optin, direction,
                         reduce_scatter=not rmask and not (spec.kind == "gru" and not spec.reset_after))
        if mode == "on" and not plan.persistent and not (per_step or self.per_step):
            raise RuntimeError(f"{PERSISTENT_ENV}=on, but {spec.kind} H={H} B={B} {w.dtype} gets no persistent plan "
                               f"on {limits.name} (W_hh slices or shared memory too large); unset it to run per step")
        return plan

    def _with_fallback(self, attempt, key, spec, device, B, H, w, direction="forward", D=1, rmask=False):
        """attempt(plan) with this call's plan; a persistent grid found not co-resident before its
        launch is replanned per step ("auto": warned once per configuration `key`, which then goes
        per step directly) or raises (FUSED_RNN_TRITON_PERSISTENT=on)."""
        if key not in self._not_resident:
            try:
                return attempt(self._plan(spec, device, B, H, w, False, direction, D, rmask))
            except NotResidentError as exc:
                if persistent_mode() == "on":
                    raise RuntimeError(f"{exc}; {PERSISTENT_ENV}=on forbids the per-step fallback") from exc
                warnings.warn(f"{exc}; running it per step instead", RuntimeWarning, stacklevel=3)
                self._not_resident.add(key)
        return attempt(self._plan(spec, device, B, H, w, True, direction, D, rmask))

    def _run(self, device, plan, key, sequence, inputs):
        """sequence(inputs) issues the launches and returns the outputs. A per-step sequence on a
        GPU is captured once per configuration in a CUDA graph and replayed."""
        if not plan.persistent and device.type == "cuda" and self.use_graphs and not INTERPRET:
            return self._graphs.run(key, sequence, inputs)
        return sequence(inputs)

    @staticmethod
    def _describe(direction, spec, dtype, T, B, H, plan, both=False):
        cell = spec.kind + (f"(reset_after={spec.reset_after})" if spec.kind == "gru" else "")
        return (f"Triton persistent {direction} kernel ({cell}, {dtype}, T={T}, B={B}, H={H}, "
                f"{'both directions, ' if both else ''}grid={plan.grid}, {plan})")

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse):
        return self._forward(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, int(bool(reverse)))

    def forward_both(self, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask):
        """Both directions of a bidirectional layer in ONE launch (two groups of programs, each with
        its own grid barrier and half of the SMs): every tensor but mask has a leading dimension of 2,
        direction 0 forward in time, 1 reverse. Returns a Saved of such tensors, bitwise what two
        forward() calls return."""
        return self._forward(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, BOTH_DIRECTIONS)

    def _forward(self, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse):
        both = reverse == BOTH_DIRECTIONS
        D, lead = (2, (2,)) if both else (1, ())
        T, B, H = self._check_both(spec, xg, w_hh, h0, both)
        device, dtype = xg.device, xg.dtype
        cdt, a, consts = self._common(spec, dtype, device, w_hh, h0, c0, mask, rec_mask, T, B, H, lead)
        lstm, gru_ra = spec.kind == "lstm", spec.kind == "gru" and spec.reset_after
        two = consts["TWO_PHASE"]
        G = spec.n_gates
        if T == 0:
            cT = a["c0"].to(dtype) if lstm else None
            return Saved(new_empty((*lead, 0, B, H), dtype, device), a["h0"].clone(), cT,
                         new_empty((*lead, 0, B, G * H), cdt, device),
                         new_empty((*lead, 0, B, H), cdt, device) if (lstm or gru_ra) else None)
        bias = b_hh.detach().to(cdt).contiguous() if b_hh is not None else None
        consts.update(REVERSE=reverse, HAS_BIAS=bias is not None, NGP=gates_padded(G))
        inputs = [xg.detach().contiguous(), a["w"], bias, a["h0"], a["c0"], a["mask"], a["rmask"]]

        def attempt(plan):
            what = self._describe("forward", spec, dtype, T, B, H, plan, both)

            def sequence(ins):
                xg_, w_, bias_, h0_, c0_, mask_, rmask_ = ins
                out = new_empty((*lead, T, B, H), dtype, device)
                gates = new_empty((*lead, T, B, G * H), cdt, device)
                extra = new_empty((*lead, T, B, H), cdt, device) if (lstm or gru_ra) else None
                scratch = new_empty((*lead, B, H), cdt, device) if two else None

                def args(status):
                    return (xg_, w_, _or(bias_, gates), h0_, _or(c0_, gates), _or(mask_, gates), _or(rmask_, gates),
                            out, gates, _or(extra, gates), _or(scratch, gates), _or(status, gates), self.spin_cap,
                            T, B, H)

                _issue(forward_kernel, plan, dict(consts, **plan_constexprs(plan, "forward")), args, T,
                       (1, 2) if two else (1,), 2 if two else 1, device, self.spin_cap, what, D)
                return out, gates, extra

            return self._run(device, plan, key, sequence, inputs)

        key = ("fwd", spec, T, B, H, dtype, str(device), reverse, bias is not None,
               mask is not None, rec_mask is not None, consts["PREC"])
        out, gates, extra = self._with_fallback(attempt, key, spec, device, B, H, a["w"], "forward", D)
        if both:  # the last step of direction 0 is T - 1, of direction 1 (reverse) 0
            hT = torch.stack((out[0, T - 1], out[1, 0]))
            cT = torch.stack((extra[0, T - 1], extra[1, 0])).to(dtype) if lstm else None
        else:
            last = 0 if reverse else T - 1
            hT = out[last].clone()
            cT = extra[last].to(dtype) if lstm else None
        return Saved(out, hT, cT, gates, extra)

    # ---- backward --------------------------------------------------------------------------
    def backward(self, spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, saved, dout, dhT, dcT):
        return self._backward(spec, w_hh, b_hh, h0, c0, mask, rec_mask, int(bool(reverse)), saved, dout, dhT, dcT)

    def backward_both(self, spec, w_hh, b_hh, h0, c0, mask, rec_mask, saved, dout, dhT, dcT):
        """The backward of forward_both in ONE launch: every tensor but mask with a leading
        dimension of 2; returns (dxg, dh0, dc0) stacked the same way, bitwise two backward() calls."""
        return self._backward(spec, w_hh, b_hh, h0, c0, mask, rec_mask, BOTH_DIRECTIONS, saved, dout, dhT, dcT)

    def _backward(self, spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, saved, dout, dhT, dcT):
        both = reverse == BOTH_DIRECTIONS
        D, lead = (2, (2,)) if both else (1, ())
        out, _, _, gates, extra = saved[:5]
        T, B, H = out.shape[-3:]
        dtype, device = out.dtype, out.device
        G = spec.n_gates
        self._check_both(spec, out.new_empty((*lead, T, B, G * H)), w_hh, h0, both)
        cdt, a, consts = self._common(spec, dtype, device, w_hh, h0, c0, mask, rec_mask, T, B, H, lead)
        lstm = spec.kind == "lstm"
        two = consts["TWO_PHASE"]
        if dout is None:
            dout = torch.zeros(*lead, T, B, H, dtype=dtype, device=device)
        if tuple(dout.shape) != (*lead, T, B, H):
            raise ValueError(f"dout must be {'(2, T, B, H)' if both else '(T, B, H)'} = {(*lead, T, B, H)}, "
                             f"got {tuple(dout.shape)}")

        def carries():
            """dh / dc carries start as dhT / dcT and end as dh0 / dc0 (updated in place by the
            kernel; fresh for every attempt)."""
            dh = dhT.detach().to(cdt, copy=True).contiguous() if dhT is not None \
                else torch.zeros(*lead, B, H, dtype=cdt, device=device)
            dc = None
            if lstm:
                dc = dcT.detach().to(cdt, copy=True).contiguous() if dcT is not None \
                    else torch.zeros(*lead, B, H, dtype=cdt, device=device)
            return dh, dc

        if T == 0:
            return (new_empty((*lead, 0, B, G * H), cdt, device), *carries())
        consts.update(REVERSE=reverse)
        fixed = [a["w"], a["h0"], a["c0"], a["mask"], a["rmask"], out.detach().contiguous(),
                 gates.detach().contiguous(), extra.detach().contiguous() if extra is not None else None,
                 dout.detach().to(dtype).contiguous()]

        def attempt(plan):
            what = self._describe("backward", spec, dtype, T, B, H, plan, both)

            def sequence(ins):
                w_, h0_, c0_, mask_, rmask_, out_, gates_, extra_, dout_, dh_, dc_ = ins
                dxg = new_empty((*lead, T, B, G * H), cdt, device)
                scratch = new_empty((*lead, B, H), cdt, device) if two else None
                # the dgates exchange in the I/O dtype (persistent: double-buffered by step)
                xchg = None if plan.reduce_scatter else new_empty((*lead, 2, B, G * H), dtype, device)
                # the partial sums of dh of the reduce-scatter exchange (double-buffered by step)
                part = new_empty((*lead, 2, plan.grid[1], plan.grid[0], plan.block_b, sum(plan.k_parts)), cdt,
                                 device) if plan.reduce_scatter else None

                def args(status):
                    return (w_, h0_, _or(c0_, dxg), _or(mask_, dxg), _or(rmask_, dxg), out_, gates_,
                            _or(extra_, dxg), dout_, dxg, dh_, _or(dc_, dxg), _or(scratch, dxg), _or(xchg, out_),
                            _or(part, dxg), _or(status, dxg),
                            self.spin_cap, T, B, H)

                # grid barriers per step: after phase 1 and (GRU reset_after=False) phase 2
                _issue(backward_kernel, plan, dict(consts, **plan_constexprs(plan, "backward")), args, T,
                       (1, 2, 3) if two else (1, 3), 2 if two else 1, device, self.spin_cap, what, D)
                return dxg, dh_, dc_

            return self._run(device, plan, key, sequence, fixed + list(carries()))

        key = ("bwd", spec, T, B, H, dtype, str(device), reverse, mask is not None,
               rec_mask is not None, consts["PREC"])
        return self._with_fallback(attempt, key, spec, device, B, H, a["w"], "backward", D, rec_mask is not None)


def _or(t, fallback):
    """A tensor for every pointer argument: unused ones (constexpr-disabled) get `fallback`."""
    return fallback if t is None else t
