"""The CuPy backend: CUDA sources compile (nvcc, sm_90 and sm_80), the pure-Python configuration
choice and its limits, availability reasons without CuPy / without CUDA, and (GPU only) forward
and gradients against the NumPy reference, poisoned outputs, masked NaN steps, determinism."""
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import kernels.cupy as kc
from tests.tolerances import assert_close

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")


def spec(kind, activation="tanh", recurrent_activation="sigmoid", reset_after=True):
    """A stand-in with CellSpec's attributes (the kernels package never imports rnn)."""
    return types.SimpleNamespace(kind=kind, activation=activation, recurrent_activation=recurrent_activation,
                                 reset_after=reset_after if kind == "gru" else True)


# ------------------------------------------------------------------------------------------------
# import / availability without CuPy or CUDA

def test_import_does_not_import_cupy():
    code = "import sys, kernels.cupy; assert 'cupy' not in sys.modules, 'cupy imported eagerly'; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_unavailable_without_cupy(monkeypatch):
    def missing():
        raise ImportError("No module named 'cupy'")

    monkeypatch.setattr(kc, "_import_cupy", missing)
    why = kc.CupyBackend().unavailable_reason(torch.device("cuda"), spec("lstm"), 128, 4, torch.float32)
    assert why == "cupy is not installed (pip install fused-rnn[cuda12] or [cuda13])"


def test_unavailable_on_cpu():
    why = kc.CupyBackend().unavailable_reason(torch.device("cpu"), spec("gru"), 128, 4, torch.float32)
    assert why is not None and "CUDA" in why and "cpu" in why


def _fake_gpu_backend(monkeypatch, limits=kc.H100):
    """A backend that believes CuPy and a GPU with `limits` are present (pure-Python checks)."""
    monkeypatch.setattr(kc, "_import_cupy", lambda: types.SimpleNamespace())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend = kc.CupyBackend()
    monkeypatch.setattr(backend, "device_limits", lambda device: limits)
    return backend


def test_unavailable_reasons_with_limits(monkeypatch):
    backend = _fake_gpu_backend(monkeypatch)
    dev = torch.device("cuda:0")
    assert backend.unavailable_reason(dev, spec("lstm"), 768, 16, torch.bfloat16) is None
    assert backend.unavailable_reason(dev, spec("gru", reset_after=False), 37, 3, torch.float32) is None
    why = backend.unavailable_reason(dev, spec("lstm"), 4096, 16, torch.float32)
    assert why is not None and "shared memory" in why and "4096" in why and "backend='triton'" in why
    why = backend.unavailable_reason(dev, spec("rnn"), 64, 2, torch.int32)
    assert why is not None and "int32" in why
    old = kc.DeviceLimits("old", 80, 98304, 98304, compute_capability=(6, 1))
    backend = _fake_gpu_backend(monkeypatch, old)
    assert "compute capability" in backend.unavailable_reason(dev, spec("rnn"), 64, 2, torch.float32)


def test_describe_names_the_matvec_path(monkeypatch, set_tf32):
    backend = _fake_gpu_backend(monkeypatch)
    dev = torch.device("cuda:0")
    text = backend.describe(dev, spec("lstm"), 768, 16, torch.bfloat16)
    # sm_90: "auto" runs the cluster kernel where W_hh fits one cluster (tests/test_cupy_cluster.py)
    assert text == ("forward mma, cluster of 16 CTAs x 48 units, 256 threads, 40 weight fragments per warp in "
                    "registers; backward mma, 96 blocks x 8 units, batch tile 16")
    assert backend.describe(dev, spec("gru"), 768, 16, torch.float32).startswith("forward fma, 128 blocks x 6 units")
    set_tf32(True)
    assert backend.describe(dev, spec("gru"), 768, 16, torch.float32).startswith("forward tf32 mma, 96 blocks")


def test_tf32_flag_restored_after_the_test_above():
    """set_tf32 restores torch's global flag (pytest's monkeypatch undo cannot delete it)."""
    assert torch.backends.cuda.matmul.allow_tf32 is False


# ------------------------------------------------------------------------------------------------
# configuration choice (pure Python)

@pytest.mark.parametrize("limits", [kc.H100, kc.A100], ids=lambda l: l.name)
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("hidden,batch", [(1, 1), (37, 3), (256, 64), (768, 16), (1000, 7)])
def test_plan_invariants(limits, direction, kind, dtype, hidden, batch):
    try:
        c = kc.plan(direction, kind, hidden, batch, dtype, limits, rec_mask=hidden == 37)
    except kc.SizeLimitError as exc:  # only the big fp64 / fp32 cells on the smaller GPU
        assert hidden >= 768 and dtype in (torch.float64, torch.float32), exc
        limit = kc.max_hidden(direction, kind, batch, dtype, limits, rec_mask=hidden == 37)
        assert limit < hidden and f"limit {limit} " in str(exc)
        return
    assert c.units >= 1 and (c.grid - 1) * c.units < hidden <= c.grid * c.units  # every unit owned once
    assert c.grid <= c.blocks_per_sm * limits.sm_count  # co-resident
    assert 1 <= c.batch_tile <= batch
    # tensor cores by default for 16-bit types (fp32 only with tf32), FMA where their layout does not fit
    if dtype in (torch.bfloat16, torch.float16) and not c.mma:
        with pytest.raises(kc.SizeLimitError, match="tensor-core layout"):
            kc.plan(direction, kind, hidden, batch, dtype, limits, rec_mask=hidden == 37, mma=True)
    assert c.mma == (dtype in (torch.bfloat16, torch.float16)) or not c.mma
    if c.mma:
        assert c.batch_tile == batch or c.batch_tile % 16 == 0
    assert c.smem == kc._smem_bytes(direction, kind, hidden, dtype, c.rec_mask, c.units, c.batch_tile, c.mma)
    assert c.smem <= limits.smem_per_block_optin
    assert c.blocks_per_sm * (c.smem + limits.reserved_smem_per_block) <= limits.smem_per_sm
    # W_hh slice: G gates x U rows x H of the storage type
    w = kc.N_GATES[kind] * c.units * hidden * kc.DTYPES[dtype][1]
    assert c.smem >= w
    if c.batch_tile < batch:  # a bigger tile would not fit
        step = 16 if c.mma else 1
        bigger = kc._smem_bytes(direction, kind, hidden, dtype, c.rec_mask, c.units, c.batch_tile + step, c.mma)
        assert c.blocks_per_sm * (bigger + limits.reserved_smem_per_block) > limits.smem_per_sm or \
            bigger > limits.smem_per_block_optin


def test_plan_known_configurations():
    c = kc.plan("forward", "lstm", 768, 16, torch.float16, kc.H100)
    assert (c.units, c.grid, c.batch_tile, c.blocks_per_sm, c.mma) == (8, 96, 16, 1, True)  # whole 8-unit tiles
    # MMA layout: rows padded to ld = 768 + 8 halves; 16 staged rows; fp32 results: 8 k splits (one
    # per warp) of 16 rows x 4 gates x 8 units; 4 gates x 8 units
    assert c.smem == 16 * 776 * 2 + 8 * 16 * 4 * 8 * 4 + 4 * 8 * 776 * 2
    c = kc.plan("forward", "lstm", 768, 16, torch.float16, kc.H100, mma=False)
    assert (c.units, c.batch_tile, c.mma) == (6, 16, False)
    assert c.smem == 16 * 768 * 4 + 4 * 6 * 768 * 2
    c = kc.plan("backward", "gru", 100, 40, torch.float32, kc.H100, tf32=True, max_batch_tile=20)
    assert c.mma and (c.units, c.grid, c.batch_tile) == (8, 13, 16)  # whole 16-row MMA tiles below the cap
    ld = 104 + 4  # tf32: k = 8, padded to a multiple of 8 plus 4
    assert c.smem == 3 * 16 * ld * 4 + 8 * 16 * 3 * 8 * 4 + 3 * 8 * ld * 4
    c = kc.plan("backward", "gru", 37, 3, torch.float32, kc.H100)
    assert (c.units, c.grid, c.batch_tile) == (1, 37, 3)
    c = kc.plan("forward", "rnn", 1024, 256, torch.float32, kc.H100)
    assert (c.units, c.grid) == (8, 128) and c.batch_tile < 256  # batch is staged in tiles


