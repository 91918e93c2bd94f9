"""The Triton backend (kernels.triton) against the NumPy float64 oracle and the torch backend.

On a CPU-only machine the kernels run in the Triton interpreter (conftest sets TRITON_INTERPRET=1):
the persistent path as one program, the per-step path with 16-wide blocks (several programs, so
the slicing of W_hh / h / dgates across programs is exercised). The oracle is fed x = xg (the gate
pre-activations the kernel receives, rounded to the dtype under test) with w_ih = identity, so its
dx IS the dxg the kernel must produce. GPU-only cases (real sizes, the multi-program persistent
path with its grid barrier, the CUDA-graph per-step path) are marked `gpu`.
"""
import inspect
import types

import numpy as np
import pytest
import torch

from problems import CELLS, draw, upstream
from rnn import reference
from rnn.cells import CellSpec
from rnn.recurrence_torch import TorchBackend
from tolerances import assert_close

triton = pytest.importorskip("triton")
from kernels.triton import TritonBackend, make_plan  # noqa: E402
from kernels.triton import backend as tb  # noqa: E402

T, B, I, H = 7, 3, 5, 37
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Every kernel output starts as NaN: an element a kernel forgets to write fails the test."""
    monkeypatch.setenv("FUSED_RNN_DEBUG_POISON", "1")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def make_case(rng, spec, dtype, *, reverse=False, mask=None, rec_mask=False, bias=True, h0=True,
              T=T, B=B, H=H, device=DEVICE):
    """One random problem: kernel inputs in `dtype` and their values (after rounding) in float64."""
    p = draw(rng, spec, T=T, B=B, I=I, H=H, bias=bias, h0=h0, mask=mask, rec_mask=rec_mask)
    xg = p["x"] @ p["w_ih"].T + (p["b_ih"] if bias else 0.0)
    G = spec.n_gates
    h0_ = p["h0"] if h0 else np.zeros((B, H))
    c0 = (p["c0"] if h0 else np.zeros((B, H))) if spec.kind == "lstm" else None

    def t(a):
        return None if a is None else torch.as_tensor(a, dtype=torch.float64).to(dtype).to(device)

    k = dict(xg=t(xg), w_hh=t(p["w_hh"]), b_hh=t(p["b_hh"]), h0=t(h0_), c0=t(c0),
             mask=None if p["mask"] is None else torch.as_tensor(p["mask"], device=device),
             rec_mask=t(p["rec_mask"]), reverse=reverse)
    dout, dhT, dcT = upstream(rng, spec, T, B, H)
    k["grads"] = (t(dout), t(dhT), t(dcT))
    f64 = {n: (v.detach().to("cpu", torch.float64) if isinstance(v, torch.Tensor) else v) for n, v in k.items()
           if n not in ("grads", "mask")}
    f64["mask"] = None if k["mask"] is None else k["mask"].cpu()
    f64["grads"] = tuple(None if g is None else g.to("cpu", torch.float64) for g in k["grads"])
    f64["G"] = G
    return k, f64


def run_kernel(backend, spec, k):
    saved = backend.forward(spec, k["xg"], k["w_hh"], k["b_hh"], k["h0"], k["c0"], k["mask"],
                            k["rec_mask"], k["reverse"])
    dout, dhT, dcT = k["grads"]
    grads = backend.backward(spec, k["w_hh"], k["b_hh"], k["h0"], k["c0"], k["mask"], k["rec_mask"],
                             k["reverse"], saved, dout, dhT, dcT)
    return saved, grads


def oracle(spec, f):
    """NumPy oracle with x = xg, w_ih = identity: returns (out, hT, cT), {x: dxg, h0, c0}."""
    n = lambda a: None if a is None else a.numpy()  # noqa: E731
    G = f["G"]
    Hh = f["w_hh"].shape[1]
    out, hT, cT, cache = reference.forward(
        spec, n(f["xg"]), np.eye(G * Hh), n(f["w_hh"]), None, n(f["b_hh"]), n(f["h0"]), n(f["c0"]),
        n(f["mask"]), None, n(f["rec_mask"]), f["reverse"])
    g = reference.backward(cache, *(n(x) for x in f["grads"]))
    return (out, hT, cT), g


def check(label, spec, saved, grads, f, dtype):
    """Outputs and gradients against the oracle; gates / extra (valid steps) against torch float64."""
    (rout, rhT, rcT), rg = oracle(spec, f)
    out, hT, cT, gates, extra = saved
    assert out.dtype == dtype and hT.dtype == dtype
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    assert gates.dtype == cdt and grads[0].dtype == cdt
    assert_close(f"{label} out", out, rout, dtype)
    assert_close(f"{label} hT", hT, rhT, dtype)
    if spec.kind == "lstm":
        assert cT.dtype == dtype
        assert_close(f"{label} cT", cT, rcT, dtype)
    else:
        assert cT is None
    dxg, dh0, dc0 = grads
    assert_close(f"{label} dxg", dxg, rg["x"], dtype)
    assert_close(f"{label} dh0", dh0, rg["h0"], dtype)
    if spec.kind == "lstm":
        assert_close(f"{label} dc0", dc0, rg["c0"], dtype)
    else:
        assert dc0 is None
    # the saved tensors: same as the torch backend's (float64) wherever the step is valid
    ref = TorchBackend().forward(spec, f["xg"], f["w_hh"], f["b_hh"], f["h0"], f["c0"], f["mask"],
                                 f["rec_mask"], f["reverse"])
    valid = torch.ones(out.shape[:2], dtype=torch.bool) if f["mask"] is None else f["mask"]
    assert_close(f"{label} gates", gates.cpu()[valid], ref.gates[valid], dtype)
    has_extra = spec.kind == "lstm" or (spec.kind == "gru" and spec.reset_after)
    assert (extra is not None) == has_extra
    if has_extra:
        assert_close(f"{label} extra", extra.cpu()[valid], ref.extra[valid], dtype)
    for name, tensor in (("out", out), ("gates", gates), ("extra", extra), ("dxg", dxg)):
        if tensor is not None:  # masked steps too: nothing left unwritten (poisoned)
            assert torch.isfinite(tensor).all(), f"{label} {name}: unwritten or non-finite elements"


# (reverse, mask, rec_mask, bias, h0): options combined so every one is covered in few cases
OPTIONS = {
    "plain": (False, None, False, True, True),
    "rev-mask-recdrop": (True, "some", True, True, True),
    "mask-recdrop-nobias-noh0": (False, "some", True, False, False),
}


# ---------------------------------------------------------------------------------------------
# interpreter (or GPU) correctness at T=7, B=3, H=37
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_persistent_float64(rng, name, spec, opts):
    reverse, mask, rec_mask, bias, h0 = OPTIONS[opts]
    k, f = make_case(rng, spec, torch.float64, reverse=reverse, mask=mask, rec_mask=rec_mask, bias=bias, h0=h0)
    saved, grads = run_kernel(TritonBackend(), spec, k)
    check(f"{name}/{opts}", spec, saved, grads, f, torch.float64)


@pytest.mark.parametrize("hidden", [64, 128])
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_persistent_split_k_widths(rng, name, spec, hidden):
    """The split-K partial sums (one per warp, added by halving) at the widths a GPU plan uses: H=37
    above splits the forward's K at most 2 ways; H=64 / 128 split it 4 / 8 ways (backward 8)."""
    for direction in ("forward", "backward"):
        k_rows = hidden * (1 if direction == "forward" else spec.n_gates)
        split = make_plan(hidden, 3, spec.n_gates, 8, 1, interpret=True, direction=direction).split
        assert split == tb.forward_split(k_rows) and split >= 4
    for dtype in (torch.float64, torch.bfloat16):
        k, f = make_case(rng, spec, dtype, T=4, H=hidden, mask="some")
        saved, grads = run_kernel(TritonBackend(), spec, k)
        check(f"{name}/H{hidden}/{dtype}", spec, saved, grads, f, dtype)


