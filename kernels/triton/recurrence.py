"""Triton kernels for the LSTM / GRU / SimpleRNN recurrence: one forward and one backward kernel
source, every cell and activation selected by constexpr parameters.

Dimension legend (the recurrence contract of rnn.cells):
    T time steps, B batch, H hidden units, G gates (LSTM 4: i f g o; GRU 3: r z n; RNN 1)
    xg    (T, B, G*H)  gate pre-activations from the input GEMM      (I/O dtype)
    w     (G*H, H)     W_hh, gate blocks in torch order               (matmul dtype)
    out   (T, B, H)    carried hidden state after each step          (I/O dtype)
    gates (T, B, G*H)  post-activation gate values; 0 at masked steps (compute dtype CDT)
    extra (T, B, H)    LSTM: c_t (carried at masked steps);           (CDT)
                       GRU reset_after: h W_n^T + b_hn (0 at masked steps)

Work split: program (ph, pb) owns hidden units j in [ph*BLOCK_H, (ph+1)*BLOCK_H) for all G gates
and loops over the batch tiles pb, pb + num_programs(1), ... Two launch modes share the source:
  * persistent (one launch for steps [step_begin, step_end) = all T): W_hh slices are loaded once
    (W_RESIDENT) and the programs exchange h through global memory, meeting at a grid-wide
    barrier (SYNC) after each phase of each step. Needs every program co-resident (grid <= SMs;
    the launcher checks it and launches cooperatively). Every barrier wait is bounded (barrier.py):
    once one times out, the program does no more work in this launch (`live` = 0) and the host
    raises instead of returning the outputs.
  * per step (one launch per step and phase, step_end = step_begin + 1, PHASE = 1, 2 or 3):
    kernel boundaries order the phases; W_hh is streamed in BLOCK_K chunks.
A step has one phase, except GRU reset_after=False: (r*h) @ W_n^T needs r of all units, so the
forward writes r*h to `scratch` in phase 1 and finishes in phase 2. The backward computes its
slice of dgates into dxg[t] (phase 1), [GRU reset_after=False: du = dn_pre @ W_n and dr, phase 2],
then its slice of dh_prev from all of dxg[t] (phase 3). Reductions use no atomics: bitwise
reproducible. Compute dtype CDT is float32 (float64 for float64 inputs); the cell state and every
gate value are kept in CDT, h is exchanged in the I/O dtype (as cuDNN does).

Activation codes: 0 tanh, 1 relu, 2 sigmoid, 3 hard_sigmoid (clip(x/6 + 1/2, 0, 1)), 4 linear.
Cell codes: 0 LSTM, 1 GRU, 2 SimpleRNN.
"""
import triton
import triton.language as tl

from .barrier import grid_barrier

LSTM, GRU, RNN = 0, 1, 2
ACTIVATION_CODES = {"tanh": 0, "relu": 1, "sigmoid": 2, "hard_sigmoid": 3, "linear": 4}
KIND_CODES = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


# ---------------------------------------------------------------------------------------------
# element-wise helpers
# ---------------------------------------------------------------------------------------------
@triton.jit
def _act(x, A: tl.constexpr):
    if A == 0:  # tanh through exp(-2|x|): never overflows, accurate near 0
        e = tl.exp(-2.0 * tl.abs(x))
        y = (1.0 - e) / (1.0 + e)
        y = tl.where(x < 0, -y, y)
    elif A == 1:
        y = tl.maximum(x, 0.0)
    elif A == 2:
        y = 1.0 / (1.0 + tl.exp(-x))
    elif A == 3:
        y = tl.minimum(tl.maximum(x / 6.0 + 0.5, 0.0), 1.0)
    else:
        y = x
    return y