def test_size_limit_message_and_limit():
    limit = kc.max_hidden("forward", "lstm", 16, torch.float32, kc.H100)
    assert 1000 < limit < 2000
    kc.plan("forward", "lstm", limit, 16, torch.float32, kc.H100)  # the limit itself fits
    with pytest.raises(kc.SizeLimitError) as info:
        kc.plan("forward", "lstm", 4096, 16, torch.float32, kc.H100)
    msg = str(info.value)
    for part in ("W_hh needs 2048.0 KiB of shared memory per block with 128 blocks (32 of 4096", "227.0 KiB",
                 "hidden size 4096", f"limit {limit}", "use backend='triton'"):
        assert part in msg, msg
    # half precision stores W_hh in 2 bytes: a larger limit
    assert kc.max_hidden("forward", "lstm", 16, torch.bfloat16, kc.H100) > limit


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="direction"):
        kc.plan("sideways", "lstm", 8, 1, torch.float32, kc.H100)
    with pytest.raises(ValueError, match="cell kind"):
        kc.plan("forward", "mgu", 8, 1, torch.float32, kc.H100)
    with pytest.raises(ValueError, match="dtypes"):
        kc.plan("forward", "lstm", 8, 1, torch.int8, kc.H100)
    with pytest.raises(ValueError, match="hidden size"):
        kc.plan("forward", "lstm", 0, 1, torch.float32, kc.H100)


def test_tensor_core_policy():
    ampere, turing = kc.A100, kc.DeviceLimits("T4", 40, 65536, 65536, compute_capability=(7, 5))
    for dtype in (torch.bfloat16, torch.float16):
        assert kc.use_mma(dtype, ampere) and not kc.use_mma(dtype, turing)
        assert not kc.use_mma(dtype, ampere, mma=False)
    assert not kc.use_mma(torch.float32, ampere)  # fp32 stays exact unless tf32 is allowed
    assert kc.use_mma(torch.float32, ampere, tf32=True) and not kc.use_mma(torch.float32, turing, tf32=True)
    assert not kc.use_mma(torch.float64, ampere, tf32=True)
    with pytest.raises(ValueError, match=r"compute capability >= 8.0, got float64"):
        kc.use_mma(torch.float64, ampere, mma=True)
    with pytest.raises(ValueError, match=r"float16 on T4 \(7, 5\)"):
        kc.plan("forward", "lstm", 64, 2, torch.float16, turing, mma=True)
    assert not kc.plan("forward", "lstm", 64, 2, torch.float16, turing).mma


def test_mma_env_switch(monkeypatch):
    monkeypatch.setenv(kc.MMA_ENV, "off")
    assert kc.CupyBackend()._mma is False
    monkeypatch.setenv(kc.MMA_ENV, "sometimes")
    with pytest.raises(ValueError, match="FUSED_RNN_CUPY_MMA must be 'auto' or 'off', got 'sometimes'"):
        kc.CupyBackend()


# ------------------------------------------------------------------------------------------------
# CUDA sources compile (nvcc --ptx is enough to type-check and code-generate the kernels)

def _nvcc(args, source_file, cwd=ROOT, out=os.devnull):
    cmd = [NVCC, "-std=c++17", "--ptx", "-o", str(out), *args, str(source_file)]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    return res


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize("file", ["forward.cu", "backward.cu"])
def test_sources_compile_standalone(file, arch):
    res = _nvcc([f"-arch={arch}", "-I", "kernels", "-Werror", "all-warnings"], Path("kernels/cupy") / file)
    assert "warning" not in res.stderr.lower(), res.stderr


GENERATED = [  # bf16 / fp16 plans on the H100 use the tensor-core path; tf32 is asked for below
    ("forward", "lstm", "tanh", "sigmoid", True, torch.bfloat16, False, "cg"),
    ("backward", "gru", "tanh", "sigmoid", False, torch.float32, True, "tf32"),
    ("forward", "rnn", "tanh", "sigmoid", True, torch.float32, False, "tf32"),
    ("backward", "lstm", "relu", "hard_sigmoid", True, torch.float16, True, "cg"),
    ("forward", "gru", "tanh", "sigmoid", False, torch.float32, True, "atomic"),
    ("backward", "gru", "linear", "sigmoid", False, torch.bfloat16, False, "cg"),
    ("backward", "gru", "tanh", "hard_sigmoid", True, torch.float32, False, "atomic"),
    ("forward", "rnn", "relu", "sigmoid", True, torch.float64, True, "cg"),
]


@needs_nvcc
@pytest.mark.parametrize("case", GENERATED, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_generated_configurations_compile(case, tmp_path):
    direction, kind, act, ract, reset_after, dtype, rec_mask, barrier = case
    tf32 = barrier == "tf32"
    barrier = "cg" if tf32 else barrier
    config = kc.plan(direction, kind, 37, 3, dtype, kc.H100, activation=act, recurrent_activation=ract,
                     reset_after=reset_after, rec_mask=rec_mask, tf32=tf32)
    assert config.mma == (dtype != torch.float64 and (dtype != torch.float32 or tf32))
    source, options, name = kc.kernel_source(config, barrier)
    assert name.startswith(f"frnn::rnn_{direction}<") and "#include \"cupy/" not in source
    path = tmp_path / "k.cu"
    path.write_text(source)
    _nvcc(["-arch=sm_90", *options], path, cwd=tmp_path, out=tmp_path / "k.ptx")  # self-contained: no -I needed
    ptx = (tmp_path / "k.ptx").read_text()
    mma = {torch.bfloat16: "m16n8k16.row.col.f32.bf16.bf16.f32", torch.float16: "m16n8k16.row.col.f32.f16.f16.f32",
           torch.float32: "m16n8k8.row.col.f32.tf32.tf32.f32"}.get(dtype)
    assert ("mma.sync.aligned." in ptx) == config.mma
    if config.mma:
        assert f"mma.sync.aligned.{mma}" in ptx


def test_kernel_source_options():
    config = kc.plan("forward", "gru", 64, 2, torch.float32, kc.H100, reset_after=False)
    _, options, name = kc.kernel_source(config)
    assert "-DFRNN_NO_DEFAULT_INSTANTIATIONS" in options and "-DFRNN_ATOMIC_BARRIER" not in options
    assert name == "frnn::rnn_forward<1, 0, 2, false, float, false, false, 4, 256, 1>"
    _, options, _ = kc.kernel_source(config, "atomic")
    assert "-DFRNN_ATOMIC_BARRIER" in options
    with pytest.raises(ValueError, match="barrier"):
        kc.kernel_source(config, "spin")


# ------------------------------------------------------------------------------------------------
# GPU: against the NumPy float64 reference

def _case_id(c):
    return "-".join(str(v).replace("torch.", "") for v in c)


GPU_CASES = [
    # kind, activation, recurrent_activation, reset_after, dtype, T, B, H, reverse, mask, rec_mask
    ("lstm", "tanh", "sigmoid", True, torch.float32, 7, 3, 37, False, False, False),
    ("lstm", "tanh", "sigmoid", True, torch.float32, 7, 3, 37, True, True, True),
    ("lstm", "relu", "hard_sigmoid", True, torch.float64, 5, 4, 19, False, True, False),
    ("gru", "tanh", "sigmoid", True, torch.float32, 7, 3, 37, False, True, True),
    ("gru", "tanh", "sigmoid", False, torch.float32, 7, 3, 37, True, True, True),
    ("gru", "linear", "hard_sigmoid", False, torch.float64, 6, 2, 21, False, False, False),
    ("rnn", "tanh", "sigmoid", True, torch.float32, 7, 3, 37, False, True, True),
    ("rnn", "relu", "sigmoid", True, torch.float64, 9, 5, 13, True, False, False),
    # real sizes
    ("lstm", "tanh", "sigmoid", True, torch.float32, 50, 16, 768, False, True, False),
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 50, 16, 768, False, False, False),
    ("lstm", "tanh", "sigmoid", True, torch.float16, 50, 16, 768, True, True, True),
    ("gru", "tanh", "sigmoid", True, torch.bfloat16, 40, 33, 512, False, True, False),
    ("gru", "tanh", "sigmoid", False, torch.float16, 40, 8, 300, False, False, True),
    ("rnn", "tanh", "sigmoid", True, torch.bfloat16, 60, 64, 1024, False, True, False),
]