RS_CELLS = [c for c in CELLS if c[1].kind in ("lstm", "gru") and c[1].reset_after]


@pytest.mark.parametrize("opts", ["plain", "rev-mask"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,spec", RS_CELLS, ids=[c[0] for c in RS_CELLS])
def test_reduce_scatter_backward(rng, monkeypatch, name, spec, dtype, opts):
    """The persistent backward's reduce-scatter exchange with SEVERAL programs: 3 hidden programs
    (the last with 5 of 16 units) x 2 batch tiles (the second with 4 of 16 rows), so every partial
    plane, its offsets and the sum over programs are exercised. The interpreter runs programs one
    after another, so each step is split at the exchange into two launches (PHASE 1 / 3, the
    kernel boundary as the barrier); the persistent one-program plan runs too. Against the oracle."""
    reverse, mask = (True, "some") if opts == "rev-mask" else (False, None)
    kB = 20
    k, f = make_case(rng, spec, dtype, reverse=reverse, mask=mask, B=kB)
    one = make_plan(H, kB, spec.n_gates, 4, 1, interpret=True, direction="backward", reduce_scatter=True)
    assert one.persistent and one.reduce_scatter and one.grid == (1, 1)
    assert tb.plan_constexprs(one, "backward")["REDUCE"] == 1
    saved, grads = run_kernel(TritonBackend(), spec, k)
    check(f"{name}/rs-one/{opts}", spec, saved, grads, f, dtype)

    split = tb.Plan(False, 16, 16, 16, 64, True, (3, 2), tb.RS_WARPS, 1, tb.RS_WARPS, tb.k_parts(H, tb.RS_WARPS, 2),
                    True, reduce_scatter=True)
    assert tb.plan_constexprs(split, "backward")["REDUCE"] == 3
    real = tb.make_plan
    seen = []

    def plan(*args, **kw):
        call = inspect.signature(real).bind(*args, **kw)
        call.apply_defaults()
        if call.arguments["direction"] == "backward":
            assert call.arguments["reduce_scatter"]  # the call allows it: no recurrent dropout, one phase a step
            seen.append(split)
            return split
        return real(*args, **kw)

    monkeypatch.setattr(tb, "make_plan", plan)
    saved, grads = run_kernel(TritonBackend(), spec, k)
    assert seen
    check(f"{name}/rs-3x2/{opts}", spec, saved, grads, f, dtype)


def test_reduce_scatter_only_where_it_applies():
    """Recurrent dropout (per-gate scaling of each part), GRU reset_after=False (a second exchange),
    SimpleRNN and fp64 keep the all-gather; the forward never exchanges partial sums."""
    backend = TritonBackend()
    w = torch.empty((), dtype=torch.bfloat16)
    for spec, rmask, want in ((CellSpec("lstm"), False, True), (CellSpec("gru"), False, True),
                              (CellSpec("lstm"), True, False), (CellSpec("gru", reset_after=False), False, False),
                              (CellSpec("rnn"), False, False)):
        back = backend._plan(spec, torch.device("cpu"), B, H, w, False, "backward", 1, rmask)
        assert back.reduce_scatter is want and tb.plan_constexprs(back, "backward")["REDUCE"] == int(want), spec
        assert not backend._plan(spec, torch.device("cpu"), B, H, w, False, "forward", 1, rmask).reduce_scatter
    f64 = torch.empty((), dtype=torch.float64)
    assert not backend._plan(CellSpec("lstm"), torch.device("cpu"), B, H, f64, False, "backward").reduce_scatter


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_per_step_path(rng, name, spec, dtype):
    """The per-step fallback (several programs per launch in the interpreter); bf16: its dgates
    exchanged in the I/O dtype between the phases."""
    backend = TritonBackend(per_step=True)
    reverse, mask, rec_mask, bias, h0 = OPTIONS["rev-mask-recdrop"]
    k, f = make_case(rng, spec, dtype, reverse=reverse, mask=mask, rec_mask=rec_mask, bias=bias, h0=h0)
    saved, grads = run_kernel(backend, spec, k)
    check(f"{name}/per-step/{dtype}", spec, saved, grads, f, dtype)


FP32_CASES = [(name, spec, False) for name, spec in CELLS] + [("lstm", CELLS[0][1], True)]


@pytest.mark.parametrize("name,spec,per_step", FP32_CASES,
                         ids=[f"{c[0]}-{'per-step' if c[2] else 'persistent'}" for c in FP32_CASES])
def test_float32(rng, name, spec, per_step):
    k, f = make_case(rng, spec, torch.float32, reverse=True, mask="some", rec_mask=True)
    saved, grads = run_kernel(TritonBackend(per_step=per_step), spec, k)
    check(f"{name}/fp32", spec, saved, grads, f, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name,spec", CELLS[:3], ids=[c[0] for c in CELLS[:3]])
def test_half_precision(rng, name, spec, dtype):
    """fp16 / bf16 I/O with fp32 compute (bf16 matmuls run in fp32 in the interpreter, whose bf16
    tl.dot is broken; same values, fp32 accumulation)."""
    k, f = make_case(rng, spec, dtype, mask="some", rec_mask=True)
    saved, grads = run_kernel(TritonBackend(), spec, k)
    check(f"{name}/{dtype}", spec, saved, grads, f, dtype)


ACTIVATION_CASES = [  # (kind, activation, recurrent_activation, reset_after)
    ("lstm", "relu", "hard_sigmoid", True),
    ("lstm", "linear", "tanh", True),
    ("gru", "relu", "hard_sigmoid", True),
    ("gru", "linear", "hard_sigmoid", False),
    ("rnn", "relu", "sigmoid", True),
    ("rnn", "hard_sigmoid", "sigmoid", True),
]


@pytest.mark.parametrize("kind,act,ract,ra", ACTIVATION_CASES, ids=["-".join(map(str, c)) for c in ACTIVATION_CASES])
def test_activations(rng, kind, act, ract, ra):
    spec = CellSpec(kind, act, ract, reset_after=ra)
    k, f = make_case(rng, spec, torch.float64, reverse=True, mask="some", rec_mask=True)
    saved, grads = run_kernel(TritonBackend(), spec, k)
    check(f"{kind}/{act}/{ract}", spec, saved, grads, f, torch.float64)


def test_masked_step_does_not_leak_nan(rng):
    """NaN in the gate inputs of a masked step must not reach any output or gradient."""
    spec = CellSpec("gru", reset_after=True)
    k, f = make_case(rng, spec, torch.float64, mask="some", rec_mask=True)
    masked = ~k["mask"]
    assert masked.any()
    k["xg"][masked] = float("nan")
    saved, grads = run_kernel(TritonBackend(), spec, k)
    f["xg"] = f["xg"].clone()
    f["xg"][masked.cpu()] = 0.0  # the oracle's where() would also keep the NaN out; 0 is equivalent
    check("gru/nan-in-masked", spec, saved, grads, f, torch.float64)


def test_poison_is_active():
    """The autouse fixture really poisons (otherwise the finiteness checks could not fail)."""
    from kernels import new_empty

    assert torch.isnan(new_empty((2, 3), torch.float32, "cpu")).all()


@pytest.mark.parametrize("name,spec", [CELLS[0], CELLS[2]], ids=["lstm", "gru_classic"])
def test_deterministic(rng, name, spec):
    k, _ = make_case(rng, spec, torch.float32, mask="some", rec_mask=True)
    a = run_kernel(TritonBackend(), spec, k)
    b = run_kernel(TritonBackend(), spec, k)
    for x, y in zip([*a[0], *a[1]], [*b[0], *b[1]]):
        assert (x is None and y is None) or torch.equal(x, y)


def test_through_autograd_function(rng):
    """End to end through rnn.functional (input GEMM, weight gradients) with backend="triton"."""
    from problems import compare, oracle as lib_oracle, run_library

    for name, spec in (CELLS[0], CELLS[2]):
        p = draw(rng, spec, mask="some", rec_mask=True)
        grads = upstream(rng, spec, T, B, H)
        compare(name, spec, run_library(spec, p, grads, True, backend="triton"),
                lib_oracle(spec, p, grads, True), torch.float64)


def test_final_state_and_empty_sequence(rng):
    spec = CELLS[0][1]
    k, _ = make_case(rng, spec, torch.float64, T=1)
    saved, grads = run_kernel(TritonBackend(), spec, k)
    assert torch.equal(saved.hT, saved.out[0])
    no_dout = TritonBackend().backward(spec, k["w_hh"], k["b_hh"], k["h0"], k["c0"], None, None, False, saved,
                                       None, k["grads"][1], k["grads"][2])
    zero_dout = TritonBackend().backward(spec, k["w_hh"], k["b_hh"], k["h0"], k["c0"], None, None, False, saved,
                                         torch.zeros_like(saved.out), k["grads"][1], k["grads"][2])
    assert all(torch.equal(a, b) for a, b in zip(no_dout, zero_dout))
    empty = TritonBackend().forward(spec, k["xg"][:0], k["w_hh"], k["b_hh"], k["h0"], k["c0"], None, None, False)
    assert empty.out.shape == (0, B, H) and torch.equal(empty.hT, k["h0"]) and torch.equal(empty.cT, k["c0"])


def test_bad_input_raises(rng):
    spec = CELLS[0][1]
    k, _ = make_case(rng, spec, torch.float64)
    with pytest.raises(ValueError, match="h0 must be"):
        TritonBackend().forward(spec, k["xg"], k["w_hh"], k["b_hh"], k["h0"][:, :5], k["c0"], None, None, False)
    with pytest.raises(ValueError, match="rec_mask must be"):
        TritonBackend().forward(spec, k["xg"], k["w_hh"], k["b_hh"], k["h0"], k["c0"], None,
                                torch.ones(1, B, H, dtype=torch.float64), False)
    with pytest.raises(ValueError, match="w_hh must be"):
        TritonBackend().forward(spec, k["xg"], k["w_hh"][:-1], k["b_hh"], k["h0"], k["c0"], None, None, False)


# ---------------------------------------------------------------------------------------------
# pure-Python pieces: the launch plan and availability
# ---------------------------------------------------------------------------------------------
def test_plan_interpreter():
    for direction in ("forward", "backward"):
        p = make_plan(37, 3, 4, 4, 1, interpret=True, direction=direction)
        assert p.persistent and p.grid == (1, 1) and p.block_h >= 37 and p.block_b >= 3 and p.w_resident
        assert p.k_pad == 64 and p.block_h == 64
    q = make_plan(37, 3, 4, 4, 1, interpret=True, per_step=True)
    assert not q.persistent and q.block_h == 16 and q.grid == (3, 1) and not q.w_resident


PLAN_CASES = [(768, 16, 4, 2), (1024, 256, 4, 2), (37, 3, 3, 4), (256, 64, 3, 4), (1024, 64, 4, 4), (2048, 8, 1, 2),
              (4096, 8, 4, 2), (64, 512, 1, 8), (2048, 16, 1, 4), (256, 64, 4, 8), (129, 33, 3, 8), (1000, 16, 4, 2)]


@pytest.mark.parametrize("hidden,batch,gates,itemsize", PLAN_CASES)
def test_plan_gpu_backward(hidden, batch, gates, itemsize):
    """The backward's split-K plan: the program's units are the M rows of W_hh^T (>= 16, one MMA
    tile), K = G*H gate rows in pieces padded by < 16, one batch tile per program; per step
    otherwise, with power-of-two blocks."""
    n_sm = 132
    p = make_plan(hidden, batch, gates, itemsize, n_sm, interpret=False, direction="backward")
    assert min(p.block_h, p.block_b, p.block_k) >= 16
    for n in (p.block_h, p.block_b, p.block_k, p.k_pad):
        assert n & (n - 1) == 0, f"{n} is not a power of two"
    if p.persistent:  # all programs co-resident, every unit and row owned, W^T slice on chip
        assert p.w_resident and p.num_stages == 1 and p.num_warps == p.split
        assert p.grid == (-(-hidden // p.block_h), -(-batch // p.block_b)), p
        assert p.grid[0] * p.grid[1] <= n_sm
        k = gates * hidden
        assert 0 <= sum(p.k_parts) - k < 16 or len(p.k_parts) == 3, p
        assert len(p.k_parts) <= 3 and all(q & (q - 1) == 0 and q % (16 * p.split) == 0 for q in p.k_parts), p
        w_bytes = p.block_h * sum(p.k_parts) * itemsize
        if p.w_reg:
            assert itemsize == 2 and w_bytes <= tb.W_REG_BYTES_PER_THREAD["backward"] * 32 * p.num_warps
        else:
            assert w_bytes <= tb.W_BUDGET_BYTES
        shared = tb.plan_shared_bytes(p, gates, hidden, itemsize, "backward")
        assert shared <= tb.SM90.smem_per_block_optin, f"{shared} bytes of shared memory planned"
    else:
        assert p.grid == (-(-hidden // p.block_h), -(-batch // p.block_b))
    assert make_plan(hidden, batch, gates, itemsize, n_sm, interpret=False, per_step=True,
                     direction="backward").persistent is False


@pytest.mark.parametrize("hidden,batch,gates,itemsize", PLAN_CASES)
def test_plan_gpu_reduce_scatter(hidden, batch, gates, itemsize):
    """The backward's reduce-scatter plan (calls without recurrent dropout, one phase a step): 16
    units a program, all programs co-resident, REDUCE = the hidden programs, every unit's partial
    sum in some piece of H (pieces powers of two, multiples of 16 x warps), the W_hh rows on chip,
    the partial sums a program adds within RS_SUM_ELEMS; SimpleRNN keeps the all-gather."""
    n_sm = 132
    p = make_plan(hidden, batch, gates, itemsize, n_sm, interpret=False, direction="backward", reduce_scatter=True)
    if gates == 1:
        assert not p.reduce_scatter
    if not p.reduce_scatter:
        assert p == make_plan(hidden, batch, gates, itemsize, n_sm, interpret=False, direction="backward")
        return
    assert p.persistent and p.w_resident and p.num_stages == 1 and p.num_warps == tb.RS_WARPS
    assert p.block_h == tb.RS_BLOCK_H and p.block_b <= tb.RS_BLOCK_B
    assert p.grid == (-(-hidden // p.block_h), -(-batch // p.block_b)), p
    assert tb.plan_constexprs(p, "backward")["REDUCE"] == p.grid[0], p
    assert p.grid[0] * p.grid[1] <= n_sm and p.grid[0] * p.block_h * p.block_b <= tb.RS_SUM_ELEMS
    assert len(p.k_parts) <= 3 and all(q & (q - 1) == 0 and q % (16 * p.num_warps) == 0 for q in p.k_parts), p
    assert 0 <= sum(p.k_parts) - hidden < 16 * p.num_warps or len(p.k_parts) == 3, p
    w_bytes = gates * p.block_h * sum(p.k_parts) * itemsize
    if p.w_reg:
        assert itemsize == 2 and w_bytes <= tb.W_REG_BYTES_PER_THREAD["backward"] * 32 * p.num_warps
    else:
        assert w_bytes <= tb.W_BUDGET_BYTES
    assert tb.plan_shared_bytes(p, gates, hidden, itemsize, "backward") <= tb.SM90.smem_per_block_optin


@pytest.mark.parametrize("hidden,batch,gates,itemsize", PLAN_CASES)
def test_plan_gpu_forward(hidden, batch, gates, itemsize):
    """The forward's split-K plan: one batch tile per program, >= 16 gate rows (one MMA tile),
    warps = K split, K pieces powers of two and multiples of 16 * split, padded by < 16."""
    n_sm = 132
    p = make_plan(hidden, batch, gates, itemsize, n_sm, interpret=False)
    if p.persistent:
        ngp = tb.gates_padded(gates)
        assert ngp * p.block_h >= 16 and p.block_b >= 16 and p.num_warps == p.split
        assert p.grid == (-(-hidden // p.block_h), -(-batch // p.block_b)), p
        assert p.grid[0] * p.grid[1] <= n_sm and p.num_stages == 1
        # padding below one MMA tile, except where H rounded up to 16 needs more than three powers of
        # two (then the third piece is rounded up: H=1000 pads to 1024)
        assert 0 <= sum(p.k_parts) - hidden < 16 or len(p.k_parts) == 3, p
        assert len(p.k_parts) <= 3 and all(k & (k - 1) == 0 and k % (16 * p.split) == 0 for k in p.k_parts), p
        shared = tb.plan_shared_bytes(p, gates, hidden, itemsize, "forward")
        assert shared <= tb.SM90.smem_per_block_optin, f"{shared} bytes of shared memory planned"
        if p.w_reg:
            assert itemsize == 2 and ngp * p.block_h * sum(p.k_parts) * itemsize <= 256 * 32 * p.num_warps
            assert tb.W_REG_BYTES_PER_THREAD["forward"] == 256
    assert make_plan(hidden, batch, gates, itemsize, n_sm, interpret=False, per_step=True).persistent is False


def test_plan_choices():
    # the headline bf16 LSTM: 96 programs of 8 units (32 gate rows x 768 in registers), 8 warps
    # each doing 96 of K = 512 + 256 (no padding)
    p = make_plan(768, 16, 4, 2, 132, False)
    assert p.persistent and p.grid == (96, 1) and p.block_h == 8 and p.split == p.num_warps == 8
    assert p.k_parts == (512, 256) and p.w_reg
    # its backward: 48 programs of 16 units (16 rows of W_hh^T x K = 4 * 768 = 2048 + 1024 gate rows
    # in registers), 8 warps each doing 384 of K
    q = make_plan(768, 16, 4, 2, 132, False, direction="backward")
    assert q.persistent and q.grid == (48, 1) and q.block_h == 16 and q.split == q.num_warps == 8
    assert q.k_parts == (2048, 1024) and q.w_reg and not q.reduce_scatter
    # ... and where the call allows it, the reduce-scatter: 48 programs of 16 units, each with its 64
    # gate rows of W_hh over all 768 units in registers (M pieces 512 + 256), adding 48 partial sums;
    # at B64 two batch tiles of 32 with M pieces of at most 256 (32 fp32 registers of output a thread)
    q = make_plan(768, 16, 4, 2, 132, False, direction="backward", reduce_scatter=True)
    assert q.persistent and q.grid == (48, 1) and q.reduce_scatter and q.k_parts == (512, 256) and q.w_reg
    assert tb.plan_constexprs(q, "backward")["REDUCE"] == 48
    q = make_plan(768, 64, 4, 2, 132, False, direction="backward", reduce_scatter=True)
    assert q.persistent and q.grid == (48, 2) and q.block_b == 32 and q.k_parts == (256, 256, 256)
    # B16 H1024: 128 KiB of W_hh rows a program, in shared memory (per step without the reduce-scatter)
    q = make_plan(1024, 16, 4, 2, 132, False, direction="backward", reduce_scatter=True)
    assert q.persistent and q.grid == (64, 1) and not q.w_reg
    assert not make_plan(1024, 16, 4, 2, 132, False, direction="backward").persistent
    assert not make_plan(1024, 64, 4, 4, 132, False).persistent     # fp32 W slice too big: per step
    assert not make_plan(4096, 8, 4, 2, 132, False).persistent      # too many programs
    # SimpleRNN fp32 H=2048: a 128 KiB W_hh slice plus a 128 KiB h operand exceed 227 KiB
    assert not make_plan(2048, 16, 1, 4, 132, False).persistent
    # LSTM fp64 H=256 B=64 backward: a 128 KiB W_hh^T slice (16 x 1024) plus a 16 x 1024 fp64
    # dgates operand exceed 227 KiB even at the smallest batch tile: per step. fp32 fits (tile 32).
    assert not make_plan(256, 64, 4, 8, 132, False, direction="backward").persistent
    p = make_plan(256, 64, 4, 4, 132, False, direction="backward")
    assert p.persistent and p.block_b == 32 and p.grid == (16, 2)
    # large batches: tiles of at most BLOCK_B_MAX rows, the programs spread over the batch (LSTM bf16
    # H256 B256 forward: 16 x 8 programs of 16 units and 32 rows, not 64 x 2 of 4 units and 128 rows)
    p = make_plan(256, 256, 4, 2, 132, False)
    assert p.persistent and p.block_b == tb.BLOCK_B_MAX == 32 and p.grid == (16, 8)
    assert make_plan(256, 16, 4, 2, 132, False).block_b == 16
    # per step: 64-row batch tiles with 16-unit programs where those fit on the SMs (B64 H768: 48
    # programs, not 24 of 32 units), 32 units above that (B256: 24 x 4) and with 16-row tiles
    assert make_plan(768, 64, 4, 2, 132, False, per_step=True).grid == (48, 1)
    assert make_plan(768, 256, 4, 2, 132, False, per_step=True).grid == (24, 4)
    assert make_plan(768, 16, 4, 2, 132, False, per_step=True).grid == (24, 1)
    # the forward's 64-row tiles on 8 warps, the backward's on 4; smaller tiles on 4
    assert make_plan(768, 256, 4, 2, 132, False, per_step=True).num_warps == 8
    assert make_plan(768, 256, 4, 2, 132, False, per_step=True, direction="backward").num_warps == 4
    assert make_plan(768, 16, 4, 2, 132, False, per_step=True).num_warps == 4
    # 256-deep K chunks for 2-byte types at tiles of up to 16 rows (fewer dependent round trips)
    assert make_plan(1024, 16, 4, 2, 132, False, per_step=True, direction="backward").block_k == 256
    assert make_plan(1024, 16, 4, 4, 132, False, per_step=True, direction="backward").block_k == 64
    assert make_plan(768, 256, 4, 2, 132, False, per_step=True).block_k == 64
    # ptxas's register cap where one program runs per SM (persistent plans, per-step grids up to
    # n_sm programs); none where programs share SMs (B1024: 24 x 16 per-step programs)
    assert make_plan(768, 16, 4, 2, 132, False).compile_options["maxnreg"] == tb.MAX_REGISTERS
    assert make_plan(768, 256, 4, 2, 132, False, per_step=True).compile_options["maxnreg"] == tb.MAX_REGISTERS
    big = make_plan(768, 1024, 4, 2, 132, False, per_step=True)
    assert big.grid == (24, 16) and "maxnreg" not in big.compile_options
    with pytest.raises(ValueError, match="hidden"):
        make_plan(0, 1, 4, 4, 132, False)
    with pytest.raises(ValueError, match="direction"):
        make_plan(10, 1, 4, 4, 132, False, direction="sideways")


def test_runs_persistent_on_an_h100(monkeypatch):
    """What rnn.backends.auto_order asks: both directions' plans persistent on the device (H100
    limits; both directions in one launch plan on half of the SMs)."""
    monkeypatch.setattr(tb, "INTERPRET", False)
    monkeypatch.setattr(tb.DeviceLimits, "of", staticmethod(lambda device: tb.SM90))
    monkeypatch.delenv(tb.PERSISTENT_ENV, raising=False)
    lstm = CellSpec("lstm")
    backend = TritonBackend()
    assert backend.runs_persistent("cuda", lstm, 256, 64, torch.bfloat16)
    assert backend.runs_persistent("cuda", lstm, 768, 16, torch.bfloat16)
    # B64 H768: the forward runs per step; LSTM fp32 B16 H768: the backward does (a 192 KiB W_hh
    # slice either way); B16 H1024 bf16: both persistent (the backward's reduce-scatter plan)
    assert not backend.runs_persistent("cuda", lstm, 768, 64, torch.bfloat16)
    assert not backend.runs_persistent("cuda", lstm, 768, 16, torch.float32)
    assert make_plan(768, 16, 4, 4, 132, False).persistent
    assert backend.runs_persistent("cuda", lstm, 1024, 16, torch.bfloat16)
    monkeypatch.setenv(tb.PERSISTENT_ENV, "off")
    assert not backend.runs_persistent("cuda", lstm, 256, 64, torch.bfloat16)
    monkeypatch.setenv(tb.PERSISTENT_ENV, "on")
    assert not backend.runs_persistent("cuda", lstm, 768, 64, torch.bfloat16)  # that call would raise


@pytest.mark.parametrize("hidden,split,parts,parts4", [
    (768, 8, (512, 256), (512, 256)), (37, 1, (32, 16), (32, 16)), (1000, 1, (512, 256, 256), (512, 256, 256)),
    (1024, 8, (1024,), (512, 512)), (1536, 8, (1024, 512), (512, 512, 512)), (100, 1, (64, 32, 16), (64, 32, 16)),
    (96, 2, (64, 32), (64, 32)), (2048, 8, (2048,), (2048,)), (1408, 8, (1024, 256, 128), (1024, 256, 128))])
def test_forward_k_pieces(hidden, split, parts, parts4):
    """Half-precision pieces as large as three powers of two allow; 4-byte pieces at most 512 where
    three of them cover K with no more padding (1408 would need 512 x 3 = 1536: as for 2 bytes)."""
    assert tb.forward_split(hidden) == split
    assert tb.k_parts(hidden, split) == parts
    assert tb.k_parts(hidden, split, 4) == parts4 and sum(parts4) >= hidden


def test_unavailable_reason(monkeypatch):
    be = TritonBackend()
    spec = CellSpec("lstm")
    assert be.unavailable_reason(torch.device("cpu"), spec, 37, 3, torch.float32) is None  # interpreter
    assert be.unavailable_reason("cpu", spec, 37, 3, torch.float64) is None
    assert "dtype" in be.unavailable_reason("cpu", spec, 37, 3, torch.int32)
    assert "meta" in be.unavailable_reason("meta", spec, 37, 3, torch.float32)
    assert ">= 1" in be.unavailable_reason("cpu", spec, 0, 3, torch.float32)
    bad = types.SimpleNamespace(kind="lstm", activation="gelu", recurrent_activation="sigmoid")
    assert "gelu" in be.unavailable_reason("cpu", bad, 37, 3, torch.float32)
    assert "kind" in be.unavailable_reason("cpu", types.SimpleNamespace(kind="lru"), 37, 3, torch.float32)
    monkeypatch.setattr(tb, "INTERPRET", False)
    assert "TRITON_INTERPRET" in be.unavailable_reason("cpu", spec, 37, 3, torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        be.forward(spec, torch.zeros(2, 1, 4 * 16), torch.zeros(64, 16), None, torch.zeros(1, 16),
                   torch.zeros(1, 16), None, None, False)


def test_registry_resolves_triton():
    from rnn import backends

    choice = backends.choose("triton", DEVICE, CellSpec("gru"), 37, 3, torch.float32)
    assert choice.name == "triton" and isinstance(choice.backend, TritonBackend)


def test_fp32_precision(monkeypatch):
    """fp32's recurrent matmul: tf32 where torch allows it, else 3xtf32 unless FUSED_RNN_FP32_MATMUL
    asks for IEEE FMA products; a bad value names the variable and the choices."""
    monkeypatch.delenv(tb.FP32_MATMUL_ENV, raising=False)
    assert tb.fp32_precision(True) == "tf32" and tb.fp32_precision(False) == "tf32x3"
    monkeypatch.setenv(tb.FP32_MATMUL_ENV, "IEEE")
    assert tb.fp32_precision(False) == "ieee" and tb.fp32_precision(True) == "tf32"
    monkeypatch.setenv(tb.FP32_MATMUL_ENV, "3xtf32")
    assert tb.fp32_precision(False) == "tf32x3"
    monkeypatch.setenv(tb.FP32_MATMUL_ENV, "fp32")
    with pytest.raises(ValueError, match=r"FUSED_RNN_FP32_MATMUL must be one of \('3xtf32', 'ieee'\), got 'fp32'"):
        tb.fp32_precision(False)


def _tf32(x, rounding):
    """x (float32) as tf32 (10 mantissa bits): rounded to nearest (cvt.rna, the high part) or
    truncated (a tensor core reading an fp32 register as tf32: the worst case for the low part)."""
    i = x.view(torch.int32)
    return ((i + 0x1000 if rounding else i) & ~0x1FFF).view(torch.float32)


def test_3xtf32_products_are_as_accurate_as_fp32():
    """The claim behind fp32's default (fp32_precision): 3xtf32 as Triton builds it (a = hi + lo with
    hi = rna(a); lo x hi + hi x lo + hi x hi, lo x lo dropped), products emulated exactly in float64,
    is no further from the float64 matvec than fp32 FMA itself, on the recurrent matvec of an LSTM
    step at H 256..1024; one tf32 product is about 1000x further (why it needs allow_tf32)."""
    gen = torch.Generator().manual_seed(0)
    for H in (256, 768, 1024):
        w = (torch.rand(4 * H, H, generator=gen) * 2 - 1) / H ** 0.5
        h = torch.tanh(torch.randn(16, H, generator=gen))
        exact = h.double() @ w.double().T
        hi_h, hi_w = _tf32(h, True), _tf32(w, True)
        lo_h, lo_w = _tf32(h - hi_h, False), _tf32(w - hi_w, False)
        three = lo_h.double() @ hi_w.double().T + hi_h.double() @ lo_w.double().T + hi_h.double() @ hi_w.double().T
        err3 = (three - exact).abs().max().item()
        err32 = ((h @ w.T).double() - exact).abs().max().item()
        err1 = (hi_h.double() @ hi_w.double().T - exact).abs().max().item()
        assert err3 <= err32 and err3 < 1e-6, (H, err3, err32)
        assert err1 > 100 * err32, (H, err1, err32)


# ---------------------------------------------------------------------------------------------
# ahead-of-time compile for sm_90 (no GPU needed): the compiled, non-interpreted path type-checks,
# fits in H100 shared memory, and the persistent kernels contain the grid barrier (release / acquire)
# ---------------------------------------------------------------------------------------------
def test_compiles_for_sm90():
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    # aot_check plans for B=64: the forward LSTM bf16 at H=768 B=64 is per step (W_hh slices too big)
    specs = ["lstm:1:bf16:256:persistent", "gru:0:fp32:96:persistent", "gru:0:fp16:512:per_step"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "kernels.triton.aot_check", *specs], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode and "ptxas" in proc.stderr.lower():
        pytest.skip("no ptxas for sm_90: " + proc.stderr[-300:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 * len(specs)
    for row in rows:
        assert row["shared"] <= 227 * 1024, row
        assert row["persistent"] == row["spec"].endswith("persistent"), row
        assert row["grid_barrier"] == row["persistent"], row


# ---------------------------------------------------------------------------------------------
# GPU only: real sizes, multi-program persistent path, CUDA-graph per-step path
# ---------------------------------------------------------------------------------------------
def _gpu_case(spec, dtype, T_, B_, H_, seed=0):
    """A problem drawn directly on the GPU (real sizes are too big for the NumPy path): kernel
    inputs in `dtype` and the same (rounded) values in float64."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    G = spec.n_gates

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float64) * scale

    mask = torch.rand(T_, B_, generator=g, device="cuda") > 0.2
    mask[0, 0] = False
    k = dict(xg=r(T_, B_, G * H_), w_hh=r(G * H_, H_, scale=0.5 / H_ ** 0.5), b_hh=r(G * H_, scale=0.1),
             h0=r(B_, H_, scale=0.5), c0=r(B_, H_, scale=0.5) if spec.kind == "lstm" else None,
             rec_mask=(torch.rand(G, B_, H_, generator=g, device="cuda") > 0.25) / 0.75)
    k = {n: None if v is None else v.to(dtype) for n, v in k.items()}
    grads = (r(T_, B_, H_).to(dtype), r(B_, H_).to(dtype), r(B_, H_).to(dtype) if spec.kind == "lstm" else None)
    k.update(mask=mask, reverse=True, grads=grads)
    f = {n: (v.double() if isinstance(v, torch.Tensor) and n != "mask" else v) for n, v in k.items()}
    f["grads"] = tuple(None if x is None else x.double() for x in grads)
    return k, f


def _check_vs_torch64(label, spec, saved, grads, f, dtype):
    """Against the torch backend in float64 on the GPU (the oracle's Python loop is too slow here)."""
    ref, g = TorchBackend(), f
    rs = ref.forward(spec, g["xg"], g["w_hh"], g["b_hh"], g["h0"], g["c0"], g["mask"], g["rec_mask"], g["reverse"])
    rg = ref.backward(spec, g["w_hh"], g["b_hh"], g["h0"], g["c0"], g["mask"], g["rec_mask"], g["reverse"],
                      rs, *g["grads"])
    for name, a, e in (("out", saved.out, rs.out), ("hT", saved.hT, rs.hT), ("cT", saved.cT, rs.cT),
                       ("dxg", grads[0], rg[0]), ("dh0", grads[1], rg[1]), ("dc0", grads[2], rg[2])):
        if e is not None:
            assert_close(f"{label} {name}", a, e, dtype)


GPU_SIZES = [(64, 16, 768), (1024, 32, 1024), (128, 256, 1024), (256, 64, 256), (128, 8, 37)]  # (T, B, H)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("size", GPU_SIZES, ids=["x".join(map(str, s)) for s in GPU_SIZES])
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_gpu_real_sizes(name, spec, size, dtype, set_tf32):
    set_tf32(False)
    T_, B_, H_ = size
    k, f = _gpu_case(spec, dtype, T_, B_, H_)
    saved, grads = run_kernel(TritonBackend(), spec, k)
    _check_vs_torch64(f"{name}/{size}/{dtype}", spec, saved, grads, f, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["3xtf32", "ieee"])
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_gpu_fp32_matmul_modes(name, spec, mode, set_tf32, monkeypatch):
    """fp32 without tf32: the default 3xtf32 products and FUSED_RNN_FP32_MATMUL=ieee both hold fp32's
    tolerance over 256 steps at H=768 (the persistent path)."""
    set_tf32(False)
    monkeypatch.setenv(tb.FP32_MATMUL_ENV, mode)
    k, f = _gpu_case(spec, torch.float32, 256, 16, 768)
    saved, grads = run_kernel(TritonBackend(), spec, k)
    _check_vs_torch64(f"{name}/{mode}", spec, saved, grads, f, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_gpu_multi_program_persistent(name, spec):
    """H=256 bf16 gives >= 16 co-resident programs meeting at the grid barrier every step."""
    k, f = _gpu_case(spec, torch.bfloat16, 200, 48, 256)
    plan = make_plan(256, 48, spec.n_gates, 2, tb._n_sm(torch.device("cuda")), False)
    assert plan.persistent and plan.grid[0] * plan.grid[1] > 1
    saved, grads = run_kernel(TritonBackend(), spec, k)
    _check_vs_torch64(f"{name}/multi", spec, saved, grads, f, torch.bfloat16)
    again = run_kernel(TritonBackend(), spec, k)  # bitwise reproducible, barrier included
    for x, y in zip([*saved, *grads], [*again[0], *again[1]]):
        assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.gpu
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_gpu_per_step_graph(name, spec, set_tf32):
    """The CUDA-graph per-step path; the second call (graph replay) must see its own inputs."""
    set_tf32(False)
    backend = TritonBackend(per_step=True)
    for seed in (0, 1):
        k, f = _gpu_case(spec, torch.float32, 50, 16, 300, seed=seed)
        saved, grads = run_kernel(backend, spec, k)
        _check_vs_torch64(f"{name}/graph{seed}", spec, saved, grads, f, torch.float32)
    assert len(backend._graphs._graphs) == 2  # one forward and one backward graph, replayed


# ---------------------------------------------------------------------------------------------
# both directions of a bidirectional layer in one launch (REVERSE = BOTH)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_step", [False, True], ids=["persistent", "per_step"])
@pytest.mark.parametrize("opts", ["plain", "mask-recdrop-nobias-noh0"])
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_both_directions_in_one_launch_match_two_launches_bitwise(rng, name, spec, opts, per_step, monkeypatch):
    """forward_both / backward_both against forward / backward of each direction: bitwise equal
    (the same programs' arithmetic, only offset buffers and a run-time direction), and one launch
    per step and phase (per step) or in all (persistent) instead of two. The per-step path (slow
    in the interpreter) on LSTM and the two-phase GRU, the persistent one on every cell."""
    if per_step and name not in ("lstm", "gru_classic"):
        pytest.skip("per step: LSTM and GRU reset_after=False cover its launch sequence")
    _, mask, rec_mask, bias, h0 = OPTIONS[opts]
    dtype = torch.float32
    k0, _ = make_case(rng, spec, dtype, reverse=False, mask=mask, rec_mask=rec_mask, bias=bias, h0=h0)
    k1, _ = make_case(rng, spec, dtype, reverse=True, mask=mask, rec_mask=rec_mask, bias=bias, h0=h0)
    k1["mask"] = k0["mask"]  # one mask for both directions, as a bidirectional layer has
    backend = TritonBackend(per_step=per_step)
    one = [run_kernel(backend, spec, k) for k in (k0, k1)]

    def both(name):
        a, b = k0[name], k1[name]
        return None if a is None else torch.stack((a, b))

    launches = []
    real_issue = tb._issue

    def counting_issue(*args, **kwargs):
        launches.append(args[-1] if len(args) > 10 else kwargs.get("D", 1))
        return real_issue(*args, **kwargs)

    monkeypatch.setattr(tb, "_issue", counting_issue)
    saved = backend.forward_both(spec, both("xg"), both("w_hh"), both("b_hh"), both("h0"), both("c0"),
                                 k0["mask"], both("rec_mask"))
    grads = backend.backward_both(spec, both("w_hh"), both("b_hh"), both("h0"), both("c0"), k0["mask"],
                                  both("rec_mask"), saved, *(torch.stack(g) if g[0] is not None else None
                                                             for g in zip(k0["grads"], k1["grads"])))
    assert launches == [2, 2]  # the forward's launches and the backward's, each covering both directions
    for d in range(2):
        (s1, g1) = one[d]
        for label, a, b in zip(("out", "hT", "cT", "gates", "extra", "dxg", "dh0", "dc0"),
                               list(saved) + list(grads), list(s1) + list(g1)):
            if b is None:
                assert a is None, label
                continue
            assert torch.equal(a[d], b), f"{name} {opts} direction {d}: {label} differs from its own launch"


def test_both_directions_get_half_of_the_sms_each(monkeypatch):
    """The plan of a fused bidirectional launch: per direction, a grid planned for half of the SMs."""
    seen = []
    real = tb.make_plan

    def spy(hidden, batch, n_gates, itemsize, n_sm, *args, **kwargs):
        seen.append(n_sm)
        return real(hidden, batch, n_gates, itemsize, n_sm, *args, **kwargs)

    monkeypatch.setattr(tb, "make_plan", spy)
    monkeypatch.setattr(tb, "INTERPRET", False)
    monkeypatch.setattr(tb.DeviceLimits, "of", staticmethod(lambda device: tb.SM90))
    spec = CELLS[0][1]
    w = torch.zeros(4 * 768, 768, dtype=torch.bfloat16)
    backend = TritonBackend()
    one = backend._plan(spec, torch.device("cuda"), 16, 768, w, False, "forward", 1)
    two = backend._plan(spec, torch.device("cuda"), 16, 768, w, False, "forward", 2)
    assert seen == [132, 66]
    assert one.grid[0] * one.grid[1] <= 132 and two.grid[0] * two.grid[1] <= 66
    assert two.persistent


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(100, 16, 768), (200, 48, 256)], ids=["100x16x768", "200x48x256"])
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_gpu_both_directions_in_one_launch(name, spec, size):
    """Both directions in one launch on a GPU (two groups of programs on half of the SMs each, each
    meeting at its own grid barrier): every output of each direction against the torch backend in
    float64, as one direction alone is checked."""
    T_, B_, H_ = size
    cases = [_gpu_case(spec, torch.bfloat16, T_, B_, H_, seed=d) for d in (0, 1)]
    for d, (k, f) in enumerate(cases):
        k["reverse"] = f["reverse"] = bool(d)
        k["mask"] = f["mask"] = cases[0][0]["mask"]  # one mask for both directions

    def both(name, src=0):
        a, b = cases[0][src][name], cases[1][src][name]
        return None if a is None else torch.stack((a, b))

    backend = TritonBackend()
    saved = backend.forward_both(spec, both("xg"), both("w_hh"), both("b_hh"), both("h0"), both("c0"),
                                 cases[0][0]["mask"], both("rec_mask"))
    grads = backend.backward_both(spec, both("w_hh"), both("b_hh"), both("h0"), both("c0"), cases[0][0]["mask"],
                                  both("rec_mask"), saved,
                                  *(None if g[0] is None else torch.stack(g)
                                    for g in zip(cases[0][0]["grads"], cases[1][0]["grads"])))
    for d in (0, 1):
        one = type(saved)(*(None if t is None else t[d] for t in saved))
        _check_vs_torch64(f"{name}/both/{size}/direction {d}", spec, one, [None if g is None else g[d] for g in grads],
                          cases[d][1], torch.bfloat16)
