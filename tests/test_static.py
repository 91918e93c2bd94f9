"""The static kernel report (profiling.static, profiling.sass): compile one configuration per kernel
family for sm_90 without a GPU and check what it reads; the PTX walk, the SASS loop finder and the
latency model on small synthetic inputs."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from profiling import sass, static

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("backend", "kernel", "cell", "dtype", "batch", "hidden", "direction", "auto", "registers",
            "spill_bytes", "shared_bytes", "co_resident", "mma_per_step", "us_per_step_est")


# ---------------------------------------------------------------------------------------------
# latency model

def test_estimate_model_terms():
    m = static.ESTIMATE_MODEL
    block = {"mma": 64, "lds_bytes": 100, "sts_bytes": 20, "ldsm_bytes": 8}
    warp = {"mma": 8, "ldg": 9, "ldg_rounds": 3, "bar": 3, "ffma": 70}
    est, terms = static.estimate_us(block, warp, grid_barriers=2, launches=0)
    clk = m["CLOCK_HZ"]
    expect = {
        "mma": max(8 * m["MMA_WARP_CLK"], 64 * 4096 / m["MMA_FLOP_PER_CLK_SM"]) / clk,
        "fma": 70 / clk,
        "smem": 32 * 128 / m["SMEM_BYTES_PER_CLK"] / clk,
        "l2": 3 * m["L2_LATENCY_S"],  # dependent rounds, not loads
        "bar": 3 * m["BAR_CLK"] / clk,
        "sync": 2 * m["GRID_BARRIER_S"],
    }
    for k, v in expect.items():
        assert terms[k] == pytest.approx(v * 1e6, abs=1e-3), (k, terms[k], v * 1e6)
    assert est == pytest.approx(sum(terms.values()), abs=1e-3)
    # a per-step kernel pays launches instead of grid barriers
    _, t2 = static.estimate_us(block, warp, grid_barriers=0, launches=3)
    assert t2["sync"] == pytest.approx(3 * m["LAUNCH_GAP_S"] * 1e6)
    # the whole grid's load bytes set a floor: L2 bandwidth, whatever the rounds
    few = 3 * m["L2_LATENCY_S"] * m["L2_BYTES_PER_S"] / 2
    many = 3 * few
    assert static.estimate_us(block, warp, 2, 0, l2_bytes=few)[1]["l2"] == pytest.approx(expect["l2"] * 1e6, abs=1e-3)
    assert static.estimate_us(block, warp, 2, 0, l2_bytes=many)[1]["l2"] == pytest.approx(
        many / m["L2_BYTES_PER_S"] * 1e6, abs=1e-3)


def test_estimate_model_counts_wgmma():
    """wgmma work (Triton's per-step kernels at 64-row batch tiles) is tensor-core time too: the
    walk counts each warp's quarter of a warpgroup's m64nNk16 FLOPs (tf32's K = 8 counted as 16:
    the same instruction time), and the model adds them at WGMMA_FLOP_PER_CLK_SM."""
    assert sass.wgmma_flops("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16") == 2 * 64 * 128 * 16
    assert sass.wgmma_flops("wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32") == 2 * 64 * 64 * 16
    with pytest.raises(sass.WalkError, match="shape"):
        sass.wgmma_flops("wgmma.mma_async.sync.aligned.f32.bf16.bf16")
    m = static.ESTIMATE_MODEL
    flops = 4 * 12 * 2 * 64 * 128 * 16  # 12 wgmma of 4 warps
    _, terms = static.estimate_us({"mma": 64, "wgmma_bytes": flops}, {"mma": 2}, grid_barriers=0, launches=1)
    want = (64 * 4096 / m["MMA_FLOP_PER_CLK_SM"] + flops / m["WGMMA_FLOP_PER_CLK_SM"]) / m["CLOCK_HZ"]
    assert terms["mma"] == pytest.approx(want * 1e6, abs=1e-3) and terms["mma"] > 0.2


def test_estimate_model_cluster_exchange():
    """A cluster kernel pays its DSMEM exchanges instead of a grid barrier (its loads in flight at
    the wait are the walk's business: test_ptx_walk_load_rounds)."""
    m = static.ESTIMATE_MODEL
    clk = m["CLOCK_HZ"]
    block = {"mma": 64, "bulk": 240, "bulk_bytes": 23040}
    exchange = 2 * m["CLUSTER_EXCHANGE_S"] + 23040 / m["DSMEM_BYTES_PER_CLK"] / clk
    _, terms = static.estimate_us(block, {"ldg_rounds": 1}, grid_barriers=0, launches=0, exchanges=2)
    assert terms["sync"] == pytest.approx(exchange * 1e6, abs=1e-3)
    assert terms["l2"] == pytest.approx(m["L2_LATENCY_S"] * 1e6, abs=1e-3)
    # without exchanges the DSMEM bytes cost nothing
    _, terms = static.estimate_us(block, {"ldg_rounds": 1}, grid_barriers=0, launches=0)
    assert terms["sync"] == 0


def test_occupancy():
    # 255 registers x 256 threads: 8 warps x 8192 registers = the whole register file
    assert static.blocks_per_sm(255, 256, 2048) == 1
    assert static.blocks_per_sm(64, 256, 2048) == 4
    assert static.blocks_per_sm(32, 128, 100 * 1024) == 2        # shared memory bound
    assert static.blocks_per_sm(32, 128, 300 * 1024) == 0        # does not fit at all


# ---------------------------------------------------------------------------------------------
# PTX walk and SASS loops on synthetic code

PTX = """
.visible .entry k(
    .param .u32 k_param_0,
    .param .u32 k_param_1
)
{
    ld.param.u32 %r1, [k_param_0];
    ld.param.u32 %r2, [k_param_1];
    mov.u32 %r3, %tid.x;
    mov.u32 %r10, 0;
$L__step:
    mov.u32 %r11, %r3;
    setp.ge.s32 %p1, %r11, %r2;
    @%p1 bra $L__skip;
$L__inner:
    ld.shared.v2.b32 {%r20, %r21}, [%r11];
    ld.global.cg.b16 %rs1, [%rd1];
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1,%f2,%f3,%f4}, {%r20,%r21,%r20,%r21}, {%r20,%r21}, {%f1,%f2,%f3,%f4};
    add.s32 %r11, %r11, 64;
    setp.lt.s32 %p2, %r11, %r2;
    @%p2 bra $L__inner;
$L__skip:
    bar.sync 0;
    ld.global.acquire.gpu.b32 %r30, [%rd2];
$L__spin:
    ld.global.acquire.gpu.b32 %r30, [%rd2];
    setp.lt.u32 %p3, %r30, 5;
    @%p3 bra $L__spin;
    add.s32 %r10, %r10, 1;
    setp.lt.s32 %p4, %r10, %r1;
    @%p4 bra $L__step;
    ret;
}
"""


@pytest.mark.parametrize("tid,n,expected", [(0, 640, 10), (32, 640, 10), (0, 100, 2), (100, 100, 0)])
def test_ptx_walk_counts_one_step(tid, n, expected):
    k = sass.parse_ptx(PTX)
    assert k.params == ["k_param_0", "k_param_1"]
    win, total, arrivals = sass.walk(k, [4, n], tid=tid, ntid=64)
    # inner loop: ceil((n - tid) / 64) iterations; the spin loop (unknown value) exits at once
    assert win["mma"] == expected and win["lds"] == expected and win["lds_bytes"] == 8 * expected
    assert win["ldg"] == expected + 2 and win["ldg_bytes"] == 2 * expected + 8
    assert win["bar"] == 1
    # the walk stops at the end of the window: steps 0 and 1 ran
    assert total["bar"] == 2 and total["mma"] == 2 * expected
    assert arrivals == 2


# load rounds: the previous step's load waited for at a store (a round unless a wait covered it),
# two loads whose values meet in arithmetic and then a shared store (one round, ending at the block
# barrier), a load read by an mma (a round) and a load whose address depends on it (it ends that
# round and is a round of its own), then the next step's load, in flight at the grid barrier's poll
def _step_loop_ptx(body, before=""):
    """A kernel of one u32 parameter, the step count: `before`, then `body` once a step."""
    return f"""
.visible .entry k(
    .param .u32 k_param_0
)
{{
    ld.param.u32 %r1, [k_param_0];
    mov.u32 %r10, 0;
{before}$L__step:
{body}    add.s32 %r10, %r10, 1;
    setp.lt.s32 %p4, %r10, %r1;
    @%p4 bra $L__step;
    ret;
}}
"""


ROUNDS_PTX = _step_loop_ptx(before="    ld.global.b32 %r40, [%rd9];\n", body="""    add.s32 %r41, %r40, 1;
    st.global.b32 [%rd9], %r41;
    bar.sync 0;
    ld.global.cg.b32 %r20, [%rd1];
    ld.global.cg.b32 %r21, [%rd2];
    add.s32 %r22, %r20, %r21;
    mov.b32 %r23, %r22;
    st.shared.b32 [%r3], %r23;
    bar.sync 0;
    ld.global.cg.v2.b32 {%r30, %r31}, [%rd3];
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1,%f2,%f3,%f4}, {%r30,%r31,%r30,%r31}, {%r30,%r31}, {%f1,%f2,%f3,%f4};
    ld.global.b32 %r32, [%r30];
    st.global.b32 [%rd5], %r32;
    bar.sync 0;
    ld.global.b32 %r40, [%rd9];
    ld.global.acquire.gpu.b32 %r50, [%rd4];
""")


def test_ptx_walk_load_rounds():
    win, total, _ = sass.walk(sass.parse_ptx(ROUNDS_PTX), [4], tid=0, ntid=32)
    assert win["ldg"] == 6  # five data loads and the poll
    assert win["ldg_rounds"] == 3
    # the load before the loop was waited for in the first step: no wait covered it
    assert total["ldg_rounds"] == 1 + 2 * 3
    # without the poll the next step's load costs a round of its own
    no_poll = ROUNDS_PTX.replace("ld.global.acquire.gpu.b32 %r50, [%rd4];", "")
    win, _, _ = sass.walk(sass.parse_ptx(no_poll), [4], tid=0, ntid=32)
    assert win["ldg_rounds"] == 4
    # loads that do not depend on the round join it until the block ends (ptxas hoists them):
    # without the first barrier the two rounds at the top of the step are one
    merged = ROUNDS_PTX.replace("    st.global.b32 [%rd9], %r41;\n    bar.sync 0;\n", "    st.global.b32 [%rd9], %r41;\n")
    win, _, _ = sass.walk(sass.parse_ptx(merged.replace("ld.global.acquire.gpu.b32 %r50, [%rd4];", "")), [4],
                          tid=0, ntid=32)
    assert win["ldg_rounds"] == 3


# Triton's software-pipelined K loop: two 16-byte cp.async copies (global -> shared) per step, then
# the wait for the older group and a barrier before the shared loads that read them
CP_ASYNC_PTX = _step_loop_ptx("""    cp.async.cg.shared.global [ %r2 + 0 ], [ %rd1 + 0 ], 0x10, %r3;
    cp.async.cg.shared.global [ %r4 + 0 ], [ %rd2 + 0 ], 0x10, %r3;
    cp.async.commit_group;
    cp.async.wait_group 0x1;
    bar.sync 0;
    ld.shared.v4.b32 {%r20, %r21, %r22, %r23}, [%r5];
""")


def test_ptx_walk_cp_async():
    """A cp.async copy is a global load and a shared store of its size; its wait ends a round."""
    win, _, _ = sass.walk(sass.parse_ptx(CP_ASYNC_PTX), [4], tid=0, ntid=32)
    assert win["ldg"] == 2 and win["ldg_bytes"] == 32
    assert win["sts"] == 2 and win["sts_bytes"] == 32 and win["lds_bytes"] == 16
    assert win["ldg_rounds"] == 1
    # no wait in the step: the copies are waited for nowhere, so no round
    no_wait = CP_ASYNC_PTX.replace("    cp.async.wait_group 0x1;\n", "")
    win, _, _ = sass.walk(sass.parse_ptx(no_wait), [4], tid=0, ntid=32)
    assert win["ldg"] == 2 and win["ldg_rounds"] == 0


# a step loop the compiler rotated: the head ($L__head, entered from the set-up) sits after the code
# that ends each step ($L__tail: reached from the barrier), as Triton 3.6 laid out the persistent forward
ROTATED_PTX = """
.visible .entry q(
    .param .u32 q_param_0
)
{
    ld.param.u32 %r1, [q_param_0];
    mov.u32 %r10, 0;
    bra.uni $L__head;
$L__tail:
    ld.shared.b32 %r5, [%r2];
    add.s32 %r10, %r10, 1;
$L__head:
    setp.ge.s32 %p1, %r10, %r1;
    @%p1 bra $L__end;
    ld.shared.v2.b32 {%r20, %r21}, [%r11];
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1,%f2,%f3,%f4}, {%r20,%r21,%r20,%r21}, {%r20,%r21}, {%f1,%f2,%f3,%f4};
    bar.sync 0;
    bra.uni $L__tail;
$L__end:
    ret;
}
"""


def test_ptx_step_loop_of_a_rotated_loop():
    k = sass.parse_ptx(ROTATED_PTX)
    head, _ = sass.ptx_step_loop(k)
    assert k.code[head] == "$L__head"
    win, total, arrivals = sass.walk(k, [5], tid=0, ntid=32)
    assert arrivals == 2 and win["mma"] == 1 and win["lds"] == 2 and win["bar"] == 1
    assert total["mma"] == 2


# a cluster step: a thread-strided loop of bulk copies (CTA rank 0 only) whose size is a magic-number
# division, then an mbarrier wait that would spin for ever if the walk did not take it as complete
CLUSTER_PTX = """
.visible .entry c(
    .param .u32 c_param_0,
    .param .u32 c_param_1,
    .param .u32 c_param_2
)
{
    ld.param.u32 %r1, [c_param_0];
    ld.param.u32 %r2, [c_param_1];
    ld.param.u32 %r3, [c_param_2];
    mov.u32 %r4, %tid.x;
    mov.u32 %r5, %cluster_ctarank;
    mul.wide.u32 %rd1, %r3, -1431655765;
    shr.u64 %rd2, %rd1, 33;
    cvt.u32.u64 %r6, %rd2;
    mov.u32 %r10, 0;
$L__step:
    bar.sync 0;
    setp.ne.s32 %p5, %r5, 0;
    @%p5 bra $L__wait;
    mov.u32 %r11, %r4;
    setp.ge.s32 %p1, %r11, %r1;
    @%p1 bra $L__wait;
$L__push:
    // begin inline asm
    mapa.shared::cluster.u32 %r20, %r21, %r11;
    // end inline asm
    cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%r20], [%r21], %r6, [%r22];
    add.s32 %r11, %r11, 64;
    setp.lt.s32 %p2, %r11, %r1;
    @%p2 bra $L__push;
$L__wait:
    { .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%r30], %r31; selp.u32 %r32, 1, 0, p; }
    setp.ne.s32 %p3, %r32, 0;
    @%p3 bra $L__done;
    bra $L__wait;
$L__done:
    add.s32 %r10, %r10, 1;
    setp.lt.s32 %p4, %r10, %r2;
    @%p4 bra $L__step;
    ret;
}
"""


@pytest.mark.parametrize("tid,n,copies", [(0, 100, 2), (40, 100, 1), (63, 100, 1), (0, 40, 1), (40, 40, 0)])
def test_ptx_walk_cluster_step(tid, n, copies):
    k = sass.parse_ptx(CLUSTER_PTX)
    # "op.shared::cluster ..." is an instruction, not a label named "op.shared"
    assert not any(":" in label for label in k.labels) and "mapa.shared" not in k.labels
    win, _, arrivals = sass.walk(k, [n, 4, 96], tid=tid, ntid=64, ctaid=(2, 0, 0), nctaid=(4, 1, 1), cluster=2)
    assert arrivals == 2
    # rank 0 of its cluster: ceil((n - tid) / 64) copies of 96 / 3 = 32 bytes (0xaaaaaaab, not a negative number)
    assert win["bulk"] == copies and win["bulk_bytes"] == 32 * copies
    assert win["syncs"] == 1 and win["bar"] == 1  # one try_wait, taken as complete: no spin
    win, _, _ = sass.walk(k, [n, 4, 96], tid=tid, ntid=64, ctaid=(3, 0, 0), nctaid=(4, 1, 1), cluster=2)
    assert win["bulk"] == 0 and win["syncs"] == 1  # rank 1 pushes nothing


def test_lane_sum_counts_every_lane_with_few_walks():
    """Bulk copies are per thread: a warp's count is the sum over its 32 lanes, found by walking
    a few lanes (counts are monotone in the lane of a thread-strided loop). Lane t of the loop
    above copies ceil((n - t) / 64) times."""
    k = sass.parse_ptx(CLUSTER_PTX)
    walked = []

    def one(tid):
        walked.append(tid)
        return sass.walk(k, [n, 4, 96], tid=tid, ntid=64, cluster=1)[0]

    for n, warp, expected in [(100, 0, 64), (100, 1, 4 * 2 + 28), (40, 1, 8), (40, 0, 32), (170, 1, 10 * 3 + 22 * 2)]:
        walked.clear()
        first = 32 * warp
        lanes = static._lane_sum(one, first, first + 31, one(first))
        exact = sum(sass.walk(k, [n, 4, 96], tid=t, ntid=64)[0]["bulk"] for t in range(first, first + 32))
        assert lanes["bulk"] == exact == expected and lanes["bulk_bytes"] == 32 * expected
        assert len(walked) <= 12, walked


def test_ptx_walk_rejects_wrong_argument_count():
    with pytest.raises(sass.WalkError, match="2 parameters, 1 values"):
        sass.walk(sass.parse_ptx(PTX), [4])


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDS R2, [R1] ;
        /*0020*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0030*/              @P0  BRA `(.L_x_2) ;
.L_x_1:
        /*0040*/                   LDG.E.U16.STRONG.GPU R3, desc[UR4][R2.64] ;
        /*0050*/              @P1  BRA `(.L_x_1) ;
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_3:
        /*0070*/              @P2  BRA `(.L_x_0) ;
        /*0080*/                   EXIT ;
.L_x_2:
        /*0090*/                   STL.64 [R1+0x8], R4 ;
        /*00a0*/                   LDSM.16.M88.4 R8, [R2] ;
        /*00b0*/                   BRA `(.L_x_3) ;
"""


def test_sass_step_loop_keeps_out_of_line_blocks():
    instrs = sass.parse_sass(SASS)
    assert [i.op for i in instrs][:3] == ["MOV", "LDS", "HMMA.16816.F32.BF16"]
    loop = sass.step_loop(instrs)
    assert loop is not None and loop[0] == 0x10
    # the block at 0x90 is placed after EXIT but belongs to the loop (it branches back into it)
    assert {0x90, 0xa0, 0xb0} <= loop[1] and 0x80 not in loop[1] and 0x0 not in loop[1]
    c = sass.count(sass.loop_instrs(instrs, loop))
    assert c["mma"] == 1 and c["stl"] == 1 and c["stl_bytes"] == 8 and c["ldsm"] == 1 and c["ldsm_bytes"] == 16
    assert c["ldg_bytes"] == 2 and c["bar"] == 1


def test_ptxas_log_parse():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Function properties for k\n"
           "    936 bytes stack frame, 936 bytes spill stores, 900 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 936 bytes cumulative stack size\n")
    assert sass.parse_ptxas_log(log) == {"k": {"stack_bytes": 936, "spill_store_bytes": 936,
                                               "spill_load_bytes": 900, "registers": 255}}


# ---------------------------------------------------------------------------------------------
# one configuration per kernel family, compiled for sm_90 (a subprocess: the test session runs
# the Triton interpreter, whose kernels cannot be compiled)

def _run_static(tmp_path, *args):
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "profiling.static", "--batches", "16", "--hiddens", "64", "--cache-dir", "",
           "--results-dir", str(tmp_path), "--no-progress", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((out / "static_sm90.json").read_text())
    return record, (out / "static_sm90.md").read_text()


def _row(record, backend, direction, both=False):
    """The one row of a backend and direction: of one direction's launch, or (both) of the launch
    of both directions of a bidirectional layer."""
    rows = [r for r in record["rows"] if r["backend"] == backend and r["direction"] == direction
            and ("both directions" in r["kernel"]) == both]
    assert len(rows) == 1, rows
    return rows[0]


def _check_compiled(row):
    for key in REQUIRED:
        assert key in row, key
    assert row["status"] == "ok", row["note"]
    assert row["registers"] > 0 and row["shared_bytes"] > 0
    assert row["step_loop_found"], row
    assert row["co_resident"] is True and row["us_per_step_est"] > 0
    assert row["bar_per_step"] > 0


def test_triton_family_bf16(tmp_path):
    record, md = _run_static(tmp_path, "--cells", "rnn", "--dtypes", "bf16", "--backends", "triton")
    assert record["device"] == "sm_90 (compiled, not run)"
    for key in ("versions", "git_commit", "date", "estimate_model"):
        assert record[key]
    for direction in ("forward", "backward"):
        row = _row(record, "triton", direction)
        _check_compiled(row)
        assert row["kernel"].startswith("triton.") and row["grid_barriers_per_step"] >= 1
        # a program's tile is 16 rows x 16 units x 64 deep: the m16n8k16 MMAs of its warps cover it
        assert row["mma_per_warp"] > 0 and row["mma_per_step"] * 16 * 8 * 16 >= 16 * 16 * 64, row
        # both directions in one launch: a third grid axis of 2, each direction on half of the SMs
        both = _row(record, "triton", direction, both=True)
        _check_compiled(both)
        assert both["grid"][2] == 2 and both["grid"][0] * both["grid"][1] <= 132 // 2, both
        assert both["co_resident"] and both["grid_barriers_per_step"] >= 1
    assert "compiled for sm_90, estimated, not measured" in md


def test_triton_per_step_kernel_counts_its_whole_launch(tmp_path):
    """A per-step kernel is one step per launch: every K chunk of its dot counts (LSTM bf16 B16
    H2048: the backward runs per step (its W_hh slices fit no persistent plan), 64 programs of 32
    units, K = 4H = 8192: one program's dot is 2 * 32 * 16 * 8192 FLOPs, 2048 m16n8k16 MMAs)."""
    record, _ = _run_static(tmp_path, "--cells", "lstm", "--dtypes", "bf16", "--batches", "16", "--hiddens",
                            "2048", "--backends", "triton")
    row = _row(record, "triton", "backward")
    assert row["path"] == "per-step" and row["grid"][0] == 64, row
    assert row["mma_per_step"] * 16 * 8 * 16 * 2 == 2 * 32 * 16 * 8192, row
    assert "step loop" not in row["note"] and row["launches_per_step"] >= 1
    # its K loop is software-pipelined (cp.async): W_hh (8192 x 2048 bf16) read once a step and the
    # dgates operand (16 x 8192 bf16) once per program are L2 traffic; dh (16 x 2048 fp32) is stored
    assert row["l2_load_bytes_per_step"] >= 2 * 8192 * 2048 + 64 * 2 * 16 * 8192, row
    assert row["l2_store_bytes_per_step"] >= 4 * 16 * 2048, row


def test_triton_reduce_scatter_backward_counts(tmp_path):
    """The headline backward exchanges partial sums (LSTM bf16 B16 H768: 48 programs, each storing
    its fp32 partial dh of all 768 units and loading the 48 partials of its 16 units a step): one
    grid barrier, every MMA issued once (768 / 64 m-tiles x 4 gates = 48 wgmma m64n16k16 a program,
    each executed by the 4 warps of one warpgroup), no dgates staged in shared memory, no spill; the
    partial sums are L2 traffic both ways."""
    record, _ = _run_static(tmp_path, "--cells", "lstm", "--dtypes", "bf16", "--batches", "16", "--hiddens",
                            "768", "--backends", "triton")
    row = _row(record, "triton", "backward")
    assert "reduce-scatter" in row["kernel"] and row["path"] == "persistent" and row["grid"][:2] == [48, 1], row
    assert row["spill_bytes"] == 0 and row["grid_barriers_per_step"] == 1 and row["mma_per_step"] == 0, row
    assert row["wgmma_per_step"] == 4 * 48 and row["sts_bytes_per_step"] + row["lds_bytes_per_step"] < 8 * 1024, row
    partials = 48 * 16 * 768 * 4
    assert row["l2_store_bytes_per_step"] >= partials and row["l2_load_bytes_per_step"] >= partials, row


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None,
                                reason="nvcc not on PATH: the CuPy kernels cannot be compiled here")


@needs_nvcc
def test_cupy_grid_family_bf16_and_fp32(tmp_path):
    """The grid-wide kernels (what auto launches where W_hh fits no cluster, and before sm_90),
    reported beside the cluster rows: at B16 H64 auto takes the cluster kernel's MMA path (bf16),
    not its FMA path (fp32: the grid-wide kernel above CLUSTER_FMA_AUTO_MAX_BATCH rows; the cluster
    kernel is then the reported alternative)."""
    record, _ = _run_static(tmp_path, "--cells", "rnn", "--dtypes", "bf16,fp32", "--backends", "cupy")
    for direction in ("forward", "backward"):
        mma = _row_of(record, "bf16", direction, "cupy.rnn_" + direction)
        fma = _row_of(record, "fp32", direction, "cupy.rnn_" + direction)
        for row in (mma, fma):
            _check_compiled(row)
            grid = row is fma
            assert row["auto"] is grid and row["grid_barriers_per_step"] >= 1 and row["bulk_per_step"] == 0
            assert _row_of(record, row["dtype"], direction, "cupy.rnn_cluster_")["auto"] is not grid
            assert row["ldg_per_step"] > 0 and row["atomic_per_step"] >= 0
        assert "[mma]" in mma["kernel"] and mma["mma_per_step"] > 0
        assert "[fma]" in fma["kernel"] and fma["mma_per_step"] == 0 and fma["ffma_per_warp"] > 0


def _row_of(record, dtype, direction, kernel_prefix, both=False):
    rows = [r for r in record["rows"] if r["dtype"] == dtype and r["direction"] == direction
            and r["kernel"].startswith(kernel_prefix) and ("both directions" in r["kernel"]) == both]
    assert len(rows) == 1, rows
    return rows[0]


@needs_nvcc
def test_cupy_cluster_family_lstm_bf16(tmp_path):
    """The thread-block-cluster kernels (sm_90a): tensor cores, every bulk copy of a step counted
    per thread, the DSMEM exchange in place of a grid barrier."""
    import torch

    import kernels.cupy as kc

    record, md = _run_static(tmp_path, "--cells", "lstm", "--dtypes", "bf16", "--backends", "cupy")
    for direction in ("forward", "backward"):
        plan = kc.choose(direction, "lstm", 64, 16, torch.bfloat16, kc.H100)
        assert plan.kernel == "cluster"
        row = _row_of(record, "bf16", direction, f"cupy.rnn_cluster_{direction}[mma]")
        _check_compiled(row)
        assert row["auto"] is True and row["path"] == "cluster" and row["grid"] == [plan.grid, 1]
        assert row["spill_bytes"] == 0 and row["spill_ld_per_step"] == 0
        assert row["shared_bytes"] <= static.SMEM_PER_BLOCK + static.SMEM_RESERVED_PER_BLOCK
        assert row["mma_per_step"] > 0 and row["mma_per_warp"] > 0
        # no grid barrier: no grid-wide atomics, one exchange (push + mbarrier wait) per step
        assert row["grid_barriers_per_step"] == 0 and row["atomic_per_step"] == 0
        assert row["cluster_size"] == plan.grid and row["cluster_exchanges_per_step"] == 1
        assert row["syncs_per_step"] >= plan.threads // 32  # every warp waits on its CTA's mbarrier
        # each CTA copies its slice of every exchanged row (forward h_t: 1 per batch row; backward
        # dA: one per gate) to each other CTA of the cluster, units rounded up to 8, 2 bytes each
        rows = 16 * (1 if direction == "forward" else 4)
        assert row["bulk_per_step"] == (plan.grid - 1) * rows
        assert row["dsmem_bytes_per_step"] == row["bulk_per_step"] * -(-plan.units // 8) * 8 * 2
        m = static.ESTIMATE_MODEL
        exchange = m["CLUSTER_EXCHANGE_S"] + row["dsmem_bytes_per_step"] / m["DSMEM_BYTES_PER_CLK"] / m["CLOCK_HZ"]
        assert row["est_terms_us"]["sync"] == pytest.approx(exchange * 1e6, abs=1e-3)
        # the grid-wide kernel is reported beside it, not taken by auto
        grid = _row_of(record, "bf16", direction, f"cupy.rnn_{direction}[mma]")
        assert grid["auto"] is False and grid["grid_barriers_per_step"] == 1 and grid["bulk_per_step"] == 0
        # both directions of a bidirectional layer: one launch of two clusters, each CTA's step as above
        both = _row_of(record, "bf16", direction, f"cupy.rnn_cluster_{direction}[mma, both directions]", both=True)
        _check_compiled(both)
        assert both["grid"] == [2 * plan.grid, 1] and both["cluster_size"] == plan.grid
        assert both["spill_bytes"] == 0 and both["bulk_per_step"] == row["bulk_per_step"]
        assert both["mma_per_step"] == row["mma_per_step"]
    assert "rnn_cluster_forward[mma]" in md


def test_measured_times_are_matched(tmp_path):
    rec = {"device": "NVIDIA H100 80GB HBM3", "rows": [
        {"backend": "cupy", "cell": "lstm", "dtype": "fp16", "batch": 16, "hidden": 768, "mode": "forward",
         "status": "ok", "ms": 2.048, "seq_len": 1024, "ms_cudnn": 3.072},
        {"backend": "cupy", "cell": "lstm", "dtype": "fp16", "batch": 16, "hidden": 768,
         "mode": "forward_backward", "status": "ok", "ms": 6.144, "seq_len": 1024, "ms_cudnn": None},
        # a bidirectional layer (the GPU harness's last headline cases): not beside one direction's estimate
        {"backend": "cupy", "cell": "lstm", "dtype": "fp16", "batch": 16, "hidden": 768, "mode": "forward",
         "status": "ok", "ms": 9.0, "seq_len": 1024, "directions": 2}]}
    (tmp_path / "gpu.json").write_text(json.dumps(rec))
    (tmp_path / "cpu.json").write_text(json.dumps(dict(rec, device="cpu: x")))
    index = static.measured_index(tmp_path)
    assert static._measured(index, "cupy", "lstm", "fp16", 16, 768, "forward", True) == (2.0, 3.0, "gpu.json")
    assert static._measured(index, "cupy", "lstm", "fp16", 16, 768, "backward", True) == (4.0, None, "gpu.json")
    assert static._measured(index, "triton", "lstm", "fp16", 16, 768, "forward", False) == (None, None, None)


def test_harness_records_are_matched_by_path(tmp_path):
    """The GPU harness writes record.json in a folder, names the path and says ms_torch_nn."""
    row = {"cell": "lstm", "dtype": "bf16", "batch": 16, "hidden": 768, "mode": "forward", "status": "ok",
           "seq_len": 1024}
    rec = {"device": "NVIDIA H100 80GB HBM3", "rows": [
        dict(row, backend="triton_persistent", ms=4.096, ms_torch_nn=2.048),
        dict(row, backend="triton_per_step", ms=8.192, ms_torch_nn=2.048)]}
    (tmp_path / "gpu-20261124").mkdir()
    (tmp_path / "gpu-20261124" / "record.json").write_text(json.dumps(rec))
    index = static.measured_index(tmp_path)
    args = ("triton", "lstm", "bf16", 16, 768, "forward", False)
    assert static._measured(index, *args, path="persistent") == (4.0, 2.0, "record.json")
    assert static._measured(index, *args, path="per-step") == (8.0, 2.0, "record.json")