def _inputs(rng, kind, dtype, T, B, H, I, use_mask, use_rec_mask):
    g = kc.N_GATES[kind]
    scale = 1.0 / np.sqrt(H)
    p = {
        "x": rng.standard_normal((T, B, I)),
        "w_ih": rng.uniform(-scale, scale, (g * H, I)),
        "w_hh": rng.uniform(-scale, scale, (g * H, H)),
        "b_ih": rng.uniform(-scale, scale, (g * H,)),
        "b_hh": rng.uniform(-scale, scale, (g * H,)),
        "h0": 0.5 * rng.standard_normal((B, H)),
        "c0": 0.5 * rng.standard_normal((B, H)) if kind == "lstm" else None,
    }
    # round to the dtype under test so the oracle sees exactly the kernel's inputs
    p = {k: None if v is None else torch.tensor(v).to(dtype).double().numpy() for k, v in p.items()}
    mask = None
    if use_mask:
        mask = rng.random((T, B)) > 0.3
        mask[0, 0] = False  # a sequence that starts masked
        mask[:, -1] = True
    rec_mask = None
    if use_rec_mask:
        rec_mask = (rng.random((g, B, H)) > 0.25) / 0.75
    return p, mask, rec_mask


def _run_case(rng, case, poison=False):
    ref = pytest.importorskip("rnn.reference")
    from rnn.cells import CellSpec

    kind, act, ract, reset_after, dtype, T, B, H, reverse, use_mask, use_rec_mask = case
    cell = CellSpec(kind, act, ract, reset_after)
    I = 11
    p, mask, rec_mask = _inputs(rng, kind, dtype, T, B, H, I, use_mask, use_rec_mask)
    out, hT, cT, cache = ref.forward(cell, p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"], p["c0"],
                                     mask, None, rec_mask, reverse)
    dout = rng.standard_normal(out.shape)
    dhT = rng.standard_normal(hT.shape)
    dcT = rng.standard_normal(cT.shape) if cT is not None else None
    grads = ref.backward(cache, dout, dhT, dcT)

    dev = torch.device("cuda")
    acc = kc.DTYPES[dtype][2]

    def t(a, dt=dtype):
        return None if a is None else torch.tensor(a, device=dev).to(dt)

    xg = (t(p["x"], torch.float64) @ t(p["w_ih"], torch.float64).T + t(p["b_ih"], torch.float64)).to(dtype)
    backend = kc.CupyBackend()
    why = backend.unavailable_reason(dev, cell, H, B, dtype)
    if why:
        pytest.skip(why)
    mask_t = None if mask is None else torch.tensor(mask, device=dev)
    rec_t = t(rec_mask, acc)
    saved = backend.forward(cell, xg, t(p["w_hh"]), t(p["b_hh"]), t(p["h0"]), t(p["c0"]), mask_t, rec_t, reverse)
    dxg, dh0, dc0 = backend.backward(cell, t(p["w_hh"]), t(p["b_hh"]), t(p["h0"]), t(p["c0"]), mask_t, rec_t,
                                     reverse, saved, t(dout), t(dhT), t(dcT))
    torch.cuda.synchronize()
    return dict(cell=cell, dtype=dtype, p=p, mask=mask, ref=(out, hT, cT, grads), saved=saved,
                grads=(dxg, dh0, dc0), xg=xg, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=_case_id)
def test_against_reference(rng, case):
    r = _run_case(rng, case)
    dtype, p = r["dtype"], r["p"]
    out, hT, cT, grads = r["ref"]
    saved = r["saved"]
    dxg, dh0, dc0 = r["grads"]
    assert_close("out", saved.out, out, dtype)
    assert_close("hT", saved.hT, hT, dtype)
    if cT is not None:
        assert_close("cT", saved.cT, cT, dtype)
    d = dxg.double().cpu().numpy()
    T, B, GH = d.shape
    assert_close("dx", d.reshape(T * B, GH) @ p["w_ih"], grads["x"].reshape(T * B, -1), dtype)
    assert_close("db_ih", d.sum(axis=(0, 1)), grads["b_ih"], dtype)
    assert_close("dw_ih", d.reshape(T * B, GH).T @ p["x"].reshape(T * B, -1), grads["w_ih"], dtype)
    assert_close("dh0", dh0, grads["h0"], dtype)
    if dc0 is not None:
        assert_close("dc0", dc0, grads["c0"], dtype)
    if r["mask"] is not None:  # masked steps: exactly zero gate gradient
        assert np.all(d[~r["mask"]] == 0.0)


@pytest.mark.gpu
@pytest.mark.parametrize("matvec", ["mma", "fma", "tf32"])
@pytest.mark.parametrize("kind,reset_after", [("lstm", True), ("gru", False), ("rnn", True)])
def test_matvec_paths_on_gpu(rng, monkeypatch, set_tf32, matvec, kind, reset_after):
    """Tensor cores (bf16, and fp32 as tf32 when torch allows it) and the FMA path
    (FUSED_RNN_CUPY_MMA=off) at a real size, forward and gradients against the reference."""
    monkeypatch.setenv(kc.MMA_ENV, "off" if matvec == "fma" else "auto")
    set_tf32(matvec == "tf32")
    dtype = torch.float32 if matvec == "tf32" else torch.bfloat16
    case = (kind, "tanh", "sigmoid", reset_after, dtype, 30, 16, 768, True, True, True)
    r = _run_case(rng, case)
    dev = torch.device("cuda")
    for direction in ("forward", "backward"):
        config = r["backend"]._plan(direction, r["cell"], 768, 16, dtype, dev, True)
        assert config.mma == (matvec != "fma"), config
    tol = "tf32" if matvec == "tf32" else dtype
    out, hT, cT, grads = r["ref"]
    dxg, dh0, _ = r["grads"]
    assert_close("out", r["saved"].out, out, tol)
    d = dxg.double().cpu().numpy()
    assert_close("dx", d.reshape(-1, d.shape[2]) @ r["p"]["w_ih"], grads["x"].reshape(-1, grads["x"].shape[2]), tol)
    assert_close("dh0", dh0, grads["h0"], tol)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c[9]][:4], ids=_case_id)
def test_poisoned_outputs_are_all_written(rng, case, monkeypatch):
    monkeypatch.setenv("FUSED_RNN_DEBUG_POISON", "1")
    r = _run_case(rng, case)
    s = r["saved"]
    for name, tensor in [("out", s.out), ("hT", s.hT), ("cT", s.cT), ("gates", s.gates), ("extra", s.extra),
                         ("dxg", r["grads"][0]), ("dh0", r["grads"][1]), ("dc0", r["grads"][2])]:
        if tensor is not None:
            assert torch.isfinite(tensor).all(), f"{name}: {int((~torch.isfinite(tensor)).sum())} unwritten"


