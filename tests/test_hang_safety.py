"""No kernel can hang or fail at launch.

Triton persistent path (kernels/triton/barrier.py, backend.py):
  * a grid-barrier wait that never ends (here: the interpreter's program 0 waiting for program 1,
    which runs only after it) becomes BarrierTimeoutError naming the configuration;
  * the co-residency rules (blocks per SM from registers, threads, shared memory) and the check of
    a compiled kernel before its launch, the per-step fallback ("auto") or error ("on");
  * long sequences are split into launches whose barrier counter cannot overflow;
  * the plan space: every persistent plan fits an H100 (sm_90) by the shared-memory estimate, and
    the estimate is an upper bound of the real compiled kernels (compiled for sm_90 here, no GPU).
CuPy path: every launch is cooperative (co-residency guaranteed by the driver) after a host-side
occupancy check; no kernel source waits across blocks outside grid_sync.
GPU-only cases (marked gpu): the barrier-latency probe, a real oversubscribed grid that must end
with the timeout flag instead of hanging, and a grid that cannot be resident refused before launch.
"""
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
from kernels.triton import backend as tb  # noqa: E402
from kernels.triton import barrier as kb  # noqa: E402
from kernels.triton.backend import Plan, TritonBackend, make_plan  # noqa: E402
from rnn.cells import CellSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ON_GPU = torch.cuda.is_available()
interpreter_only = pytest.mark.skipif(not tb.INTERPRET, reason="needs the Triton interpreter (TRITON_INTERPRET=1)")


def _spec(kind, reset_after=True):
    return CellSpec(kind, reset_after=reset_after)


