"""The thread-block-cluster kernels (kernels/cupy/cluster.cu): sm_90a compile with warnings as
errors, the planner, and the real kernel code run on the CPU under an emulation of a cluster,
against the NumPy reference.

The emulation grows tests/test_cupy.py's (one host thread per CUDA thread, warp shuffles, the
mma.sync fragment layouts; imported from there, not copied) to clusters: every CTA's shared
memory is reachable from the others at the same offset (mapa), mbarriers keep an arrival count,
a transaction count and a phase (arrive.expect_tx, complete_tx, try_wait.parity), cp.async.bulk
copies shared memory to another CTA and completes bytes on its mbarrier after a random delay (so
a read that does not wait for its data sees stale or poisoned values), cp.async global-to-shared
copies land only when their thread waits for them, and barrier.cluster is a barrier over the
cluster's threads. The copies also check the hardware's rules: 16-byte aligned
addresses and sizes, destinations inside the planned shared memory, never the CTA itself.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import kernels.cupy as kc
from tests.test_cupy import EMULATION_SHIM, NVCC, build_emulation, _case_id, _from_storage, _inputs, _np_storage, _storage_np_dtype
from tests.tolerances import assert_close

ROOT = Path(__file__).resolve().parents[1]
GXX = shutil.which("g++")

# the shared part of test_cupy's shim: everything before it includes the grid-wide kernels
BASE_SHIM = EMULATION_SHIM.split('#include "cupy/forward.cu"')[0]
assert "frnn_emu_mma" in BASE_SHIM and "dynamic_smem" in BASE_SHIM

CLUSTER_SHIM = r"""
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
struct uint4 { unsigned x, y, z, w; };
inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
namespace emu {
struct Mbar { int count = 0, pending = 0; long long tx = 0; unsigned phase = 0; };
static std::mutex mb_mutex;
static std::condition_variable mb_cv;
static std::map<const void*, Mbar> mbars;
static std::vector<Block>* all_blocks = nullptr;
static std::vector<std::unique_ptr<std::barrier<>>>* cluster_bars = nullptr;
static thread_local int block_index = 0;
static int cluster_size = 1;
static size_t smem_size = 0;
static int violations = 0;  // broken hardware rules (alignment, bounds, self copies, bad mbarrier use)
static void violation(const char* what) {
    std::lock_guard<std::mutex> lk(mb_mutex);
    if (violations++ < 5) std::fprintf(stderr, "cluster emulation: %s\n", what);
}
static void settle(Mbar& m) {  // a phase completes when every arrival came and the tx count is back to zero
    if (m.pending == 0 && m.tx == 0) {
        ++m.phase;
        m.pending = m.count;
        mb_cv.notify_all();
    }
}
static unsigned char* remote(const void* local, unsigned to, size_t bytes) {  // mapa
    const unsigned char* base = block->smem;
    const size_t off = static_cast<const unsigned char*>(local) - base;
    if (off + bytes > smem_size) violation("address outside the planned shared memory");
    const int first = block_index / cluster_size * cluster_size;
    return (*all_blocks)[first + to].smem + off;
}
}
inline unsigned frnn_emu_cluster_rank() { return emu::block_index % emu::cluster_size; }
inline void frnn_emu_cluster_sync() { (*emu::cluster_bars)[emu::block_index / emu::cluster_size]->arrive_and_wait(); }
inline void frnn_emu_mbar_init(unsigned long long* bar, unsigned count) {
    std::lock_guard<std::mutex> lk(emu::mb_mutex);
    emu::mbars[bar] = emu::Mbar{(int)count, (int)count, 0, 0};
}
inline void frnn_emu_mbar_arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
    bool bad = false;
    {
        std::lock_guard<std::mutex> lk(emu::mb_mutex);
        auto it = emu::mbars.find(bar);
        if (it == emu::mbars.end() || it->second.pending <= 0) {
            bad = true;
        } else {
            it->second.tx += bytes;
            --it->second.pending;
            emu::settle(it->second);
        }
    }
    if (bad) emu::violation("arrive on an uninitialized mbarrier or past its arrival count");
}
inline bool frnn_emu_mbar_wait(unsigned long long* bar, unsigned parity) {
    std::unique_lock<std::mutex> lk(emu::mb_mutex);
    return emu::mb_cv.wait_for(lk, std::chrono::seconds(60), [&] {
        auto it = emu::mbars.find(bar);
        return it != emu::mbars.end() && (it->second.phase & 1u) != parity;
    });
}
inline void frnn_emu_bulk_push(const void* dst, const void* src, unsigned bytes, unsigned long long* bar, unsigned to) {
    if (((size_t)dst | (size_t)src) % 16 || bytes % 16 || bytes == 0) emu::violation("cp.async.bulk: 16-byte alignment");
    if ((int)to == (int)frnn_emu_cluster_rank() || (int)to >= emu::cluster_size) emu::violation("cp.async.bulk: bad target CTA");
    static thread_local std::minstd_rand rng(emu::block_index * 1000 + threadIdx.x);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 40));  // late delivery
    unsigned char* d = emu::remote(dst, to, bytes);
    unsigned long long* b = reinterpret_cast<unsigned long long*>(emu::remote(bar, to, 8));
    std::memcpy(d, src, bytes);
    std::lock_guard<std::mutex> lk(emu::mb_mutex);
    auto it = emu::mbars.find(b);
    if (it == emu::mbars.end()) { std::fprintf(stderr, "cluster emulation: copy to an uninitialized mbarrier\n"); ++emu::violations; return; }
    it->second.tx -= bytes;
    emu::settle(it->second);
}
// cp.async: a thread's copies land only when it waits for them (a legal schedule, and the one in
// which a read that does not wait sees the stale buffer); the hardware's 16-byte alignment checked
static thread_local std::vector<std::pair<void*, const void*>> async_copies;
inline void frnn_emu_copy_async16(void* dst, const void* src) {
    if (((size_t)dst | (size_t)src) % 16) emu::violation("cp.async: 16-byte alignment");
    if (static_cast<unsigned char*>(dst) + 16 > emu::block->smem + emu::smem_size || static_cast<unsigned char*>(dst) < emu::block->smem)
        emu::violation("cp.async: destination outside the planned shared memory");
    async_copies.emplace_back(dst, src);
}
inline void frnn_emu_wait_async() {
    for (auto& c : async_copies) std::memcpy(c.first, c.second, 16);
    async_copies.clear();
}

