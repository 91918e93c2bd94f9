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
and loops over the batch tiles pb, pb + num_programs(1), ...

Forward recurrent matmul on the persistent path (W_RESIDENT): ONE dot for all gates, with the
operands swapped so that the MMA tile is filled by gate rows even at B <= 16:
    acc[N, BB] = W_rows[N, K] @ h^T[K, BB],   N = NGP * BLOCK_H gate rows (row g*BLOCK_H + u is
    gate g of unit j0 + u; NGP = G rounded up to a power of two, GRU's 4th gate is all zeros).
K is split SPLIT ways (a batched dot [SPLIT, N, K/SPLIT] x [SPLIT, K/SPLIT, BB]: Triton gives each
of the SPLIT = num_warps warps one K slice, so every MMA is issued by exactly one warp), then summed
over the split. K is covered by up to three pieces K1 + K2 + K3 (powers of two, multiples of
16 * SPLIT) = H rounded up to 16: no power-of-two padding. With W_REG the W_hh slice is held in
registers in the MMA accumulator layout (an identity dot puts it there once; from that layout the
A operand needs no shared memory), so a step reads only h through shared memory.
Two launch modes share the source:
  * persistent (one launch for steps [step_begin, step_end) = all T): W_hh slices are loaded once
    (W_RESIDENT) and the programs exchange h through global memory, meeting at a grid-wide
    barrier (SYNC) after each phase of each step. Needs every program co-resident (grid <= SMs;
    the launcher checks it and launches cooperatively). Every barrier wait is bounded (barrier.py):
    once one times out, the program does no more work in this launch (`live` = 0) and the host
    raises instead of returning the outputs. The next step's x and b_hh are loaded before each
    step's barrier (_x_rows), so after the barrier a step waits for h only.
  * per step (one launch per step and phase, step_end = step_begin + 1, PHASE = 1, 2 or 3):
    kernel boundaries order the phases; W_hh is streamed in BLOCK_K chunks.
Both directions of a bidirectional layer can share one launch (REVERSE = BOTH): a third grid axis
is the direction, each direction's programs offset every pointer to their own buffers (leading
dimension 2) and meet at their own grid barriers, so the two groups never wait on each other.
A step has one phase, except GRU reset_after=False: (r*h) @ W_n^T needs r of all units, so the
forward writes r*h to `scratch` in phase 1 and finishes in phase 2. The backward computes its
slice of dgates (phase 1), [GRU reset_after=False: du = dn_pre @ W_n and dr, phase 2], then its
slice of dh_prev from the dgates of all units (phase 3). Persistent backward (_bwd_persistent):
program (ph, pb) owns units j (BLOCK_H >= 16) and batch rows b; phase 1 writes its dgates to dxg[t]
(CDT) and to an exchange buffer (2, B, G*H) in the I/O dtype (steps alternate between its halves,
so one grid barrier per step suffices); phase 3 is ONE split-K dot
    dh^T[BLOCK_H, BB] = W_hh^T[j, K] @ dgates^T[K, BB],  K = G*H gate rows,
the units as M (W_hh^T rows in registers as in the forward, K in up to three power-of-two pieces,
SPLIT = num_warps warps each one K slice, every MMA issued once). That is an all-gather: every
program reads all of the step's dgates and stages them in shared memory. Where the call has no
recurrent dropout and one phase a step, the persistent backward exchanges partial sums instead
(reduce-scatter, REDUCE > 0): each program multiplies the dgates it just computed by its own gate
rows of W_hh over ALL units, one K = BLOCK_H dot a gate,
    part[ph]^T[H, BB] = sum_g W_g[j, :]^T @ dgates_g^T[j, BB],   j this program's units,
stores that partial dh in CDT (fp32) to a double buffer, and after the grid barrier sums the
REDUCE = grid[0] partials of its own units, in program order. The L2 bytes are those of the
all-gather for the LSTM (its 4 gates in 2 bytes against 4 fp32 bytes written and read), but no
dgates pass through shared memory and no split-K partials are summed across warps. dh and dc are
carried in registers; dxg[t] is the output. The per-step backward streams W_hh and exchanges dgates through
the first half of the same buffer. Reductions use no atomics: bitwise reproducible. Compute
dtype CDT is float32 (float64 for float64 inputs); the cell state and every gate value are kept
in CDT, h and the exchanged dgates are in the I/O dtype (as cuDNN does), every matmul
accumulates in CDT.

Activation codes: 0 tanh, 1 relu, 2 sigmoid, 3 hard_sigmoid (clip(x/6 + 1/2, 0, 1)), 4 linear.
Cell codes: 0 LSTM, 1 GRU, 2 SimpleRNN.
"""
import triton
import triton.language as tl

from .barrier import STATUS_WORDS, grid_barrier

# REVERSE = BOTH: both directions of a bidirectional layer in one launch. program_id(2) is the
# direction (0 forward in time, 1 reverse); every per-direction tensor has a leading dimension of 2
# (mask excepted: one for both) and each direction has its own barrier status row, so the two
# groups of programs never wait on each other.
BOTH_DIRECTIONS = 2
BOTH = tl.constexpr(BOTH_DIRECTIONS)
_STATUS_WORDS = tl.constexpr(STATUS_WORDS)
# the interpreter (which this module's kernels become under TRITON_INTERPRET=1) runs no inline PTX
_ASM_STORES = tl.constexpr(not triton.knobs.runtime.interpret)

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
def _rec(acc, src_ptr, src_stride, w_ptr, g, b, b_ok, j, j_ok, H, BLOCK_K: tl.constexpr, PREC: tl.constexpr):
    """acc + src[b, :H] @ W_g (W rows g*H + k, columns j) with CDT accumulation, W streamed from
    memory in BLOCK_K chunks: the per-step backward's dgates_g @ W_g, src the exchanged dgates
    (written by other programs: bypass L1)."""
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        m = b_ok[:, None] & (k < H)[None, :]
        a = tl.load(src_ptr + b[:, None] * src_stride + k[None, :], mask=m, other=0.0, cache_modifier=".cg")
        acc = tl.dot(a.to(w_ptr.dtype.element_ty), _load_w(w_ptr, g, k, j, j_ok, H, True), acc,
                     input_precision=PREC)
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
def _times(step, T, REVERSE: tl.constexpr):
    """Time index of forward-order step `step` and of the step before it (int64 for offsets).
    REVERSE 2 (BOTH): direction program_id(2), 0 forward in time, 1 reverse."""
    s = tl.cast(step, tl.int64)
    if REVERSE == BOTH:
        d = tl.cast(tl.program_id(2), tl.int64)
        t = s + d * (T - 1 - 2 * s)
        return t, t - 1 + 2 * d
    if REVERSE:
        return T - 1 - s, T - s
    return s, s - 1


@triton.jit
def _direction(ptr, elems):
    """`ptr` advanced to the buffer of this program's direction (program_id(2)) in a launch of both
    directions, each direction's buffer `elems` elements long."""
    return ptr + tl.cast(tl.program_id(2), tl.int64) * elems


@triton.jit
def _directions(w_ptr, h0_ptr, c0_ptr, rmask_ptr, out_ptr, gates_ptr, extra_ptr, scratch_ptr, sync_ptr, T, B, H,
                NG: tl.constexpr):
    """_direction of the buffers both kernels have."""
    return (_direction(w_ptr, NG * H * H), _direction(h0_ptr, B * H), _direction(c0_ptr, B * H),
            _direction(rmask_ptr, NG * B * H), _direction(out_ptr, T * B * H), _direction(gates_ptr, T * B * NG * H),
            _direction(extra_ptr, T * B * H), _direction(scratch_ptr, B * H), _direction(sync_ptr, _STATUS_WORDS))


