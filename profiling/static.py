"""Static kernel report: compile every kernel that "auto" or an explicit backend would launch on an
H100 for sm_90 (no GPU needed), read the compiled code, and estimate the time of one step.

    python -m profiling.static [--cells lstm,gru,rnn] [--dtypes bf16,fp16,fp32] [--batches 1,16,64,256]
                               [--hiddens 256,768,1024] [--backends auto,triton,cupy] [--out DIR]

Legend: B batch, H hidden, G gates, T steps (1024, the benchmark's, where it matters).

Per configuration (cell, dtype, B, H, direction) and backend:
  * the launch plan, from the backend's own pure planning functions (kernels.triton.backend.make_plan,
    kernels.cupy.choose: the cluster kernel where "auto" takes it, with the grid-wide kernel beside
    it as the alternative) with H100 SXM limits: 132 SMs, 228 KiB shared memory per SM (227 KiB per
    block), 64 K registers per SM;
  * the compile, exactly as the launch would do it: Triton through `triton.compile(ASTSource)` for
    GPUTarget("cuda", 90, 32), with the signature, constexprs and specialization attributes
    produced by Triton's own JIT binder from the launch's arguments (so e.g. B == 1 becomes a
    constant and sizes divisible by 16 are marked so, as the JIT does); CuPy's generated source
    through nvcc for sm_90 (the cluster kernels: sm_90a) (nvcc stands in for NVRTC: same front end
    and ptxas);
  * from ptxas (-v): registers, stack frame, spill stores / loads; from cuobjdump: static shared
    memory; with the plan: dynamic shared memory, blocks per SM that fit, whether every block of
    the grid can be co-resident (persistent kernels need it);
  * per step, from the compiled code (profiling.sass): tensor-core instructions (mma.sync = HMMA,
    wgmma = HGMMA), ldmatrix and shared loads / stores with bytes, global loads / stores with
    bytes, barriers, fences and atomics, mbarrier operations and bulk (DSMEM) copies, counted by
    walking the control flow of the PTX for lane 0 of every warp of block 0 through one
    steady-state step (inner loops at their real trip counts; bulk copies, one per issuing
    thread, summed over the lanes); spill traffic (LDL / STL) from the SASS of the step loop,
    each instruction counted once; whether the step loop was found in the SASS;
  * an estimate of the time of one step from the small model below (ESTIMATE_MODEL), beside
    cuDNN's per-step time where a published figure is known, and beside the measured time where
    a GPU benchmark record (profiling/results/*.json) has the same case.

Everything here is compiled for sm_90 and estimated: nothing runs on a GPU.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import contextlib
import datetime as _dt
import functools
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rnn.backends import auto_order

from . import report, sass

# ---------------------------------------------------------------------------------------------
# the target: H100 SXM
ARCH = 90
SM_COUNT = 132
SMEM_PER_SM = 228 * 1024
SMEM_PER_BLOCK = 227 * 1024       # opt-in maximum of one block
SMEM_RESERVED_PER_BLOCK = 1024    # the driver reserves 1 KiB per resident block
REGS_PER_SM = 64 * 1024
REG_ALLOC_UNIT = 256              # registers are allocated per warp in units of 256
MAX_THREADS_PER_SM = 2048
MAX_BLOCKS_PER_SM = 32
SEQ_LEN = 1024                    # T of the benchmark: only its divisibility matters to Triton

DEVICE = "sm_90 (compiled, not run)"
CELLS = ("lstm", "gru", "rnn")
DTYPES = ("bf16", "fp16", "fp32")
BATCHES = (1, 16, 64, 256)
HIDDENS = (256, 768, 1024)
BACKENDS = ("auto", "triton", "cupy")
DIRECTIONS = ("forward", "backward")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}

# ---------------------------------------------------------------------------------------------
# ESTIMATE_MODEL: the per-step latency model, all its constants in one place. An ESTIMATE.
#
#   t_step = t_mma + t_fma + t_smem + t_l2 + t_bar + t_sync          (phases are serial in a step)
#   t_mma  = max(busiest warp's mma.sync count x MMA_WARP_CLK,
#                block's mma FLOPs / MMA_FLOP_PER_CLK_SM
#                + block's wgmma FLOPs / WGMMA_FLOP_PER_CLK_SM) / CLOCK    tensor cores
#   t_fma  = busiest warp's FFMA count x 32 lanes / FFMA_PER_CLK_SM x 4 sub-partitions
#            ... i.e. a warp issues one FFMA per clock on its sub-partition      / CLOCK
#   t_smem = block's shared bytes (ld + st + ldmatrix, 32 lanes a warp) / SMEM_BYTES_PER_CLK / CLOCK
#   t_l2   = max(L2_LATENCY x busiest warp's dependent load rounds,          (latency)
#                the grid's global load + store bytes per step / L2_BYTES_PER_S)  (L2 bandwidth)
#            A round (profiling.sass._LoadRounds) is the loads a thread has in flight before it
#            must wait for one of them (where ptxas must put the wait: the end of the basic block
#            of the first instruction that needs a value, a barrier, a dependent address); a round
#            still in flight when the thread reaches a grid barrier or a cluster exchange's wait
#            completes during that wait and is not counted (a persistent kernel's loads of the
#            next step's inputs).
#   t_bar  = block barriers per step x BAR_CLK / CLOCK
#   t_sync = grid barriers per step x GRID_BARRIER (persistent), or
#            launches per step x LAUNCH_GAP (per-step kernels replayed from a CUDA graph), or
#            for a thread-block cluster (kernels/cupy/cluster.cu) the exchange that replaces the
#            grid barrier: exchanges per step x CLUSTER_EXCHANGE + the CTA's bulk-copied DSMEM
#            bytes per step / DSMEM_BYTES_PER_CLK / CLOCK
# Global stores are fire-and-forget (not on the critical path). Overlap between the terms is
# ignored, so the model leans pessimistic for kernels with much independent work and optimistic
# for long dependency chains inside one term. One overlap is counted: loads issued before a wait
# (above).
ESTIMATE_MODEL = {
    "CLOCK_HZ": 1.755e9,              # H100 SXM boost clock
    "MMA_WARP_CLK": 16,               # one m16n8k16 mma.sync per warp every 16 clocks (~half of the
                                      # sub-partition's dense wgmma rate, which mma.sync does not reach)
    "MMA_FLOP_PER_CLK_SM": 2048,      # mma.sync FLOPs per clock per SM (dense bf16/fp16 wgmma: ~4096)
    "WGMMA_FLOP_PER_CLK_SM": 4096,    # wgmma (dense bf16 / fp16; tf32 counted at K = 16: half its FLOPs)
    "FFMA_PER_CLK_SM": 128,           # fp32 FMA lanes per SM
    "SMEM_BYTES_PER_CLK": 128,        # shared-memory bandwidth per SM
    "L2_LATENCY_S": 260e-9,           # one dependent global (L2) load round trip, ~260 ns-ish
    "L2_BYTES_PER_S": 5.5e12,         # ASSUMPTION (not measured here): L2 read bandwidth of the whole
                                      # GPU; third-party microbenchmarks of the H100 PCIe read about
                                      # 5.5 TB/s (the SXM's 132 SMs likely more); stores are charged
                                      # at the same rate (they take the same L2 slices)
    "BAR_CLK": 20,                    # one __syncthreads / bar.sync with all warps arriving
    "GRID_BARRIER_S": 1.0e-6,         # one grid-wide barrier through L2 (atomic + polls), ~1 us
    "CLUSTER_EXCHANGE_S": 0.3e-6,     # ASSUMPTION (not measured): one cluster exchange, from the last
                                      # bulk DSMEM copy's issue to the receiver's mbarrier wait returning
                                      # (SM-to-SM transfer + complete_tx + try_wait); "a few hundred ns"
    "DSMEM_BYTES_PER_CLK": 32,        # ASSUMPTION (not published): bytes per clock one SM pushes into
                                      # other SMs' shared memory (one 32-byte transaction per clock)
    "LAUNCH_GAP_S": 1.0e-6,           # one kernel of a CUDA graph replay, launch to launch
}

# cuDNN's per-step times that are known for a shape (H100 SXM): published figures quoted by the
# project (DESIGN.md and issue 12), not measured here. (cell, dtype, B, H) -> {direction: us};
# the backward figure is fwd+bwd (5.1 us) minus forward (2.0 us).
CUDNN_PUBLISHED_US = {
    ("lstm", "fp16", 16, 768): {"forward": 2.0, "backward": 3.1},
}
CUDNN_SOURCE = "published figure quoted in DESIGN.md / issue 12 (fwd 2.0 us, fwd+bwd 5.1 us per step)"

ROW_KEYS = (
    "backend", "kernel", "cell", "dtype", "batch", "hidden", "direction", "auto", "status", "note",
    "path", "grid", "threads", "launches_per_step", "registers", "spill_bytes", "spill_load_bytes",
    "stack_bytes", "static_shared_bytes", "dynamic_shared_bytes", "shared_bytes", "blocks_per_sm",
    "needs_co_residency", "co_resident", "step_loop_found",
    "mma_per_step", "mma_per_warp", "wgmma_per_step", "ldsm_per_step", "ldsm_bytes_per_step",
    "lds_per_step", "lds_bytes_per_step", "sts_per_step", "sts_bytes_per_step",
    "ldg_per_step", "ldg_bytes_per_step", "ldg_per_thread", "ldg_rounds", "l2_load_bytes_per_step",
    "l2_store_bytes_per_step",
    "stg_per_step", "stg_bytes_per_step",
    "ffma_per_warp", "bar_per_step", "membar_per_step", "atomic_per_step", "grid_barriers_per_step",
    "cluster_size", "cluster_exchanges_per_step", "bulk_per_step", "dsmem_bytes_per_step", "syncs_per_step",
    "spill_ld_per_step", "spill_st_per_step",
    "us_per_step_est", "est_terms_us", "us_per_step_cudnn", "cudnn_source", "us_per_step_measured",
    "us_per_step_cudnn_measured", "measured_source", "compile_s",
)


# ---------------------------------------------------------------------------------------------
# the kernels a configuration launches

@dataclass(frozen=True)
class Launch:
    """One kernel launch of a step (a persistent kernel: the one launch of the whole sequence)."""
    backend: str
    kernel: str          # name in the report, e.g. "triton.forward_kernel[persistent]"
    path: str            # persistent / per-step, mma / fma
    compile_spec: tuple  # hashable: everything the compiled code depends on (family specific)
    grid: tuple
    threads: int
    dynamic_shared: int | None  # None: the compiled kernel says (Triton)
    args: tuple          # run-time argument values for the PTX walk, in parameter order
    persistent: bool
    grid_barriers_per_step: int
    per_step_launches: int = 1  # how many times this launch runs per step (per-step kernels)
    cluster: int = 1            # CTAs per thread-block cluster (the cluster kernels: the whole grid)
    exchanges_per_step: int = 0  # cluster kernels: DSMEM exchanges (push + mbarrier wait) per step


class Unavailable(Exception):
    """The backend cannot run this configuration (its planner says why)."""


def _torch_dtype(name):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


# ---- Triton --------------------------------------------------------------------------------
# The arguments the launcher (kernels/triton/backend.py) passes, by parameter name, for the
# benchmark's call: b_hh present, no mask, no recurrent dropout, not reversed, tf32 off (torch's
# default). Unused pointers are aliased to a compute-dtype buffer there, so they are typed so here.
_TRITON_IO = {"xg_ptr", "h0_ptr", "out_ptr", "dout_ptr", "xchg_ptr"}
_TRITON_I32 = ("sync_ptr", "status_ptr", "err_ptr", "flag_ptr")


def _triton_scalars():
    out = {}
    with contextlib.suppress(Exception):
        from kernels.triton import barrier

        out["spin_cap"] = barrier.SPIN_CAP
    return out


def triton_launches(cell, dtype, batch, hidden, direction, tf32=False, both=False):
    """The launches of one direction, or (both) of both directions of a bidirectional layer in one
    launch (REVERSE=BOTH: each direction planned on half of the SMs, grid axis 2 the direction)."""
    from kernels.triton import backend as TB
    from kernels.triton import recurrence as R

    G = GATES[cell]
    plan = TB.make_plan(hidden, batch, G, ITEMSIZE[dtype], SM_COUNT // (2 if both else 1), False, False,
                        direction=direction, reduce_scatter=True)
    two = False  # torch.nn GRU is reset_after=True: one phase per step
    consts = dict(KIND=R.KIND_CODES[cell], NG=G, ACT=R.ACTIVATION_CODES["tanh"],
                  RACT=R.ACTIVATION_CODES["sigmoid"], RESET_AFTER=True, HAS_MASK=False, HAS_RMASK=False,
                  TWO_PHASE=two, PREC=TB.fp32_precision(tf32) if dtype == "fp32" else "ieee",
                  REVERSE=R.BOTH_DIRECTIONS if both else False, **TB.plan_constexprs(plan, direction))
    sync = plan.persistent and plan.grid != (1, 1)
    if direction == "forward":
        consts["HAS_BIAS"] = True
        phases = (0,) if plan.persistent else ((1, 2) if two else (1,))
        consts["NGP"] = TB.gates_padded(G)
        fn_name = "forward_kernel"
    else:
        phases = (0,) if plan.persistent else ((1, 2, 3) if two else (1, 3))
        fn_name = "backward_kernel"
    barriers = (1 + two) if direction == "forward" else (1 + two)  # the grid barriers of one step
    out = []
    for phase in phases:
        c = dict(consts, PHASE=phase, SYNC=sync and phase == 0)
        if plan.persistent:
            steps = (0, SEQ_LEN)
        else:
            steps = (2, 3)  # a representative step: neither 1 nor a multiple of 16 (JIT specialization)
        spec = ("triton", fn_name, dtype, tuple(sorted(c.items())), tuple(sorted(plan.compile_options.items())),
                _spec_class(batch), _spec_class(hidden), steps)
        label = ("persistent" if plan.persistent else "per_step") + (", " + c["PREC"] if dtype == "fp32" else "") \
            + (", reduce-scatter" if plan.reduce_scatter else "") + (", both directions" if both else "")
        out.append(Launch("triton", f"triton.{fn_name}[{label}]",
                          "persistent" if plan.persistent else "per-step", spec,
                          plan.grid + ((2,) if both else ()), 32 * plan.num_warps,
                          None, (("B", batch), ("H", hidden), ("T", SEQ_LEN), ("steps", steps)),
                          plan.persistent, barriers if plan.persistent else 0))
    return out


def _spec_class(n):
    """How Triton's JIT specializes an integer argument: == 1 (a constant), % 16 == 0, or neither."""
    return "1" if n == 1 else ("D" if n % 16 == 0 else "")