// Launch `clusters` clusters of `nc` CTAs; returns shared-memory overruns + rule violations.
template <class F> int emu_cluster_launch(int clusters, int nc, int threads, size_t smem_bytes, F kernel) {
    const int grid = clusters * nc;
    gridDim.x = grid;
    blockDim.x = threads;
    emu::cluster_size = nc;
    emu::smem_size = smem_bytes;
    emu::violations = 0;
    emu::mbars.clear();
    auto blocks = emu_blocks(grid, threads, smem_bytes);
    std::vector<std::unique_ptr<std::barrier<>>> cbars;
    for (int c = 0; c < clusters; ++c) cbars.push_back(std::make_unique<std::barrier<>>(nc * threads));
    emu::all_blocks = &blocks;
    emu::cluster_bars = &cbars;
    emu_run(blocks, threads, [](int b) { emu::block_index = b; }, kernel);
    return emu::violations | (emu_release(blocks, smem_bytes) << 8);
}
#include "cupy/cluster.cu"
"""

CLUSTER_ENTRY = r"""
extern "C" int run_forward(void** p, const int* n, int clusters, int nc, int threads, long smem) {
    return emu_cluster_launch(clusters, nc, threads, smem, [&] {
        frnn::rnn_cluster_forward<ARGS>(AnyPtr{p[0]}, AnyPtr{p[1]}, AnyPtr{p[2]}, AnyPtr{p[3]}, AnyPtr{p[4]},
                                        AnyPtr{p[5]}, AnyPtr{p[6]}, AnyPtr{p[7]}, AnyPtr{p[8]}, AnyPtr{p[9]},
                                        AnyPtr{p[10]}, AnyPtr{p[11]}, AnyPtr{p[12]}, n[0], n[1], n[2], n[3], n[4], n[5]);
    });
}
extern "C" int run_backward(void** p, const int* n, int clusters, int nc, int threads, long smem) {
    return emu_cluster_launch(clusters, nc, threads, smem, [&] {
        frnn::rnn_cluster_backward<ARGS>(AnyPtr{p[0]}, AnyPtr{p[1]}, AnyPtr{p[2]}, AnyPtr{p[3]}, AnyPtr{p[4]},
                                         AnyPtr{p[5]}, AnyPtr{p[6]}, AnyPtr{p[7]}, AnyPtr{p[8]}, AnyPtr{p[9]},
                                         AnyPtr{p[10]}, AnyPtr{p[11]}, AnyPtr{p[12]}, AnyPtr{p[13]}, AnyPtr{p[14]},
                                         n[0], n[1], n[2], n[3], n[4], n[5]);
    });
}
"""

# an emulated sm_90 part whose clusters hold at most 5 CTAs
EMU_LIMITS = kc.DeviceLimits("emulated sm_90", 8, 96 * 1024, 100 * 1024, compute_capability=(9, 0), max_cluster=5)

CASES = [
    # kind, act, ract, reset_after, dtype, T, B, H, reverse, mask, rec_mask, matvec, threads, reg_frags, ks
    # H=37 over units of 8: 5 CTAs, the last owning 5 units (uneven split); B=3; tensor cores with
    # weights partly in registers, k split; FMA for fp32 / fp64
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 7, 3, 37, False, True, False, "mma", 64, 2, 2),
    ("lstm", "tanh", "sigmoid", True, torch.float16, 7, 3, 37, True, True, True, "mma", 64, 0, 1),
    ("lstm", "relu", "hard_sigmoid", True, torch.float64, 7, 3, 37, False, True, True, "fma", 64, 0, 1),
    ("gru", "tanh", "sigmoid", True, torch.bfloat16, 7, 3, 37, True, True, True, "mma", 64, 4, 1),
    ("gru", "tanh", "sigmoid", False, torch.float16, 7, 3, 37, False, True, True, "mma", 64, 2, 2),
    ("gru", "linear", "hard_sigmoid", False, torch.float64, 7, 3, 37, True, False, False, "fma", 64, 0, 1),
    ("gru", "tanh", "sigmoid", True, torch.float32, 7, 3, 37, False, False, False, "fma", 64, 0, 1),
    ("rnn", "tanh", "sigmoid", True, torch.float32, 7, 3, 37, False, True, True, "mma", 64, 2, 1),  # tf32
    ("rnn", "relu", "sigmoid", True, torch.float64, 7, 3, 37, True, True, False, "fma", 64, 0, 1),
    # H x itemsize a multiple of 16: xg staged by 16-byte cp.async (H=40: 5 CTAs x 8 units; H=44
    # fp32: 16/16/12, the last CTA owning fewer)
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 6, 5, 40, True, True, False, "mma", 64, 2, 2),
    ("gru", "tanh", "sigmoid", False, torch.float32, 6, 3, 44, False, True, False, "mma", 64, 2, 1),  # tf32
    # two batch tiles (B=11), a one-CTA cluster (H=8), a single step
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 5, 11, 21, False, True, True, "mma", 64, 2, 1),
    ("gru", "tanh", "sigmoid", True, torch.bfloat16, 4, 2, 8, False, False, False, "mma", 64, 0, 1),
    ("gru", "tanh", "sigmoid", False, torch.float32, 1, 3, 13, False, False, True, "fma", 64, 0, 1),
]


@pytest.fixture(scope="module")
def cluster_build(tmp_path_factory):
    cache = {}

    def build(template_args):
        if template_args not in cache:
            source = BASE_SHIM + CLUSTER_SHIM + CLUSTER_ENTRY.replace("ARGS", template_args)
            cache[template_args] = build_emulation(tmp_path_factory.mktemp("emu_cluster"), source)
        return cache[template_args]

    return build


@pytest.mark.skipif(GXX is None, reason="g++ not on PATH")
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_cluster_kernels_under_emulation(rng, case, cluster_build):
    ref = pytest.importorskip("rnn.reference")
    from rnn.cells import CellSpec

    kind, act, ract, reset_after, dtype, T, B, H, reverse, use_mask, use_rec_mask, matvec, threads, rf, ks = case
    cell = CellSpec(kind, act, ract, reset_after)
    mma = matvec == "mma"
    tol = "tf32" if mma and dtype == torch.float32 else dtype
    g = kc.N_GATES[kind]
    acc_np = np.float64 if dtype == torch.float64 else np.float32
    p, mask, rec_mask = _inputs(rng, kind, dtype, T, B, H, 5, use_mask, use_rec_mask)
    out, hT, cT, cache = ref.forward(cell, p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"], p["c0"],
                                     mask, None, rec_mask, reverse)
    dout, dhT = rng.standard_normal(out.shape), rng.standard_normal(hT.shape)
    dcT = rng.standard_normal(cT.shape) if cT is not None else None
    grads = ref.backward(cache, dout, dhT, dcT)

    configs = {d: kc.plan_cluster(d, kind, H, B, dtype, EMU_LIMITS, activation=act, recurrent_activation=ract,
                                  reset_after=reset_after, rec_mask=use_rec_mask, mma=mma, threads=threads,
                                  reg_frags=rf, ks=ks) for d in ("forward", "backward")}
    for c in configs.values():
        assert c.kernel == "cluster" and c.mma == mma
        assert c.units % 8 == 0 and (c.grid - 1) * c.units < H <= c.grid * c.units <= H + 7  # every unit owned once
        assert c.grid <= EMU_LIMITS.max_cluster
    sdt = _storage_np_dtype(dtype)

    def nan_array(shape, dt):  # poisoned outputs
        a = np.empty(shape, dt)
        a.fill(np.nan if dt != np.int16 else -1)  # 0xffff is a NaN in fp16 and bf16
        return a

    def call(direction, arrays):
        config = configs[direction]
        lib = cluster_build(config.template_args)
        ptrs = (ctypes.c_void_p * len(arrays))(*[None if a is None else a.ctypes.data for a in arrays])
        ints = (ctypes.c_int * 6)(T, B, H, config.units, config.ks, int(reverse))
        fn = lib.run_forward if direction == "forward" else lib.run_backward
        bad = fn(ptrs, ints, 1, config.grid, config.threads, ctypes.c_long(config.smem))
        assert bad == 0, f"{direction}: cluster emulation found {bad & 0xff} rule violations, overrun {bad >> 8}"

    xg = _np_storage(p["x"] @ p["w_ih"].T + p["b_ih"], dtype)
    w_hh, b_hh, h0 = _np_storage(p["w_hh"], dtype), _np_storage(p["b_hh"], dtype), _np_storage(p["h0"], dtype)
    c0 = _np_storage(p["c0"], dtype) if kind == "lstm" else None
    mask_u8 = None if mask is None else mask.astype(np.uint8)
    rec = None if rec_mask is None else rec_mask.astype(acc_np)
    o, h_T, c_T = nan_array((T, B, H), sdt), nan_array((B, H), sdt), nan_array((B, H), sdt)
    gates, extra = nan_array((T, B, g * H), acc_np), nan_array((T, B, H), acc_np)
    status = np.zeros(1, np.uint32)
    call("forward", [xg, w_hh, b_hh, h0, c0, mask_u8, rec, o, h_T, c_T, gates, extra, status])
    assert status[0] == 0, "a wait timed out"
    assert_close("out", _from_storage(o, dtype), out, tol)
    assert_close("hT", _from_storage(h_T, dtype), hT, tol)
    if cT is not None:
        assert_close("cT", _from_storage(c_T, dtype), cT, tol)
    assert np.isfinite(gates).all()
    if kind == "lstm" or (kind == "gru" and reset_after):
        assert np.isfinite(extra).all()

    dxg, dh0, dc0 = nan_array((T, B, g * H), sdt), nan_array((B, H), sdt), nan_array((B, H), sdt)
    call("backward", [w_hh, h0, c0, mask_u8, rec, o, gates, extra, _np_storage(dout, dtype), _np_storage(dhT, dtype),
                      None if dcT is None else _np_storage(dcT, dtype), dxg, dh0, dc0, status])
    assert status[0] == 0, "a wait timed out"
    d = _from_storage(dxg, dtype)
    assert_close("dx", d.reshape(T * B, -1) @ p["w_ih"], grads["x"].reshape(T * B, -1), tol)
    assert_close("db_ih", d.sum(axis=(0, 1)), grads["b_ih"], tol)
    assert_close("dh0", _from_storage(dh0, dtype), grads["h0"], tol)
    if kind == "lstm":
        assert_close("dc0", _from_storage(dc0, dtype), grads["c0"], tol)
    if mask is not None:
        assert np.all(d[~mask] == 0.0)


@pytest.mark.skipif(GXX is None, reason="g++ not on PATH")
@pytest.mark.parametrize("case,pins", [
    # the template arguments of CASES' first and fourth cases: their emulation libraries are shared
    (("lstm", "tanh", "sigmoid", True, torch.bfloat16, 5, 3, 37, True, False), dict(threads=64, reg_frags=2, ks=2)),
    (("gru", "tanh", "sigmoid", True, torch.bfloat16, 4, 3, 37, True, True), dict(threads=64, reg_frags=4, ks=1)),
], ids=lambda v: _case_id(v) if isinstance(v, tuple) else "")
def test_both_directions_one_cluster_each_under_emulation(rng, monkeypatch, case, pins, cluster_build):
    """forward_both / backward_both through the backend: ONE launch of two clusters, cluster d
    running direction d; against the reference, and bit for bit against one-direction calls (the
    cluster plan does not depend on how many SMs the other direction takes)."""
    from tests.test_cupy import backend_on_cpu, check_both_directions, emulated_launch

    backend, launched = backend_on_cpu(monkeypatch, EMU_LIMITS, emulated_launch(lambda c: cluster_build(c.template_args)),
                                       pins=pins, family="cluster")
    assert check_both_directions(rng, backend, launched, case, case[4]) == 2
    assert all(c.kernel == "cluster" and c.grid == 5 for c in launched)


# ------------------------------------------------------------------------------------------------
# sm_90a compile (warnings are errors) and the planner

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
SM90A = ["-gencode=arch=compute_90a,code=sm_90a"]  # the -arch=sm_90a shorthand also runs a plain sm_90 pass


def _nvcc_cubin(source, out, *args, cwd=ROOT):
    cmd = [NVCC, "-std=c++17", "-cubin", "-o", str(out), *SM90A, "-Werror", "all-warnings", "-Xptxas", "-v", *args,
           str(source)]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    assert "warning" not in res.stderr.lower(), res.stderr
    return res.stderr


@needs_nvcc
def test_cluster_source_compiles_standalone(tmp_path):
    """Every default instantiation (each cell, both GRU forms, bf16 / fp16 / tf32 tensor cores with
    register-held weights, FMA fp32 / fp64) through ptxas for sm_90a; none spills."""
    log = _nvcc_cubin("kernels/cupy/cluster.cu", tmp_path / "c.cubin", "-I", "kernels")
    assert log.count("Compiling entry function") == 16, log
    assert " 0 bytes spill stores" in log and "bytes spill stores" in log
    spills = [line for line in log.splitlines() if "spill" in line and not line.strip().startswith("0 bytes") and
              " 0 bytes spill stores, 0 bytes spill loads" not in line]
    assert not spills, "\n".join(spills)


@needs_nvcc
def test_generated_cluster_configuration_compiles(tmp_path):
    """The loader's text for the B16 H768 bf16 LSTM forward plan is self-contained and compiles."""
    config = kc.plan_cluster("forward", "lstm", 768, 16, torch.bfloat16, kc.H100)
    source, options, name = kc.kernel_source(config)
    assert name.startswith("frnn::rnn_cluster_forward<0, 0, 2, true, frnn::bf16, false, true, 16, ")
    assert "-DFRNN_ATOMIC_BARRIER" in options  # no cooperative_groups.h: NVRTC needs no toolkit headers
    (tmp_path / "k.cu").write_text(source)
    log = _nvcc_cubin(tmp_path / "k.cu", tmp_path / "k.cubin", *options, cwd=tmp_path)
    assert " 0 bytes spill stores, 0 bytes spill loads" in log, log