@pytest.mark.gpu
@pytest.mark.parametrize("kind,reset_after", [("lstm", True), ("gru", True), ("gru", False), ("rnn", True)])
def test_nan_at_masked_steps_never_leaks(kind, reset_after):
    T, B, H = 6, 4, 40
    g = kc.N_GATES[kind]
    dev = torch.device("cuda")
    cell = spec(kind, reset_after=reset_after)
    xg = torch.randn(T, B, g * H, device=dev)
    mask = torch.ones(T, B, dtype=torch.bool, device=dev)
    mask[2, 1] = mask[3, 1] = mask[0, 2] = False
    xg[~mask] = float("nan")
    w_hh = torch.randn(g * H, H, device=dev) / H**0.5
    h0 = torch.randn(B, H, device=dev)
    c0 = torch.randn(B, H, device=dev) if kind == "lstm" else None
    backend = kc.CupyBackend()
    s = backend.forward(cell, xg, w_hh, None, h0, c0, mask, None, False)
    assert torch.isfinite(s.out).all() and torch.isfinite(s.hT).all()
    assert torch.equal(s.out[2, 1], s.out[1, 1]) and torch.equal(s.out[3, 1], s.out[1, 1])
    assert torch.equal(s.out[0, 2], h0[2])
    dout = torch.randn(T, B, H, device=dev)
    dxg, dh0, dc0 = backend.backward(cell, w_hh, None, h0, c0, mask, None, False, s, dout, None, None)
    assert torch.isfinite(dxg).all() and torch.isfinite(dh0).all()
    assert (dxg[~mask] == 0).all()


@pytest.mark.gpu
def test_deterministic(rng):
    case = ("gru", "tanh", "sigmoid", True, torch.float32, 20, 16, 512, False, True, True)
    a = _run_case(np.random.default_rng(5), case)
    b = _run_case(np.random.default_rng(5), case)
    assert torch.equal(a["saved"].out, b["saved"].out)
    for x, y in zip(a["grads"], b["grads"]):
        assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,dtype", [("lstm", torch.float32), ("lstm", torch.bfloat16), ("gru", torch.float16)])
def test_largest_hidden_size_runs(rng, kind, dtype):
    backend = kc.CupyBackend()
    dev = torch.device("cuda")
    limits = backend.device_limits(dev)
    B = 4
    H = min(kc.max_hidden(d, kind, B, dtype, limits) for d in ("forward", "backward"))
    assert backend.unavailable_reason(dev, spec(kind), H, B, dtype) is None
    assert backend.unavailable_reason(dev, spec(kind), 4 * H, B, dtype) is not None
    case = (kind, "tanh", "sigmoid", True, dtype, 3, B, H, False, True, False)
    r = _run_case(rng, case)
    out = r["ref"][0]
    assert_close("out at the size limit", r["saved"].out, out, dtype)


# ------------------------------------------------------------------------------------------------
# CPU: the exact kernel code, run under a host emulation of CUDA (one host thread per CUDA thread,
# std::barrier for __syncthreads / grid.sync, a 32-thread exchange for warp shuffles), compared
# with the NumPy reference. This checks the index arithmetic, the work split across blocks, batch
# tiling, masking and the barrier placement without a GPU; it cannot check the GPU memory model
# (the ld.cg loads), which the GPU tests cover.

GXX = shutil.which("g++")

EMULATION_SHIM = r"""
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#define FRNN_HOST_EMULATION 1
#define FRNN_NO_DEFAULT_INSTANTIATIONS 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
struct emu_dim3 { unsigned x = 0, y = 1, z = 1; };
static thread_local emu_dim3 threadIdx, blockIdx;
static emu_dim3 gridDim, blockDim;
namespace emu {
struct Warp { std::barrier<> bar{32}; double slot[32]; unsigned fa[32][4], fb[32][2]; };
struct Block { std::unique_ptr<std::barrier<>> bar; std::vector<std::unique_ptr<Warp>> warps; unsigned char* smem = nullptr; };
constexpr size_t GUARD = 256;  // bytes past the planned dynamic shared memory that must stay untouched
static thread_local Block* block = nullptr;
static std::barrier<>* grid_barrier = nullptr;
}
inline void __syncthreads() { emu::block->bar->arrive_and_wait(); }
template <class T> inline T __shfl_xor_sync(unsigned, T v, int offset) {
    emu::Warp& w = *emu::block->warps[threadIdx.x / 32];
    const int lane = threadIdx.x % 32;
    w.slot[lane] = (double)v;
    w.bar.arrive_and_wait();
    const T r = (T)w.slot[lane ^ offset];
    w.bar.arrive_and_wait();
    return r;
}
template <class T> inline T __ldcg(const T* p) { return *p; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
// 16-byte vector loads and 4/8/16-byte stores: the hardware faults on a misaligned address, the
// emulation counts it (emu_launch reports it); it also counts the vector loads and stage_tile's
// single-element loads (the tests check which form of stage_tile ran)
namespace emu { static std::atomic<int> misaligned{0}; static std::atomic<long> vector_loads{0}, single_loads{0}; }
inline void frnn_emu_load16(const void* p, unsigned* w) {
    if ((size_t)p % 16) ++emu::misaligned;
    ++emu::vector_loads;
    std::memcpy(w, p, 16);
}
inline void frnn_emu_single_load() { ++emu::single_loads; }
inline void frnn_emu_store(void* p, const unsigned* w, int nwords) {
    if ((size_t)p % (4 * nwords)) ++emu::misaligned;
    std::memcpy(p, w, 4 * nwords);
}
inline float frnn_emu_half_to_float(unsigned short b) { _Float16 h; std::memcpy(&h, &b, 2); return (float)h; }
inline unsigned short frnn_emu_float_to_half(float f) { _Float16 h = (_Float16)f; unsigned short b; std::memcpy(&b, &h, 2); return b; }
// mma.sync for one warp, written from the PTX ISA fragment tables (m16n8k16 f16/bf16, m16n8k8
// tf32): every lane publishes its registers, each lane rebuilds A (16 x K) and B (K x 8) and
// computes its own four D elements. Unfilled operand elements stay NaN and would show up.
inline float frnn_emu_mma_elem(int code, unsigned word, int e) {
    unsigned u = code == 2 ? (word & 0xffffe000u) : code == 1 ? ((word >> (16 * e)) & 0xffffu) << 16 : 0u;
    if (code == 0) return frnn_emu_half_to_float((unsigned short)(word >> (16 * e)));
    float f; std::memcpy(&f, &u, 4); return f;  // tf32: the low 13 bits are ignored
}
inline void frnn_emu_mma(int code, float* d, const unsigned* a, const unsigned* b) {
    emu::Warp& w = *emu::block->warps[threadIdx.x / 32];
    const int lane = threadIdx.x % 32;
    for (int i = 0; i < 4; ++i) w.fa[lane][i] = a[i];
    for (int i = 0; i < 2; ++i) w.fb[lane][i] = b[i];
    w.bar.arrive_and_wait();
    const int E = code == 2 ? 1 : 2, K = 8 * E;
    float A[16][16], B[16][8];
    for (auto& r : A) for (auto& v : r) v = NAN;
    for (auto& r : B) for (auto& v : r) v = NAN;
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, q = l & 3;
        for (int i = 0; i < 4; ++i)
            for (int e = 0; e < E; ++e) A[g + 8 * (i & 1)][E * q + 4 * E * (i >> 1) + e] = frnn_emu_mma_elem(code, w.fa[l][i], e);
        for (int i = 0; i < 2; ++i)
            for (int e = 0; e < E; ++e) B[E * q + 4 * E * i + e][g] = frnn_emu_mma_elem(code, w.fb[l][i], e);
    }
    w.bar.arrive_and_wait();
    const int g = lane >> 2, q = lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * q + (i & 1);
        double s = d[i];
        for (int k = 0; k < K; ++k) s += (double)A[row][k] * B[k][col];
        d[i] = (float)s;
    }
}
namespace cooperative_groups {
struct grid_group { void sync() { emu::grid_barrier->arrive_and_wait(); } };
inline grid_group this_grid() { return {}; }
}
namespace frnn { inline unsigned char* dynamic_smem() { return emu::block->smem; } }
struct AnyPtr { void* p; template <class U> operator U*() const { return static_cast<U*>(p); } };

// Blocks of `threads` threads, each with its dynamic shared memory followed by a guard zone.
inline std::vector<emu::Block> emu_blocks(int grid, int threads, size_t smem_bytes) {
    std::vector<emu::Block> blocks(grid);
    for (auto& b : blocks) {
        b.bar = std::make_unique<std::barrier<>>(threads);
        for (int w = 0; w < threads / 32; ++w) b.warps.push_back(std::make_unique<emu::Warp>());
        b.smem = static_cast<unsigned char*>(std::aligned_alloc(16, (smem_bytes + emu::GUARD + 15) / 16 * 16));
        std::memset(b.smem, 0xff, smem_bytes);  // NaN-like garbage: unwritten reads show up
        std::memset(b.smem + smem_bytes, 0xa5, emu::GUARD);
    }
    return blocks;
}

// Every CUDA thread of every block as a host thread; start(b) runs first in block b's threads.
template <class S, class F> void emu_run(std::vector<emu::Block>& blocks, int threads, S start, F kernel) {
    std::vector<std::thread> pool;
    for (int b = 0; b < (int)blocks.size(); ++b)
        for (int t = 0; t < threads; ++t)
            pool.emplace_back([&, b, t] {
                threadIdx.x = t;
                blockIdx.x = b;
                emu::block = &blocks[b];
                start(b);
                kernel();
            });
    for (auto& th : pool) th.join();
}

// 1 if any block wrote past its planned dynamic shared memory; frees the blocks' memory.
inline int emu_release(std::vector<emu::Block>& blocks, size_t smem_bytes) {
    int overrun = 0;
    for (auto& b : blocks) {
        for (size_t i = 0; i < emu::GUARD; ++i) overrun |= b.smem[smem_bytes + i] != 0xa5;
        std::free(b.smem);
    }
    return overrun;
}

// 0, or 1 (shared memory overrun) | 2 (misaligned vector access)
template <class F> int emu_launch(int grid, int threads, size_t smem_bytes, F kernel) {
    gridDim.x = grid;
    blockDim.x = threads;
    std::barrier<> gbar(grid * threads);
    emu::grid_barrier = &gbar;
    emu::misaligned = 0;
    emu::vector_loads = 0;
    emu::single_loads = 0;
    auto blocks = emu_blocks(grid, threads, smem_bytes);
    emu_run(blocks, threads, [](int) {}, kernel);
    return emu_release(blocks, smem_bytes) | (emu::misaligned ? 2 : 0);
}
#include "cupy/forward.cu"
#include "cupy/backward.cu"
"""