# ---------------------------------------------------------------------------------------------
# forward, persistent: all gates in one split-K dot (see the module docstring)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _gate_rows(j0, H, NG: tl.constexpr, NGP: tl.constexpr, BLOCK_H: tl.constexpr):
    """W_hh row of each of the N = NGP*BLOCK_H gate rows of this program, and which exist."""
    r = tl.arange(0, NGP * BLOCK_H)
    g = r // BLOCK_H
    j = j0 + r % BLOCK_H
    return g * H + j, (g < NG) & (j < H)


@triton.jit
def _w_piece(w_ptr, row, row_ok, H, KL, k0, SPLIT: tl.constexpr, KS: tl.constexpr, W_REG: tl.constexpr,
             W_T: tl.constexpr):
    """A operand [SPLIT, N, KS]: W[row, k] (forward) or, with W_T, W[k, row] (backward: W_hh^T, row
    a unit, k a gate row) at k = k0 + s*KS + kk < KL, 0 outside. With W_REG it is returned in the
    MMA accumulator layout (identity dot, exact), which the compiler keeps in registers."""
    if KS > 0:
        s = tl.arange(0, SPLIT)[:, None, None]
        k = k0 + s * KS + tl.arange(0, KS)[None, None, :]
        if W_T:
            off = k * H + row[None, :, None]
        else:
            off = row[None, :, None] * H + k
        w = tl.load(w_ptr + off, mask=row_ok[None, :, None] & (k < KL), other=0.0)
        if W_REG:
            n = tl.arange(0, row.shape[0])
            eye = tl.broadcast_to((n[:, None] == n[None, :]).to(w.dtype)[None, :, :], (SPLIT, row.shape[0], row.shape[0]))
            w = tl.dot(eye, w, out_dtype=tl.float32).to(w.dtype)
    else:
        w = 0
    return w


@triton.jit
def _h_operand(src_ptr, scale_ptr, b, b_ok, KL, lo, hi, k0, HAS_SCALE: tl.constexpr, SPLIT: tl.constexpr,
               KS: tl.constexpr):
    """B operand [SPLIT, KS, BB] of one K piece: (src * scale)^T[k0 + s*KS + kk, b], src rows of KL
    elements, only the k in [lo, hi) (the others 0). The exchanged operand: bypass L1."""
    s = tl.arange(0, SPLIT)[:, None, None]
    k = k0 + s * KS + tl.arange(0, KS)[None, :, None]
    m = (k >= lo) & (k < hi) & b_ok[None, None, :]
    off = b[None, None, :] * KL + k
    a = tl.load(src_ptr + off, mask=m, other=0.0, cache_modifier=".cg")
    if HAS_SCALE:
        sc = tl.load(scale_ptr + off, mask=m, other=0.0, cache_modifier=".cg")
        a = a.to(sc.dtype) * sc
    return a