def _problem(spec, T=3, B=2, H=37, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = spec.n_gates
    return dict(xg=torch.randn(T, B, G * H, generator=g, dtype=dtype),
                w_hh=(torch.randn(G * H, H, generator=g, dtype=dtype) * 0.2),
                b_hh=torch.randn(G * H, generator=g, dtype=dtype) * 0.1,
                h0=torch.randn(B, H, generator=g, dtype=dtype) * 0.5,
                c0=torch.randn(B, H, generator=g, dtype=dtype) * 0.5 if spec.kind == "lstm" else None)


def _forward(backend, spec, p, reverse=False):
    return backend.forward(spec, p["xg"], p["w_hh"], p["b_hh"], p["h0"], p["c0"], None, None, reverse)


def _backward(backend, spec, p, saved, reverse=False):
    T, B, H = saved.out.shape
    g = torch.Generator().manual_seed(1)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(saved.out.device, saved.out.dtype)

    dout, dhT = draw(T, B, H), draw(B, H)
    dcT = draw(B, H) if spec.kind == "lstm" else None
    return backend.backward(spec, p["w_hh"], p["b_hh"], p["h0"], p["c0"], None, None, reverse, saved, dout, dhT, dcT)


# ---------------------------------------------------------------------------------------------
# the bounded barrier in the interpreter
# ---------------------------------------------------------------------------------------------
TWO_PROGRAMS = Plan(True, 32, 16, 64, 64, True, (2, 1), 4, 1)  # H=37 split over 2 programs


@interpreter_only
@pytest.mark.parametrize("kind,reset_after,direction", [
    ("lstm", True, "forward"), ("gru", False, "forward"), ("rnn", True, "backward"), ("gru", False, "backward")])
def test_barrier_timeout_raises_clear_error(monkeypatch, kind, reset_after, direction):
    """Program 0 waits at the first barrier for program 1, which the interpreter runs only after
    program 0 has finished: without a bound this hangs forever; with it the host raises."""
    spec = _spec(kind, reset_after)
    p = _problem(spec)
    saved = _forward(TritonBackend(), spec, p) if direction == "backward" else None  # one program: no wait
    monkeypatch.setattr(tb, "make_plan", lambda *a, **k: TWO_PROGRAMS)
    backend = TritonBackend(spin_cap=5)
    start = time.monotonic()
    with pytest.raises(tb.BarrierTimeoutError) as info:
        if direction == "forward":
            _forward(backend, spec, p)
        else:
            _backward(backend, spec, p, saved)
    assert time.monotonic() - start < 120
    msg = str(info.value)
    for part in (f"persistent {direction}", kind, "torch.float64", "B=2", "H=37", "grid=(2, 1)", "Plan(",
                 "grid barrier 1 (step 0)", "1 of 2 programs", "FUSED_RNN_TRITON_PERSISTENT=off", "not returned"):
        assert part in msg, f"{part!r} missing from: {msg}"
    assert isinstance(info.value, RuntimeError)


@interpreter_only
def test_probe_kernel_single_program_passes_every_barrier():
    status = kb.new_status(1, "cpu")
    kb.barrier_probe_kernel[(1,)](status[0], 7, 3)
    counter, timeouts, failed_at, _ = status[0].tolist()
    assert (counter, timeouts, failed_at) == (7, 0, 0)
    assert kb.failed_launch(status) is None


@interpreter_only
def test_probe_kernel_timeout_stops_every_program():
    """Program 0 times out at barrier 1 (target 2) and aborts; program 1 arrives afterwards, sees
    the abort bit and stops instead of waiting: 2 arrivals in all, not 2 x 7."""
    status = kb.new_status(1, "cpu")
    kb.barrier_probe_kernel[(2,)](status[0], 7, 3)
    counter, timeouts, failed_at, _ = status[0].tolist()
    assert counter == kb.ABORT_BIT | 2 and timeouts == 1 and failed_at == 2
    assert kb.failed_launch(status) == (0, 1, 2)


def test_failed_launch_reads_every_row():
    status = kb.new_status(3, "cpu")
    assert kb.failed_launch(status) is None
    status[2, kb.COUNTER] = kb.ABORT_BIT | 5  # aborted by a timeout counted elsewhere: still a failure
    assert kb.failed_launch(status) == (2, 0, 0)
    status[1, kb.TIMEOUTS], status[1, kb.FAILED_AT] = 3, 40
    assert kb.failed_launch(status) == (1, 3, 40)


def test_steps_per_launch_keeps_the_counter_below_the_abort_bit():
    for programs, barriers in ((1, 1), (132, 2), (264, 1), (7, 3)):
        steps = kb.steps_per_launch(programs, barriers)
        assert steps * programs * barriers < kb.ABORT_BIT <= (steps + 1) * programs * barriers
    assert kb.steps_per_launch(132, 2) > 4_000_000  # one launch for any realistic T
    with pytest.raises(ValueError, match="programs"):
        kb.steps_per_launch(0, 1)


@interpreter_only
@pytest.mark.parametrize("kind,reset_after", [("lstm", True), ("gru", False)])
def test_long_sequences_split_into_launches(monkeypatch, kind, reset_after):
    """With at most 2 steps per launch, T=7 runs as 4 persistent launches per direction and gives
    bitwise the same results as one launch (the carried h / dh cross the launch boundaries)."""
    spec = _spec(kind, reset_after)
    p = _problem(spec, T=7)
    whole_fwd = _forward(TritonBackend(), spec, p, reverse=True)
    whole_bwd = _backward(TritonBackend(), spec, p, whole_fwd, reverse=True)
    launches = []

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launches.append(self.kernel)
            return self.kernel[grid]

    monkeypatch.setattr(tb, "steps_per_launch", lambda programs, barriers: 2)
    monkeypatch.setattr(tb, "forward_kernel", Counting(tb.forward_kernel))
    monkeypatch.setattr(tb, "backward_kernel", Counting(tb.backward_kernel))
    split_fwd = _forward(TritonBackend(), spec, p, reverse=True)
    split_bwd = _backward(TritonBackend(), spec, p, split_fwd, reverse=True)
    assert len(launches) == 8
    for a, b in zip([*whole_fwd, *whole_bwd], [*split_fwd, *split_bwd]):
        assert (a is None and b is None) or torch.equal(a, b)


def test_spin_cap_validated():
    with pytest.raises(ValueError, match="spin_cap"):
        TritonBackend(spin_cap=0)


# ---------------------------------------------------------------------------------------------
# co-residency: the rules, the check of a compiled kernel, the fallback
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("regs,warps,shared,expected", [
    (255, 8, 196608, 1),   # the persistent LSTM: one block of 8 warps uses every register of the SM
    (128, 4, 0, 4),        # 128 regs x 128 threads = 16 KiB registers: 4 blocks fill the 64 Ki
    (32, 4, 0, 16),        # threads bound: 2048 / 128
    (16, 1, 0, 32),        # block-count bound
    (255, 4, 114 * 1024, 1),  # shared memory bound: 2 x (114 KiB + 1 KiB reserved) > 228 KiB
    (255, 4, 113 * 1024, 2),
    (40, 8, 0, 6),         # 40 regs x 32 lanes = 1280, rounded to 1536 per warp: 42 warps, 5.25 blocks
    (255, 8, 232448, 1),   # the largest opt-in shared memory still fits once
    (255, 8, 232449, 0),   # one byte more does not
    (256, 4, 0, 0),        # more registers than a thread can have
    (32, 64, 0, 0),        # more threads than a block can have
])
def test_blocks_per_sm_rules(regs, warps, shared, expected):
    assert tb.blocks_per_sm(regs, warps, shared, tb.SM90) == expected


def _compiled(n_regs=255, num_warps=8, shared=1024, out_of_resources=False):
    """A stand-in for triton's CompiledKernel with the attributes check_resident reads."""
    def init():
        if out_of_resources:
            raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")
    return types.SimpleNamespace(_init_handles=init, n_regs=n_regs,
                                 metadata=types.SimpleNamespace(num_warps=num_warps, shared=shared))


def test_check_resident():
    assert tb.check_resident(_compiled(), (132, 1), tb.SM90, "k") == 1
    assert tb.check_resident(_compiled(n_regs=64, num_warps=4), (264, 2), tb.SM90, "k") == 8
    with pytest.raises(tb.NotResidentError, match=r"133 programs cannot all be resident.*1 per SM x 132 SMs"):
        tb.check_resident(_compiled(), (133, 1), tb.SM90, "k")
    with pytest.raises(tb.NotResidentError, match="does not fit"):
        tb.check_resident(_compiled(out_of_resources=True), (1, 1), tb.SM90, "k")
    unknown = _compiled()
    unknown.n_regs = None  # a Triton that does not expose registers: assume the maximum
    assert tb.check_resident(unknown, (132, 1), tb.SM90, "k") == 1


def test_cooperative_launch_is_available_and_compiles():
    """The installed Triton knows launch_cooperative_grid (3.6 and newer do) and keeps it in the
    compiled kernel's metadata, which its launcher turns into CU_LAUNCH_ATTRIBUTE_COOPERATIVE."""
    pytest.importorskip("triton.backends.nvidia")
    assert tb.cooperative_options() == {"launch_cooperative_grid": True}
    rows = _compile_in_subprocess([dict(probe=True, options=tb.cooperative_options())])
    assert rows[0]["launch_cooperative_grid"] is True


@interpreter_only
def test_not_resident_falls_back_per_step_or_raises(monkeypatch):
    """A persistent grid found not co-resident before its launch: "auto" warns and runs per step,
    FUSED_RNN_TRITON_PERSISTENT=on raises."""
    spec = _spec("gru", False)
    backend = TritonBackend()
    w = torch.zeros(3 * 37, 37, dtype=torch.float64)
    tried = []

    def attempt(plan):
        tried.append(plan)
        if plan.persistent:
            raise tb.NotResidentError("grid (40, 1): 40 programs cannot all be resident")
        return "ran per step"

    monkeypatch.delenv(tb.PERSISTENT_ENV, raising=False)
    with pytest.warns(RuntimeWarning, match="cannot all be resident.*per step"):
        assert backend._with_fallback(attempt, "k1", spec, torch.device("cpu"), 3, 37, w) == "ran per step"
    assert [p.persistent for p in tried] == [True, False]
    # the same configuration again: straight to per step, no second check or warning
    assert backend._with_fallback(attempt, "k1", spec, torch.device("cpu"), 3, 37, w) == "ran per step"
    assert [p.persistent for p in tried] == [True, False, False]
    monkeypatch.setenv(tb.PERSISTENT_ENV, "on")
    with pytest.raises(RuntimeError, match="=on forbids the per-step fallback"):
        backend._with_fallback(attempt, "k2", spec, torch.device("cpu"), 3, 37, w)


def test_persistent_mode_env(monkeypatch):
    spec = _spec("lstm")
    w = torch.zeros(4 * 37, 37, dtype=torch.float32)
    backend = TritonBackend()
    monkeypatch.setenv(tb.PERSISTENT_ENV, "off")
    assert not backend._plan(spec, torch.device("cpu"), 3, 37, w, per_step=False).persistent
    monkeypatch.setenv(tb.PERSISTENT_ENV, "sometimes")
    with pytest.raises(ValueError, match="'auto', 'on' or 'off', got 'sometimes'"):
        backend._plan(spec, torch.device("cpu"), 3, 37, w, per_step=False)
    # "on" where no persistent plan exists (no interpreter, 1 SM: H=300 needs 3 programs of 128 units)
    monkeypatch.setattr(tb, "INTERPRET", False)
    monkeypatch.setenv(tb.PERSISTENT_ENV, "on")
    with pytest.raises(RuntimeError, match="=on, but lstm H=300 B=3 torch.float32 gets no persistent plan"):
        backend._plan(spec, torch.device("cpu"), 3, 300, w, per_step=False)
    monkeypatch.setenv(tb.PERSISTENT_ENV, "auto")
    assert not backend._plan(spec, torch.device("cpu"), 3, 300, w, per_step=False).persistent


def test_measure_barrier_needs_a_gpu():
    if ON_GPU:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        kb.measure_barrier(16)


# ---------------------------------------------------------------------------------------------
# the plan space against sm_90 limits
# ---------------------------------------------------------------------------------------------
FORMS = {"lstm": ("lstm", True), "gru": ("gru", True), "gru_classic": ("gru", False), "rnn": ("rnn", True)}
DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}
H_VALUES = [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513, 768, 1000,
            1023, 1024, 1025, 1536, 2047, 2048, 2049, 2112, 2113, 3000, 4095, 4096]