def test_cluster_plan_h768():
    c = kc.plan_cluster("forward", "lstm", 768, 16, torch.bfloat16, kc.H100)
    assert (c.kernel, c.grid, c.units, c.mma, c.ntiles) == ("cluster", 16, 48, True, 2)
    assert c.smem <= kc.H100.smem_per_block_optin
    smem, busiest, traffic = kc._cluster_geometry("forward", "lstm", True, 768, 16, torch.bfloat16, False, True,
                                                  c.units, c.ntiles, c.ks, c.threads, c.reg_frags)
    # 12 m-tiles x 48 k-tiles on 8 warps: 4 m groups of 3 m-tiles x 2 k groups of 24 k-tiles, so
    # each k-tile's h fragment is loaded by 4 warps, not by every warp
    assert (c.threads, c.ks, c.mpw) == (256, 2, 3) and smem == c.smem and busiest == 72
    # no other k split of 8 warps moves less shared memory a step; one warp per m-tile pair moves more
    others = {ks: kc._cluster_geometry("forward", "lstm", True, 768, 16, torch.bfloat16, False, True, c.units,
                                       c.ntiles, ks, 256, c.reg_frags)[2] for ks in (1, 4, 8)}
    assert all(v >= traffic for v in others.values()) and others[1] > traffic
    # portable clusters only (8 CTAs): 96 units per CTA do not fit
    with pytest.raises(kc.SizeLimitError, match="8-CTA cluster"):
        kc.plan_cluster("forward", "lstm", 768, 16, torch.bfloat16, kc.H100, max_cluster=8)
    with pytest.raises(kc.SizeLimitError, match="sm_90"):
        kc.plan_cluster("forward", "lstm", 64, 4, torch.bfloat16, kc.A100)
    with pytest.raises(kc.SizeLimitError, match="batch of at most 64"):
        kc.plan_cluster("forward", "rnn", 64, 65, torch.bfloat16, kc.H100)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("hidden,batch", [(37, 3), (256, 16), (512, 64), (1024, 16), (256, 1), (64, 2)])