EMULATION_ENTRY = r"""
extern "C" int run_forward(void** p, const int* n, int grid, int threads, long smem) {
    return emu_launch(grid, threads, smem, [&] {
        frnn::rnn_forward<ARGS>(AnyPtr{p[0]}, AnyPtr{p[1]}, AnyPtr{p[2]}, AnyPtr{p[3]}, AnyPtr{p[4]}, AnyPtr{p[5]},
                                AnyPtr{p[6]}, AnyPtr{p[7]}, AnyPtr{p[8]}, AnyPtr{p[9]}, AnyPtr{p[10]}, AnyPtr{p[11]},
                                AnyPtr{p[12]}, AnyPtr{p[13]}, AnyPtr{p[14]}, n[0], n[1], n[2], n[3], n[4], n[5]);
    });
}
extern "C" long loads_of_last_launch(int single) {
    return single ? emu::single_loads.load() : emu::vector_loads.load();
}
extern "C" int run_backward(void** p, const int* n, int grid, int threads, long smem) {
    return emu_launch(grid, threads, smem, [&] {
        frnn::rnn_backward<ARGS>(AnyPtr{p[0]}, AnyPtr{p[1]}, AnyPtr{p[2]}, AnyPtr{p[3]}, AnyPtr{p[4]}, AnyPtr{p[5]},
                                 AnyPtr{p[6]}, AnyPtr{p[7]}, AnyPtr{p[8]}, AnyPtr{p[9]}, AnyPtr{p[10]}, AnyPtr{p[11]},
                                 AnyPtr{p[12]}, AnyPtr{p[13]}, AnyPtr{p[14]}, AnyPtr{p[15]}, AnyPtr{p[16]},
                                 n[0], n[1], n[2], n[3], n[4], n[5]);
    });
}
"""

# a small device: 3 SMs, so H=13 splits 5 + 5 + 3 units over 3 blocks
EMU_LIMITS = kc.DeviceLimits("emulated", 3, 48 * 1024, 64 * 1024)