B_VALUES = [1, 2, 3, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 255, 256]
N_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _plan_space():
    """{(form, dtype, H, B, direction): plan} over the whole enumerated space; "backward-rs": the
    backward of a call that allows the reduce-scatter exchange (no recurrent dropout, one phase)."""
    def plan(form, H, B, size, d):
        return make_plan(H, B, N_GATES[FORMS[form][0]], size, tb.SM90.n_sm, False,
                         direction=d.split("-")[0], reduce_scatter=d == "backward-rs" and form != "gru_classic")
    return {(form, dt, H, B, d): plan(form, H, B, size, d)
            for form in FORMS for dt, size in DTYPES.items() for H in H_VALUES for B in B_VALUES
            for d in ("forward", "backward", "backward-rs")}


def test_plan_space_estimates_fit_sm90():
    """Every persistent plan: at most one program per SM, every unit and row owned, and the
    estimated shared memory (W_hh slices + staged operands + slack) within an H100 block."""
    space = _plan_space()
    persistent = 0
    for (form, dt, H, B, d), p in space.items():
        if not p.persistent:
            continue
        persistent += 1
        G, size = N_GATES[FORMS[form][0]], DTYPES[dt]
        est = tb.plan_shared_bytes(p, G, H, size, d)
        where = f"{form} {dt} H={H} B={B} {d}: {p}"
        assert est <= tb.SM90.smem_per_block_optin, f"{where}: estimated {est} bytes"
        assert p.grid[0] * p.grid[1] <= tb.SM90.n_sm, where
        assert p.grid[0] * p.block_h >= H and p.k_pad >= H and p.block_b >= 16, where
        assert p.num_warps * 32 * 255 <= tb.SM90.regs_per_sm, where  # even at 255 registers a thread
    assert persistent > 1000  # the space is not trivially per-step
    # the case: SimpleRNN fp32 1024 < H <= 2048 needed 263 KB as planned before; the split-K
    # plans of both directions hold 16-row W_hh slices and fit up to 132 programs (estimates above)
    assert all(space["rnn", "fp32", H, 16, d].persistent for H in (1025, 1536) for d in ("forward", "backward"))
    # ... while the headline sizes keep their persistent plans
    assert space["lstm", "bf16", 768, 16, "forward"].persistent and space["lstm", "bf16", 768, 16, "backward"].persistent
    assert space["gru", "fp16", 1024, 16, "backward"].persistent
    rs = space["lstm", "bf16", 768, 16, "backward-rs"]
    assert rs.reduce_scatter and tb.plan_constexprs(rs, "backward")["REDUCE"] == 48