def test_choose_prefers_the_cluster_where_it_fits(kind, dtype, hidden, batch):
    """"auto": the cluster kernel where it fits, its FMA path only up to CLUSTER_FMA_AUTO_MAX_BATCH
    rows (kernel="cluster" still takes it at any batch it fits)."""
    for direction in ("forward", "backward"):
        fits = {}
        for name, planner in kc.FAMILIES.items():
            try:
                config = planner(direction, kind, hidden, batch, dtype, kc.H100)
                fits[name] = True
            except kc.SizeLimitError:
                fits[name] = False
            if name == "cluster" and fits[name] and not config.mma:
                assert kc.choose(direction, kind, hidden, batch, dtype, kc.H100, kernel="cluster").kernel == "cluster"
                fits[name] = batch <= kc.CLUSTER_FMA_AUTO_MAX_BATCH
        if not any(fits.values()):  # e.g. fp64 LSTM at H=1024: neither family
            with pytest.raises(kc.SizeLimitError):
                kc.choose(direction, kind, hidden, batch, dtype, kc.H100)
            continue
        c = kc.choose(direction, kind, hidden, batch, dtype, kc.H100)
        fits = fits["cluster"]
        assert c.kernel == ("cluster" if fits else "grid"), (direction, c)
        try:  # no clusters before sm_90
            assert kc.choose(direction, kind, hidden, batch, dtype, kc.A100).kernel == "grid"
        except kc.SizeLimitError as exc:
            assert "backend='triton'" in str(exc)  # the grid-wide kernel's own limit on the smaller GPU
        assert kc.choose(direction, kind, hidden, batch, dtype, kc.H100, kernel="grid").kernel == "grid"
    with pytest.raises(ValueError, match="kernel must be 'auto' or one of"):
        kc.choose("forward", kind, hidden, batch, dtype, kc.H100, kernel="fast")