EMU_CASES = [
    # kind, activation, recurrent_activation, reset_after, dtype, T, B, H, reverse, mask, rec_mask, rows, max tile,
    # matvec: "fma", or "mma" (tensor cores: bf16 / fp16, or fp32 as tf32),
    # placement of the buffers the kernels stage rows from (h0, out, rec_mask, the r*h and dA scratch):
    # "aligned" (64-byte boundaries) or "offset" (one element past one: no row starts 16-byte aligned)
    ("lstm", "tanh", "sigmoid", True, torch.float64, 7, 5, 13, False, True, True, 4, 2, "fma", "aligned"),
    ("lstm", "relu", "hard_sigmoid", True, torch.float32, 6, 3, 13, True, False, False, 2, None, "fma", "aligned"),
    ("gru", "tanh", "sigmoid", True, torch.float64, 7, 5, 13, True, True, True, 4, 3, "fma", "aligned"),
    ("gru", "tanh", "sigmoid", False, torch.float64, 7, 5, 13, False, True, True, 2, 2, "fma", "aligned"),
    ("gru", "linear", "hard_sigmoid", False, torch.float32, 5, 3, 13, True, False, False, 4, None, "fma", "aligned"),
    ("rnn", "tanh", "sigmoid", True, torch.float64, 7, 5, 13, False, True, True, 4, 2, "fma", "aligned"),
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 6, 4, 13, False, True, False, 4, None, "fma", "aligned"),
    ("gru", "tanh", "sigmoid", True, torch.float16, 6, 4, 13, False, False, True, 4, 3, "fma", "aligned"),
    # fewer units than SMs (2 blocks of 1 unit), a single sequence, a single step
    ("lstm", "tanh", "sigmoid", True, torch.float64, 4, 1, 2, True, True, True, 4, None, "fma", "aligned"),
    ("gru", "tanh", "sigmoid", False, torch.float64, 1, 3, 7, False, False, True, 4, None, "fma", "aligned"),
    # tensor cores: padded rows/units, per-gate staged copies, two 16-row batch tiles (B=18),
    # the k reduction split over idle warps (one 8-unit tile, several k tiles), uneven splits
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 6, 4, 13, False, True, False, 4, None, "mma", "aligned"),
    ("lstm", "tanh", "sigmoid", True, torch.float16, 5, 18, 13, True, True, True, 4, 16, "mma", "aligned"),
    ("gru", "tanh", "sigmoid", True, torch.float16, 6, 4, 13, False, False, True, 4, 3, "mma", "aligned"),
    ("gru", "tanh", "hard_sigmoid", False, torch.bfloat16, 5, 18, 20, False, True, True, 4, 16, "mma", "aligned"),
    ("rnn", "tanh", "sigmoid", True, torch.bfloat16, 6, 5, 20, True, True, False, 4, None, "mma", "aligned"),
    ("lstm", "tanh", "sigmoid", True, torch.float32, 6, 5, 13, False, True, True, 4, None, "mma", "aligned"),
    ("gru", "tanh", "sigmoid", False, torch.float32, 6, 3, 13, True, True, False, 4, None, "mma", "aligned"),
    ("rnn", "relu", "sigmoid", True, torch.float32, 5, 2, 37, False, False, True, 4, None, "mma", "aligned"),
    # more k tiles than a warp holds in registers (tf32: H=56 has 7 k tiles, an LSTM warp holds 6; H=72
    # has 9, a GRU warp holds 8; the rest come from shared memory) and more 8-unit tiles than warps
    # (24 units: 3 items on 2 warps, only each warp's first one held); the backward sums all gates
    # into one tile (no dropout masks) or keeps one per gate (masks)
    ("lstm", "tanh", "sigmoid", True, torch.float32, 3, 5, 56, False, True, False, 4, None, "mma", "aligned"),
    ("gru", "tanh", "sigmoid", True, torch.float32, 3, 3, 72, True, False, True, 4, None, "mma", "aligned"),
    ("gru", "tanh", "sigmoid", False, torch.float16, 3, 3, 60, False, True, False, 4, None, "mma", "aligned"),
    # staging of the exchanged rows (stage_tile): H a multiple of the 16-byte vector (8 x 16-bit, 4 x fp32,
    # 2 x fp64) with aligned rows takes the whole-vector form, odd H or offset buffers the general one
    # (aligned vectors plus single head / tail elements, vectors across the copies of dA); both with and
    # without dropout masks, MMA (raw 16-bit copy, tf32 rounding, fp32 r*h to bf16) and FMA (16-bit to fp32)
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 5, 3, 16, False, True, False, 4, None, "mma", "aligned"),
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 5, 3, 16, True, False, False, 4, None, "mma", "offset"),
    ("lstm", "tanh", "sigmoid", True, torch.float16, 4, 18, 24, False, True, True, 4, 16, "mma", "aligned"),
    ("gru", "tanh", "hard_sigmoid", False, torch.bfloat16, 5, 5, 24, True, True, True, 4, None, "mma", "aligned"),
    ("gru", "tanh", "hard_sigmoid", False, torch.bfloat16, 5, 5, 24, False, False, True, 4, None, "mma", "offset"),
    ("lstm", "tanh", "sigmoid", True, torch.float32, 5, 3, 16, True, True, True, 4, None, "mma", "aligned"),
    ("gru", "tanh", "sigmoid", True, torch.float16, 5, 4, 16, False, True, True, 4, None, "mma", "offset"),
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 5, 4, 16, False, True, False, 4, None, "fma", "aligned"),
    ("gru", "tanh", "sigmoid", True, torch.float16, 5, 5, 16, True, True, True, 4, 3, "fma", "aligned"),
    ("lstm", "relu", "hard_sigmoid", True, torch.float32, 5, 3, 12, False, False, False, 2, None, "fma", "aligned"),
    ("rnn", "tanh", "sigmoid", True, torch.float64, 5, 5, 10, True, True, True, 4, 2, "fma", "aligned"),
    ("gru", "linear", "hard_sigmoid", False, torch.float32, 5, 3, 12, True, True, False, 4, None, "fma", "offset"),
    ("lstm", "tanh", "sigmoid", True, torch.float64, 5, 5, 14, False, True, True, 4, 2, "fma", "offset"),
]


def _np_storage(a, dtype):
    """A float64 array in the kernel's storage type (16-bit floats as raw bits)."""
    t = torch.tensor(a).to(dtype).contiguous()
    if dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy().copy()
    return t.numpy().copy()


def _from_storage(a, dtype):
    if dtype in (torch.bfloat16, torch.float16):
        return torch.from_numpy(a).view(dtype).double().numpy()
    return a.astype(np.float64)


def _storage_np_dtype(dtype):
    return {torch.float32: np.float32, torch.float64: np.float64}.get(dtype, np.int16)