# (form, dtype, H, B, direction, matmul precision): real persistent plans of the space above, every
# form x {half, fp32, fp64} once, both directions, 4 and 8 warps, K_PAD 32..2048, batch tiles
# 16..256, the headline LSTM (bf16 H=768 B=16) and the largest half-precision SimpleRNN plan. fp32
# compiles with IEEE precision (FUSED_RNN_FP32_MATMUL=ieee) except one tf32 point (allow_tf32) and
# two 3xtf32 points (the default). Chosen to compile in about a minute on 2 cores with an empty
# Triton cache: fp32 IEEE kernels with wide tiles take minutes each, and so does a one-warp plan
# with a 512-wide K piece (GRU reset_after=False bf16 H=300 backward: 70 s), which H=200 avoids.
COMPILED_POINTS = [
    ("lstm", "bf16", 768, 16, "backward", "ieee"), ("lstm", "fp32", 100, 20, "forward", "ieee"),
    ("lstm", "fp64", 100, 8, "backward", "ieee"), ("gru", "fp16", 200, 40, "forward", "ieee"),
    ("gru", "fp32", 60, 3, "backward", "ieee"), ("gru", "fp64", 100, 16, "forward", "ieee"),
    ("gru_classic", "bf16", 200, 50, "backward", "ieee"), ("gru_classic", "fp32", 129, 17, "forward", "ieee"),
    ("gru_classic", "fp64", 40, 100, "backward", "ieee"), ("rnn", "fp16", 1025, 1, "forward", "ieee"),
    ("rnn", "fp32", 513, 1, "backward", "tf32"), ("rnn", "fp64", 20, 200, "forward", "ieee"),
    ("lstm", "fp32", 768, 16, "forward", "tf32x3"), ("gru", "fp32", 256, 16, "backward", "tf32x3"),
    # the reduce-scatter backward (compiled without recurrent dropout): the headline (W_hh rows in
    # registers), W_hh rows in shared memory (GRU H1024), 32-row batch tiles with odd sizes
    ("lstm", "bf16", 768, 16, "backward-rs", "ieee"), ("gru", "fp16", 1024, 16, "backward-rs", "ieee"),
    ("lstm", "bf16", 100, 40, "backward-rs", "ieee"),
]