@triton.jit
def _dact(y, A: tl.constexpr):
    """Derivative of activation A expressed through its output y = act(x)."""
    if A == 0:
        d = 1.0 - y * y
    elif A == 1:
        d = (y > 0).to(y.dtype)
    elif A == 2:
        d = y * (1.0 - y)
    elif A == 3:
        d = ((y > 0) & (y < 1)).to(y.dtype) / 6.0
    else:
        d = tl.full(y.shape, 1.0, y.dtype)
    return d


@triton.jit
def _load(ptr, b, j, stride, m, CDT: tl.constexpr):
    """(BLOCK_B, BLOCK_H) tile ptr[b, j] (row stride `stride`) in dtype CDT; 0 outside m."""
    return tl.load(ptr + b[:, None] * stride + j[None, :], mask=m, other=0.0).to(CDT)


@triton.jit
def _load_xchg(ptr, b, j, stride, m, CDT: tl.constexpr):
    """Like _load for data written by OTHER programs in this launch: bypass L1 (.cg), which is
    not coherent across SMs."""
    return tl.load(ptr + b[:, None] * stride + j[None, :], mask=m, other=0.0, cache_modifier=".cg").to(CDT)


@triton.jit
def _store(ptr, b, j, stride, m, val):
    tl.store(ptr + b[:, None] * stride + j[None, :], val.to(ptr.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------------------------
# the recurrent matmul
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_w(w_ptr, g, k, j, j_ok, H, W_T: tl.constexpr):
    """(K, BLOCK_H) operand of gate g: W[g*H + j, k] (forward, h @ W_g^T) or, with W_T,
    W[g*H + k, j] (backward, dgates_g @ W_g)."""
    m = (k < H)[:, None] & j_ok[None, :]
    if W_T:
        off = (g * H + k)[:, None] * H + j[None, :]
    else:
        off = (g * H + j)[None, :] * H + k[:, None]
    return tl.load(w_ptr + off, mask=m, other=0.0)


@triton.jit
def _operand(src_ptr, src_stride, scale_ptr, scale_stride, b, b_ok, k, H, HAS_SCALE: tl.constexpr,
             MM: tl.constexpr):
    """(BLOCK_B, K) left operand src[b, k] (* scale[b, k]), cast to the matmul dtype MM."""
    m = b_ok[:, None] & (k < H)[None, :]
    a = tl.load(src_ptr + b[:, None] * src_stride + k[None, :], mask=m, other=0.0, cache_modifier=".cg")
    if HAS_SCALE:
        s = tl.load(scale_ptr + b[:, None] * scale_stride + k[None, :], mask=m, other=0.0, cache_modifier=".cg")
        a = a.to(s.dtype) * s
    return a.to(MM)


@triton.jit
def _rec(acc, src_ptr, src_stride, scale_ptr, scale_stride, w_ptr, w_tile, g, b, b_ok, j, j_ok, H,
         HAS_SCALE: tl.constexpr, W_T: tl.constexpr, W_RESIDENT: tl.constexpr, BLOCK_K: tl.constexpr,
         K_PAD: tl.constexpr, PREC: tl.constexpr):
    """acc + (src * scale)[b, :H] @ W_g-operand (see _load_w) with CDT accumulation. With
    W_RESIDENT the operand is the on-chip w_tile (K_PAD rows), else it is streamed from memory."""
    MM: tl.constexpr = w_ptr.dtype.element_ty
    if W_RESIDENT:
        k = tl.arange(0, K_PAD)
        a = _operand(src_ptr, src_stride, scale_ptr, scale_stride, b, b_ok, k, H, HAS_SCALE, MM)
        acc = tl.dot(a, w_tile, acc, input_precision=PREC)
    else:
        for k0 in range(0, H, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            a = _operand(src_ptr, src_stride, scale_ptr, scale_stride, b, b_ok, k, H, HAS_SCALE, MM)
            acc = tl.dot(a, _load_w(w_ptr, g, k, j, j_ok, H, W_T), acc, input_precision=PREC)
    return acc


@triton.jit
def _barrier(status_ptr, target, spin_cap, live, SYNC: tl.constexpr):
    """Make this program's stores visible to the others before anyone reads them. With SYNC, the
    bounded grid-wide barrier (barrier.py): returns 0 once the launch is aborted, and the caller
    skips the rest of its work; without SYNC `live` is returned unchanged (a constant 1)."""
    if SYNC:
        live = grid_barrier(status_ptr, target, spin_cap)
    else:
        tl.debug_barrier()
    return live


@triton.jit
def _resident_tiles(w_ptr, j, j_ok, H, NG: tl.constexpr, W_T: tl.constexpr, W_RESIDENT: tl.constexpr,
                    K_PAD: tl.constexpr):
    """The G on-chip W_hh operands of this program (unused copies are dead code)."""
    if W_RESIDENT:
        k = tl.arange(0, K_PAD)
        w0 = _load_w(w_ptr, 0, k, j, j_ok, H, W_T)
        w1 = w0
        w2 = w0
        w3 = w0
        if NG > 1:
            w1 = _load_w(w_ptr, 1, k, j, j_ok, H, W_T)
            w2 = _load_w(w_ptr, 2, k, j, j_ok, H, W_T)
        if NG > 3:
            w3 = _load_w(w_ptr, 3, k, j, j_ok, H, W_T)
    else:
        w0 = 0
        w1 = 0
        w2 = 0
        w3 = 0
    return w0, w1, w2, w3


@triton.jit
def _times(step, T, REVERSE: tl.constexpr):
    """Time index of forward-order step `step` and of the step before it (int64 for offsets)."""
    s = tl.cast(step, tl.int64)
    if REVERSE:
        return T - 1 - s, T - s
    return s, s - 1


@triton.jit
def _fwd_rec(g, wg, src_ptr, scale_ptr, acc, w_ptr, bias_ptr, b, b_ok, j, j_ok, H,
             HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, W_RESIDENT: tl.constexpr,
             BLOCK_K: tl.constexpr, K_PAD: tl.constexpr, PREC: tl.constexpr):
    """acc + (src * scale) @ W_g^T + b_hh[g] for this tile (src, scale (B, H); acc: x part or 0)."""
    acc = _rec(acc, src_ptr, H, scale_ptr, H, w_ptr, wg, g, b, b_ok, j, j_ok, H, HAS_SCALE, False,
               W_RESIDENT, BLOCK_K, K_PAD, PREC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + g * H + j, mask=j_ok, other=0.0).to(acc.dtype)[None, :]
    return acc


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _fwd_tile(P: tl.constexpr, t, hp, cp, b0, j, j_ok,
              xg_ptr, w_ptr, w0, w1, w2, w3, bias_ptr, mask_ptr, rmask_ptr,
              out_ptr, gates_ptr, extra_ptr, scratch_ptr, B, H,
              KIND: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
              RESET_AFTER: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
              HAS_RMASK: tl.constexpr, W_RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr,
              BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, K_PAD: tl.constexpr, PREC: tl.constexpr):
    """Phase P of step t for batch rows [b0, b0+BLOCK_B) and this program's units j."""
    CDT: tl.constexpr = gates_ptr.dtype.element_ty
    GH = NG * H
    b = b0 + tl.arange(0, BLOCK_B)
    b_ok = b < B
    m = b_ok[:, None] & j_ok[None, :]
    x_t = xg_ptr + t * B * GH
    g_t = gates_ptr + t * B * GH
    zero = tl.zeros((BLOCK_B, BLOCK_H), CDT)
    if HAS_MASK:
        valid = (tl.load(mask_ptr + t * B + b, mask=b_ok, other=0) != 0)[:, None]
    else:
        valid = tl.full((BLOCK_B, 1), 1, tl.int1)
    h_old = _load_xchg(hp, b, j, H, m, CDT)
    rm_stride = B * H
    if KIND == 0:  # LSTM
        pi = _fwd_rec(0, w0, hp, rmask_ptr + 0 * rm_stride, _load(x_t + 0 * H, b, j, GH, m, CDT), w_ptr, bias_ptr,
                      b, b_ok, j, j_ok, H, HAS_RMASK, HAS_BIAS, W_RESIDENT, BLOCK_K, K_PAD, PREC)
        pf = _fwd_rec(1, w1, hp, rmask_ptr + 1 * rm_stride, _load(x_t + 1 * H, b, j, GH, m, CDT), w_ptr, bias_ptr,
                      b, b_ok, j, j_ok, H, HAS_RMASK, HAS_BIAS, W_RESIDENT, BLOCK_K, K_PAD, PREC)
        pg = _fwd_rec(2, w2, hp, rmask_ptr + 2 * rm_stride, _load(x_t + 2 * H, b, j, GH, m, CDT), w_ptr, bias_ptr,
                      b, b_ok, j, j_ok, H, HAS_RMASK, HAS_BIAS, W_RESIDENT, BLOCK_K, K_PAD, PREC)
        po = _fwd_rec(3, w3, hp, rmask_ptr + 3 * rm_stride, _load(x_t + 3 * H, b, j, GH, m, CDT), w_ptr, bias_ptr,
                      b, b_ok, j, j_ok, H, HAS_RMASK, HAS_BIAS, W_RESIDENT, BLOCK_K, K_PAD, PREC)
        i = tl.where(valid, _act(pi, RACT), 0.0)
        f = tl.where(valid, _act(pf, RACT), 0.0)
        g = tl.where(valid, _act(pg, ACT), 0.0)
        o = tl.where(valid, _act(po, RACT), 0.0)
        c_old = _load(cp, b, j, H, m, CDT)
        c = tl.where(valid, f * c_old + i * g, c_old)
        h = tl.where(valid, o * _act(c, ACT), h_old)
        _store(g_t + 0 * H, b, j, GH, m, i)
        _store(g_t + 1 * H, b, j, GH, m, f)
        _store(g_t + 2 * H, b, j, GH, m, g)
        _store(g_t + 3 * H, b, j, GH, m, o)
        _store(extra_ptr + t * B * H, b, j, H, m, c)
        _store(out_ptr + t * B * H, b, j, H, m, h)
    elif KIND == 1:  # GRU
        if RESET_AFTER or P == 1:
            pr = _fwd_rec(0, w0, hp, rmask_ptr + 0 * rm_stride, _load(x_t + 0 * H, b, j, GH, m, CDT), w_ptr, bias_ptr,
                          b, b_ok, j, j_ok, H, HAS_RMASK, HAS_BIAS, W_RESIDENT, BLOCK_K, K_PAD, PREC)
            r = tl.where(valid, _act(pr, RACT), 0.0)
            _store(g_t + 0 * H, b, j, GH, m, r)
        if RESET_AFTER or P == 2:
            pz = _fwd_rec(1, w1, hp, rmask_ptr + 1 * rm_stride, _load(x_t + 1 * H, b, j, GH, m, CDT), w_ptr, bias_ptr,
                          b, b_ok, j, j_ok, H, HAS_RMASK, HAS_BIAS, W_RESIDENT, BLOCK_K, K_PAD, PREC)
            if RESET_AFTER:  # hn = (h * rm_n) @ W_n^T + b_hn, gated by r after the matmul
                hn = _fwd_rec(2, w2, hp, rmask_ptr + 2 * rm_stride, zero, w_ptr, bias_ptr, b, b_ok, j, j_ok, H,
                              HAS_RMASK, HAS_BIAS, W_RESIDENT, BLOCK_K, K_PAD, PREC)
            else:  # scratch holds r * h * rm_n of every unit (phase 1): no scale
                hn = _fwd_rec(2, w2, scratch_ptr, scratch_ptr, zero, w_ptr, bias_ptr, b, b_ok, j, j_ok, H,
                              False, HAS_BIAS, W_RESIDENT, BLOCK_K, K_PAD, PREC)
            z = tl.where(valid, _act(pz, RACT), 0.0)
            xn = _load(x_t + 2 * H, b, j, GH, m, CDT)
            if RESET_AFTER:
                n = tl.where(valid, _act(xn + r * hn, ACT), 0.0)
                _store(extra_ptr + t * B * H, b, j, H, m, tl.where(valid, hn, 0.0))
            else:
                n = tl.where(valid, _act(xn + hn, ACT), 0.0)
            h = tl.where(valid, (1.0 - z) * n + z * h_old, h_old)
            _store(g_t + 1 * H, b, j, GH, m, z)
            _store(g_t + 2 * H, b, j, GH, m, n)
            _store(out_ptr + t * B * H, b, j, H, m, h)
        else:  # phase 1 of reset_after=False: publish r * h (* rm_n) for the n-gate matmul
            s = r * h_old
            if HAS_RMASK:
                s = s * _load(rmask_ptr + 2 * rm_stride, b, j, H, m, CDT)
            _store(scratch_ptr, b, j, H, m, s)
    else:  # SimpleRNN
        p = _fwd_rec(0, w0, hp, rmask_ptr, _load(x_t, b, j, GH, m, CDT), w_ptr, bias_ptr, b, b_ok, j, j_ok, H,
                     HAS_RMASK, HAS_BIAS, W_RESIDENT, BLOCK_K, K_PAD, PREC)
        a = _act(p, ACT)
        _store(g_t, b, j, GH, m, tl.where(valid, a, 0.0))
        _store(out_ptr + t * B * H, b, j, H, m, tl.where(valid, a, h_old))


@triton.jit
def forward_kernel(
    xg_ptr,       # (T, B, G*H) gate pre-activations x @ W_ih^T + b_ih
    w_ptr,        # (G*H, H) W_hh in the matmul dtype
    bias_ptr,     # (G*H,) b_hh (read only with HAS_BIAS)
    h0_ptr,       # (B, H) initial h, I/O dtype
    c0_ptr,       # (B, H) initial c, CDT (LSTM)
    mask_ptr,     # (T, B) int8, nonzero = valid step (read only with HAS_MASK)
    rmask_ptr,    # (G, B, H) recurrent dropout masks, CDT (read only with HAS_RMASK)
    out_ptr,      # (T, B, H) out: hidden states, I/O dtype
    gates_ptr,    # (T, B, G*H) out: post-activation gates, CDT
    extra_ptr,    # (T, B, H) out: LSTM c_t / GRU reset_after hn, CDT
    scratch_ptr,  # (B, H) CDT: r * h exchange of GRU reset_after=False
    sync_ptr,     # int32 (STATUS_WORDS,) barrier status of barrier.py, zero at launch (SYNC only)
    spin_cap,     # polls of a barrier wait before the launch is aborted (SYNC only)
    T, B, H,
    step_begin, step_end,  # forward-order steps done by this launch
    KIND: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
    RESET_AFTER: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_RMASK: tl.constexpr,
    TWO_PHASE: tl.constexpr,  # GRU reset_after=False
    PHASE: tl.constexpr,      # 0: every phase of each step; 1 / 2: only that phase
    SYNC: tl.constexpr,       # grid barrier between phases (persistent multi-program launch)
    W_RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, K_PAD: tl.constexpr, PREC: tl.constexpr,
):
    pid_b = tl.program_id(1)
    n_pb = tl.num_programs(1)
    n_prog = tl.num_programs(0) * n_pb
    j = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    j_ok = j < H
    w0, w1, w2, w3 = _resident_tiles(w_ptr, j, j_ok, H, NG, False, W_RESIDENT, K_PAD)
    arrived = 0
    live = 1  # 0 once a barrier timed out: the rest of the launch does nothing (the host raises)
    for step in range(step_begin, step_end):
        t, tp = _times(step, T, REVERSE)
        hp = out_ptr + tp * B * H
        cp = extra_ptr + tp * B * H
        if step == 0:
            hp = h0_ptr
            cp = c0_ptr
        if PHASE != 2:
            if live != 0:
                for b0 in range(pid_b * BLOCK_B, B, n_pb * BLOCK_B):
                    _fwd_tile(1, t, hp, cp, b0, j, j_ok, xg_ptr, w_ptr, w0, w1, w2, w3, bias_ptr, mask_ptr,
                              rmask_ptr, out_ptr, gates_ptr, extra_ptr, scratch_ptr, B, H, KIND, NG, ACT,
                              RACT, RESET_AFTER, HAS_BIAS, HAS_MASK, HAS_RMASK, W_RESIDENT, BLOCK_B,
                              BLOCK_H, BLOCK_K, K_PAD, PREC)
                arrived += n_prog
                live = _barrier(sync_ptr, arrived, spin_cap, live, SYNC)
        if TWO_PHASE:
            if PHASE != 1:
                if live != 0:
                    for b0 in range(pid_b * BLOCK_B, B, n_pb * BLOCK_B):
                        _fwd_tile(2, t, hp, cp, b0, j, j_ok, xg_ptr, w_ptr, w0, w1, w2, w3, bias_ptr, mask_ptr,
                                  rmask_ptr, out_ptr, gates_ptr, extra_ptr, scratch_ptr, B, H, KIND, NG, ACT,
                                  RACT, RESET_AFTER, HAS_BIAS, HAS_MASK, HAS_RMASK, W_RESIDENT, BLOCK_B,
                                  BLOCK_H, BLOCK_K, K_PAD, PREC)
                    arrived += n_prog
                    live = _barrier(sync_ptr, arrived, spin_cap, live, SYNC)


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _bwd_tile(P: tl.constexpr, t, hp, cp, b0, j, j_ok,
              w_ptr, w0, w1, w2, w3, mask_ptr, rmask_ptr, gates_ptr, extra_ptr, dout_ptr,
              dxg_ptr, dh_ptr, dc_ptr, scratch_ptr, B, H,
              KIND: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
              RESET_AFTER: tl.constexpr, HAS_MASK: tl.constexpr, HAS_RMASK: tl.constexpr,
              W_RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
              BLOCK_K: tl.constexpr, K_PAD: tl.constexpr, PREC: tl.constexpr):
    """Phase P (1 dgates, 2 GRU reset_after=False dr, 3 dh_prev) of step t, rows [b0, b0+BLOCK_B)."""
    CDT: tl.constexpr = dxg_ptr.dtype.element_ty
    GH = NG * H
    b = b0 + tl.arange(0, BLOCK_B)
    b_ok = b < B
    m = b_ok[:, None] & j_ok[None, :]
    g_t = gates_ptr + t * B * GH
    d_t = dxg_ptr + t * B * GH
    rm_stride = B * H
    zero = tl.zeros((BLOCK_B, BLOCK_H), CDT)
    if HAS_MASK:
        valid = (tl.load(mask_ptr + t * B + b, mask=b_ok, other=0) != 0)[:, None]
    else:
        valid = tl.full((BLOCK_B, 1), 1, tl.int1)
    # dh: gradient reaching h_t = upstream dout[t] + what step t+1 sent back (own units only)
    dh = _load(dout_ptr + t * B * H, b, j, H, m, CDT) + _load(dh_ptr, b, j, H, m, CDT)
    if P == 1:
        if KIND == 0:  # LSTM
            i = _load(g_t + 0 * H, b, j, GH, m, CDT)
            f = _load(g_t + 1 * H, b, j, GH, m, CDT)
            g = _load(g_t + 2 * H, b, j, GH, m, CDT)
            o = _load(g_t + 3 * H, b, j, GH, m, CDT)
            ac = _act(_load(extra_ptr + t * B * H, b, j, H, m, CDT), ACT)
            dc_in = _load(dc_ptr, b, j, H, m, CDT)
            dc = dc_in + dh * o * _dact(ac, ACT)
            c_old = _load(cp, b, j, H, m, CDT)
            _store(d_t + 0 * H, b, j, GH, m, tl.where(valid, dc * g * _dact(i, RACT), 0.0))
            _store(d_t + 1 * H, b, j, GH, m, tl.where(valid, dc * c_old * _dact(f, RACT), 0.0))
            _store(d_t + 2 * H, b, j, GH, m, tl.where(valid, dc * i * _dact(g, ACT), 0.0))
            _store(d_t + 3 * H, b, j, GH, m, tl.where(valid, dh * ac * _dact(o, RACT), 0.0))
            _store(dc_ptr, b, j, H, m, tl.where(valid, dc * f, dc_in))
        elif KIND == 1:  # GRU: h = (1 - z) n + z h_old
            z = _load(g_t + 1 * H, b, j, GH, m, CDT)
            n = _load(g_t + 2 * H, b, j, GH, m, CDT)
            h_old = _load(hp, b, j, H, m, CDT)
            dn = tl.where(valid, dh * (1.0 - z) * _dact(n, ACT), 0.0)
            _store(d_t + 1 * H, b, j, GH, m, tl.where(valid, dh * (h_old - n) * _dact(z, RACT), 0.0))
            _store(d_t + 2 * H, b, j, GH, m, dn)
            if RESET_AFTER:  # n = act(xn + r * hn): dr = dn * hn
                r = _load(g_t + 0 * H, b, j, GH, m, CDT)
                hn = _load(extra_ptr + t * B * H, b, j, H, m, CDT)
                _store(d_t + 0 * H, b, j, GH, m, tl.where(valid, dn * hn * _dact(r, RACT), 0.0))
        else:
            a = _load(g_t, b, j, GH, m, CDT)
            _store(d_t, b, j, GH, m, tl.where(valid, dh * _dact(a, ACT), 0.0))
    elif P == 2:  # GRU reset_after=False: u = r * h * rm_n feeds u @ W_n^T; du = dn_pre @ W_n
        du = _rec(zero, d_t + 2 * H, GH, d_t, GH, w_ptr, w2, 2, b, b_ok, j, j_ok, H, False, True,
                  W_RESIDENT, BLOCK_K, K_PAD, PREC)
        hr = _load(hp, b, j, H, m, CDT)
        if HAS_RMASK:
            hr = hr * _load(rmask_ptr + 2 * rm_stride, b, j, H, m, CDT)
        r = _load(g_t + 0 * H, b, j, GH, m, CDT)
        _store(d_t + 0 * H, b, j, GH, m, tl.where(valid, du * hr * _dact(r, RACT), 0.0))
        _store(scratch_ptr, b, j, H, m, du)
    else:  # P == 3: dh_prev = sum_g (dgates_g @ W_g) * rm_g (+ direct GRU terms), all of dxg[t]
        acc = zero
        for g in tl.static_range(NG):
            wg = w0
            if g == 1:
                wg = w1
            if g == 2:
                wg = w2
            if g == 3:
                wg = w3
            if KIND == 1 and g == 2:
                if RESET_AFTER:  # d(hn) = dn_pre * r
                    part = _rec(zero, d_t + 2 * H, GH, g_t, GH, w_ptr, wg, 2, b, b_ok, j, j_ok, H, True, True,
                                W_RESIDENT, BLOCK_K, K_PAD, PREC)
                else:  # through u = r * h * rm_n, du from phase 2
                    part = _load(scratch_ptr, b, j, H, m, CDT) * _load(g_t + 0 * H, b, j, GH, m, CDT)
            else:
                part = _rec(zero, d_t + g * H, GH, d_t, GH, w_ptr, wg, g, b, b_ok, j, j_ok, H, False, True,
                            W_RESIDENT, BLOCK_K, K_PAD, PREC)
            if HAS_RMASK:
                part = part * _load(rmask_ptr + g * rm_stride, b, j, H, m, CDT)
            acc += part
        if KIND == 1:
            acc += dh * _load(g_t + 1 * H, b, j, GH, m, CDT)
        _store(dh_ptr, b, j, H, m, tl.where(valid, acc, dh))


@triton.jit
def backward_kernel(
    w_ptr,        # (G*H, H) W_hh in the matmul dtype
    h0_ptr,       # (B, H) initial h, I/O dtype
    c0_ptr,       # (B, H) initial c, CDT (LSTM)
    mask_ptr,     # (T, B) int8 (HAS_MASK)
    rmask_ptr,    # (G, B, H) CDT (HAS_RMASK)
    out_ptr,      # (T, B, H) forward hidden states
    gates_ptr,    # (T, B, G*H) forward post-activation gates
    extra_ptr,    # (T, B, H) forward LSTM c_t / GRU reset_after hn
    dout_ptr,     # (T, B, H) upstream gradient of out
    dxg_ptr,      # (T, B, G*H) out: gradient of the gate pre-activations, CDT
    dh_ptr,       # (B, H) CDT: in dhT, out dh0 (the carried dh, each program its own units)
    dc_ptr,       # (B, H) CDT: in dcT, out dc0 (LSTM)
    scratch_ptr,  # (B, H) CDT: du of GRU reset_after=False
    sync_ptr,     # int32 (STATUS_WORDS,) barrier status of barrier.py, zero at launch (SYNC only)
    spin_cap,     # polls of a barrier wait before the launch is aborted (SYNC only)
    T, B, H,
    step_begin, step_end,  # backward steps done by this launch: step k handles forward step T-1-k
    KIND: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
    RESET_AFTER: tl.constexpr, REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_RMASK: tl.constexpr,
    TWO_PHASE: tl.constexpr,  # GRU reset_after=False: the extra phase 2
    PHASE: tl.constexpr,      # 0: all phases of each step; 1 / 2 / 3: only that phase
    SYNC: tl.constexpr, W_RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, K_PAD: tl.constexpr, PREC: tl.constexpr,
):
    pid_b = tl.program_id(1)
    n_pb = tl.num_programs(1)
    n_prog = tl.num_programs(0) * n_pb
    j = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    j_ok = j < H
    w0, w1, w2, w3 = _resident_tiles(w_ptr, j, j_ok, H, NG, True, W_RESIDENT, K_PAD)
    arrived = 0
    live = 1  # 0 once a barrier timed out: the rest of the launch does nothing (the host raises)
    for step in range(step_begin, step_end):
        fstep = T - 1 - step
        t, tp = _times(fstep, T, REVERSE)
        hp = out_ptr + tp * B * H
        cp = extra_ptr + tp * B * H
        if fstep == 0:
            hp = h0_ptr
            cp = c0_ptr
        for P in tl.static_range(1, 4):
            if (P != 2 or TWO_PHASE) and (PHASE == 0 or PHASE == P):
                if live != 0:
                    for b0 in range(pid_b * BLOCK_B, B, n_pb * BLOCK_B):
                        _bwd_tile(P, t, hp, cp, b0, j, j_ok, w_ptr, w0, w1, w2, w3, mask_ptr, rmask_ptr,
                                  gates_ptr, extra_ptr, dout_ptr, dxg_ptr, dh_ptr, dc_ptr, scratch_ptr, B, H,
                                  KIND, NG, ACT, RACT, RESET_AFTER, HAS_MASK, HAS_RMASK, W_RESIDENT,
                                  BLOCK_B, BLOCK_H, BLOCK_K, K_PAD, PREC)
                    # phase 3 reads and writes only this program's units of dh/dc, and the next
                    # step's phase 1 writes a different dxg[t]: no grid barrier needed after it
                    if P != 3:
                        arrived += n_prog
                        live = _barrier(sync_ptr, arrived, spin_cap, live, SYNC)
                    else:
                        tl.debug_barrier()