_CLASS_VALUE = {"1": 1, "D": 16, "": 17}


def _triton_bind(fn, spec):
    """(signature, constexprs, attrs, options) that Triton's JIT derives from the launch's arguments."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime import jit as J

    _, fn_name, dtype, consts, options, b_class, h_class, steps = spec
    consts = dict(consts)
    io = _torch_dtype(dtype)
    cdt = torch.float32
    # sizes matter to the compile only through their specialization class; the walk uses the real ones
    scalars = dict(_triton_scalars(), T=SEQ_LEN, B=_CLASS_VALUE[b_class], H=_CLASS_VALUE[h_class],
                   step_begin=steps[0], step_end=steps[1])
    args = []
    for p in fn.params:
        name = p.name
        if name in consts:
            args.append(consts[name])
        elif name.endswith("_ptr"):
            if name in _TRITON_IO:
                t = io
            elif name == "w_ptr":
                t = io
            elif name in _TRITON_I32 and consts.get("SYNC"):
                t = torch.int32
            elif name == "mask_ptr" and consts.get("HAS_MASK"):
                t = torch.int8
            else:
                t = cdt
            args.append(torch.empty(16, dtype=t))
        elif name in scalars:
            args.append(scalars[name])
        else:
            raise ValueError(f"{fn_name}: no value for the launch argument {name!r}: extend "
                             "profiling.static._triton_scalars / triton_launches")
    backend = make_backend(GPUTarget("cuda", ARCH, 32))
    binder = J.create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(options)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, kwargs


def compile_triton(spec) -> dict:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.triton import recurrence as R

    fn = getattr(R, spec[1])
    signature, constexprs, attrs, options = _triton_bind(fn, spec)
    log = io.StringIO()
    # ptxas -v output is what Triton prints with dump_ptxas_log; always_compile so a cache hit in
    # Triton's own cache cannot skip ptxas (and its log)
    old = (knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile)
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs),
                                    target=GPUTarget("cuda", ARCH, 32), options=options)
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = old
    ptxas = sass.parse_ptxas_log(log.getvalue())
    info = next(iter(ptxas.values()), {})
    return {"ptx": kernel.asm["ptx"], "cubin": kernel.asm["cubin"], "ptxas": info,
            "dynamic_shared": kernel.metadata.shared, "entry": kernel.metadata.name}


# ---- CuPy ----------------------------------------------------------------------------------
# Two kernel families (kernels/cupy: FAMILIES): "cluster" (cluster.cu, one thread-block cluster,
# sm_90) and "grid" (forward.cu / backward.cu, a cooperative grid). The "cupy" rows are what
# kernels.cupy.choose(kernel="auto") launches; the "cupy_grid" rows (FAMILIES below) add the
# grid-wide kernel where auto launches the cluster kernel, the alternative auto did not take (and
# "cupy_cluster" the cluster kernel where it fits but auto takes the grid-wide one); the
# "cupy_both" / "cupy_grid_both" rows the same for both directions of a bidirectional layer in
# one launch.
_CUPY_NULL = {"mask", "rec_mask"}  # the benchmark passes no mask and no recurrent dropout
# Config fields the compiled code depends on (sizes are run-time arguments; the cluster kernel
# has its cluster size, register-held fragments and batch tiles as template arguments)
_CUPY_COMPILE_FIELDS = ("kind", "activation", "recurrent_activation", "reset_after", "dtype", "rec_mask", "mma",
                        "threads", "rows", "directions")
_CUPY_CLUSTER_FIELDS = ("grid", "reg_frags", "ntiles", "mpw")
# the cluster kernels use sm_90a (cp.async.bulk into distributed shared memory, mbarrier tx counts)
_CUPY_ARCH = {"grid": f"sm_{ARCH}", "cluster": f"sm_{ARCH}a"}


def cupy_launches(cell, dtype, batch, hidden, direction, tf32=False, kernel="auto", directions=1):
    """The launch kernels.cupy.choose picks on an H100 (kernel: "auto", "cluster" or "grid"); with
    directions=2 the one launch of both directions of a bidirectional layer (two groups of blocks on
    half of the SMs each, or two clusters)."""
    import kernels.cupy as kc

    try:
        c = kc.choose(direction, cell, hidden, batch, _torch_dtype(dtype), kc.H100, kernel=kernel, tf32=tf32,
                      directions=directions)
    except kc.SizeLimitError as exc:
        raise Unavailable(str(exc)) from None
    matvec = ("tf32 mma" if dtype == "fp32" else "mma") if c.mma else "fma"
    matvec += ", both directions" if directions == 2 else ""
    two = cell == "gru" and not c.reset_after  # GRU reset_after=False: a second phase per step
    fields = _CUPY_COMPILE_FIELDS + (_CUPY_CLUSTER_FIELDS if c.kernel == "cluster" else ())
    spec = ("cupy", direction, c.kernel, c.template_args, tuple((f, getattr(c, f)) for f in fields))
    args = (("B", batch), ("H", hidden), ("T", SEQ_LEN), ("U", c.units), ("BB", c.batch_tile), ("KS", c.ks),
            ("cell", cell))
    if c.kernel == "cluster":
        # one cluster; each phase of a step ends in a DSMEM exchange instead of a grid barrier
        return [Launch("cupy", f"cupy.rnn_cluster_{direction}[{matvec}]", "cluster", spec, (directions * c.grid, 1),
                       c.threads, c.smem, args, True, 0, cluster=c.grid, exchanges_per_step=1 + two)]
    return [Launch("cupy", f"cupy.rnn_{direction}[{matvec}]", matvec.split(",")[0], spec, (directions * c.grid, 1),
                   c.threads, c.smem, args, True, 1 + two)]


def _cupy_config(spec):
    """A Config with the spec's compile-relevant fields (sizes are placeholders)."""
    import kernels.cupy as kc

    _, direction, kernel, template_args, fields = spec
    fields = dict(fields)
    config = kc.Config(direction=direction, hidden=1, batch=1, units=1, grid=fields.pop("grid", 1), batch_tile=1,
                       smem=0, blocks_per_sm=1, kernel=kernel, **fields)
    if config.template_args != template_args:
        raise ValueError(f"profiling.static._cupy_config rebuilt <{config.template_args}> for <{template_args}>: "
                         "a compile-relevant Config field is missing from _CUPY_COMPILE_FIELDS")
    return config