def _compile_jobs():
    """One job per distinct constexpr set of COMPILED_POINTS (each compiles once)."""
    jobs = {}
    for form, dt, H, B, direction, prec in COMPILED_POINTS:
        p = make_plan(H, B, N_GATES[FORMS[form][0]], DTYPES[dt], tb.SM90.n_sm, False, direction=direction.split("-")[0],
                      reduce_scatter=direction == "backward-rs")
        assert p.persistent and p.reduce_scatter == (direction == "backward-rs"), (form, dt, H, B, p)
        est = tb.plan_shared_bytes(p, N_GATES[FORMS[form][0]], H, DTYPES[dt], direction)
        key = (form, dt, direction, prec, p)
        jobs.setdefault(key, dict(form=form, dtype=dt, H=H, B=B, direction=direction, prec=prec, plan=p, estimate=est))
    return list(jobs.values())


def test_plan_space_compiled_for_sm90():
    """Representative persistent plans compiled for sm_90 (no GPU): the real shared memory (static
    + dynamic) is within the estimate, which is no looser than its documented slack, and within an
    H100 block; registers x threads fit an SM; the grid is co-resident on 132 SMs by the compiled
    kernel's own numbers."""
    pytest.importorskip("triton.backends.nvidia")
    jobs = _compile_jobs()
    rows = _compile_in_subprocess([dict(form=j["form"], dtype=j["dtype"], direction=j["direction"], prec=j["prec"],
                                        plan=dataclasses.asdict(j["plan"])) for j in jobs])
    assert len(rows) == len(jobs)
    for job, row in zip(jobs, rows):
        p = job["plan"]
        where = f"{job['form']} {job['dtype']} H={job['H']} B={job['B']} {job['direction']} {job['prec']}: {row}"
        assert row["shared"] <= job["estimate"], f"{where}: estimate {job['estimate']} is below the compiled size"
        assert row["static"] <= tb.SMEM_STATIC_BYTES, where
        assert row["shared"] <= tb.SM90.smem_per_block_optin, where
        assert row["num_warps"] == p.num_warps and row["regs"] * row["num_warps"] * 32 <= tb.SM90.regs_per_sm, where
        per_sm = tb.blocks_per_sm(row["regs"], row["num_warps"], row["shared"], tb.SM90)
        assert per_sm * tb.SM90.n_sm >= p.grid[0] * p.grid[1], f"{where}: {per_sm} blocks per SM"


