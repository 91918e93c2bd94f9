"""The floor model: the least time a case could take, from a few rates measured once per run.

Legend: T time steps, B batch, I input size, H hidden size, G gates (LSTM 4, GRU 3),
e bytes per element of the case dtype, F the measured dense matmul rate for that dtype (FLOP/s;
fp32 at the TF32 rate),
W the measured device-memory bandwidth (bytes/s), L the measured latency of one grid barrier.

A recurrence is sequential in time, so its floor is T times the floor of one step plus the
parallel work done once (the big GEMMs), each term at its peak rate:

    one forward step   flops  2*B*H*G*H                     (h_{t-1} @ W_hh^T)
                       bytes  B*G*H*e   read the step's input gates xg_t
                            + 3*B*H*e   write h_t, exchange h_t between blocks (write + read)
                            + B*G*H*4   save the activated gates (training only, fp32)
                            + G*H*H*e   re-read W_hh, only if it does not fit on chip
                       time   max(flops / F, bytes / W, L)       (L: one grid barrier per step)
    forward            T * step + input GEMM x @ W_ih^T (2*T*B*I*G*H flops at F)
    one backward step  the same matmul (dgates @ W_hh), reads the saved gates (B*G*H*4),
                       dout_t (B*H*e), writes dxg_t (B*G*H*e); same max(...) with L
    backward           T * step + dW_hh, dW_ih and dx GEMMs (2*T*B*G*H*(H + 2*I) flops at F)
    forward_backward   training forward + backward

"Fits on chip" means G*H*H*e <= number of SMs * (shared memory + register file per SM): a
persistent kernel can keep W_hh resident for the whole sequence. Ignored: elementwise math,
launch overhead, the LSTM cell state (kept on chip). On a CPU there is no barrier term and
W_hh is assumed resident (caches). `pct_of_floor` = 100 * measured / floor: 100 % is the floor,
300 % means three times slower than it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .timing import bench

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}


@dataclass
class Rates:
    """Ceilings measured once on the device; None where not measured."""

    matmul_flops_per_s: dict = field(default_factory=dict)  # dtype name -> FLOP/s
    copy_bytes_per_s: float | None = None
    barrier_us: float | None = None
    on_chip_bytes: int | None = None
    notes: list = field(default_factory=list)

    def as_dict(self):
        return asdict(self)


def estimate(cell, mode, batch, hidden, input_size, seq_len, dtype, rates: Rates) -> dict:
    """Floor of one case (see the module docstring); floor_ms is None without the rates."""
    G, B, H, I, T = GATES[cell], batch, hidden, input_size, seq_len
    e = DTYPE_BYTES[dtype]
    F = rates.matmul_flops_per_s.get(dtype)
    W = rates.copy_bytes_per_s
    L = (rates.barrier_us or 0.0) * 1e-6
    w_hh_bytes = G * H * H * e
    on_chip = rates.on_chip_bytes is None or w_hh_bytes <= rates.on_chip_bytes
    reread = 0 if on_chip else w_hh_bytes
    training = mode == "forward_backward"
    step_flops = 2 * B * H * G * H
    fwd_bytes = B * G * H * e + 3 * B * H * e + (B * G * H * 4 if training else 0) + reread
    bwd_bytes = B * G * H * 4 + B * H * e + B * G * H * e + 3 * B * H * e + reread
    out = {
        "step_flops": step_flops,
        "step_bytes": fwd_bytes,
        "w_hh_bytes": w_hh_bytes,
        "w_hh_on_chip": on_chip,
        "floor_ms": None,
        "bound": None,
    }
    if not F or not W:
        return out

    def step(nbytes):
        terms = {"matmul": step_flops / F, "memory": nbytes / W, "barrier": L}
        bound = max(terms, key=terms.get)
        return terms[bound], bound

    fwd_step, bound = step(fwd_bytes)
    total = T * fwd_step + 2 * T * B * I * G * H / F
    if training:
        bwd_step, _ = step(bwd_bytes)
        total += T * bwd_step + 2 * T * B * G * H * (H + 2 * I) / F
    out["floor_ms"] = total * 1e3
    out["bound"] = bound
    return out


def measure_rates(device, dtypes, torch_dtypes, warmup_ms=25, rep_ms=100) -> Rates:
    """Measure the matmul rate per dtype, the copy bandwidth and (CUDA only) a grid barrier.

    Random data, never zeros (zeros can run faster than real data)."""
    device = torch.device(device)
    rates = Rates()
    cuda = device.type == "cuda"
    n = 8192 if cuda else 384
    tf32 = torch.backends.cuda.matmul.allow_tf32
    for name in dtypes:
        try:
            # fp32 at the TF32 rate: cuDNN and Triton may use it, and a floor must be the least time
            torch.backends.cuda.matmul.allow_tf32 = True
            a = torch.randn(n, n, device=device).to(torch_dtypes[name])
            b = torch.randn(n, n, device=device).to(torch_dtypes[name])
            ms = bench(lambda: torch.mm(a, b), device, warmup_ms, rep_ms)[0]
            rates.matmul_flops_per_s[name] = 2 * n**3 / (ms * 1e-3)
            del a, b
        except Exception as exc:  # a rate we cannot measure only loses the floor column
            rates.notes.append(f"matmul rate {name}: {type(exc).__name__}: {exc}")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        nbytes = (512 if cuda else 64) * 2**20
        src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        ms = bench(lambda: dst.copy_(src), device, warmup_ms, rep_ms)[0]
        rates.copy_bytes_per_s = 2 * nbytes / (ms * 1e-3)  # read + write
        del src, dst
    except Exception as exc:
        rates.notes.append(f"copy bandwidth: {type(exc).__name__}: {exc}")
    if cuda:
        props = torch.cuda.get_device_properties(device)
        smem = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
        regs = getattr(props, "regs_per_multiprocessor", 65536) * 4
        rates.on_chip_bytes = int(props.multi_processor_count * (smem + regs))
        try:
            rates.barrier_us = barrier_latency_us(device, props.multi_processor_count)
        except Exception as exc:
            rates.notes.append(f"grid barrier: {type(exc).__name__}: {exc}")
    return rates


# --- the grid barrier probe (CUDA only) ------------------------------------------------------
_barrier_kernel = None


def _get_barrier_kernel():
    """Build the Triton kernel lazily so importing this module never needs a GPU."""
    global _barrier_kernel
    if _barrier_kernel is None:
        import triton
        import triton.language as tl

        @triton.jit
        def grid_barrier_kernel(counter_ptr, ok_ptr, n_barriers, n_programs, max_spins):
            # Every program arrives (release) then spins (acquire) until all n_programs of this
            # round arrived: the same barrier a persistent recurrence kernel needs per step.
            # Scalar atomics run on one thread of the (single) warp. The spin is capped so a
            # grid that is not co-resident reports failure instead of hanging.
            ok = 1
            for i in range(n_barriers):
                tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
                target = (i + 1) * n_programs
                seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
                spins = 0
                while (seen < target) & (spins < max_spins):
                    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
                    spins += 1
                ok = ok & (seen >= target).to(tl.int32)
            tl.store(ok_ptr + tl.program_id(0), ok)

        _barrier_kernel = grid_barrier_kernel
    return _barrier_kernel


def barrier_latency_us(device, n_programs, n_barriers=2000, max_spins=1 << 22):
    """Microseconds per grid-wide barrier over n_programs one-warp programs (one per SM).

    Times a launch doing n_barriers barriers and one doing none; the difference over
    n_barriers removes the launch cost. None if any program hit the spin cap."""
    kernel = _get_barrier_kernel()
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    ok = torch.zeros(n_programs, dtype=torch.int32, device=device)

    def launch(n):
        counter.zero_()
        kernel[(n_programs,)](counter, ok, n, n_programs, max_spins, num_warps=1)

    launch(n_barriers)
    torch.cuda.synchronize(device)
    if not bool(ok.all()) or int(counter.item()) != n_barriers * n_programs:
        return None
    with_barriers = bench(lambda: launch(n_barriers), device, 10, 100)[0]
    without = bench(lambda: launch(0), device, 10, 100)[0]
    us = (with_barriers - without) * 1e3 / n_barriers
    return us if math.isfinite(us) and us > 0 else None