def compile_cupy(spec) -> dict:
    import kernels.cupy as kc

    if shutil.which("nvcc") is None:
        raise sass.ToolMissing("nvcc not found on PATH: the CuPy kernels cannot be compiled here")
    config = _cupy_config(spec)
    source, options, name = kc.kernel_source(config)
    sm = _CUPY_ARCH[config.kernel]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.cu"
        src.write_text(source)
        # one front-end run to PTX, then the toolkit's own ptxas (as nvcc -cubin would run it)
        ptx_path, cubin_path = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        arch = f"-gencode=arch=compute_{sm[3:]},code={sm}"
        cmd = ["nvcc", "-ptx", arch, "-lineinfo", *options, "-o", str(ptx_path), str(src)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}\n{res.stderr[-3000:]}")
        ptxas_bin = Path(shutil.which("nvcc")).resolve().parent / "ptxas"
        cmd = [str(ptxas_bin) if ptxas_bin.exists() else "ptxas", "-v", f"--gpu-name={sm}", "-lineinfo",
               str(ptx_path), "-o", str(cubin_path)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}\n{res.stderr[-3000:]}")
        cubin, ptx = cubin_path.read_bytes(), ptx_path.read_text()
    ptxas = sass.parse_ptxas_log(res.stderr)
    info = next(iter(ptxas.values()), {})
    return {"ptx": ptx, "cubin": cubin, "ptxas": info, "dynamic_shared": None,
            "entry": next(iter(ptxas), None), "source": source, "signature_source": source}