# ---------------------------------------------------------------------------------------------
# sm_90 compiles in subprocesses (the kernels are interpreted functions in this process)
# ---------------------------------------------------------------------------------------------
def _compile_in_subprocess(jobs, workers=2):
    """Compile jobs in `workers` parallel subprocesses with TRITON_INTERPRET unset; one JSON row
    per job, in order. Skips the test where ptxas for sm_90 is missing."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    parts = [list(range(i, len(jobs), workers)) for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, __file__, json.dumps([jobs[i] for i in part])], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for part in parts if part]
    rows = [None] * len(jobs)
    for part, proc in zip([p for p in parts if p], procs):
        out, err = proc.communicate(timeout=900)
        if proc.returncode and "ptxas" in err.lower():
            pytest.skip("no ptxas for sm_90: " + err[-300:])
        assert proc.returncode == 0, err[-3000:]
        for i, line in zip(part, out.splitlines()):
            rows[i] = json.loads(line)
    return rows


def _compile_job(job):
    """Compile one job for sm_90: a recurrence kernel with a plan's constexprs, or the probe."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.triton import recurrence as R
    from kernels.triton.aot_check import _signature

    target = GPUTarget("cuda", 90, 32)
    if job.get("probe"):
        fn = kb.barrier_probe_kernel
        sig = {"status_ptr": "*i32", "n_iters": "i32", "spin_cap": "i32"}
        kernel = triton.compile(ASTSource(fn, sig, constexprs={}), target=target,
                                options=dict(num_warps=4, **job.get("options", {})))
    else:
        kind, reset_after = FORMS[job["form"]]
        p = job["plan"]
        io = job["dtype"]
        plan = Plan(**dict(p, grid=tuple(p["grid"]), k_parts=tuple(p["k_parts"])))
        consts = dict(KIND=R.KIND_CODES[kind], NG=N_GATES[kind], ACT=0, RACT=2, RESET_AFTER=reset_after,
                      REVERSE=True, HAS_MASK=True, HAS_RMASK=not p["reduce_scatter"],
                      TWO_PHASE=kind == "gru" and not reset_after,
                      PHASE=0, SYNC=p["grid"][0] * p["grid"][1] > 1, PREC=job["prec"],
                      **tb.plan_constexprs(plan, job["direction"]))
        fn = R.forward_kernel if job["direction"] == "forward" else R.backward_kernel
        if job["direction"] == "forward":
            consts.update(HAS_BIAS=True, NGP=tb.gates_padded(N_GATES[kind]))
        kernel = triton.compile(ASTSource(fn, _signature(fn, consts, io, "fp64" if io == "fp64" else "fp32"),
                                          constexprs=consts),
                                target=target, options=plan.compile_options)
    regs, static = _resources(kernel.asm["cubin"])
    return dict(shared=kernel.metadata.shared + static, dynamic=kernel.metadata.shared, static=static,
                num_warps=kernel.metadata.num_warps, regs=regs,
                launch_cooperative_grid=bool(getattr(kernel.metadata, "launch_cooperative_grid", False)),
                ptx_barrier=all(s in kernel.asm["ptx"] for s in (".acq_rel.add", ".acquire", ".release.or",
                                                                  str(kb.ABORT_BIT))))