@triton.jit
def _split_k_mm(acc, wa, wb, wc, src_ptr, scale_ptr, b, b_ok, KL, lo, hi, HAS_SCALE: tl.constexpr,
                K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, PREC: tl.constexpr):
    """acc [SPLIT, N, BB] + W pieces [SPLIT, N, K/SPLIT] @ their operands (_h_operand) over the K
    pieces K1, K2, K3. Each piece is loaded just before its dot: Triton stages a loaded operand
    into shared memory right after its load whatever the order in the source, so loading all
    pieces first only kept more buffers alive (sm_90, backward B16 H768: 70 -> 99 KB)."""
    SPLIT: tl.constexpr = acc.shape[0]
    if K1 > 0:
        a = _h_operand(src_ptr, scale_ptr, b, b_ok, KL, lo, hi, 0, HAS_SCALE, SPLIT, K1 // SPLIT)
        acc = tl.dot(wa, a.to(wa.dtype), acc, input_precision=PREC)
    if K2 > 0:
        a = _h_operand(src_ptr, scale_ptr, b, b_ok, KL, lo, hi, K1, HAS_SCALE, SPLIT, K2 // SPLIT)
        acc = tl.dot(wb, a.to(wb.dtype), acc, input_precision=PREC)
    if K3 > 0:
        a = _h_operand(src_ptr, scale_ptr, b, b_ok, KL, lo, hi, K1 + K2, HAS_SCALE, SPLIT, K3 // SPLIT)
        acc = tl.dot(wc, a.to(wc.dtype), acc, input_precision=PREC)
    return acc


@triton.jit
def _fused_mm(src_ptr, scale_ptr, wa, wb, wc, b, b_ok, H, HAS_SCALE: tl.constexpr, SPLIT: tl.constexpr,
              K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, N: tl.constexpr, BLOCK_B: tl.constexpr,
              CDT: tl.constexpr, PREC: tl.constexpr):
    """[N, BLOCK_B]: every gate row of this program times (src * scale)^T over all of K."""
    acc = _split_k_mm(tl.zeros((SPLIT, N, BLOCK_B), CDT), wa, wb, wc, src_ptr, scale_ptr, b, b_ok, H, 0, H,
                      HAS_SCALE, K1, K2, K3, PREC)
    return _sum_split(acc)


@triton.jit
def _sum_split(acc):
    """acc [SPLIT, N, BB] summed over the split (one partial per warp), halving it by tl.split of
    a last axis of 2: Triton moves the partials through shared memory once, into a layout that spreads
    [N, BB] over the warps. tl.sum over the warps' axis left its result in every warp and converted
    it again for each consumer (sm_90, LSTM bf16 B16 H768, shared-memory bytes a step: forward 152 ->
    104 KB with the gates split before their activations, backward 365 -> 215 KB)."""
    SPLIT: tl.constexpr = acc.shape[0]
    N: tl.constexpr = acc.shape[1]
    BB: tl.constexpr = acc.shape[2]
    a = tl.permute(acc, (1, 2, 0))
    tl.static_assert(SPLIT <= 16)
    for i in tl.static_range(4):
        if (SPLIT >> i) > 1:
            x, y = tl.split(tl.reshape(a, (N, BB, SPLIT >> (i + 1), 2)))
            a = x + y
    return tl.reshape(a, (N, BB))


@triton.jit
def _split_gates(acc, NGP: tl.constexpr, BLOCK_H: tl.constexpr):
    """[NGP*BLOCK_H, BB] gate rows -> NGP tiles [BB, BLOCK_H] (unused ones repeat gate 0)."""
    a = tl.trans(acc)
    if NGP == 1:
        p0 = a
        p1 = a
        p2 = a
        p3 = a
    else:
        BB: tl.constexpr = a.shape[0]
        a = tl.permute(tl.reshape(a, (BB, 2, 2, BLOCK_H)), (0, 3, 1, 2))  # [BB, BLOCK_H, g // 2, g % 2]
        even, odd = tl.split(a)
        p0, p2 = tl.split(even)
        p1, p3 = tl.split(odd)
    return p0, p1, p2, p3


@triton.jit
def _fused_pre(src_ptr, scale_ptr, rm_stride, wa, wb, wc, xb, b, b_ok, H, NG: tl.constexpr,
               HAS_SCALE: tl.constexpr, SPLIT: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
               BLOCK_H: tl.constexpr, BLOCK_B: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr):
    """xb + (src * scale_g) @ W_g^T of every gate g, in gate rows [NGP*BLOCK_H, BB] (row
    g*BLOCK_H + u: gate g of unit j0 + u); xb: the step's x and b_hh in those rows (_x_rows).
    Recurrent dropout scales the operand per gate: then one dot per gate, each keeping its rows."""
    N: tl.constexpr = xb.shape[0]
    gate = tl.arange(0, N)[:, None] // BLOCK_H
    acc = xb
    if HAS_SCALE:
        for g in tl.static_range(NG):
            part = _fused_mm(src_ptr, scale_ptr + g * rm_stride, wa, wb, wc, b, b_ok, H, True, SPLIT, K1, K2, K3,
                             N, BLOCK_B, CDT, PREC)
            acc += tl.where(gate == g, part, 0.0)
    else:
        acc += _fused_mm(src_ptr, scale_ptr, wa, wb, wc, b, b_ok, H, False, SPLIT, K1, K2, K3, N, BLOCK_B, CDT, PREC)
    return acc


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _streamed_init(g: tl.constexpr, x_t, bias_ptr, GH, b, j, j_ok, m, H, NEED: tl.constexpr, XMASK: tl.constexpr,
                   HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, CDT: tl.constexpr):
    """Gate g's tile before its matmul: x_g (g in XMASK) + b_hh[g] (g in NEED), or 0."""
    acc = tl.zeros((BLOCK_B, BLOCK_H), CDT)
    if (XMASK >> g) & 1:
        acc = _load(x_t + g * H, b, j, GH, m, CDT)
    if HAS_BIAS and (NEED >> g) & 1:
        acc += tl.load(bias_ptr + g * H + j, mask=j_ok, other=0.0).to(CDT)[None, :]
    return acc


@triton.jit
def _streamed_dot(acc, g: tl.constexpr, a, scale_ptr, b, k, mk, w_ptr, j, j_ok, H, NEED: tl.constexpr,
                  HAS_SCALE: tl.constexpr, PREC: tl.constexpr):
    """acc + (a * scale_g) @ W_g^T over one K chunk k, for a gate g in NEED."""
    if (NEED >> g) & 1:
        if HAS_SCALE:
            s = tl.load(scale_ptr + b[:, None] * H + k[None, :], mask=mk, other=0.0, cache_modifier=".cg")
            a = a.to(s.dtype) * s
        acc = tl.dot(a.to(w_ptr.dtype.element_ty), _load_w(w_ptr, g, k, j, j_ok, H, False), acc,
                     input_precision=PREC)
    return acc


@triton.jit
def _streamed_pre(src_ptr, scale_ptr, rm_stride, w_ptr, bias_ptr, x_t, GH, b, b_ok, j, j_ok, H,
                  NG: tl.constexpr, NEED: tl.constexpr, XMASK: tl.constexpr, HAS_SCALE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                  CDT: tl.constexpr, PREC: tl.constexpr):
    """Per-step path: [x_g if g in XMASK] + (src * scale_g) @ W_g^T + b_hh[g] for the gates g in
    the bit set NEED (the others: x or 0), W_hh streamed from memory in BLOCK_K chunks. Each chunk
    of src is loaded once for all gates (once per gate before: sm_90, LSTM bf16 B256 H768, 4x the
    operand's L2 traffic)."""
    m = b_ok[:, None] & j_ok[None, :]
    p0 = _streamed_init(0, x_t, bias_ptr, GH, b, j, j_ok, m, H, NEED, XMASK, HAS_BIAS, BLOCK_B, BLOCK_H, CDT)
    p1 = p0
    p2 = p0
    p3 = p0
    if NG > 1:
        p1 = _streamed_init(1, x_t, bias_ptr, GH, b, j, j_ok, m, H, NEED, XMASK, HAS_BIAS, BLOCK_B, BLOCK_H, CDT)
        p2 = _streamed_init(2, x_t, bias_ptr, GH, b, j, j_ok, m, H, NEED, XMASK, HAS_BIAS, BLOCK_B, BLOCK_H, CDT)
    if NG > 3:
        p3 = _streamed_init(3, x_t, bias_ptr, GH, b, j, j_ok, m, H, NEED, XMASK, HAS_BIAS, BLOCK_B, BLOCK_H, CDT)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mk = b_ok[:, None] & (k < H)[None, :]
        a = tl.load(src_ptr + b[:, None] * H + k[None, :], mask=mk, other=0.0, cache_modifier=".cg")
        p0 = _streamed_dot(p0, 0, a, scale_ptr, b, k, mk, w_ptr, j, j_ok, H, NEED, HAS_SCALE, PREC)
        if NG > 1:
            p1 = _streamed_dot(p1, 1, a, scale_ptr + rm_stride, b, k, mk, w_ptr, j, j_ok, H, NEED, HAS_SCALE, PREC)
            p2 = _streamed_dot(p2, 2, a, scale_ptr + 2 * rm_stride, b, k, mk, w_ptr, j, j_ok, H, NEED, HAS_SCALE,
                               PREC)
        if NG > 3:
            p3 = _streamed_dot(p3, 3, a, scale_ptr + 3 * rm_stride, b, k, mk, w_ptr, j, j_ok, H, NEED, HAS_SCALE,
                               PREC)
    return p0, p1, p2, p3


@triton.jit
def _pre(src_ptr, scale_ptr, rm_stride, w_ptr, wa, wb, wc, xb, bias_ptr, x_t, GH, b, b_ok, j, j_ok, H,
         NG: tl.constexpr, NGP: tl.constexpr, NEED: tl.constexpr, XMASK: tl.constexpr, HAS_SCALE: tl.constexpr,
         HAS_BIAS: tl.constexpr, W_RESIDENT: tl.constexpr, SPLIT: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
         K3: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, CDT: tl.constexpr,
         PREC: tl.constexpr):
    """Gate pre-activations [x_g if g in XMASK] + (src * scale_g) @ W_g^T + b_hh[g] as four
    [BLOCK_B, BLOCK_H] tiles (gates NEED at least). The resident path computes all in one dot,
    its x and b_hh from xb (_x_rows: the gates a cell takes x in, whatever XMASK)."""
    if W_RESIDENT:
        acc = _fused_pre(src_ptr, scale_ptr, rm_stride, wa, wb, wc, xb, b, b_ok, H, NG, HAS_SCALE, SPLIT, K1, K2,
                         K3, BLOCK_H, BLOCK_B, CDT, PREC)
        p0, p1, p2, p3 = _split_gates(acc, NGP, BLOCK_H)
    else:
        p0, p1, p2, p3 = _streamed_pre(src_ptr, scale_ptr, rm_stride, w_ptr, bias_ptr, x_t, GH, b, b_ok, j, j_ok, H,
                                       NG, NEED, XMASK, HAS_SCALE, HAS_BIAS, BLOCK_B, BLOCK_H, BLOCK_K, CDT, PREC)
    return p0, p1, p2, p3


@triton.jit
def _step_valid(mask_ptr, t, B, b, b_ok, HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr):
    """(BLOCK_B, 1) bool: which of the rows b take step t (all of them without a mask)."""
    if HAS_MASK:
        return (tl.load(mask_ptr + t * B + b, mask=b_ok, other=0) != 0)[:, None]
    return tl.full((BLOCK_B, 1), 1, tl.int1)


@triton.jit
def _fwd_tile(P: tl.constexpr, t, hp, h_old, c_old, b, b_ok, j, j_ok,
              xg_ptr, w_ptr, wa, wb, wc, xb, bias_ptr, mask_ptr, rmask_ptr,
              out_ptr, gates_ptr, extra_ptr, scratch_ptr, B, H,
              KIND: tl.constexpr, NG: tl.constexpr, NGP: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
              RESET_AFTER: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
              HAS_RMASK: tl.constexpr, W_RESIDENT: tl.constexpr, SPLIT: tl.constexpr, K1: tl.constexpr,
              K2: tl.constexpr, K3: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
              BLOCK_K: tl.constexpr, PREC: tl.constexpr):
    """Phase P of step t for this program's batch rows b and units j, from the carried h_{t-1} /
    c_{t-1} tiles (h_old, c_old) and hp = all of h_{t-1}; on the resident path xb holds step t's
    x and b_hh (_x_rows). Returns the new (h, c) tiles."""
    CDT: tl.constexpr = gates_ptr.dtype.element_ty
    GH = NG * H
    m = b_ok[:, None] & j_ok[None, :]
    x_t = xg_ptr + t * B * GH
    g_t = gates_ptr + t * B * GH
    valid = _step_valid(mask_ptr, t, B, b, b_ok, HAS_MASK, BLOCK_B)
    rm_stride = B * H
    h = h_old
    c = c_old
    if KIND == 0:  # LSTM
        # the gates split before their activations: split after (to store them as gate rows, one
        # store) made Triton convert the matmul's sum twice (sm_90: 16 KB more shared traffic a step)
        pi, pf, pg, po = _pre(hp, rmask_ptr, rm_stride, w_ptr, wa, wb, wc, xb, bias_ptr, x_t, GH, b, b_ok,
                              j, j_ok, H, NG, NGP, 15, 15, HAS_RMASK, HAS_BIAS, W_RESIDENT, SPLIT, K1, K2, K3,
                              BLOCK_B, BLOCK_H, BLOCK_K, CDT, PREC)
        i = tl.where(valid, _act(pi, RACT), 0.0)
        f = tl.where(valid, _act(pf, RACT), 0.0)
        g = tl.where(valid, _act(pg, ACT), 0.0)
        o = tl.where(valid, _act(po, RACT), 0.0)
        _store(g_t + 0 * H, b, j, GH, m, i)
        _store(g_t + 1 * H, b, j, GH, m, f)
        _store(g_t + 2 * H, b, j, GH, m, g)
        _store(g_t + 3 * H, b, j, GH, m, o)
        c = tl.where(valid, f * c_old + i * g, c_old)
        h = tl.where(valid, o * _act(c, ACT), h_old)
        _store(extra_ptr + t * B * H, b, j, H, m, c)
        _store(out_ptr + t * B * H, b, j, H, m, h)
    elif KIND == 1:  # GRU
        if RESET_AFTER:  # hn = (h * rm_n) @ W_n^T + b_hn, gated by r after the matmul: xn apart
            pr, pz, hn, xn = _pre(hp, rmask_ptr, rm_stride, w_ptr, wa, wb, wc, xb, bias_ptr, x_t, GH, b, b_ok,
                                 j, j_ok, H, NG, NGP, 7, 3, HAS_RMASK, HAS_BIAS, W_RESIDENT, SPLIT, K1, K2, K3,
                                 BLOCK_B, BLOCK_H, BLOCK_K, CDT, PREC)
            if not W_RESIDENT:  # the resident xb carries xn in the spare 4th gate's rows (_x_rows)
                xn = _load(x_t + 2 * H, b, j, GH, m, CDT)
            r = tl.where(valid, _act(pr, RACT), 0.0)
            z = tl.where(valid, _act(pz, RACT), 0.0)
            n = tl.where(valid, _act(xn + r * hn, ACT), 0.0)
            h = tl.where(valid, (1.0 - z) * n + z * h_old, h_old)
            _store(g_t + 0 * H, b, j, GH, m, r)
            _store(g_t + 1 * H, b, j, GH, m, z)
            _store(g_t + 2 * H, b, j, GH, m, n)
            _store(extra_ptr + t * B * H, b, j, H, m, tl.where(valid, hn, 0.0))
            _store(out_ptr + t * B * H, b, j, H, m, h)
        elif P == 1:  # r and z from h; publish r * h (* rm_n) for the n-gate matmul of phase 2
            pr, pz, _, _ = _pre(hp, rmask_ptr, rm_stride, w_ptr, wa, wb, wc, xb, bias_ptr, x_t, GH, b, b_ok,
                                j, j_ok, H, NG, NGP, 3, 3, HAS_RMASK, HAS_BIAS, W_RESIDENT, SPLIT, K1, K2, K3,
                                BLOCK_B, BLOCK_H, BLOCK_K, CDT, PREC)
            r = tl.where(valid, _act(pr, RACT), 0.0)
            s = r * h_old
            if HAS_RMASK:
                s = s * _load(rmask_ptr + 2 * rm_stride, b, j, H, m, CDT)
            _store(g_t + 0 * H, b, j, GH, m, r)
            _store(g_t + 1 * H, b, j, GH, m, tl.where(valid, _act(pz, RACT), 0.0))
            _store(scratch_ptr, b, j, H, m, s)
        else:  # phase 2: n = act(xn + (r * h * rm_n) @ W_n^T + b_hn), the operand from scratch
            z = _load(g_t + 1 * H, b, j, GH, m, CDT)
            _, _, pn, _ = _pre(scratch_ptr, scratch_ptr, 0, w_ptr, wa, wb, wc, xb, bias_ptr, x_t, GH, b, b_ok,
                               j, j_ok, H, NG, NGP, 4, 4, False, HAS_BIAS, W_RESIDENT, SPLIT, K1, K2, K3,
                               BLOCK_B, BLOCK_H, BLOCK_K, CDT, PREC)
            n = tl.where(valid, _act(pn, ACT), 0.0)
            h = tl.where(valid, (1.0 - z) * n + z * h_old, h_old)
            _store(g_t + 2 * H, b, j, GH, m, n)
            _store(out_ptr + t * B * H, b, j, H, m, h)
    else:  # SimpleRNN
        p, _, _, _ = _pre(hp, rmask_ptr, rm_stride, w_ptr, wa, wb, wc, xb, bias_ptr, x_t, GH, b, b_ok, j,
                          j_ok, H, NG, NGP, 1, 1, HAS_RMASK, HAS_BIAS, W_RESIDENT, SPLIT, K1, K2, K3, BLOCK_B,
                          BLOCK_H, BLOCK_K, CDT, PREC)
        a = _act(p, ACT)
        h = tl.where(valid, a, h_old)
        _store(g_t, b, j, GH, m, tl.where(valid, a, 0.0))
        _store(out_ptr + t * B * H, b, j, H, m, h)
    return h, c


@triton.jit
def _x_rows(xg_ptr, step, step_end, T, B, H, bias_rows, b, b_ok, j0, KIND: tl.constexpr, NG: tl.constexpr,
            NGP: tl.constexpr, RESET_AFTER: tl.constexpr, REVERSE: tl.constexpr, BLOCK_H: tl.constexpr):
    """x + b_hh of forward-order step `step` in the gate rows of the resident dot, [NGP*BLOCK_H, BB]
    in CDT (x is 0 from step_end on). The persistent forward loads it a step ahead, before the grid
    barrier, whose wait covers its latency. GRU reset_after adds x_n after the reset gate: gate n's
    rows hold b_hn only and the spare 4th gate's rows hold x_n."""
    t, _ = _times(step, T, REVERSE)
    r = tl.arange(0, NGP * BLOCK_H)
    g = r // BLOCK_H
    j = j0 + r % BLOCK_H
    if KIND == 1 and RESET_AFTER:
        src = tl.where(g == 3, 2, g)
        ok = (g != 2) & (j < H)
    else:
        src = g
        ok = (g < NG) & (j < H)
    GH = NG * H
    m = ok[:, None] & (b_ok & (tl.full(b_ok.shape, step, tl.int32) < step_end))[None, :]
    x = tl.load(xg_ptr + t * B * GH + b[None, :] * GH + (src * H + j)[:, None], mask=m, other=0.0)
    return x.to(bias_rows.dtype) + bias_rows[:, None]


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
    RESET_AFTER: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr,  # REVERSE 0, 1 or BOTH
    HAS_MASK: tl.constexpr, HAS_RMASK: tl.constexpr,
    TWO_PHASE: tl.constexpr,  # GRU reset_after=False
    PHASE: tl.constexpr,      # 0: every phase of each step; 1 / 2: only that phase
    SYNC: tl.constexpr,       # grid barrier between phases (persistent multi-program launch)
    W_RESIDENT: tl.constexpr,  # persistent: W_hh rows loaded once, one split-K dot for all gates
    NGP: tl.constexpr,        # G rounded up to a power of two (gate rows per unit in that dot)
    SPLIT: tl.constexpr,      # K split of that dot = num_warps
    K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,  # its K pieces (0: absent), sum >= H
    W_REG: tl.constexpr,      # keep the W_hh rows in registers (tensor-core dtypes)
    BLOCK_B: tl.constexpr,    # batch rows of this program (grid[1] * BLOCK_B >= B: one tile each)
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,    # K chunk of the streamed (per-step) matmul
    PREC: tl.constexpr,
):
    CDT: tl.constexpr = gates_ptr.dtype.element_ty
    if REVERSE == BOTH:
        xg_ptr = _direction(xg_ptr, T * B * NG * H)
        bias_ptr = _direction(bias_ptr, NG * H)
        w_ptr, h0_ptr, c0_ptr, rmask_ptr, out_ptr, gates_ptr, extra_ptr, scratch_ptr, sync_ptr = _directions(
            w_ptr, h0_ptr, c0_ptr, rmask_ptr, out_ptr, gates_ptr, extra_ptr, scratch_ptr, sync_ptr, T, B, H, NG)
    n_prog = tl.num_programs(0) * tl.num_programs(1)
    j0 = tl.program_id(0) * BLOCK_H
    j = j0 + tl.arange(0, BLOCK_H)
    j_ok = j < H
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    m = b_ok[:, None] & j_ok[None, :]
    if W_RESIDENT:
        row, row_ok = _gate_rows(j0, H, NG, NGP, BLOCK_H)
        wa = _w_piece(w_ptr, row, row_ok, H, H, 0, SPLIT, K1 // SPLIT, W_REG, False)
        wb = _w_piece(w_ptr, row, row_ok, H, H, K1, SPLIT, K2 // SPLIT, W_REG, False)
        wc = _w_piece(w_ptr, row, row_ok, H, H, K1 + K2, SPLIT, K3 // SPLIT, W_REG, False)
        if HAS_BIAS:
            bias_rows = tl.load(bias_ptr + row, mask=row_ok, other=0.0).to(CDT)
        else:
            bias_rows = tl.zeros((NGP * BLOCK_H,), CDT)
    else:
        wa = 0
        wb = 0
        wc = 0
        bias_rows = 0
    # the carried state of this program's tile: h_{t-1} and c_{t-1} of the first step, then kept
    t0, tp0 = _times(step_begin, T, REVERSE)
    h_st = h0_ptr
    c_st = c0_ptr
    if step_begin > 0:
        h_st = out_ptr + tp0 * B * H
        c_st = extra_ptr + tp0 * B * H
    h = _load(h_st, b, j, H, m, CDT)
    c = tl.zeros((BLOCK_B, BLOCK_H), CDT)
    if KIND == 0:
        c = _load(c_st, b, j, H, m, CDT)
    xb = 0
    if W_RESIDENT:
        xb = _x_rows(xg_ptr, step_begin, step_end, T, B, H, bias_rows, b, b_ok, j0, KIND, NG, NGP, RESET_AFTER,
                     REVERSE, BLOCK_H)
    arrived = 0
    live = 1  # 0 once a barrier timed out: the rest of the launch does nothing (the host raises)
    for step in range(step_begin, step_end):
        t, tp = _times(step, T, REVERSE)
        hp = out_ptr + tp * B * H
        if step == 0:
            hp = h0_ptr
        if PHASE != 2:
            if live != 0:
                h, c = _fwd_tile(1, t, hp, h, c, b, b_ok, j, j_ok, xg_ptr, w_ptr, wa, wb, wc, xb, bias_ptr,
                                 mask_ptr, rmask_ptr, out_ptr, gates_ptr, extra_ptr, scratch_ptr, B, H, KIND, NG, NGP,
                                 ACT, RACT, RESET_AFTER, HAS_BIAS, HAS_MASK, HAS_RMASK, W_RESIDENT, SPLIT, K1, K2, K3,
                                 BLOCK_B, BLOCK_H, BLOCK_K, PREC)
            if W_RESIDENT:  # outside the `live` test: a load after an abort is harmless
                if not TWO_PHASE:  # the next step's x, before the barrier
                    xb = _x_rows(xg_ptr, step + 1, step_end, T, B, H, bias_rows, b, b_ok, j0, KIND, NG, NGP,
                                 RESET_AFTER, REVERSE, BLOCK_H)
            if live != 0:
                arrived += n_prog
                live = _barrier(sync_ptr, arrived, spin_cap, live, SYNC)
        if TWO_PHASE:
            if PHASE != 1:
                if live != 0:
                    h, c = _fwd_tile(2, t, hp, h, c, b, b_ok, j, j_ok, xg_ptr, w_ptr, wa, wb, wc, xb,
                                     bias_ptr, mask_ptr, rmask_ptr, out_ptr, gates_ptr, extra_ptr, scratch_ptr, B, H,
                                     KIND, NG, NGP, ACT, RACT, RESET_AFTER, HAS_BIAS, HAS_MASK, HAS_RMASK, W_RESIDENT,
                                     SPLIT, K1, K2, K3, BLOCK_B, BLOCK_H, BLOCK_K, PREC)
                if W_RESIDENT:
                    xb = _x_rows(xg_ptr, step + 1, step_end, T, B, H, bias_rows, b, b_ok, j0, KIND, NG, NGP,
                                 RESET_AFTER, REVERSE, BLOCK_H)
                if live != 0:
                    arrived += n_prog
                    live = _barrier(sync_ptr, arrived, spin_cap, live, SYNC)


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _bwd_tile(P: tl.constexpr, t, hp, cp, b0, j, j_ok, w_ptr, mask_ptr, rmask_ptr, gates_ptr, extra_ptr, dout_ptr,
              dxg_ptr, dh_ptr, dc_ptr, scratch_ptr, xchg_ptr, B, H,
              KIND: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
              RESET_AFTER: tl.constexpr, HAS_MASK: tl.constexpr, HAS_RMASK: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr):
    """Per-step phase P (1 dgates, 2 GRU reset_after=False dr, 3 dh_prev) of step t, rows
    [b0, b0+BLOCK_B). The dh matmuls read the dgates from xchg (I/O dtype, written by phase 1 as
    in the persistent path): a half-precision operand the MMAs take from shared memory as loaded,
    where fp32 dxg went through registers to be rounded (sm_90, LSTM bf16 B256 H768: 835 KB of
    shared loads a step)."""
    CDT: tl.constexpr = dxg_ptr.dtype.element_ty
    GH = NG * H
    b = b0 + tl.arange(0, BLOCK_B)
    b_ok = b < B
    m = b_ok[:, None] & j_ok[None, :]
    g_t = gates_ptr + t * B * GH
    d_t = dxg_ptr + t * B * GH
    rm_stride = B * H
    zero = tl.zeros((BLOCK_B, BLOCK_H), CDT)
    valid = _step_valid(mask_ptr, t, B, b, b_ok, HAS_MASK, BLOCK_B)
    # dh: gradient reaching h_t = upstream dout[t] + what step t+1 sent back (own units only)
    dh = _load(dout_ptr + t * B * H, b, j, H, m, CDT) + _load(dh_ptr, b, j, H, m, CDT)
    if P == 1:
        dc = zero
        if KIND == 0:
            dc = _load(dc_ptr, b, j, H, m, CDT)
        dc, _, _, _, _ = _bwd_dgates(t, hp, cp, dh, dc, b, b_ok, j, j_ok, mask_ptr, gates_ptr, extra_ptr, dxg_ptr,
                                     xchg_ptr, B, H, KIND, NG, ACT, RACT, RESET_AFTER, HAS_MASK, BLOCK_B, True)
        if KIND == 0:
            _store(dc_ptr, b, j, H, m, dc)
    elif P == 2:  # GRU reset_after=False: u = r * h * rm_n feeds u @ W_n^T; du = dn_pre @ W_n
        du = _rec(zero, xchg_ptr + 2 * H, GH, w_ptr, 2, b, b_ok, j, j_ok, H, BLOCK_K, PREC)
        hr = _load(hp, b, j, H, m, CDT)
        if HAS_RMASK:
            hr = hr * _load(rmask_ptr + 2 * rm_stride, b, j, H, m, CDT)
        r = _load(g_t + 0 * H, b, j, GH, m, CDT)
        dr = tl.where(valid, du * hr * _dact(r, RACT), 0.0)
        _store(d_t + 0 * H, b, j, GH, m, dr)
        _store(xchg_ptr + 0 * H, b, j, GH, m, dr)
        _store(scratch_ptr, b, j, H, m, du)
    else:  # P == 3: dh_prev = sum_g (dgates_g @ W_g) * rm_g (+ direct GRU terms), all of xchg
        acc = zero
        for g in tl.static_range(NG):
            if KIND == 1 and g == 2 and not RESET_AFTER:  # through u = r * h * rm_n, du from phase 2
                part = _load(scratch_ptr, b, j, H, m, CDT) * _load(g_t + 0 * H, b, j, GH, m, CDT)
            else:  # GRU reset_after's n rows hold d(hn) = dn_pre * r (_bwd_dgates)
                part = _rec(zero, xchg_ptr + g * H, GH, w_ptr, g, b, b_ok, j, j_ok, H, BLOCK_K, PREC)
            if HAS_RMASK:
                part = part * _load(rmask_ptr + g * rm_stride, b, j, H, m, CDT)
            acc += part
        if KIND == 1:
            acc += dh * _load(g_t + 1 * H, b, j, GH, m, CDT)
        _store(dh_ptr, b, j, H, m, tl.where(valid, acc, dh))


@triton.jit
def _bwd_mm(src_ptr, wa, wb, wc, b, b_ok, GH, lo, hi, SPLIT: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
            K3: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_B: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr):
    """[BLOCK_B, BLOCK_H]: sum over the gate rows r in [lo, hi) of dgates[b, r] * W_hh[r, j], one
    split-K dot with this program's units as M (W_hh^T rows wa/wb/wc) and the exchanged dgates
    (B, G*H) as the [K, BB] operand."""
    acc = _split_k_mm(tl.zeros((SPLIT, BLOCK_H, BLOCK_B), CDT), wa, wb, wc, src_ptr, src_ptr, b, b_ok, GH, lo, hi,
                      False, K1, K2, K3, PREC)
    return tl.trans(_sum_split(acc))


@triton.jit
def _bwd_dgates(t, hp, cp, dh, dc, b, b_ok, j, j_ok, mask_ptr, gates_ptr, extra_ptr, dxg_ptr, xchg_ptr, B, H,
                KIND: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
                RESET_AFTER: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, XCHG: tl.constexpr):
    """Phase 1 of step t (both paths) from dh (upstream dout[t] included) and the dc carry:
    this program's dgates, stored in dxg[t] (CDT) and, with XCHG, in the exchange buffer (I/O
    dtype). Returns the new dc carry and the dh matmul's operand of each gate slot, e0..e3 (0 where
    a cell has no such gate; GRU reset_after's n slot is dn * r; GRU reset_after=False's r slot is
    0 here, its dr comes in phase 2)."""
    CDT: tl.constexpr = dxg_ptr.dtype.element_ty
    GH = NG * H
    m = b_ok[:, None] & j_ok[None, :]
    g_t = gates_ptr + t * B * GH
    d_t = dxg_ptr + t * B * GH
    valid = _step_valid(mask_ptr, t, B, b, b_ok, HAS_MASK, BLOCK_B)
    if KIND == 0:  # LSTM
        i = _load(g_t + 0 * H, b, j, GH, m, CDT)
        f = _load(g_t + 1 * H, b, j, GH, m, CDT)
        g = _load(g_t + 2 * H, b, j, GH, m, CDT)
        o = _load(g_t + 3 * H, b, j, GH, m, CDT)
        ac = _act(_load(extra_ptr + t * B * H, b, j, H, m, CDT), ACT)
        c_old = _load(cp, b, j, H, m, CDT)
        dct = dc + dh * o * _dact(ac, ACT)
        di = tl.where(valid, dct * g * _dact(i, RACT), 0.0)
        df = tl.where(valid, dct * c_old * _dact(f, RACT), 0.0)
        dg = tl.where(valid, dct * i * _dact(g, ACT), 0.0)
        do = tl.where(valid, dh * ac * _dact(o, RACT), 0.0)
        for q in tl.static_range(1 + XCHG):
            dst = d_t
            if q == 1:
                dst = xchg_ptr
            _store(dst + 0 * H, b, j, GH, m, di)
            _store(dst + 1 * H, b, j, GH, m, df)
            _store(dst + 2 * H, b, j, GH, m, dg)
            _store(dst + 3 * H, b, j, GH, m, do)
        dc = tl.where(valid, dct * f, dc)
        e0, e1, e2, e3 = di, df, dg, do
    elif KIND == 1:  # GRU: h = (1 - z) n + z h_old
        z = _load(g_t + 1 * H, b, j, GH, m, CDT)
        n = _load(g_t + 2 * H, b, j, GH, m, CDT)
        h_old = _load(hp, b, j, H, m, CDT)
        dn = tl.where(valid, dh * (1.0 - z) * _dact(n, ACT), 0.0)
        dz = tl.where(valid, dh * (h_old - n) * _dact(z, RACT), 0.0)
        _store(d_t + 1 * H, b, j, GH, m, dz)
        _store(d_t + 2 * H, b, j, GH, m, dn)
        e0 = tl.zeros_like(dn)
        e1 = dz
        e2 = dn  # dr needs du = dn @ W_n of every unit: phase 2
        e3 = e0
        if RESET_AFTER:  # n = act(xn + r * hn): dr = dn * hn; hn's gradient dn * r feeds the matmul
            r = _load(g_t + 0 * H, b, j, GH, m, CDT)
            hn = _load(extra_ptr + t * B * H, b, j, H, m, CDT)
            e0 = tl.where(valid, dn * hn * _dact(r, RACT), 0.0)
            e2 = dn * r
            _store(d_t + 0 * H, b, j, GH, m, e0)
            if XCHG:
                _store(xchg_ptr + 0 * H, b, j, GH, m, e0)
        if XCHG:
            _store(xchg_ptr + 1 * H, b, j, GH, m, e1)
            _store(xchg_ptr + 2 * H, b, j, GH, m, e2)
    else:
        a = _load(g_t, b, j, GH, m, CDT)
        e0 = tl.where(valid, dh * _dact(a, ACT), 0.0)
        e1 = tl.zeros_like(e0)
        e2 = e1
        e3 = e1
        _store(d_t, b, j, GH, m, e0)
        if XCHG:
            _store(xchg_ptr, b, j, GH, m, e0)
    return dc, e0, e1, e2, e3


@triton.jit
def _w_cols(w_ptr, row, row_ok, H, m0, M: tl.constexpr, W_REG: tl.constexpr):
    """A operand [M, BLOCK_H] of the reduce-scatter backward: W[row[u], m0 + mm] (one gate's W_hh rows
    of this program's units, transposed: all units m as M), 0 outside; with W_REG in the MMA
    accumulator layout of the step's dots (identity dot, exact), which the compiler keeps in
    registers."""
    if M > 0:
        m = m0 + tl.arange(0, M)
        w = tl.load(w_ptr + row[None, :] * H + m[:, None], mask=row_ok[None, :] & (m < H)[:, None], other=0.0)
        if W_REG:
            n = tl.arange(0, row.shape[0])
            w = tl.dot(w, (n[:, None] == n[None, :]).to(w.dtype), out_dtype=tl.float32).to(w.dtype)
    else:
        w = 0
    return w


@triton.jit
def _w_gate(w_ptr, g, j, j_ok, H, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, W_REG: tl.constexpr):
    """Gate g's W_hh rows of units j as _w_cols operands over the pieces K1, K2, K3 of H."""
    row = g * H + j
    return (_w_cols(w_ptr, row, j_ok, H, 0, K1, W_REG), _w_cols(w_ptr, row, j_ok, H, K1, K2, W_REG),
            _w_cols(w_ptr, row, j_ok, H, K1 + K2, K3, W_REG))


@triton.jit
def _store_cg(ptrs, val, mask, ASM: tl.constexpr):
    """tl.store(ptrs, val, mask) of fp32 values, bypassing L1. ASM (compiled kernels): as inline PTX,
    which keeps val in the layout it has: tl.store would first move a dot's output into a
    coalesced layout through shared memory (sm_90, LSTM bf16 B16 H768 backward: 96 KB a step)."""
    if ASM:
        tl.static_assert(val.dtype == tl.float32)
        tl.inline_asm_elementwise("{\n.reg .pred %rs_p;\nsetp.ne.b32 %rs_p, $3, 0;\n"
                                  "@%rs_p st.global.cg.f32 [$1], $2;\n}\nmov.b32 $0, 0;", "=r,l,r,r",
                                  [ptrs.to(tl.int64), val, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.store(ptrs, val, mask=mask, cache_modifier=".cg")


@triton.jit
def _rs_part(plane, w0, w1, w2, w3, d0, d1, d2, d3, m0, M: tl.constexpr, b_ok, H, NG: tl.constexpr,
             HP: tl.constexpr, PREC: tl.constexpr):
    """Store this program's partial dh of units [m0, m0 + M): sum over its gates g of
    w_g [M, BLOCK_H] @ d_g [BLOCK_H, BB] (one K = BLOCK_H dot a gate, chained), into the
    [BB, HP] partial-sum plane `plane` (its rows b_ok, units < H: what _rs_sum reads)."""
    if M > 0:
        acc = tl.dot(w0, d0, input_precision=PREC)
        if NG > 1:
            acc = tl.dot(w1, d1, acc, input_precision=PREC)
            acc = tl.dot(w2, d2, acc, input_precision=PREC)
        if NG > 3:
            acc = tl.dot(w3, d3, acc, input_precision=PREC)
        m = m0 + tl.arange(0, M)
        _store_cg(plane + tl.arange(0, acc.shape[1])[None, :] * HP + m[:, None], acc,
                  (m < H)[:, None] & b_ok[None, :], _ASM_STORES)


@triton.jit
def _rs_sum(base, j, m, CDT: tl.constexpr, REDUCE: tl.constexpr, HP: tl.constexpr):
    """[BB, BLOCK_H]: the sum of the REDUCE hidden programs' [BB, HP] partial-sum planes at `base`
    at this program's units j, in program order (bitwise reproducible). One independent load a
    plane (written by other programs: bypass L1), all in flight at once; the planes' constexpr
    stride keeps the addresses immediate offsets of one register (run-time strides spilled them)."""
    acc = tl.zeros(m.shape, CDT)
    off = tl.arange(0, m.shape[0])[:, None] * HP + j[None, :]
    for p in tl.static_range(REDUCE):
        acc += tl.load(base + p * m.shape[0] * HP + off, mask=m, other=0.0, cache_modifier=".cg")
    return acc


@triton.jit
def _bwd_persistent(w_ptr, h0_ptr, c0_ptr, mask_ptr, rmask_ptr, out_ptr, gates_ptr, extra_ptr, dout_ptr, dxg_ptr,
                    dh_ptr, dc_ptr, xchg_ptr, part_ptr, sync_ptr, spin_cap, T, B, H, step_begin, step_end,
                    KIND: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
                    RESET_AFTER: tl.constexpr, REVERSE: tl.constexpr, HAS_MASK: tl.constexpr,
                    HAS_RMASK: tl.constexpr, TWO_PHASE: tl.constexpr, SYNC: tl.constexpr, SPLIT: tl.constexpr,
                    K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, W_REG: tl.constexpr,
                    REDUCE: tl.constexpr, PHASE: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, PREC: tl.constexpr):
    """The persistent backward (module docstring): dh / dc carried in registers, ONE grid barrier
    per step (two for GRU reset_after=False). All-gather (REDUCE 0): W_hh^T rows of this program's
    units on chip, dgates exchanged through a double buffer (2, B, G*H) in the I/O dtype.
    Reduce-scatter (REDUCE > 0): W_hh rows of this program's gate rows on chip, partial sums of dh
    exchanged through a double buffer (2, n_pb, n_ph, BLOCK_B, K1+K2+K3) in CDT. PHASE 1 / 3 (one
    step a launch, SYNC off): only the part before / after the exchange, the kernel boundary being
    the barrier, so that the interpreter (programs one after another) can run several programs."""
    CDT: tl.constexpr = dxg_ptr.dtype.element_ty
    HP: tl.constexpr = K1 + K2 + K3  # reduce-scatter: H padded, the units of a partial-sum plane
    PLANE: tl.constexpr = BLOCK_B * HP
    GH = NG * H
    n_prog = tl.num_programs(0) * tl.num_programs(1)
    n_ph = tl.num_programs(0)
    j = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    j_ok = j < H
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    m = b_ok[:, None] & j_ok[None, :]
    tl.static_assert(PHASE == 0 or PHASE == 1 or PHASE == 3)
    tl.static_assert(PHASE == 0 or not TWO_PHASE)
    if REDUCE:
        tl.static_assert(not HAS_RMASK and not TWO_PHASE)  # per-gate scaling / a second exchange: all-gather
        w0 = _w_gate(w_ptr, 0, j, j_ok, H, K1, K2, K3, W_REG)
        w1 = w0
        w2 = w0
        w3 = w0
        if NG > 1:
            w1 = _w_gate(w_ptr, 1, j, j_ok, H, K1, K2, K3, W_REG)
            w2 = _w_gate(w_ptr, 2, j, j_ok, H, K1, K2, K3, W_REG)
        if NG > 3:
            w3 = _w_gate(w_ptr, 3, j, j_ok, H, K1, K2, K3, W_REG)
        wa = 0
        wb = 0
        wc = 0
    else:
        wa = _w_piece(w_ptr, j, j_ok, H, GH, 0, SPLIT, K1 // SPLIT, W_REG, True)
        wb = _w_piece(w_ptr, j, j_ok, H, GH, K1, SPLIT, K2 // SPLIT, W_REG, True)
        wc = _w_piece(w_ptr, j, j_ok, H, GH, K1 + K2, SPLIT, K3 // SPLIT, W_REG, True)
    dh = _load(dh_ptr, b, j, H, m, CDT)  # what reaches h_t from later steps (dout excluded)
    dc = tl.zeros((BLOCK_B, BLOCK_H), CDT)
    if KIND == 0:
        dc = _load(dc_ptr, b, j, H, m, CDT)
    rm_stride = B * H
    arrived = 0
    live = 1  # 0 once a barrier timed out: the rest of the launch does nothing (the host raises)
    for step in range(step_begin, step_end):
        if live != 0:
            fstep = T - 1 - step
            t, tp = _times(fstep, T, REVERSE)
            hp = out_ptr + tp * B * H
            cp = extra_ptr + tp * B * H
            if fstep == 0:
                hp = h0_ptr
                cp = c0_ptr
            # steps alternate between the two exchange buffers: a program still reading step s's
            # dgates holds back (at the next barrier) anyone who would overwrite them at step s + 2
            xg_s = xchg_ptr + (step % 2) * B * GH
            part_s = part_ptr + (tl.cast(step % 2, tl.int64) * tl.num_programs(1) + tl.program_id(1)) * n_ph * PLANE
            if PHASE != 3:
                dh = dh + _load(dout_ptr + t * B * H, b, j, H, m, CDT)
                dc, e0, e1, e2, e3 = _bwd_dgates(t, hp, cp, dh, dc, b, b_ok, j, j_ok, mask_ptr, gates_ptr, extra_ptr,
                                                 dxg_ptr, xg_s, B, H, KIND, NG, ACT, RACT, RESET_AFTER, HAS_MASK,
                                                 BLOCK_B, not REDUCE)
                if REDUCE:  # this program's gate rows times all of W_hh's columns: a partial dh of every unit
                    WDT: tl.constexpr = w_ptr.dtype.element_ty
                    d0 = tl.trans(e0).to(WDT)
                    d1 = tl.trans(e1).to(WDT)
                    d2 = tl.trans(e2).to(WDT)
                    d3 = tl.trans(e3).to(WDT)
                    plane = part_s + tl.program_id(0) * PLANE
                    _rs_part(plane, w0[0], w1[0], w2[0], w3[0], d0, d1, d2, d3, 0, K1, b_ok, H, NG, HP, PREC)
                    _rs_part(plane, w0[1], w1[1], w2[1], w3[1], d0, d1, d2, d3, K1, K2, b_ok, H, NG, HP, PREC)
                    _rs_part(plane, w0[2], w1[2], w2[2], w3[2], d0, d1, d2, d3, K1 + K2, K3, b_ok, H, NG, HP, PREC)
            # what the rest of the step needs besides the exchange: loaded before the barrier
            valid = _step_valid(mask_ptr, t, B, b, b_ok, HAS_MASK, BLOCK_B)
            if KIND == 1:
                r = _load(gates_ptr + t * B * GH, b, j, GH, m, CDT)
                z = _load(gates_ptr + t * B * GH + H, b, j, GH, m, CDT)
            arrived += n_prog
            live = _barrier(sync_ptr, arrived, spin_cap, live, SYNC)
            du = tl.zeros((BLOCK_B, BLOCK_H), CDT)
            n_mm = GH  # gate rows of the dh matmul: all, or r and z where du carries the n gate
            if TWO_PHASE:  # du = dn @ W_n (u = r * h * rm_n), dr = du * h * rm_n * r'
                n_mm = 2 * H
                if live != 0:
                    du = _bwd_mm(xg_s, wa, wb, wc, b, b_ok, GH, 2 * H, GH, SPLIT, K1, K2, K3, BLOCK_H, BLOCK_B,
                                 CDT, PREC)
                    hr = _load(hp, b, j, H, m, CDT)
                    if HAS_RMASK:
                        hr = hr * _load(rmask_ptr + 2 * rm_stride, b, j, H, m, CDT)
                    dr = tl.where(valid, du * hr * _dact(r, RACT), 0.0)
                    _store(dxg_ptr + t * B * GH, b, j, GH, m, dr)
                    _store(xg_s, b, j, GH, m, dr)
                    arrived += n_prog
                    live = _barrier(sync_ptr, arrived, spin_cap, live, SYNC)
            if live != 0 and PHASE != 1:
                if REDUCE:
                    acc = _rs_sum(part_s, j, m, CDT, REDUCE, HP)
                elif HAS_RMASK:  # dropout scales each gate's part per unit: one dot per gate
                    acc = tl.zeros((BLOCK_B, BLOCK_H), CDT)
                    for g in tl.static_range(NG):
                        if not (TWO_PHASE and g == 2):
                            part = _bwd_mm(xg_s, wa, wb, wc, b, b_ok, GH, g * H, (g + 1) * H, SPLIT, K1, K2, K3,
                                           BLOCK_H, BLOCK_B, CDT, PREC)
                            acc += part * _load(rmask_ptr + g * rm_stride, b, j, H, m, CDT)
                else:
                    acc = _bwd_mm(xg_s, wa, wb, wc, b, b_ok, GH, 0, n_mm, SPLIT, K1, K2, K3, BLOCK_H, BLOCK_B,
                                  CDT, PREC)
                if KIND == 1:
                    acc += dh * z
                    if TWO_PHASE:
                        dun = du * r
                        if HAS_RMASK:
                            dun = dun * _load(rmask_ptr + 2 * rm_stride, b, j, H, m, CDT)
                        acc += dun
                dh = tl.where(valid, acc, dh)
    _store(dh_ptr, b, j, H, m, dh)
    if KIND == 0:
        _store(dc_ptr, b, j, H, m, dc)


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
    scratch_ptr,  # (B, H) CDT: du of GRU reset_after=False (per-step path)
    xchg_ptr,     # (2, B, G*H) I/O dtype: the dgates exchange (the per-step path uses the first half)
    part_ptr,     # (2, n_pb, n_ph, BLOCK_B, K1+K2+K3) CDT: partial sums of dh (REDUCE only)
    sync_ptr,     # int32 (STATUS_WORDS,) barrier status of barrier.py, zero at launch (SYNC only)
    spin_cap,     # polls of a barrier wait before the launch is aborted (SYNC only)
    T, B, H,
    step_begin, step_end,  # backward steps done by this launch: step k handles forward step T-1-k
    KIND: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
    RESET_AFTER: tl.constexpr, REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_RMASK: tl.constexpr,
    TWO_PHASE: tl.constexpr,  # GRU reset_after=False: the extra phase 2
    PHASE: tl.constexpr,      # 0: all phases of each step; 1 / 2 / 3: only that phase (per step)
    SYNC: tl.constexpr,
    W_RESIDENT: tl.constexpr,  # persistent: _bwd_persistent (W_hh^T rows on chip, split-K dot)
    SPLIT: tl.constexpr,      # K split of its dot = num_warps
    K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,  # its K pieces over the G*H gate rows
    W_REG: tl.constexpr,      # W_hh^T rows in registers (tensor-core dtypes)
    REDUCE: tl.constexpr,     # persistent: reduce-scatter exchange (= grid[0], the hidden programs) or 0
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
):
    if REVERSE == BOTH:
        w_ptr, h0_ptr, c0_ptr, rmask_ptr, out_ptr, gates_ptr, extra_ptr, scratch_ptr, sync_ptr = _directions(
            w_ptr, h0_ptr, c0_ptr, rmask_ptr, out_ptr, gates_ptr, extra_ptr, scratch_ptr, sync_ptr, T, B, H, NG)
        dout_ptr = _direction(dout_ptr, T * B * H)
        dxg_ptr = _direction(dxg_ptr, T * B * NG * H)
        dh_ptr = _direction(dh_ptr, B * H)
        dc_ptr = _direction(dc_ptr, B * H)
        xchg_ptr = _direction(xchg_ptr, 2 * B * NG * H)
        part_ptr = _direction(part_ptr, 2 * tl.num_programs(0) * tl.num_programs(1) * BLOCK_B * (K1 + K2 + K3))
    if W_RESIDENT:
        _bwd_persistent(w_ptr, h0_ptr, c0_ptr, mask_ptr, rmask_ptr, out_ptr, gates_ptr, extra_ptr, dout_ptr, dxg_ptr,
                        dh_ptr, dc_ptr, xchg_ptr, part_ptr, sync_ptr, spin_cap, T, B, H, step_begin, step_end, KIND,
                        NG, ACT, RACT, RESET_AFTER, REVERSE, HAS_MASK, HAS_RMASK, TWO_PHASE, SYNC, SPLIT, K1, K2, K3,
                        W_REG, REDUCE, PHASE, BLOCK_B, BLOCK_H, PREC)
    else:  # per step: one launch per step and phase, W_hh streamed, dgates exchanged through xchg
        pid_b = tl.program_id(1)
        n_pb = tl.num_programs(1)
        j = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
        j_ok = j < H
        for step in range(step_begin, step_end):
            fstep = T - 1 - step
            t, tp = _times(fstep, T, REVERSE)
            hp = out_ptr + tp * B * H
            cp = extra_ptr + tp * B * H
            if fstep == 0:
                hp = h0_ptr
                cp = c0_ptr
            for P in tl.static_range(1, 4):
                if (P != 2 or TWO_PHASE) and PHASE == P:
                    for b0 in range(pid_b * BLOCK_B, B, n_pb * BLOCK_B):
                        _bwd_tile(P, t, hp, cp, b0, j, j_ok, w_ptr, mask_ptr, rmask_ptr, gates_ptr, extra_ptr,
                                  dout_ptr, dxg_ptr, dh_ptr, dc_ptr, scratch_ptr, xchg_ptr, B, H, KIND, NG, ACT,
                                  RACT, RESET_AFTER, HAS_MASK, HAS_RMASK, BLOCK_B, BLOCK_H, BLOCK_K, PREC)