def _cupy_function(kernel, direction):
    return f"rnn_cluster_{direction}" if kernel == "cluster" else f"rnn_{direction}"


def _cupy_param_names(source, function):
    """Parameter names of frnn::<function> (e.g. rnn_cluster_forward), in order, from the source."""
    m = re.search(rf"\b{function}\s*\((.*?)\)\s*\{{", source, re.S)
    if m is None:
        raise ValueError(f"cannot find the parameter list of {function} in the generated source")
    names = []
    for part in re.sub(r"//[^\n]*", "", m.group(1)).split(","):
        part = part.strip()
        if part:
            names.append((re.findall(r"\w+", part)[-1], "*" in part))
    return names


def cupy_walk_args(source, launch):
    """The launch's argument values in the kernel's parameter order, for the PTX walk."""
    _, direction, kernel = launch.compile_spec[:3]
    values = dict(launch.args)
    cell = values["cell"]
    scalars = {"steps": SEQ_LEN, "B": values["B"], "H": values["H"], "U": values["U"], "reverse": 0,
               "BB": values["BB"], "KS": values["KS"]}
    lstm = cell == "lstm"
    null = set(_CUPY_NULL)
    if not lstm:
        null |= {"c0", "cT", "dcT", "dc0"}
    if cell == "rnn":
        null |= {"extra"}
    function = _cupy_function(kernel, direction)
    out = []
    for name, is_ptr in _cupy_param_names(source, function):
        if is_ptr:
            out.append(0 if name in null else 1 << 40)
        elif name in scalars:
            out.append(scalars[name])
        else:
            raise ValueError(f"{function}: no value for the argument {name!r}: extend "
                             "profiling.static.cupy_walk_args")
    return out


# ---- the family table: adding a kernel family is one entry -----------------------------------
@dataclass(frozen=True)
class Family:
    backend: str
    launches: object     # (cell, dtype, batch, hidden, direction, tf32) -> [Launch]; raises Unavailable
    compile: object      # compile_spec -> {"ptx", "cubin", "ptxas", "dynamic_shared", ...}
    # an alternative of another family: reported with that family's rows (as the same backend),
    # never chosen by auto, and left out where it launches what that family (or `same_as`) launches
    alternative_of: str | None = None
    same_as: str | None = None
    if_it_fits: bool = False  # an alternative left out (not reported as skipped) where it cannot launch


FAMILIES = {
    "triton": Family("triton", triton_launches, compile_triton),
    "cupy": Family("cupy", cupy_launches, compile_cupy),
    "cupy_grid": Family("cupy", functools.partial(cupy_launches, kernel="grid"), compile_cupy, alternative_of="cupy"),
    # the cluster kernel where it fits but auto takes the grid-wide one (its FMA path above B = 2)
    "cupy_cluster": Family("cupy", functools.partial(cupy_launches, kernel="cluster"), compile_cupy,
                           alternative_of="cupy", if_it_fits=True),
    # both directions of a bidirectional layer in one launch: one row for the two directions' step
    "triton_both": Family("triton", functools.partial(triton_launches, both=True), compile_triton,
                          alternative_of="triton"),
    "cupy_both": Family("cupy", functools.partial(cupy_launches, directions=2), compile_cupy, alternative_of="cupy"),
    "cupy_grid_both": Family("cupy", functools.partial(cupy_launches, directions=2, kernel="grid"), compile_cupy,
                             alternative_of="cupy", same_as="cupy_both"),
}


# ---------------------------------------------------------------------------------------------
# compile cache: one compile per distinct compile_spec, results on disk

def _versions():
    v = {"triton": report._version("triton"), "nvcc": None}
    with contextlib.suppress(Exception):
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"release ([\d.]+)", out)
        v["nvcc"] = m.group(1) if m else None
    return v


def _source_hash():
    root = report.REPO_ROOT / "kernels"
    h = hashlib.sha256()
    for p in sorted(list(root.rglob("*.py")) + list(root.rglob("*.cu")) + list(root.rglob("*.cuh"))):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _cache_key(spec, salt):
    return hashlib.sha256(repr((spec, salt)).encode()).hexdigest()[:24]


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fused_rnn" / "static"