def test_kernel_family_env_switch(monkeypatch):
    monkeypatch.setenv(kc.KERNEL_ENV, "grid")
    assert kc.CupyBackend()._family == "grid"
    monkeypatch.setenv(kc.KERNEL_ENV, "warp")
    with pytest.raises(ValueError, match="FUSED_RNN_CUPY_KERNEL must be 'auto' or one of \\('cluster', 'grid'\\)"):
        kc.CupyBackend()


# ------------------------------------------------------------------------------------------------
# the status flag: a bounded wait that timed out becomes an error after the launch (no GPU needed)

def _loader_on_cpu(monkeypatch, flag):
    """The cupy backend driven on CPU tensors (tests/test_cupy.py: backend_on_cpu, an H100 faked),
    its launch replaced by one that does what a kernel whose wait timed out does: write `flag` into
    the status word it was handed, by pointer. Returns (backend, the configurations launched)."""
    from profiling.static import _cupy_param_names
    from tests.test_cupy import backend_on_cpu

    def run(config, args):
        source = kc.kernel_source(config)[0]
        names = [n for n, _ in _cupy_param_names(source, f"rnn_cluster_{config.direction}")]
        assert len(args) == len(names), (names, args)  # the loader passes every kernel argument
        ctypes.c_uint32.from_address(int(args[names.index("status")])).value = flag

    return backend_on_cpu(monkeypatch, kc.H100, run)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_cluster_timeout_flag_raises_after_the_launch(monkeypatch, direction):
    from tests.test_cupy import spec

    T, B, H = 5, 3, 64
    cell = spec("lstm")
    xg = torch.zeros(T, B, 4 * H, dtype=torch.bfloat16)
    w_hh = torch.zeros(4 * H, H, dtype=torch.bfloat16)
    backend, launched = _loader_on_cpu(monkeypatch, 0)
    saved = backend.forward(cell, xg, w_hh, None, None, None, None, None, False)  # flag clear: outputs returned
    grads = backend.backward(cell, w_hh, None, None, None, None, None, False, saved, saved.out, None, None)
    assert len(grads) == 3 and [c.kernel for c in launched] == ["cluster", "cluster"]

    backend, launched = _loader_on_cpu(monkeypatch, 1)
    with pytest.raises(kc.ClusterTimeoutError) as err:
        if direction == "forward":
            backend.forward(cell, xg, w_hh, None, None, None, None, None, False)
        else:
            backend.backward(cell, w_hh, None, None, None, None, None, False, saved, saved.out, None, None)
    config = launched[-1]
    assert config.direction == direction
    text = str(err.value)
    # names the configuration and says what to do
    for part in (f"cluster {direction} kernel", "lstm, H=64, B=3, bfloat16", config.name, "not returned",
                 f"a cluster of {config.grid} CTAs x {config.units} units", "FUSED_RNN_CUPY_KERNEL=grid"):
        assert part in text, (part, text)