def _placed(shape, dt, offset=0):
    """An uninitialised array whose data starts `offset` elements past a 64-byte boundary."""
    dt = np.dtype(dt)
    nbytes = int(np.prod(shape)) * dt.itemsize
    buf = np.empty(nbytes + 64 + offset * dt.itemsize, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset * dt.itemsize
    a = buf[start:start + nbytes].view(dt).reshape(shape)
    assert a.ctypes.data % 64 == offset * dt.itemsize
    return a


def build_emulation(directory, source):
    """Compile host C++ that includes the real kernel sources into a shared library; load it."""
    import ctypes

    src = directory / "emu.cpp"
    src.write_text(source)
    lib = directory / "emu.so"
    cmd = [GXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas",
           "-I", str(ROOT / "kernels"), "-o", str(lib), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def emu_build(tmp_path_factory):
    cache = {}

    def build(template_args):
        if template_args not in cache:
            source = EMULATION_SHIM + EMULATION_ENTRY.replace("ARGS", template_args)
            cache[template_args] = build_emulation(tmp_path_factory.mktemp("emu"), source)
        return cache[template_args]

    return build


@pytest.mark.skipif(GXX is None, reason="g++ not on PATH")
@pytest.mark.parametrize("case", EMU_CASES, ids=_case_id)
def test_kernels_under_host_emulation(rng, case, emu_build):
    import ctypes

    ref = pytest.importorskip("rnn.reference")
    from rnn.cells import CellSpec

    (kind, act, ract, reset_after, dtype, T, B, H, reverse, use_mask, use_rec_mask, rows, max_tile, matvec,
     placement) = case
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

    configs = {d: kc.plan(d, kind, H, B, dtype, EMU_LIMITS, activation=act, recurrent_activation=ract,
                          reset_after=reset_after, rec_mask=use_rec_mask, mma=mma, threads=64, rows=rows,
                          max_batch_tile=max_tile) for d in ("forward", "backward")}
    assert configs["forward"].mma == configs["backward"].mma == mma
    units = -(-H // min(H, 3))
    units = -(-units // 8) * 8 if mma else units
    expected = (-(-H // units), units)
    assert (configs["forward"].grid, configs["forward"].units) == expected
    lib = emu_build(configs["forward"].template_args)
    sdt = _storage_np_dtype(dtype)

    offset = 1 if placement == "offset" else 0

    def nan_array(shape, dt, staged=False):  # poisoned outputs; staged rows as the case places them
        a = _placed(shape, dt, offset if staged else 0)
        a.fill(np.nan if dt != np.int16 else -1)  # 0xffff is a NaN in fp16 and bf16
        return a

    def placed_copy(a):
        if a is None:
            return None
        b = _placed(a.shape, a.dtype, offset)
        b[...] = a
        return b

    def call(fn, arrays, config):
        ptrs = (ctypes.c_void_p * len(arrays))(*[None if a is None else a.ctypes.data for a in arrays])
        ints = (ctypes.c_int * 6)(T, B, H, config.units, config.batch_tile, int(reverse))
        status = fn(ptrs, ints, config.grid, config.threads, ctypes.c_long(config.smem))
        assert status & 1 == 0, "shared memory overrun"
        assert status & 2 == 0, "misaligned 16-byte / 8-byte vector access"
        assert status == 0, status
        lib.loads_of_last_launch.restype = ctypes.c_long
        loads["vector"] += lib.loads_of_last_launch(0)
        loads["single"] += lib.loads_of_last_launch(1)

    loads = {"vector": 0, "single": 0}

    xg = _np_storage(p["x"] @ p["w_ih"].T + p["b_ih"], dtype)
    w_hh, b_hh = _np_storage(p["w_hh"], dtype), _np_storage(p["b_hh"], dtype)
    h0 = placed_copy(_np_storage(p["h0"], dtype))
    c0 = _np_storage(p["c0"], dtype) if kind == "lstm" else None
    mask_u8 = None if mask is None else mask.astype(np.uint8)
    rec = None if rec_mask is None else placed_copy(rec_mask.astype(acc_np))
    o, h_T, c_T = nan_array((T, B, H), sdt, staged=True), nan_array((B, H), sdt), nan_array((B, H), sdt)
    gates, extra = nan_array((T, B, g * H), acc_np), nan_array((T, B, H), acc_np)
    state, scratch = nan_array((2, B, H), acc_np), nan_array((B, H), acc_np, staged=True)
    barrier = np.zeros(1, np.uint32)
    call(lib.run_forward, [xg, w_hh, b_hh, h0, c0, mask_u8, rec, o, h_T, c_T, gates, extra, state, scratch,
                           barrier], configs["forward"])
    assert_close("out", _from_storage(o, dtype), out, tol)
    assert_close("hT", _from_storage(h_T, dtype), hT, tol)
    if cT is not None:
        assert_close("cT", _from_storage(c_T, dtype), cT, tol)
    assert np.isfinite(gates).all()
    if kind == "lstm" or (kind == "gru" and reset_after):
        assert np.isfinite(extra).all()

    dxg, dh0, dc0 = nan_array((T, B, g * H), sdt), nan_array((B, H), sdt), nan_array((B, H), sdt)
    # dA is exchanged in the storage type
    bstate, bscratch = nan_array((2, B, H), acc_np), nan_array((2, B, g * H), sdt, staged=True)
    call(lib.run_backward, [w_hh, h0, c0, mask_u8, rec, o, gates, extra, _np_storage(dout, dtype),
                            _np_storage(dhT, dtype), None if dcT is None else _np_storage(dcT, dtype),
                            dxg, dh0, dc0, bstate, bscratch, barrier], configs["backward"])
    d = _from_storage(dxg, dtype)
    assert_close("dx", d.reshape(T * B, -1) @ p["w_ih"], grads["x"].reshape(T * B, -1), tol)
    assert_close("db_ih", d.sum(axis=(0, 1)), grads["b_ih"], tol)
    assert_close("dh0", _from_storage(dh0, dtype), grads["h0"], tol)
    if kind == "lstm":
        assert_close("dc0", _from_storage(dc0, dtype), grads["c0"], tol)
    if mask is not None:
        assert np.all(d[~mask] == 0.0)
    # which form of stage_tile ran: whole 16-byte vectors only where every staged row starts aligned
    # and H is a multiple of the vector; else aligned vectors (where a row holds one) and single elements
    vs = 16 // np.dtype(sdt).itemsize
    if placement == "aligned" and H % vs == 0:
        assert loads["single"] == 0 and loads["vector"] > 0, loads
    else:
        assert loads["single"] > 0, loads
        assert loads["vector"] > 0 or H < 2 * vs - 1, loads  # a row of H holds an aligned vector


# ------------------------------------------------------------------------------------------------
# both directions of a bidirectional layer in one launch, through the backend itself: the loader's
# argument marshalling (stacked tensors, pointers, the doubled grid) and the kernels' direction
# groups, on CPU tensors whose launch runs the real kernel code under the emulation

def backend_on_cpu(monkeypatch, limits, run, pins=None, family="auto"):
    """A CupyBackend that believes an H100-like GPU with `limits` and CuPy are present and takes
    CPU tensors (the CUDA-device check is skipped); `pins` are fixed planner options (threads, ...);
    every launch goes to run(config, args). Returns (backend, the configurations launched)."""
    backend = _fake_gpu_backend(monkeypatch, limits)
    backend._family = family
    monkeypatch.setattr(kc, "_check_common", lambda spec, x, name, w_hh, gates_tensor=True: (
        x.shape[0], x.shape[1], w_hh.shape[1], x.device, x.dtype, kc.DTYPES[x.dtype][2]))
    choose = kc.choose
    monkeypatch.setattr(kc, "choose", lambda *a, **k: choose(*a, **{**(pins or {}), **k}))
    launched = []

    def launch(device, config, args):
        launched.append(config)
        run(config, args)

    monkeypatch.setattr(backend, "_launch", launch)
    return backend, launched


def emulated_launch(lib_of):
    """run(config, args) for backend_on_cpu: the launch's pointers and six ints handed to the
    emulation library lib_of(config) built from the same kernel sources."""
    import ctypes

    def run(config, args):
        lib = lib_of(config)
        ptrs = (ctypes.c_void_p * (len(args) - 6))(*[int(a) or None for a in args[:-6]])
        ints = (ctypes.c_int * 6)(*[int(a) for a in args[-6:]])
        fn = lib.run_forward if config.direction == "forward" else lib.run_backward
        if config.kernel == "cluster":
            bad = fn(ptrs, ints, config.directions, config.grid, config.threads, ctypes.c_long(config.smem))
        else:
            bad = fn(ptrs, ints, config.directions * config.grid, config.threads, ctypes.c_long(config.smem))
        assert bad == 0, f"{config.name}: emulation status {bad}"

    return run


def check_both_directions(rng, backend, launched, case, tol, device="cpu"):
    """forward_both / backward_both of the backend against the NumPy reference of each direction,
    each as ONE launch of both directions, and bitwise against one-direction calls where those run
    the same configuration. Returns how many directions were compared bitwise."""
    ref = pytest.importorskip("rnn.reference")
    from rnn.cells import CellSpec

    kind, act, ract, reset_after, dtype, T, B, H, use_mask, use_rec_mask = case
    cell, g = CellSpec(kind, act, ract, reset_after), kc.N_GATES[kind]
    acc = kc.DTYPES[dtype][2]
    ps, refs = [], []
    for d in (0, 1):
        p, mask, rec_mask = _inputs(rng, kind, dtype, T, B, H, 5, use_mask, use_rec_mask)
        if d:
            p["x"], mask = ps[0][0]["x"], ps[0][1]  # both directions read the same x and mask
        out, hT, cT, cache = ref.forward(cell, p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"], p["c0"],
                                         mask, None, rec_mask, bool(d))
        dout, dhT = rng.standard_normal(out.shape), rng.standard_normal(hT.shape)
        dcT = rng.standard_normal(cT.shape) if cT is not None else None
        ps.append((p, mask, rec_mask, dout, dhT, dcT))
        refs.append(((out, hT, cT), ref.backward(cache, dout, dhT, dcT)))

    def stacked(f, dt=dtype):
        vals = [f(*ps[d]) for d in (0, 1)]
        return None if vals[0] is None else torch.stack([torch.tensor(v).to(dt) for v in vals]).to(device)

    xg = stacked(lambda p, *_: p["x"] @ p["w_ih"].T + p["b_ih"])
    w_hh, b_hh, h0 = (stacked(lambda p, *_, k=k: p[k]) for k in ("w_hh", "b_hh", "h0"))
    c0 = stacked(lambda p, *_: p["c0"])
    mask = None if ps[0][1] is None else torch.tensor(ps[0][1], device=device)
    rec = stacked(lambda p, m, r, *_: r, acc)
    dout, dhT = stacked(lambda *a: a[3]), stacked(lambda *a: a[4])
    dcT = stacked(lambda *a: a[5])
    spec_ = spec(kind, act, ract, reset_after)

    saved = backend.forward_both(spec_, xg, w_hh, b_hh, h0, c0, mask, rec)
    assert [(c.direction, c.directions) for c in launched] == [("forward", 2)]
    grads = backend.backward_both(spec_, w_hh, b_hh, h0, c0, mask, rec, saved, dout, dhT, dcT)
    assert [(c.direction, c.directions) for c in launched[1:]] == [("backward", 2)]
    both = list(launched)
    np_ = lambda t: t.double().cpu().numpy()  # noqa: E731
    for d in (0, 1):
        p = ps[d][0]
        (out, hT, cT), rg = refs[d]
        assert_close(f"out[{d}]", np_(saved.out[d]), out, tol)
        assert_close(f"hT[{d}]", np_(saved.hT[d]), hT, tol)
        if cT is not None:
            assert_close(f"cT[{d}]", np_(saved.cT[d]), cT, tol)
        dxg = np_(grads[0][d])
        assert_close(f"dx[{d}]", dxg.reshape(T * B, -1) @ p["w_ih"], rg["x"].reshape(T * B, -1), tol)
        assert_close(f"db_ih[{d}]", dxg.sum(axis=(0, 1)), rg["b_ih"], tol)
        assert_close(f"dh0[{d}]", np_(grads[1][d]), rg["h0"], tol)
        if kind == "lstm":
            assert_close(f"dc0[{d}]", np_(grads[2][d]), rg["c0"], tol)

    # one direction per call: the same numbers bit for bit where the configuration is the same
    of = lambda t, d: None if t is None else t[d]  # noqa: E731
    same = 0
    for d in (0, 1):
        del launched[:]
        one = backend.forward(spec_, xg[d], w_hh[d], b_hh[d], h0[d], of(c0, d), mask, of(rec, d), bool(d))
        g1 = backend.backward(spec_, w_hh[d], b_hh[d], h0[d], of(c0, d), mask, of(rec, d), bool(d), one, dout[d],
                              dhT[d], of(dcT, d))
        if [c.grid for c in launched] != [c.grid for c in both]:
            continue
        same += 1
        for name, a, b in zip(("out", "hT", "cT", "gates", "extra"), one, saved):
            assert a is None or torch.equal(a, b[d]), (name, d)
        for name, a, b in zip(("dxg", "dh0", "dc0"), g1, grads):
            assert a is None or torch.equal(a, b[d]), (name, d)
    return same


# emulated device with 6 SMs: both directions get 3 each; every case here has the template
# arguments of an EMU_CASES case (threads 64, rows 4), so the emulation libraries are shared
BOTH_LIMITS = kc.DeviceLimits("emulated", 6, 48 * 1024, 64 * 1024)
BOTH_CASES = [
    # kind, act, ract, reset_after, dtype, T, B, H, mask, rec_mask
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 5, 4, 13, True, False),   # mma, 2 blocks a direction either way
    ("gru", "tanh", "hard_sigmoid", False, torch.bfloat16, 4, 5, 20, True, True),
    ("lstm", "tanh", "sigmoid", True, torch.float64, 4, 3, 13, True, True),    # fma: 3 blocks each, not 6
]


@pytest.mark.skipif(GXX is None, reason="g++ not on PATH")
@pytest.mark.parametrize("case", BOTH_CASES, ids=_case_id)
def test_both_directions_in_one_launch_under_emulation(rng, monkeypatch, case, emu_build):
    backend, launched = backend_on_cpu(monkeypatch, BOTH_LIMITS, emulated_launch(lambda c: emu_build(c.template_args)),
                                       pins={"threads": 64}, family="grid")
    dtype = case[4]
    same = check_both_directions(rng, backend, launched, case, dtype)
    # the planner gave each direction half of the SMs: at most 3 blocks (the FMA plan of one
    # direction alone takes 5 of 6; the MMA plan 2 either way: its results are bitwise the same)
    config = backend._plan("forward", spec(case[0]), case[7], case[6], dtype, torch.device("cuda"), case[9], 2)
    assert config.grid <= 3 and config.directions == 2
    assert same == (2 if dtype == torch.bfloat16 else 0)


def test_both_directions_fall_back_to_two_launches_where_they_do_not_fit(monkeypatch):
    """Half of the SMs cannot hold W_hh's slices, all of them can: forward_both / backward_both run
    the two directions one launch after the other (same backend, same kernels), never refuse."""
    T, B, H = 3, 2, 64
    limits = kc.DeviceLimits("small", 4, 20 * 1024, 24 * 1024)
    with pytest.raises(kc.SizeLimitError):
        kc.choose("forward", "lstm", H, B, torch.float32, limits, directions=2)
    assert kc.choose("forward", "lstm", H, B, torch.float32, limits).grid == 4
    backend, launched = backend_on_cpu(monkeypatch, limits, lambda config, args: None)
    xg = torch.zeros(2, T, B, 4 * H)
    w_hh, h0 = torch.zeros(2, 4 * H, H), torch.zeros(2, B, H)
    saved = backend.forward_both(spec("lstm"), xg, w_hh, None, h0, None, None, None)
    assert saved.out.shape == (2, T, B, H) and saved.cT.shape == (2, B, H)
    backend.backward_both(spec("lstm"), w_hh, None, h0, None, None, None, saved, None, None, None)
    assert [(c.direction, c.directions) for c in launched] == [("forward", 1)] * 2 + [("backward", 1)] * 2
    with pytest.raises(ValueError, match="both directions: xg must have a leading dimension of 2"):
        backend.forward_both(spec("lstm"), xg[0], w_hh, None, h0, None, None, None)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["grid", "cluster"])
@pytest.mark.parametrize("case", [
    ("lstm", "tanh", "sigmoid", True, torch.bfloat16, 20, 16, 768, True, False),
    ("gru", "tanh", "sigmoid", False, torch.float16, 20, 5, 256, True, True),
], ids=_case_id)
def test_both_directions_in_one_launch_on_gpu(rng, monkeypatch, case, family):
    """forward_both / backward_both on the GPU, each kernel family pinned: one launch for both
    directions, against the reference of each."""
    monkeypatch.setenv(kc.KERNEL_ENV, family)
    backend = kc.CupyBackend()
    kind, dtype, B, H = case[0], case[4], case[6], case[7]
    why = backend.unavailable_reason(torch.device("cuda"), spec(kind, reset_after=case[3]), H, B, dtype)
    if why:
        pytest.skip(why)
    launched, launch = [], backend._launch

    def spy(device, config, args):
        launched.append(config)
        launch(device, config, args)

    monkeypatch.setattr(backend, "_launch", spy)
    check_both_directions(rng, backend, launched, case, dtype, device="cuda")
    assert all(c.kernel == family for c in launched)


def test_both_directions_keep_the_tensor_core_path():
    """A both-directions plan that fits half of the SMs only in the FMA layout (LSTM backward bf16
    H1024: one direction uses tensor cores on all SMs) is refused, so that forward_both /
    backward_both run two tensor-core launches instead; an explicit FMA request still plans both."""
    one = kc.choose("backward", "lstm", 1024, 16, torch.bfloat16, kc.H100, kernel="grid")
    assert one.mma and one.directions == 1
    with pytest.raises(kc.SizeLimitError, match="only without tensor cores"):
        kc.choose("backward", "lstm", 1024, 16, torch.bfloat16, kc.H100, kernel="grid", directions=2)
    fma = kc.choose("backward", "lstm", 1024, 16, torch.bfloat16, kc.H100, kernel="grid", directions=2, mma=False)
    assert not fma.mma and fma.directions == 2 and fma.grid <= kc.H100.sm_count // 2