def analyse_compile(result) -> dict:
    """What depends on the compiled code only: resources, SASS step loop, spill counts, the PTX."""
    cubin = result["cubin"]
    res = sass.res_usage(cubin)
    instrs = sass.disassemble(cubin)
    loop = sass.step_loop(instrs)
    spill = {"ldl": 0, "stl": 0, "ldl_bytes": 0, "stl_bytes": 0}
    static = {}
    if loop is not None:
        c = sass.count(sass.loop_instrs(instrs, loop))
        static = dict(c)
        for k in spill:
            spill[k] = c.get(k, 0)
    ptxas = result.get("ptxas") or {}
    return {
        "registers": ptxas.get("registers", res["registers"]),
        "stack_bytes": ptxas.get("stack_bytes", res["stack_bytes"]),
        "spill_bytes": ptxas.get("spill_store_bytes"),
        "spill_load_bytes": ptxas.get("spill_load_bytes"),
        "static_shared_bytes": res["static_shared_bytes"],
        "dynamic_shared": result.get("dynamic_shared"),
        "step_loop_found": loop is not None,
        "sass_step_loop_static": static,
        "sass_spill": spill,
        "hgmma_in_kernel": any(i.base == "HGMMA" for i in instrs),
        "ptx": result["ptx"],
        "source": result.get("source"),
    }


def _compile_job(family, spec, cache_dir, salt, cached_only=False):
    path = Path(cache_dir) / f"{_cache_key(spec, salt)}.json" if cache_dir else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    if cached_only:
        return {"status": "skipped", "note": "not compiled: --cached-only and no cached compile", "compile_s": 0.0}
    t0 = time.perf_counter()
    try:
        result = FAMILIES[family].compile(spec)
        out = analyse_compile(result)
        out["status"] = "ok"
    except sass.ToolMissing as exc:
        out = {"status": "skipped", "note": str(exc)}
    except Exception as exc:  # a kernel that does not compile is a finding, not a crash
        out = {"status": "error", "note": f"{type(exc).__name__}: {str(exc).strip()[-600:]}"}
    out["compile_s"] = round(time.perf_counter() - t0, 2)
    if path is not None and out["status"] == "ok":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
    return out


# ---------------------------------------------------------------------------------------------
# occupancy, per-step counts, estimate

