"""Launchers for the Triton recurrence kernels: the launch plan (grid, block sizes, persistent or
per-step), the CUDA-graph cache of the per-step path, and `TritonBackend`, which implements the
backend interface of rnn.backends (forward / backward / unavailable_reason).

Shapes follow rnn.cells: T time, B batch, H hidden, G gates; xg (T, B, G*H), w_hh (G*H, H).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .. import Saved, compute_dtype, new_empty
from .recurrence import ACTIVATION_CODES, KIND_CODES, backward_kernel, forward_kernel

# Kernels are built as interpreted functions when TRITON_INTERPRET=1 at import time (triton decides
# at decoration time); then they run on CPU tensors, one program after another.
INTERPRET = type(forward_kernel).__name__ == "InterpretedFunction"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MIN_BLOCK = 16           # tl.dot needs M, N, K >= 16
W_BUDGET_BYTES = 128 * 1024  # on-chip W_hh slice per program for the persistent path (untuned)
H_OPERAND_ELEMS = 16 * 1024  # cap on BLOCK_B * K_PAD, the h operand loaded per step


@dataclass(frozen=True)
class Plan:
    persistent: bool   # one launch for all T (grid barrier) vs one launch per step and phase
    block_h: int       # hidden units per program
    block_b: int       # batch rows per tile
    block_k: int       # K chunk of the streamed recurrent matmul (per-step path)
    k_pad: int         # next power of two >= H: K extent of an on-chip W_hh operand
    w_resident: bool   # W_hh slices loaded once per launch and kept on chip
    grid: tuple        # (hidden programs, batch programs)
    num_warps: int
    num_stages: int    # 1 for persistent launches: software pipelining of the batch-tile loop
                       # would multiply shared memory (the W_hh slices already live there)


def _pow2(n, lo=MIN_BLOCK):
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def make_plan(hidden, batch, n_gates, itemsize, n_sm, interpret, per_step=False) -> Plan:
    """Pure function choosing how to launch. Interpreter: programs run one after another, so the
    persistent path is ONE program covering all of H and B (no cross-program wait), and the
    per-step path uses small blocks to exercise the multi-program slicing. GPU: the persistent
    path needs every program co-resident (grid <= n_sm) and the W_hh slice within
    W_BUDGET_BYTES; otherwise one fused launch per step (CUDA-graph replayed)."""
    if hidden < 1 or batch < 1 or n_gates < 1:
        raise ValueError(f"hidden, batch and n_gates must be >= 1, got {hidden}, {batch}, {n_gates}")
    k_pad = _pow2(hidden)
    if interpret:
        if per_step:
            return Plan(False, MIN_BLOCK, MIN_BLOCK, MIN_BLOCK, k_pad, False,
                        (triton.cdiv(hidden, MIN_BLOCK), triton.cdiv(batch, MIN_BLOCK)), 4, 1)
        return Plan(True, k_pad, _pow2(batch), k_pad, k_pad, True, (1, 1), 4, 1)
    block_h = MIN_BLOCK
    while triton.cdiv(hidden, block_h) > n_sm and block_h < 128:
        block_h *= 2
    n_h = triton.cdiv(hidden, block_h)
    w_bytes = n_gates * block_h * k_pad * itemsize
    if not per_step and n_h <= n_sm and w_bytes <= W_BUDGET_BYTES:
        block_b = min(_pow2(batch), max(MIN_BLOCK, H_OPERAND_ELEMS // k_pad))
        n_b = min(triton.cdiv(batch, block_b), max(1, n_sm // n_h))
        return Plan(True, block_h, block_b, k_pad, k_pad, True, (n_h, n_b),
                    8 if w_bytes > 32 * 1024 else 4, 1)
    block_h = 32 if hidden <= 2048 else 64
    block_b = min(_pow2(batch), 64)
    return Plan(False, block_h, block_b, 64, k_pad, False,
                (triton.cdiv(hidden, block_h), triton.cdiv(batch, block_b)), 4, 2)


def _n_sm(device):
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch_steps(launch, plan, T, sync, phases):
    """Persistent plan: one launch runs every step and phase (PHASE=0). Otherwise one launch per
    step and phase, the kernel boundaries ordering the phases."""
    if plan.persistent:
        launch(0, T, 0, sync)
        return
    for step in range(T):
        for phase in phases:
            launch(step, step + 1, phase, False)


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
    cover that path in the interpreter); `use_graphs=False` launches the steps eagerly on GPU."""

    def __init__(self, per_step: bool = False, use_graphs: bool = True):
        self.per_step = per_step
        self.use_graphs = use_graphs
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

    def _common(self, spec, xg_dtype, device, w_hh, h0, c0, mask, rec_mask, T, B, H):
        cdt = compute_dtype(xg_dtype)
        # bf16 tl.dot is wrong in the Triton interpreter: there the matmul runs in fp32 on the same
        # (bf16-representable) values, as tensor cores would with fp32 accumulation.
        mm = torch.float32 if (INTERPRET and xg_dtype == torch.bfloat16) else xg_dtype
        args = dict(
            w=w_hh.detach().to(mm).contiguous(),
            h0=h0.detach().to(xg_dtype).contiguous(),
            c0=(c0.detach().to(cdt).contiguous() if c0 is not None else torch.zeros(B, H, dtype=cdt, device=device))
            if spec.kind == "lstm" else None,
            mask=None,
            rmask=None,
        )
        if mask is not None:
            if tuple(mask.shape) != (T, B):
                raise ValueError(f"mask must be (T, B) = {(T, B)}, got {tuple(mask.shape)}")
            args["mask"] = mask.detach().to(torch.int8).contiguous()
        if rec_mask is not None:
            if tuple(rec_mask.shape) != (spec.n_gates, B, H):
                raise ValueError(f"rec_mask must be (G, B, H) = {(spec.n_gates, B, H)}, got {tuple(rec_mask.shape)}")
            args["rmask"] = rec_mask.detach().to(cdt).contiguous()
        prec = "ieee"
        if xg_dtype == torch.float32 and not INTERPRET and torch.backends.cuda.matmul.allow_tf32:
            prec = "tf32"
        plan = make_plan(H, B, spec.n_gates, torch.finfo(mm).bits // 8, _n_sm(device), INTERPRET, self.per_step)
        consts = dict(
            KIND=KIND_CODES[spec.kind], NG=spec.n_gates, ACT=ACTIVATION_CODES[spec.activation],
            RACT=ACTIVATION_CODES[spec.recurrent_activation], RESET_AFTER=bool(spec.reset_after),
            HAS_MASK=mask is not None, HAS_RMASK=rec_mask is not None,
            TWO_PHASE=spec.kind == "gru" and not spec.reset_after,
            W_RESIDENT=plan.w_resident, BLOCK_B=plan.block_b, BLOCK_H=plan.block_h,
            BLOCK_K=plan.block_k, K_PAD=plan.k_pad, PREC=prec,
        )
        return cdt, args, plan, consts

    def _run(self, device, plan, key, sequence, inputs):
        """sequence(inputs) issues the launches and returns the outputs. A per-step sequence on a
        GPU is captured once per configuration in a CUDA graph and replayed."""
        if not plan.persistent and device.type == "cuda" and self.use_graphs and not INTERPRET:
            return self._graphs.run(key, sequence, inputs)
        return sequence(inputs)

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse):
        T, B, H = self._check(spec, xg, w_hh, h0)
        device, dtype = xg.device, xg.dtype
        cdt, a, plan, consts = self._common(spec, dtype, device, w_hh, h0, c0, mask, rec_mask, T, B, H)
        lstm, gru_ra = spec.kind == "lstm", spec.kind == "gru" and spec.reset_after
        two = consts["TWO_PHASE"]
        G = spec.n_gates
        if T == 0:
            cT = a["c0"].to(dtype) if lstm else None
            return Saved(new_empty((0, B, H), dtype, device), a["h0"].clone(), cT,
                         new_empty((0, B, G * H), cdt, device),
                         new_empty((0, B, H), cdt, device) if (lstm or gru_ra) else None)
        bias = b_hh.detach().to(cdt).contiguous() if b_hh is not None else None
        consts.update(REVERSE=bool(reverse), HAS_BIAS=bias is not None)
        sync = plan.grid != (1, 1)

        def sequence(ins):
            xg_, w_, bias_, h0_, c0_, mask_, rmask_ = ins
            out = new_empty((T, B, H), dtype, device)
            gates = new_empty((T, B, G * H), cdt, device)
            extra = new_empty((T, B, H), cdt, device) if (lstm or gru_ra) else None
            scratch = new_empty((B, H), cdt, device) if two else None
            counter = torch.zeros(1, dtype=torch.int32, device=device) if (plan.persistent and sync) else None

            def launch(step_begin, step_end, phase, sync_):
                forward_kernel[plan.grid](
                    xg_, w_, _or(bias_, gates), h0_, _or(c0_, gates), _or(mask_, gates), _or(rmask_, gates),
                    out, gates, _or(extra, gates), _or(scratch, gates), _or(counter, gates),
                    T, B, H, step_begin, step_end, PHASE=phase, SYNC=sync_,
                    num_warps=plan.num_warps, num_stages=plan.num_stages, **consts)

            _launch_steps(launch, plan, T, sync, (1, 2) if two else (1,))
            return out, gates, extra

        inputs = [xg.detach().contiguous(), a["w"], bias, a["h0"], a["c0"], a["mask"], a["rmask"]]
        key = ("fwd", spec, T, B, H, dtype, str(device), bool(reverse), bias is not None,
               mask is not None, rec_mask is not None, consts["PREC"])
        out, gates, extra = self._run(device, plan, key, sequence, inputs)
        last = 0 if reverse else T - 1
        hT = out[last].clone()
        cT = extra[last].to(dtype) if lstm else None
        return Saved(out, hT, cT, gates, extra)

    # ---- backward --------------------------------------------------------------------------
    def backward(self, spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, saved, dout, dhT, dcT):
        out, _, _, gates, extra = saved[:5]
        T, B, H = out.shape
        dtype, device = out.dtype, out.device
        G = spec.n_gates
        self._check(spec, out.new_empty((T, B, G * H)), w_hh, h0)
        cdt, a, plan, consts = self._common(spec, dtype, device, w_hh, h0, c0, mask, rec_mask, T, B, H)
        lstm = spec.kind == "lstm"
        two = consts["TWO_PHASE"]
        if dout is None:
            dout = torch.zeros(T, B, H, dtype=dtype, device=device)
        if tuple(dout.shape) != (T, B, H):
            raise ValueError(f"dout must be (T, B, H) = {(T, B, H)}, got {tuple(dout.shape)}")
        # dh / dc carries start as dhT / dcT and end as dh0 / dc0 (updated in place by the kernel)
        dh = dhT.detach().to(cdt, copy=True).contiguous() if dhT is not None \
            else torch.zeros(B, H, dtype=cdt, device=device)
        dc = None
        if lstm:
            dc = dcT.detach().to(cdt, copy=True).contiguous() if dcT is not None \
                else torch.zeros(B, H, dtype=cdt, device=device)
        if T == 0:
            return new_empty((0, B, G * H), cdt, device), dh, dc
        consts.update(REVERSE=bool(reverse))
        sync = plan.grid != (1, 1)

        def sequence(ins):
            w_, h0_, c0_, mask_, rmask_, out_, gates_, extra_, dout_, dh_, dc_ = ins
            dxg = new_empty((T, B, G * H), cdt, device)
            scratch = new_empty((B, H), cdt, device) if two else None
            counter = torch.zeros(1, dtype=torch.int32, device=device) if (plan.persistent and sync) else None

            def launch(step_begin, step_end, phase, sync_):
                backward_kernel[plan.grid](
                    w_, h0_, _or(c0_, dxg), _or(mask_, dxg), _or(rmask_, dxg), out_, gates_,
                    _or(extra_, dxg), dout_, dxg, dh_, _or(dc_, dxg), _or(scratch, dxg), _or(counter, dxg),
                    T, B, H, step_begin, step_end, PHASE=phase, SYNC=sync_,
                    num_warps=plan.num_warps, num_stages=plan.num_stages, **consts)

            _launch_steps(launch, plan, T, sync, (1, 2, 3) if two else (1, 3))
            return dxg, dh_, dc_

        inputs = [a["w"], a["h0"], a["c0"], a["mask"], a["rmask"], out.detach().contiguous(),
                  gates.detach().contiguous(), extra.detach().contiguous() if extra is not None else None,
                  dout.detach().to(dtype).contiguous(), dh, dc]
        key = ("bwd", spec, T, B, H, dtype, str(device), bool(reverse), mask is not None,
               rec_mask is not None, consts["PREC"])
        return self._run(device, plan, key, sequence, inputs)


def _or(t, fallback):
    """A tensor for every pointer argument: unused ones (constexpr-disabled) get `fallback`."""
    return fallback if t is None else t