def _resources(cubin):
    """(registers per thread, static shared bytes) of the one kernel in a cubin (cuobjdump, shipped
    with triton). The static part comes on top of Triton's dynamic shared memory (metadata.shared)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return int(re.search(r"REG:(\d+)", out).group(1)), int(re.search(r"SHARED:(\d+)", out).group(1))


# ---------------------------------------------------------------------------------------------
# the barrier-latency probe compiled for sm_90
# ---------------------------------------------------------------------------------------------
def test_probe_compiles_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    row = _compile_in_subprocess([dict(probe=True)], workers=1)[0]
    assert row["ptx_barrier"], row  # the acq_rel arrival, acquire polls and the releasing abort
    assert row["num_warps"] == 4 and row["regs"] <= 64 and row["shared"] <= tb.SMEM_STATIC_BYTES + 64, row


# ---------------------------------------------------------------------------------------------
# CuPy: every barrier comes from a cooperative launch
# ---------------------------------------------------------------------------------------------
def test_cupy_sources_wait_across_blocks_only_in_grid_sync():
    """The kernels' only cross-block wait is grid_sync (cooperative groups' grid.sync(), or the
    FRNN_ATOMIC_BARRIER spin, which is still launched cooperatively)."""
    src = ROOT / "kernels" / "cupy"

    def code(name):  # the source without comments
        return re.sub(r"//[^\n]*|/\*.*?\*/", "", (src / name).read_text(), flags=re.S)

    for name in ("forward.cu", "backward.cu"):
        text = code(name)
        assert "grid_sync(" in text, name
        for pattern in ("atomic", "ld.acquire", "volatile", "this_grid"):
            assert pattern not in text, f"{name} waits across blocks outside grid_sync ({pattern})"
    header = code("recurrence.cuh")
    assert header.count("ld.acquire") == 1 and header.count("this_grid().sync()") == 1


@pytest.mark.parametrize("barrier", ["cg", "atomic"])
def test_cupy_launch_is_cooperative_after_an_occupancy_check(monkeypatch, barrier):
    import kernels.cupy as kc

    monkeypatch.setenv(kc.BARRIER_ENV, barrier)
    backend = kc.CupyBackend()
    config = kc.plan("forward", "lstm", 768, 16, torch.bfloat16, kc.H100)
    calls = []
    resident = {"per_sm": 1}

    def function(grid, block, args, **kw):
        calls.append(dict(grid=grid, block=block, **kw))

    function.ptr = 1234
    kernel = types.SimpleNamespace(kernel=function, max_dynamic_shared_size_bytes=10 ** 6, num_regs=80)
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        Device=lambda index: _NullContext(),
        ExternalStream=lambda ptr: ("stream", ptr),
        driver=types.SimpleNamespace(occupancyMaxActiveBlocksPerMultiprocessor=lambda ptr, threads, smem:
                                     resident["per_sm"])))
    monkeypatch.setattr(kc, "_import_cupy", lambda: fake_cupy)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=7))
    monkeypatch.setattr(backend, "device_limits", lambda device: kc.H100)
    monkeypatch.setattr(backend, "_kernel", lambda index, cfg: kernel)
    device = torch.device("cuda", 0)
    backend._launch(device, config, ())
    assert calls == [dict(grid=(config.grid, 1, 1), block=(config.threads, 1, 1), shared_mem=config.smem,
                          stream=("stream", 7), enable_cooperative_groups=True)]
    resident["per_sm"] = 0  # the compiled kernel does not fit: refused before any launch
    with pytest.raises(kc.SizeLimitError, match="co-resident blocks"):
        backend._launch(device, config, ())
    assert len(calls) == 1


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------------------
# GPU only
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_measure_barrier():
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    for programs in (1, 16, n_sm):
        us = kb.measure_barrier(programs, n_iters=200)
        assert 0.0 < us < 1000.0, (programs, us)


@pytest.mark.gpu
def test_gpu_grid_that_cannot_be_resident_is_refused_before_launch():
    with pytest.raises(tb.NotResidentError, match="cannot all be resident"):
        kb.measure_barrier(torch.cuda.get_device_properties(0).multi_processor_count * 64 + 1, n_iters=10)


@pytest.mark.gpu
def test_gpu_oversubscribed_grid_ends_with_the_timeout_flag():
    """A plain (non-cooperative) launch of 4x more programs than fit: the first wave spins until
    the cap, aborts and exits, the rest see the abort bit and exit: the launch ends, flagged."""
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    programs = n_sm * 32 * 4  # 32 blocks per SM at most on any GPU this runs on
    status = kb.new_status(1, "cuda")
    kb.barrier_probe_kernel[(programs,)](status[0], 10, 10000, num_warps=4)
    torch.cuda.synchronize()
    failed = kb.failed_launch(status)
    assert failed is not None and failed[1] >= 1, status


@pytest.mark.gpu
def test_gpu_persistent_launch_checks_residency(monkeypatch):
    """The persistent LSTM at H=256 bf16 runs through the co-residency check (spied) and, with the
    installed Triton, cooperatively."""
    seen = []
    real = tb.check_resident
    monkeypatch.setattr(tb, "check_resident", lambda *a: seen.append(real(*a)) or seen[-1])
    spec = _spec("lstm")
    p = {k: (v.cuda().to(torch.bfloat16) if v is not None else None)
         for k, v in _problem(spec, T=50, B=48, H=256).items()}
    saved = _forward(TritonBackend(), spec, p)
    _backward(TritonBackend(), spec, p, saved)
    assert len(seen) == 2 and all(n >= 1 for n in seen)
    assert torch.isfinite(saved.out.float()).all()


if __name__ == "__main__":  # compile worker for _compile_in_subprocess: a JSON list of jobs in argv[1]
    for job in json.loads(sys.argv[1]):
        print(json.dumps(_compile_job(job)), flush=True)