def blocks_per_sm(registers, threads, shared_bytes):
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(registers, 1) * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (REGS_PER_SM // regs_per_warp) // warps
    # shared_bytes includes the cubin's static shared memory, where sm_90 cubins already count the
    # 1 KiB per block that the driver reserves (SMEM_RESERVED_PER_BLOCK)
    by_smem = SMEM_PER_SM // max(shared_bytes, SMEM_RESERVED_PER_BLOCK) if shared_bytes <= SMEM_PER_BLOCK + SMEM_RESERVED_PER_BLOCK else 0
    by_threads = MAX_THREADS_PER_SM // threads
    return max(0, min(by_regs, by_smem, by_threads, MAX_BLOCKS_PER_SM))


def walk_counts(ptx_text, launch, source=None):
    """Per-step counts of one launch from the PTX walk: {"block": Counter, "warp_max": Counter}."""
    kernel = sass.parse_ptx(ptx_text)
    values = dict(launch.args)
    warps = launch.threads // 32
    if launch.backend == "triton":
        steps = values["steps"]
        args = []
        # Triton's PTX parameters: the non-constexpr launch arguments in order (pointers any non-zero
        # value), then Triton's own scratch pointers
        scal = dict(_triton_scalars(), T=values["T"], B=values["B"], H=values["H"],
                    step_begin=steps[0], step_end=steps[1])
        from kernels.triton import recurrence as R

        fn = getattr(R, launch.compile_spec[1])
        consts = dict(launch.compile_spec[3])
        for p in fn.params:
            if p.name in consts or (p.name == "B" and values["B"] == 1):
                continue
            args.append(1 << 40 if p.name.endswith("_ptr") else scal[p.name])
        args += [1 << 40] * (len(kernel.params) - len(args))
    else:
        args = cupy_walk_args(source, launch)
    window = (1, 2)
    block, warp_max = sass.Counter(), sass.Counter()
    grid = tuple(launch.grid) + (1,) * (3 - len(launch.grid))

    def one(tid):
        # A persistent kernel: one turn of its step loop (the second, past the set-up). A per-step
        # kernel is one step per launch: all of it (its loops are K chunks, not steps).
        window_counts, whole, _ = sass.walk(kernel, args, tid=tid, ntid=launch.threads, nctaid=grid,
                                            cluster=launch.cluster, window=window)
        return window_counts if launch.persistent else whole

    for w in range(warps):
        win = one(32 * w)
        for k, v in _lane_sum(one, 32 * w, min(32 * w + 31, launch.threads - 1), win).items():
            win[k] = v  # the warp's sum over its lanes replaces lane 0's count
        for k, v in win.items():
            block[k] += v
            warp_max[k] = max(warp_max[k], v)
    return {"block": block, "warp_max": warp_max}


# Classes whose every thread's instruction is an operation of its own (a bulk copy per lane: ptxas
# issues one UBLKCP per active lane), so a warp's count is the sum over its lanes, not lane 0's.
PER_LANE = ("bulk",)


def _lane_sum(walk_lane, first, last, at_first):
    """{cls: sum over the lanes first..last, cls + "_bytes": ...} of the PER_LANE classes.
    Assumes a lane's count is monotone in its index (a thread-strided loop, a `tid == 0` guard),
    so equal counts at both ends mean every lane between has them, and splits a range otherwise
    (a few walks per warp, only where lane 0 has such work)."""
    keys = [k for c in PER_LANE for k in (c, c + "_bytes")]

    def pick(c):
        return tuple(c.get(k, 0) for k in keys)

    out = sass.Counter()
    lo = pick(at_first)
    if not any(lo):
        return out  # monotone: no lane after the first has any either
    memo = {first: lo}

    def at(lane):
        if lane not in memo:
            memo[lane] = pick(walk_lane(lane))
        return memo[lane]

    def span(a, b):  # sum over lanes a..b-1
        if at(a) == at(b - 1):
            return [v * (b - a) for v in at(a)]
        if b - a <= 2:
            return [x + y for x, y in zip(at(a), at(b - 1))]
        m = (a + b) // 2
        return [x + y for x, y in zip(span(a, m), span(m, b))]

    for k, v in zip(keys, span(first, last + 1)):
        out[k] = v
    return out


def estimate_us(block, warp_max, grid_barriers, launches, model=ESTIMATE_MODEL, exchanges=0, l2_bytes=0):
    """Per-step time (us) and its terms from per-step counts (see ESTIMATE_MODEL). An estimate.
    exchanges: cluster exchanges per step (their DSMEM bytes: block["bulk_bytes"]); l2_bytes: the
    global load and store bytes of every block of the grid in a step."""
    m = model
    clk = m["CLOCK_HZ"]
    mma_flops = block.get("mma", 0) * 2 * 16 * 8 * 16
    wgmma_flops = block.get("wgmma_bytes", 0)  # the walk counts a wgmma's FLOPs as its "bytes"
    t_mma = max(warp_max.get("mma", 0) * m["MMA_WARP_CLK"],
                mma_flops / m["MMA_FLOP_PER_CLK_SM"] + wgmma_flops / m["WGMMA_FLOP_PER_CLK_SM"]) / clk
    t_fma = warp_max.get("ffma", 0) / clk  # one warp-wide FFMA per clock per sub-partition
    smem = 32 * sum(block.get(k, 0) for k in ("lds_bytes", "sts_bytes", "ldsm_bytes"))
    t_smem = smem / m["SMEM_BYTES_PER_CLK"] / clk
    t_l2 = max(m["L2_LATENCY_S"] * warp_max.get("ldg_rounds", 0), l2_bytes / m["L2_BYTES_PER_S"])
    t_bar = warp_max.get("bar", 0) * m["BAR_CLK"] / clk
    t_sync = grid_barriers * m["GRID_BARRIER_S"] + launches * m["LAUNCH_GAP_S"]
    if exchanges:
        t_sync += exchanges * m["CLUSTER_EXCHANGE_S"] + block.get("bulk_bytes", 0) / m["DSMEM_BYTES_PER_CLK"] / clk
    terms = {"mma": t_mma, "fma": t_fma, "smem": t_smem, "l2": t_l2, "bar": t_bar, "sync": t_sync}
    terms = {k: round(v * 1e6, 3) for k, v in terms.items()}
    return round(sum(terms.values()), 3), terms


# ---------------------------------------------------------------------------------------------
# measured per-step times from GPU benchmark records

def measured_index(results_dir=report.RESULTS_DIR):
    """{(backend or harness path, cell, dtype, B, H): {"forward": us, "forward_backward": us,
    "cudnn_forward": ...}} from GPU records (device not a CPU): ms * 1000 / seq_len. Benchmark
    records name the backend ("triton"); the GPU harness's record.json (in a folder below
    results_dir) names the path ("triton_persistent", "cupy_mma")."""
    out = {}
    for path in sorted(Path(results_dir).glob("**/*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if str(rec.get("device", "")).startswith(("cpu", "sm_")):
            continue
        both = bool((rec.get("config") or {}).get("bidirectional"))  # a benchmark run of bidirectional layers
        for r in rec.get("rows", []):
            try:
                if r.get("status") != "ok" or not r.get("ms") or not r.get("seq_len"):
                    continue
                if both or r.get("directions", 1) != 1:  # the estimates beside them are of one direction
                    continue
                key = (r["backend"], r["cell"], r["dtype"], int(r["batch"]), int(r["hidden"]))
                entry = out.setdefault(key, {"source": path.name})
                entry[r["mode"]] = 1000.0 * r["ms"] / r["seq_len"]
                baseline = r.get("ms_torch_nn") or r.get("ms_cudnn")  # older records: ms_cudnn
                if baseline:
                    entry["cudnn_" + r["mode"]] = 1000.0 * baseline / r["seq_len"]
            except (KeyError, TypeError, ValueError):
                continue
    return out


def _measured(index, backend, cell, dtype, batch, hidden, direction, auto, path=None):
    keys = ([f"{backend}_{path.replace('-', '_')}"] if path else []) + [backend] + (["auto"] if auto else [])
    entry = next((index[k] for k in ((n, cell, dtype, batch, hidden) for n in keys) if k in index), None)
    if not entry:
        return None, None, None
    if direction == "forward":
        return entry.get("forward"), entry.get("cudnn_forward"), entry["source"]
    fb, f = entry.get("forward_backward"), entry.get("forward")
    cfb, cf_ = entry.get("cudnn_forward_backward"), entry.get("cudnn_forward")
    return (fb - f if fb and f else None), (cfb - cf_ if cfb and cf_ else None), entry["source"]


# ---------------------------------------------------------------------------------------------
# the grid

def plan_grid(cfg):
    """[(config, backend, [Launch] or Unavailable message, auto)] for every configuration."""
    items = []
    for cell, dtype, batch, hidden, direction in itertools.product(cfg["cells"], cfg["dtypes"], cfg["batches"],
                                                                   cfg["hiddens"], DIRECTIONS):
        launches = {}
        for name, fam in FAMILIES.items():
            try:
                launches[name] = fam.launches(cell, dtype, batch, hidden, direction, cfg["tf32"])
            except Unavailable as exc:
                launches[name] = str(exc)
        def both_directions(name):
            """The family's launches of both directions, or None where its planner refuses one."""
            try:
                return [la for d in DIRECTIONS for la in FAMILIES[name].launches(cell, dtype, batch, hidden, d,
                                                                                 cfg["tf32"])]
            except Unavailable:
                return None

        # auto: the first backend of rnn.backends.choose's order on CUDA whose plans accept both
        # directions (CupyBackend.unavailable_reason); the order weighs whether triton's plans of
        # both directions are persistent (one-direction plans: the both-directions rows share the pick)
        triton_both = both_directions("triton")
        persistent = triton_both is None or all(la.persistent for la in triton_both)
        auto_pick = next((name for name in auto_order(batch, persistent) if both_directions(name) is not None), None)
        for name, fam in FAMILIES.items():
            auto = name == auto_pick
            parent = fam.alternative_of
            if parent is not None:
                wanted = parent in cfg["backends"] or (parent == auto_pick and "auto" in cfg["backends"])
                fits = not (fam.if_it_fits and isinstance(launches[name], str))
                if wanted and fits and launches[name] != launches[fam.same_as or parent]:
                    items.append(((cell, dtype, batch, hidden, direction), name, launches[name], False))
            elif name in cfg["backends"] or (auto and "auto" in cfg["backends"]):
                items.append(((cell, dtype, batch, hidden, direction), name, launches[name], auto))
    return items


def run(cfg, progress=True) -> dict:
    items = plan_grid(cfg)
    salt = (_source_hash(), _versions(), ARCH)
    jobs = {}
    # headline shapes (B16 H768) compile first, so an interrupted run still has them cached
    for _, name, launches, _ in sorted(items, key=lambda it: it[0][2:4] != (16, 768)):
        if isinstance(launches, str):
            continue
        for la in launches:
            jobs.setdefault(la.compile_spec, name)
    t0 = time.perf_counter()
    results = {}
    bar = report.Progress(len(jobs), progress)
    cache_dir = cfg["cache_dir"]
    if cfg["jobs"] <= 1 or len(jobs) <= 1:
        for spec, name in jobs.items():
            results[spec] = _compile_job(name, spec, cache_dir, salt, cfg.get("cached_only", False))
            bar.update(f"{spec[0]} {spec[1]}")
    else:
        with cf.ProcessPoolExecutor(max_workers=cfg["jobs"], initializer=_worker_init) as pool:
            futures = {pool.submit(_compile_job, name, spec, cache_dir, salt, cfg.get("cached_only", False)): spec for spec, name in jobs.items()}
            for fut in cf.as_completed(futures):
                spec = futures[fut]
                results[spec] = fut.result()
                bar.update(f"{spec[0]} {spec[1]}")
    bar.close()
    index = measured_index(cfg["results_dir"])
    rows = [row for item in items for row in make_rows(item, results, index)]
    record = {
        "device": DEVICE,
        "versions": dict(report.versions(), **_versions()),
        "git_commit": report.git_commit(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": sys.platform,
        "config": {k: v for k, v in cfg.items() if k not in ("cache_dir", "results_dir")},
        "target": {"arch": f"sm_{ARCH}", "sm_count": SM_COUNT, "smem_per_sm": SMEM_PER_SM,
                   "smem_per_block": SMEM_PER_BLOCK, "regs_per_sm": REGS_PER_SM, "seq_len": SEQ_LEN},
        "estimate_model": ESTIMATE_MODEL,
        "cudnn_source": CUDNN_SOURCE,
        "notes": [
            "compiled for sm_90 and estimated, not measured: nothing here ran on a GPU",
            "per-step counts: PTX control flow walked for lane 0 of every warp of block 0 through one "
            "steady-state step; *_per_step = block totals, *_per_warp = busiest warp; bytes per thread "
            "(x32 for a full warp); spills = SASS LDL/STL in the step loop, each instruction once",
        ],
        "compiles": len(jobs),
        "wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    return record


def _worker_init():
    os.environ.pop("TRITON_INTERPRET", None)


def make_rows(item, results, index):
    (cell, dtype, batch, hidden, direction), name, launches, auto = item
    backend = FAMILIES[name].backend
    base = {k: None for k in ROW_KEYS}
    base.update(backend=backend, cell=cell, dtype=dtype, batch=batch, hidden=hidden, direction=direction,
                auto=auto)
    # the published and measured figures are of one direction: not beside a both-directions row
    one = isinstance(launches, str) or "both directions" not in launches[0].kernel
    cud = CUDNN_PUBLISHED_US.get((cell, dtype, batch, hidden), {}).get(direction) if one else None
    base.update(us_per_step_cudnn=cud, cudnn_source=CUDNN_SOURCE if cud is not None else None)
    path = None if isinstance(launches, str) else launches[0].path
    meas, meas_cudnn, src = (_measured(index, backend, cell, dtype, batch, hidden, direction, auto, path) if one
                             else (None, None, None))
    base.update(us_per_step_measured=meas, us_per_step_cudnn_measured=meas_cudnn, measured_source=src)
    if isinstance(launches, str):
        kernel = f"{backend}.{name[len(backend) + 1:]} (none)" if name != backend else f"{backend} (none)"
        return [dict(base, kernel=kernel, status="skipped", note=launches)]
    # a step may take several launches (per-step path): one row, counts summed over them
    row = dict(base, kernel=launches[0].kernel, path=launches[0].path, grid=list(launches[0].grid),
               threads=launches[0].threads, launches_per_step=0 if launches[0].persistent else len(launches),
               status="ok", note="")
    block, warp_max = sass.Counter(), sass.Counter()
    l2_bytes = {"ldg": 0, "stg": 0}
    notes = []
    compile_s = 0.0
    for la in launches:
        res = results[la.compile_spec]
        compile_s += res.get("compile_s", 0.0)
        if res["status"] != "ok":
            return [dict(row, status=res["status"], note=res.get("note", ""), compile_s=compile_s)]
        dyn = la.dynamic_shared if la.dynamic_shared is not None else res["dynamic_shared"]
        shared = res["static_shared_bytes"] + dyn
        fit = blocks_per_sm(res["registers"], la.threads, shared)
        n_blocks = math.prod(la.grid)
        # the largest resource use over the launches of a step
        row["registers"] = max(row["registers"] or 0, res["registers"])
        row["spill_bytes"] = max(row["spill_bytes"] or 0, res["spill_bytes"] or 0)
        row["spill_load_bytes"] = max(row["spill_load_bytes"] or 0, res["spill_load_bytes"] or 0)
        row["stack_bytes"] = max(row["stack_bytes"] or 0, res["stack_bytes"] or 0)
        row["static_shared_bytes"] = max(row["static_shared_bytes"] or 0, res["static_shared_bytes"])
        row["dynamic_shared_bytes"] = max(row["dynamic_shared_bytes"] or 0, dyn)
        row["shared_bytes"] = max(row["shared_bytes"] or 0, shared)
        row["blocks_per_sm"] = fit if row["blocks_per_sm"] is None else min(row["blocks_per_sm"], fit)
        row["needs_co_residency"] = la.persistent
        co = n_blocks <= fit * SM_COUNT
        row["co_resident"] = co if row["co_resident"] is None else (row["co_resident"] and co)
        row["step_loop_found"] = res["step_loop_found"] if row["step_loop_found"] is None else (
            row["step_loop_found"] and res["step_loop_found"])
        row["spill_ld_per_step"] = (row["spill_ld_per_step"] or 0) + res["sass_spill"]["ldl"]
        row["spill_st_per_step"] = (row["spill_st_per_step"] or 0) + res["sass_spill"]["stl"]
        row["grid_barriers_per_step"] = (row["grid_barriers_per_step"] or 0) + la.grid_barriers_per_step
        row["cluster_exchanges_per_step"] = (row["cluster_exchanges_per_step"] or 0) + la.exchanges_per_step
        row["cluster_size"] = la.cluster if la.cluster > 1 else row["cluster_size"]
        if la.persistent and not co:
            notes.append(f"grid of {n_blocks} blocks > {fit} per SM x {SM_COUNT} SMs: cannot be co-resident")
        try:
            counts = walk_counts(res["ptx"], la, res.get("source"))
        except sass.WalkError as exc:
            notes.append(f"PTX walk failed: {exc}")
            continue
        for k, v in counts["block"].items():
            block[k] += v
        for cls in l2_bytes:  # the walk counts lane 0 of each warp
            l2_bytes[cls] += n_blocks * 32 * counts["block"].get(cls + "_bytes", 0)
        for k, v in counts["warp_max"].items():
            warp_max[k] += v
    row["compile_s"] = round(compile_s, 2)
    for cls in ("mma", "wgmma", "ldsm", "lds", "sts", "ldg", "stg", "bar", "membar", "atomic", "syncs", "bulk"):
        row[f"{cls}_per_step"] = block.get(cls, 0)
    for cls in ("ldsm", "lds", "sts", "ldg", "stg"):
        row[f"{cls}_bytes_per_step"] = 32 * block.get(cls + "_bytes", 0)
    row["dsmem_bytes_per_step"] = block.get("bulk_bytes", 0)  # bulk copies: counted per thread, real bytes
    row["mma_per_warp"] = warp_max.get("mma", 0)
    row["ffma_per_warp"] = warp_max.get("ffma", 0)
    row["ldg_per_thread"] = warp_max.get("ldg", 0)
    row["ldg_rounds"] = warp_max.get("ldg_rounds", 0)
    row["l2_load_bytes_per_step"], row["l2_store_bytes_per_step"] = l2_bytes["ldg"], l2_bytes["stg"]
    est, terms = estimate_us(block, warp_max, row["grid_barriers_per_step"], row["launches_per_step"],
                             exchanges=row["cluster_exchanges_per_step"], l2_bytes=sum(l2_bytes.values()))
    row["us_per_step_est"], row["est_terms_us"] = est, terms
    row["note"] = "; ".join(notes)
    if not row["step_loop_found"] and row["path"] == "persistent":  # a per-step kernel has none
        row["note"] = "; ".join(filter(None, [row["note"], "step loop not found in the SASS"]))
    return [row]


# ---------------------------------------------------------------------------------------------
# output

def _f(v, spec="", none=""):
    return none if v is None else format(v, spec)


def markdown_table(rows) -> str:
    head = ("cell", "dtype", "B", "H", "dir", "backend", "kernel", "auto", "regs", "spill B", "smem KiB",
            "co-res", "mma/step (warp)", "bulk cp/step (DSMEM B)", "ldsm+lds B/step", "ldg/thread (rounds)", "est us/step",
            "cuDNN us/step",
            "measured us/step", "note")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            cells = (r["cell"], r["dtype"], r["batch"], r["hidden"], r["direction"][:3], r["backend"],
                     r["kernel"], "yes" if r["auto"] else "", "", "", "", "", "", "", "", "", "", "", "",
                     f"{r['status']}: {r['note'][:120]}")
        else:
            smem = r["ldsm_bytes_per_step"] + r["lds_bytes_per_step"]
            cells = (r["cell"], r["dtype"], r["batch"], r["hidden"], r["direction"][:3], r["backend"],
                     r["kernel"].split(".", 1)[1], "yes" if r["auto"] else "", r["registers"], r["spill_bytes"],
                     f"{r['shared_bytes'] / 1024:.1f}", "yes" if r["co_resident"] else "NO",
                     f"{r['mma_per_step']} ({r['mma_per_warp']})",
                     f"{r['bulk_per_step']} ({r['dsmem_bytes_per_step']})" if r["cluster_exchanges_per_step"] else "",
                     smem, f"{r['ldg_per_thread']} ({r['ldg_rounds']})",
                     _f(r["us_per_step_est"], ".2f"), _f(r["us_per_step_cudnn"], ".1f"),
                     _f(r["us_per_step_measured"], ".2f"), r["note"][:120])
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write(record, out_dir) -> tuple:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "static_sm90.json"
    json_path.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    md = [f"# Static kernel report: compiled for sm_90, estimated, not measured",
          "",
          f"{record['date']}, commit {record['git_commit'][:12]}, triton {record['versions'].get('triton')}, "
          f"nvcc {record['versions'].get('nvcc')}; `python -m profiling.static` ({record['compiles']} compiles, "
          f"{record['wall_s']} s). Per step: block totals, busiest warp in parentheses; bytes for full warps. "
          f"est = the ESTIMATE_MODEL of profiling/static.py; cuDNN: {record['cudnn_source']}.",
          "",
          markdown_table(record["rows"]), ""]
    md_path = out_dir / "static_sm90.md"
    md_path.write_text("\n".join(md))
    return json_path, md_path


def build_parser():
    from .bench import _csv

    p = argparse.ArgumentParser(prog="python -m profiling.static",
                                description="Compile the recurrence kernels for sm_90 (no GPU) and report "
                                "registers, spills, shared memory, per-step instruction counts and an estimate.")
    p.add_argument("--cells", type=_csv("cell", CELLS), default=list(CELLS))
    p.add_argument("--dtypes", type=_csv("dtype", DTYPES, {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}),
                   default=list(DTYPES))
    p.add_argument("--batches", type=_csv("integers"), default=list(BATCHES))
    p.add_argument("--hiddens", type=_csv("integers"), default=list(HIDDENS))
    p.add_argument("--backends", type=_csv("backend", BACKENDS), default=list(BACKENDS),
                   help="auto (the rows auto would launch), triton, cupy")
    p.add_argument("--tf32", action="store_true", help="fp32 with tf32 matmuls (torch's allow_tf32)")
    p.add_argument("--out", default=str(report.RESULTS_DIR / "static"), help="directory for the JSON and markdown")
    p.add_argument("--jobs", type=int, default=2, help="compile processes (at most 2)")
    p.add_argument("--cache-dir", default=str(default_cache_dir()), help="compile cache ('' for none)")
    p.add_argument("--results-dir", default=str(report.RESULTS_DIR), help="GPU benchmark records to compare with")
    p.add_argument("--cached-only", action="store_true",
                   help="compile nothing: rows whose compile is not in the cache are marked skipped")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.jobs <= 2:
        raise SystemExit(f"--jobs must be 1 or 2, got {args.jobs}")
    os.environ.pop("TRITON_INTERPRET", None)  # interpreted kernels cannot be compiled
    cfg = {"cells": args.cells, "dtypes": args.dtypes, "batches": args.batches, "hiddens": args.hiddens,
           "backends": args.backends, "tf32": args.tf32, "jobs": args.jobs, "cache_dir": args.cache_dir or None,
           "results_dir": args.results_dir, "cached_only": args.cached_only, "argv": list(sys.argv[1:] if argv is None else argv)}
    record = run(cfg, progress=not args.no_progress)
    paths = write(record, args.out)
    print(markdown_table(record["rows"]))
    print(f"\n{len(record['rows'])} rows, {record['compiles']} compiles, {record['wall_s']} s: "
          f"{paths[0]} {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
