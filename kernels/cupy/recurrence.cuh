// Shared device code of the persistent CuPy recurrence kernels (forward.cu, backward.cu).
//
// Legend: T steps, B batch, H hidden units, G gates (LSTM 4: i f g o; GRU 3: r z n; RNN 1: h),
// GH = G*H. Tensors are row-major and contiguous:
//   xg (T, B, GH)   w_hh (GH, H)   b_hh (GH)   h0 / c0 (B, H)   mask (T, B) uint8
//   rec_mask (G, B, H) in the accumulation type   out (T, B, H)   gates / extra (T, B, GH / H)
//
// Work split: block `blk` owns the hidden units [blk*U, blk*U + nu) of every gate for the whole
// sequence and keeps the matching W_hh rows (forward) or columns (backward) in shared memory.
// Each step a block stages the rows of the exchanged vector (h_{t-1} forward, the gate-gradient
// vector backward, both in the storage type) for a tile of BB batch rows into shared memory
// (stage_tile: 16-byte loads, each thread's issued together), and one warp computes the dot
// products of one owned unit with ROWS batch rows (lanes stride over the reduction axis, then a
// shuffle reduction). The exchange itself goes through global memory (L2) and a grid barrier.
//
// MMA (tensor cores, sm_80+; bf16 / fp16, and fp32 as tf32 when the caller allows it): the same
// phases, but the staged rows are kept in the storage type and each warp computes, for one 8-unit
// tile and one k split, the 16 x 8 tiles (16 batch rows x 8 weight rows) of every gate with
// mma.sync and fp32 accumulation (MmaSplit, mma_gates: a staged fragment serves all gates), its
// weight fragments held in registers for the whole sequence (WFrags); the tiles' k-split partial
// sums go through a shared result buffer to the same per-(row, unit) epilogue. Rows are padded so
// that every fragment load is one aligned 32-bit word and the 8 row groups of a warp hit 32
// distinct banks.
//
// No CUDA headers beyond cooperative_groups.h are needed, so the sources compile under NVRTC
// (CuPy) without the toolkit's fp16/bf16 headers: 16-bit floats are handled as raw bits.
#pragma once

// FRNN_HOST_EMULATION: tests/test_cupy.py compiles these kernels as plain C++ with a shim that
// runs every CUDA thread as a host thread (CPU-only CI checks the index arithmetic and barriers).
#if !defined(FRNN_ATOMIC_BARRIER) && !defined(FRNN_HOST_EMULATION)
#include <cooperative_groups.h>
#endif

namespace frnn {

enum Kind { LSTM = 0, GRU = 1, RNN = 2 };
enum Act { TANH = 0, RELU = 1, SIGMOID = 2, HARD_SIGMOID = 3, LINEAR = 4 };

template <int KIND>
struct Gates {
    static constexpr int value = KIND == LSTM ? 4 : (KIND == GRU ? 3 : 1);
};

// ---------------------------------------------------------------------------------------------
// 16-bit storage types (raw bits) and the accumulation type of every storage type
struct bf16 {
    unsigned short bits;
};
struct f16 {
    unsigned short bits;
};

template <typename T>
struct Acc {
    using type = float;
};
template <>
struct Acc<double> {
    using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(bf16 v) { return __uint_as_float(((unsigned)v.bits) << 16); }
__device__ __forceinline__ float to_acc(f16 v) {
#ifdef FRNN_HOST_EMULATION
    return frnn_emu_half_to_float(v.bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
#endif
}

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ bf16 from_acc<bf16>(float v) {
    // round to nearest even; NaN stays a (quiet) NaN
    unsigned u = __float_as_uint(v);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (unsigned short)((u >> 16) | 0x40u);
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
        r.bits = (unsigned short)(u >> 16);
    }
    return r;
}
template <>
__device__ __forceinline__ f16 from_acc<f16>(float v) {
    f16 r;
#ifdef FRNN_HOST_EMULATION
    r.bits = frnn_emu_float_to_half(v);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
#endif
    return r;
}

template <typename T>
struct IsFloat {
    static constexpr bool value = false;
};
template <>
struct IsFloat<float> {
    static constexpr bool value = true;
};

// fp32 -> tf32 (10-bit mantissa), round to nearest with ties away from zero like cvt.rna.tf32.f32;
// the result stays a float whose low 13 bits are zero. Inf and NaN pass unchanged.
__device__ __forceinline__ float round_tf32(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    return __uint_as_float(u);
}

// An MMA operand in the storage type: the 16-bit types as they are, fp32 rounded to tf32.
template <typename T>
__device__ __forceinline__ T mma_operand(acc_t<T> v) {
    if constexpr (IsFloat<T>::value) {
        return round_tf32(v);
    } else {
        return from_acc<T>(v);
    }
}

// Loads of data that other blocks wrote during this launch: bypass L1 (ld.global.cg), so that a
// line cached before the grid barrier is never reused after it.
__device__ __forceinline__ float load_cg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ double load_cg(const double* p) { return __ldcg(p); }
__device__ __forceinline__ float load_cg(const bf16* p) {
    bf16 v;
    v.bits = __ldcg(reinterpret_cast<const unsigned short*>(p));
    return to_acc(v);
}
__device__ __forceinline__ float load_cg(const f16* p) {
    f16 v;
    v.bits = __ldcg(reinterpret_cast<const unsigned short*>(p));
    return to_acc(v);
}

// The same loads keeping the storage type (16-bit floats as raw bits): stage_tile's single elements.
template <typename S>
__device__ __forceinline__ S load_raw_cg(const S* p) {
#ifdef FRNN_HOST_EMULATION
    frnn_emu_single_load();  // counted: the tests check which form of stage_tile ran
#endif
    if constexpr (sizeof(S) == 2) {
        S v;
        v.bits = __ldcg(reinterpret_cast<const unsigned short*>(p));
        return v;
    } else {
        return __ldcg(p);
    }
}

// ---------------------------------------------------------------------------------------------
// 16-byte vector access: Vec16 is 16 bytes as four 32-bit words; vec_get<S>(v, e) is its element
// e of type S (16 / sizeof(S) per vector). The addresses must be 16-byte aligned (4 * NW bytes for
// store_words<NW>); the host emulation checks it.
struct Vec16 {
    unsigned w[4];
};

template <bool C, typename X, typename Y>
struct Pick {
    using type = X;
};
template <typename X, typename Y>
struct Pick<false, X, Y> {
    using type = Y;
};
template <typename X, typename Y>
struct Same {
    static constexpr bool value = false;
};
template <typename X>
struct Same<X, X> {
    static constexpr bool value = true;
};
template <bool B>
struct Bool {
    static constexpr bool value = B;
};
template <int I>
struct Int {
    static constexpr int value = I;
};
// f(Int<0>{}), ..., f(Int<N - 1>{}): an unrolled loop with a compile-time index
template <int N, int I = 0, typename F>
__device__ __forceinline__ void static_for(F&& f) {
    if constexpr (I < N) {
        f(Int<I>{});
        static_for<N, I + 1>(f);
    }
}

// 16 bytes from global memory. CG: data written by other blocks during this launch, so L2 only
// (ld.global.cg, like load_cg); otherwise data no thread writes during the launch (read-only path).
template <bool CG>
__device__ __forceinline__ Vec16 load16(const void* p) {
    Vec16 v;
#ifdef FRNN_HOST_EMULATION
    frnn_emu_load16(p, v.w);
#else
    const uint4* q = reinterpret_cast<const uint4*>(p);
    const uint4 u = CG ? __ldcg(q) : __ldg(q);
    v.w[0] = u.x;
    v.w[1] = u.y;
    v.w[2] = u.z;
    v.w[3] = u.w;
#endif
    return v;
}

// NW (1, 2 or 4) words to p in shared memory, 4 * NW-byte aligned. Written as one st.shared.v4 /
// v2 in PTX: through a uint4 pointer NVVM splits most such stores into 32-bit ones.
template <int NW>
__device__ __forceinline__ void store_words(void* p, const unsigned* w) {
#ifdef FRNN_HOST_EMULATION
    frnn_emu_store(p, w, NW);
#else
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    if constexpr (NW == 4) {
        asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(a), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
                     : "memory");
    } else if constexpr (NW == 2) {
        asm volatile("st.shared.v2.b32 [%0], {%1, %2};" ::"r"(a), "r"(w[0]), "r"(w[1]) : "memory");
    } else {
        asm volatile("st.shared.b32 [%0], %1;" ::"r"(a), "r"(w[0]) : "memory");
    }
#endif
}

__device__ __forceinline__ double double_from_words(unsigned lo, unsigned hi) {
#ifdef FRNN_HOST_EMULATION
    const unsigned long long u = ((unsigned long long)hi << 32) | lo;
    double d;
    std::memcpy(&d, &u, 8);
    return d;
#else
    return __hiloint2double((int)hi, (int)lo);
#endif
}
__device__ __forceinline__ void double_to_words(double d, unsigned& lo, unsigned& hi) {
#ifdef FRNN_HOST_EMULATION
    unsigned long long u;
    std::memcpy(&u, &d, 8);
    lo = (unsigned)u;
    hi = (unsigned)(u >> 32);
#else
    lo = (unsigned)__double2loint(d);
    hi = (unsigned)__double2hiint(d);
#endif
}

template <typename S>
__device__ __forceinline__ S vec_get(const Vec16& v, int e) {
    if constexpr (sizeof(S) == 2) {
        S r;
        r.bits = (unsigned short)(v.w[e >> 1] >> ((e & 1) * 16));
        return r;
    } else if constexpr (sizeof(S) == 4) {
        return __uint_as_float(v.w[e]);
    } else {
        return double_from_words(v.w[2 * e], v.w[2 * e + 1]);
    }
}

// Store N consecutive elements of type D to p with the widest stores its alignment allows
// (ALIGNED: the caller guarantees 16 bytes, or 8 for an 8-byte run).
template <bool ALIGNED, typename D, int N>
__device__ __forceinline__ void store_run(D* p, const D (&d)[N]) {
    constexpr int BYTES = N * (int)sizeof(D);
    static_assert(BYTES % 8 == 0, "runs of whole 8-byte words");
    constexpr int W = BYTES % 16 == 0 ? 4 : 2;  // words per store
    const unsigned long long a = (unsigned long long)p;
    if (ALIGNED || (a & (4 * W - 1)) == 0) {
        unsigned w[BYTES / 4];
#pragma unroll
        for (int i = 0; i < BYTES / 4; ++i) {
            if constexpr (sizeof(D) == 2) {
                w[i] = (unsigned)d[2 * i].bits | ((unsigned)d[2 * i + 1].bits << 16);
            } else if constexpr (sizeof(D) == 4) {
                w[i] = __float_as_uint(d[i]);
            } else {
                unsigned lo, hi;
                double_to_words(d[i / 2], lo, hi);
                w[i] = (i & 1) ? hi : lo;
            }
        }
#pragma unroll
        for (int i = 0; i < BYTES / (4 * W); ++i)
            store_words<W>(reinterpret_cast<unsigned char*>(p) + 4 * W * i, w + W * i);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) p[i] = d[i];
    }
}

// ---------------------------------------------------------------------------------------------
// Activations. Every derivative is written in terms of the activation's OUTPUT y, which the
// forward pass saves (gates, and act(c) recomputed from the saved cell state).
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

template <int ACT, typename A>
__device__ __forceinline__ A activate(A x) {
    if constexpr (ACT == TANH) {
        return tanh_(x);
    } else if constexpr (ACT == RELU) {
        return x > A(0) ? x : A(0);
    } else if constexpr (ACT == SIGMOID) {
        return A(1) / (A(1) + exp_(-x));
    } else if constexpr (ACT == HARD_SIGMOID) {  // Keras 3: clip(x/6 + 1/2, 0, 1)
        const A y = x / A(6) + A(0.5);
        return y < A(0) ? A(0) : (y > A(1) ? A(1) : y);
    } else {
        return x;
    }
}

template <int ACT, typename A>
__device__ __forceinline__ A activate_grad(A y) {  // d act(x) / dx, from y = act(x)
    if constexpr (ACT == TANH) {
        return A(1) - y * y;
    } else if constexpr (ACT == RELU) {
        return y > A(0) ? A(1) : A(0);
    } else if constexpr (ACT == SIGMOID) {
        return y * (A(1) - y);
    } else if constexpr (ACT == HARD_SIGMOID) {
        return (y > A(0) && y < A(1)) ? A(1) / A(6) : A(0);
    } else {
        return A(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Grid-wide barrier between steps. Default: cooperative groups (the launch is cooperative).
// FRNN_ATOMIC_BARRIER: a counter in global memory (zeroed before the launch), for toolchains
// where cooperative_groups.h is not reachable; the launch is still cooperative, which is what
// guarantees that all blocks are co-resident.
__device__ __forceinline__ void grid_sync(unsigned* counter, unsigned& epoch) {
#ifdef FRNN_ATOMIC_BARRIER
    __syncthreads();
    if (threadIdx.x == 0) {
        ++epoch;
        const unsigned target = epoch * gridDim.x;
        __threadfence();  // release: this block's writes (ordered by __syncthreads) before arrival
        atomicAdd(counter, 1u);
        unsigned seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        } while (seen < target);
    }
    __syncthreads();
#else
    (void)counter;
    (void)epoch;
    cooperative_groups::this_grid().sync();
#endif
}

// ---------------------------------------------------------------------------------------------
// Both directions of a bidirectional layer in ONE launch: the grid is D (1 or 2) groups of blocks
// (cluster kernels: clusters), group d running direction d on its own tensors, which the host
// stacks on a leading dimension of D: every tensor but mask (T, B), which both read. Direction 1
// runs reversed relative to the launch's `reverse`. The groups never read each other's data (a
// grid barrier spans both: they step together). A kernel moves its tensor pointers to its group's
// direction with forward_direction / backward_direction (the same list for the grid-wide and the
// cluster kernel of a direction). Only kernels built for two (template DIRS = 2) do: the shifted
// pointers live in registers (about 20 more a thread), where a one-direction kernel reads its
// kernel parameters straight from the constant bank.
template <typename P>
__device__ __forceinline__ void shift(P& p, int d, size_t stride) {  // P keeps the parameter's __restrict__
    if (p) p += (size_t)d * stride;
}
// xg, w_hh, b_hh, h0, c0, rec_mask, out, hT, cT, gates, extra
template <int G, typename... P>
__device__ __forceinline__ void forward_direction(int d, int steps, int B, int H, P&... p) {
    static_assert(sizeof...(P) == 11, "the forward kernels' 11 direction tensors");
    const size_t BH = (size_t)B * H, TBH = (size_t)steps * BH;
    const size_t n[] = {G * TBH, (size_t)G * H * H, (size_t)G * H, BH, BH, G * BH, TBH, BH, BH, G * TBH, TBH};
    int i = 0;
    (shift(p, d, n[i++]), ...);
}
// w_hh, h0, c0, rec_mask, out, gates, extra, dout, dhT, dcT, dxg, dh0, dc0
template <int G, typename... P>
__device__ __forceinline__ void backward_direction(int d, int steps, int B, int H, P&... p) {
    static_assert(sizeof...(P) == 13, "the backward kernels' 13 direction tensors");
    const size_t BH = (size_t)B * H, TBH = (size_t)steps * BH;
    const size_t n[] = {(size_t)G * H * H, BH, BH, G * BH, TBH, G * TBH, TBH, TBH, BH, BH, G * TBH, BH, BH};
    int i = 0;
    (shift(p, d, n[i++]), ...);
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// f(b * H + j) for every batch row b and owned unit j in [j0, j0 + nu): the block's slice of a
// (B, H) state, spread over all threads.
template <int THREADS, typename F>
__device__ __forceinline__ void for_owned(int B, int H, int j0, int nu, F&& f) {
    for (int idx = threadIdx.x; idx < B * nu; idx += THREADS) f((idx / nu) * H + j0 + idx % nu);
}

// One warp: dot products of owned unit `jl` (all NG gates) with ROWS staged rows starting at
// `rb`. Weights: ws[(g*U + jl)*H + k] (gate stride U*H); staged rows: st[(gs*BB + row)*H + k]
// with gs = g when PER_GATE (one staged copy per gate) else 0. Rows past nb are clamped (their
// results are discarded by the caller). On return every lane holds the full sums.
template <int NG, int ROWS, bool PER_GATE, typename T, typename A>
__device__ __forceinline__ void tile_dot(A (&acc)[NG][ROWS], const T* ws, int U, int jl, const A* st,
                                         int BB, int rb, int nb, int H, int lane) {
    int row_off[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) row_off[r] = min(rb + r, nb - 1) * H;
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[g][r] = A(0);
    const T* w = ws + jl * H;
    const int gate_stride = U * H;
    const int stage_stride = BB * H;
    for (int k = lane; k < H; k += 32) {
        A wv[NG];
#pragma unroll
        for (int g = 0; g < NG; ++g) wv[g] = to_acc(w[g * gate_stride + k]);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            if constexpr (PER_GATE) {
#pragma unroll
                for (int g = 0; g < NG; ++g) acc[g][r] += wv[g] * st[g * stage_stride + row_off[r] + k];
            } else {
                const A hv = st[row_off[r] + k];
#pragma unroll
                for (int g = 0; g < NG; ++g) acc[g][r] += wv[g] * hv;
            }
        }
    }
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[g][r] = warp_sum(acc[g][r]);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core tiles. MMA shapes (PTX ISA "Matrix Fragments for mma.m16n8k16 / m16n8k8"): 16-bit
// inputs use m16n8k16 (two elements per 32-bit register), tf32 uses m16n8k8 (one per register).
// With E elements per register, K = 8 * E, g = lane / 4 and q = lane % 4, register i holds
//   A (16 x K, row-major):    row g + 8 * (i & 1),  columns E*q + 4*E*(i >> 1) + [0, E)
//   B (K x 8, column-major):  column g,  rows E*q + 4*E*i + [0, E)
//   D (16 x 8, fp32):         row g + 8 * (i >> 1), column 2*q + (i & 1)
template <typename T>
struct MmaShape {
    static constexpr int E = 4 / (int)sizeof(T);  // elements per 32-bit fragment register
    static constexpr int K = 8 * E;                // reduction depth of one mma
};
template <typename T>
struct MmaType;  // input type code of mma.sync: f16 0, bf16 1, tf32 2 (no MMA for double)
template <>
struct MmaType<f16> {
    static constexpr int code = 0;
};
template <>
struct MmaType<bf16> {
    static constexpr int code = 1;
};
template <>
struct MmaType<float> {
    static constexpr int code = 2;
};

template <typename T>
__device__ __forceinline__ void mma_16x8(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#ifdef FRNN_HOST_EMULATION
    frnn_emu_mma(MmaType<T>::code, d, a, b);
#else
    if constexpr (MmaType<T>::code == 2) {
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else if constexpr (MmaType<T>::code == 1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#endif
}

template <typename T>
__device__ __forceinline__ unsigned word_at(const T* p) {  // 4-byte aligned by the padding
    return *reinterpret_cast<const unsigned*>(p);
}

// The MMA schedule of a matvec phase: warp item (nt, ks) = 8-unit tile nt of every gate, k tiles
// ks, ks + ksplit, ... of the reduction; its warp loops over the batch's 16-row tiles itself, so
// a warp keeps one weight slice for the whole phase (and the whole sequence: WFrags). Items are
// warp, warp + NWARPS, ...: with ntg <= NWARPS each warp has at most one.
struct MmaSplit {
    int ntg, nk, ksplit;
    __device__ __forceinline__ int items() const { return ntg * ksplit; }
};
template <typename T, int NWARPS>
__device__ __forceinline__ MmaSplit mma_split(int nu, int H) {
    MmaSplit s;
    s.ntg = (nu + 7) / 8;
    s.nk = (H + MmaShape<T>::K - 1) / MmaShape<T>::K;
    s.ksplit = max(1, min(NWARPS / max(s.ntg, 1), s.nk));
    return s;
}

// The weight fragments of a warp's first MMA item held in registers for the whole sequence: the B
// fragments (2 words per gate and k tile) of its first RF k tiles; the rest are read from shared
// memory. RF = 0: none.
template <typename T, int NG, int RF>
struct WFrags {
    unsigned b[RF > 0 ? RF : 1][NG][2];
};

// The register budget for the weight fragments of one matvec (48 words a thread): LSTM 6 k tiles,
// GRU 8, SimpleRNN 24 (at H = 768 bf16 and 8 warps a warp's item has 6 k tiles: all of them).
template <int NG>
struct FragBudget {
    static constexpr int value = 48 / (2 * NG);
};

// Fill the warp's fragments from the weight rows in shared memory (after load_weights).
template <typename T, int NG, int RF, int THREADS>
__device__ __forceinline__ void load_frags(WFrags<T, NG, RF>& f, const T* w, int ug, int ld, int nu, int H) {
    constexpr int E = MmaShape<T>::E, K = MmaShape<T>::K;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const MmaSplit sp = mma_split<T, THREADS / 32>(nu, H);
    if (warp >= sp.items()) return;
    const int nt = warp % sp.ntg, ks = warp / sp.ntg;
    const T* b_p = w + (nt * 8 + (lane >> 2)) * ld + E * (lane & 3);
#pragma unroll
    for (int i = 0; i < RF; ++i) {
        const int kt = ks + i * sp.ksplit;
#pragma unroll
        for (int g = 0; g < NG; ++g) {
            const T* p = b_p + (size_t)g * ug * ld + kt * K;
            f.b[i][g][0] = kt < sp.nk ? word_at(p) : 0u;
            f.b[i][g][1] = kt < sp.nk ? word_at(p + 4 * E) : 0u;
        }
    }
}

// One warp, one 16-row batch tile: d[o] += sum over the k tiles kt0, kt0 + kstep, ... < nk of
// A_g B_g, o = g (NOUT = NG) or o = 0 (NOUT = 1: the sum over the gates). A_g: 16 staged rows
// (copy g at rows_a + g * astride when PER_GATE, else one copy for every gate, whose fragment is
// loaded once per k tile); B_g^T: the 8 weight rows of gate g at rows_b + g * bstride; rows
// stride ld. `held`: the first RF k tiles' B fragments are f's (the warp's first item).
template <int NG, int NOUT, bool PER_GATE, int RF, typename T>
__device__ __forceinline__ void mma_gates(float (&d)[NOUT][4], const T* rows_a, size_t astride, const T* rows_b,
                                          size_t bstride, int ld, int kt0, int nk, int kstep, int lane,
                                          const WFrags<T, NG, RF>& f, bool held) {
    constexpr int E = MmaShape<T>::E, K = MmaShape<T>::K;
    const T* a_lo = rows_a + (lane >> 2) * ld + E * (lane & 3);
    const T* b_p = rows_b + (lane >> 2) * ld + E * (lane & 3);
    auto step = [&](int kt, auto&& bfrag) {
        const int k = kt * K;
        unsigned a[4];
#pragma unroll
        for (int g = 0; g < NG; ++g) {
            if (g == 0 || PER_GATE) {
                const T* lo = a_lo + (PER_GATE ? g * astride : 0) + k;
                const T* hi = lo + 8 * ld;
                a[0] = word_at(lo);
                a[1] = word_at(hi);
                a[2] = word_at(lo + 4 * E);
                a[3] = word_at(hi + 4 * E);
            }
            unsigned b[2];
            bfrag(g, k, b);
            mma_16x8<T>(d[NOUT == 1 ? 0 : g], a, b);
        }
    };
    auto from_smem = [&](int g, int k, unsigned (&b)[2]) {
        const T* p = b_p + g * bstride + k;
        b[0] = word_at(p);
        b[1] = word_at(p + 4 * E);
    };
    int kt = kt0;
    if constexpr (RF > 0) {
        if (held) {
#pragma unroll
            for (int i = 0; i < RF; ++i) {
                if (kt < nk) {
                    step(kt, [&](int g, int, unsigned (&b)[2]) {
                        b[0] = f.b[i][g][0];
                        b[1] = f.b[i][g][1];
                    });
                }
                kt += kstep;
            }
        }
    }
    for (; kt < nk; kt += kstep) step(kt, from_smem);
}

// ---------------------------------------------------------------------------------------------
// The block's dynamic shared memory: staged rows, the MMA result buffer, the weight slice.
//   FMA: stage = copies x BB rows x H (accumulation type); weights G x U rows x H
//   MMA: stage = copies x round16(BB) rows x ld (storage type); results (fp32, see
//        mma_result_floats); weights G x round8(U) rows x ld, ld = roundK(H) + K/2 (zero padded)
// kernels/cupy/__init__.py (_smem_bytes) mirrors these sizes.
__host__ __device__ constexpr unsigned long long align16(unsigned long long n) { return (n + 15ull) & ~15ull; }
__host__ __device__ constexpr int round_up(int n, int m) { return (n + m - 1) / m * m; }
// MMA results: ksplit partial sums of bbp x g x ug floats, ksplit <= max(1, nwarps / (ug / 8))
__host__ __device__ constexpr int mma_result_floats(int nwarps, int bbp, int g, int ug) {
    return g * bbp * (8 * nwarps > ug ? 8 * nwarps : ug);
}

template <typename T, bool MMA>
struct Smem {
    unsigned char* stage;
    float* res;  // MMA only
    T* w;        // row (gate g, local unit u) at w + (g * ug + u) * ld
    int ug, ld, bbp;
    __device__ __forceinline__ T* gate(int g) const { return w + (unsigned long long)g * ug * ld; }
};

template <typename T, bool MMA, int THREADS>
__device__ __forceinline__ Smem<T, MMA> carve_smem(unsigned char* base, int copies, int BB, int G, int U, int H) {
    Smem<T, MMA> sm;
    unsigned long long stage_bytes, res_bytes = 0;
    if constexpr (MMA) {
        constexpr int K = MmaShape<T>::K;
        sm.ug = round_up(U, 8);
        sm.ld = round_up(H, K) + K / 2;
        sm.bbp = round_up(BB, 16);
        stage_bytes = align16((unsigned long long)copies * sm.bbp * sm.ld * sizeof(T));
        res_bytes = align16((unsigned long long)mma_result_floats(THREADS / 32, sm.bbp, G, sm.ug) * sizeof(float));
    } else {
        sm.ug = U;
        sm.ld = H;
        sm.bbp = BB;
        stage_bytes = align16((unsigned long long)copies * BB * H * sizeof(acc_t<T>));
    }
    sm.stage = base;
    sm.res = reinterpret_cast<float*>(base + stage_bytes);
    sm.w = reinterpret_cast<T*>(base + stage_bytes + res_bytes);
    return sm;
}

// Load the block's weight slice once: w(g, u, k) gives the element of gate g, local unit u
// (< nu), reduction index k (< H); padding rows and columns are zero (MMA reads them).
template <int THREADS, bool MMA, typename T, typename F>
__device__ __forceinline__ void load_weights(const Smem<T, MMA>& sm, int G, int nu, int H, F&& w) {
    const int n = G * sm.ug * sm.ld;
    for (int idx = threadIdx.x; idx < n; idx += THREADS) {
        const int k = idx % sm.ld;
        const int r = idx / sm.ld;
        const int u = r % sm.ug;
        const int g = r / sm.ug;
        T v{};
        if (u < nu && k < H) {
            v = w(g, u, k);
            if constexpr (MMA) v = mma_operand<T>(to_acc(v));  // exact for the 16-bit types
        }
        sm.w[idx] = v;
    }
}

// Stage the rows of one batch tile into the staging buffer (the exchanged vector, read from L2).
//
// Source row bb (< nb) is the contiguous segment src + bb * stride of `len` elements of type S (the
// storage type; the accumulation type for GRU's r*h). Without MASKED its element i goes to staged
// copy i / H, column i % H (len = NST * H). MASKED (forward recurrent dropout): len = H, and the row
// goes to every copy g < NST multiplied by mask[g * mstride + bb * H + i]. src == nullptr stages
// zeros. MMA: the staged values are MMA operands in the storage type, rows ld apart, with the zero
// padding (rows nb..bbp, columns H..kpad) that the fragments read; FMA: the accumulation type.
//
// A row splits into 16-byte vectors of VS elements at aligned addresses, and single elements before
// the first (head) and after the last (tail). Every row gets the same number of vectors nv, so the
// work items are uniform: nb * nv vector loads and nb * ns single ones. The FAST form (every row
// starts 16-byte aligned and whole vectors cover the rows of every copy: H a multiple of VS, the
// usual case) has no single elements and stores whole vectors. Each thread issues the loads of up
// to UNR items before it converts and stores any of them, so that they are in flight together.
template <int NST, bool MASKED, int THREADS, bool MMA, typename T, typename S>
__device__ __forceinline__ void stage_tile(const Smem<T, MMA>& sm, int BB, int nb, int H, const S* src, size_t stride,
                                           int len, const acc_t<T>* mask, size_t mstride) {
    using A = acc_t<T>;
    using D = typename Pick<MMA, T, A>::type;  // a staged element
    constexpr int VS = 16 / (int)sizeof(S);
    constexpr int VA = 16 / (int)sizeof(A);
    constexpr bool RAW = MMA && !MASKED && Same<S, T>::value && sizeof(T) == 2;  // staged = stored bits
    constexpr int UNR = MASKED ? 1 : 8;  // items in flight per thread: whole form
    constexpr int UNR_G = MASKED ? 1 : 2;  // general form (odd layouts): fewer, to spare registers
    constexpr int MG = MASKED ? NST : 1;
    D* st = reinterpret_cast<D*>(sm.stage);
    const int ldd = MMA ? sm.ld : H;
    const size_t cstride = (size_t)(MMA ? sm.bbp : BB) * ldd;
    if constexpr (MMA) {  // zero padding: columns H..kpad of rows < nb, then whole rows nb..bbp
        constexpr int K = MmaShape<T>::K;
        const int kpad = (H + K - 1) / K * K;
        const int pc = kpad - H;
#pragma unroll 1  // rare, and unrolled it would take many registers
        for (int idx = threadIdx.x; idx < NST * nb * pc; idx += THREADS) {
            const int r = idx / pc;  // copy * nb + row
            st[(size_t)(r / nb) * cstride + (size_t)(r % nb) * ldd + H + (idx - r * pc)] = T{};
        }
        const int pr = sm.bbp - nb;
#pragma unroll 1  // rare, and unrolled it would take many registers
        for (int idx = threadIdx.x; idx < NST * pr * kpad; idx += THREADS) {
            const int r = idx / kpad;  // copy * pr + row - nb
            st[(size_t)(r / pr) * cstride + (size_t)(nb + r % pr) * ldd + (idx - r * kpad)] = T{};
        }
    }
    if (src == nullptr) {
#pragma unroll 1  // rare, and unrolled it would take many registers
        for (int idx = threadIdx.x; idx < NST * nb * H; idx += THREADS) {
            const int r = idx / H;  // copy * nb + row
            st[(size_t)(r / nb) * cstride + (size_t)(r % nb) * ldd + (idx - r * H)] = D{};
        }
        return;
    }
    auto conv = [&](S v, A m) -> D {
        if constexpr (RAW) {
            (void)m;
            return v;
        } else {
            A a = to_acc(v);
            if constexpr (MASKED) a *= m;
            (void)m;
            if constexpr (MMA) {
                return mma_operand<T>(a);
            } else {
                return a;
            }
        }
    };
    auto head_of = [&](const S* row) {  // single elements before the row's first aligned vector
        return (int)((VS - (((unsigned long long)row / sizeof(S)) & (VS - 1))) & (VS - 1));
    };
    const bool rows_aligned = ((unsigned long long)src & 15) == 0 && (stride * sizeof(S)) % 16 == 0;
    const bool fast = rows_aligned && len % VS == 0 && H % VS == 0 &&
                      (!MASKED || (((unsigned long long)mask & 15) == 0 && mstride % VA == 0));
    const int nv = rows_aligned ? len / VS : (len >= VS - 1 ? (len - (VS - 1)) / VS : 0);
    const int ns = len - nv * VS;

    if (fast) {
        // whole vectors only: item (r, kv), r = bb * NSRC + g (row bb of the source, copy g of its
        // segment), kv < H / VS; a thread's items are THREADS apart, walked without a division
        constexpr int NSRC = MASKED ? 1 : NST;  // copies in one source segment
        const int nvh = H / VS;
        const int n = nb * NSRC * nvh;
        const int dq = THREADS / nvh, dr = THREADS - dq * nvh;
        const bool flat = stride == (size_t)NSRC * H;  // segments back to back: source offset r * H
        auto walk = [&](int first, auto&& f) {  // f(u, bb, g, r, kv) for each item of the round
            int r = first / nvh;
            int kv = first - r * nvh;
#pragma unroll
            for (int u = 0; u < UNR; ++u) {
                if (first + u * THREADS < n) f(u, r / NSRC, r % NSRC, r, kv);
                r += dq;
                kv += dr;
                if (kv >= nvh) {
                    kv -= nvh;
                    ++r;
                }
            }
        };
        for (int first = threadIdx.x; first < n; first += THREADS * UNR) {
            Vec16 hv[UNR];
            [[maybe_unused]] A mv[UNR][MG][MASKED ? VS : 1];
            walk(first, [&](int u, int bb, int g, int r, int kv) {  // 1. issue every load of the round
                const S* p = src + (flat ? (size_t)r * H : bb * stride + (size_t)g * H) + kv * VS;
                hv[u] = load16<true>(p);
                if constexpr (MASKED) {
#pragma unroll
                    for (int c = 0; c < NST; ++c) {
                        const A* m = mask + c * mstride + (size_t)bb * H + kv * VS;
#pragma unroll
                        for (int q = 0; q < VS / VA; ++q) {
                            const Vec16 x = load16<false>(m + q * VA);
#pragma unroll
                            for (int e = 0; e < VA; ++e) mv[u][c][q * VA + e] = vec_get<A>(x, e);
                        }
                    }
                }
            });
            walk(first, [&](int u, int bb, int g, int, int kv) {  // 2. convert and store
                D* drow = st + (size_t)bb * ldd + kv * VS;
                if constexpr (MASKED) {
#pragma unroll
                    for (int c = 0; c < NST; ++c) {
                        D d[VS];
#pragma unroll
                        for (int e = 0; e < VS; ++e) d[e] = conv(vec_get<S>(hv[u], e), mv[u][c][e]);
                        store_run<true>(drow + c * cstride, d);
                    }
                } else {
                    D d[VS];
#pragma unroll
                    for (int e = 0; e < VS; ++e) d[e] = conv(vec_get<S>(hv[u], e), A(1));
                    store_run<true>(drow + g * cstride, d);
                }
            });
        }
        return;
    }

    // general form: per row, single elements up to the first aligned vector (head), nv vectors, the
    // rest single (tail); a vector may cross from one copy into the next
    const int nvi = nb * nv, nsi = nb * ns;
    const int n = nvi > nsi ? nvi : nsi;
    for (int first = threadIdx.x; first < n; first += THREADS * UNR_G) {
        Vec16 hv[UNR_G];
        S hs[UNR_G];
        [[maybe_unused]] A mv[UNR_G][MG][MASKED ? VS : 1];
        [[maybe_unused]] A ms[UNR_G][MG];
        auto vec_item = [&](int it, int& bb, int& i0) {
            bb = it / nv;
            i0 = head_of(src + bb * stride) + (it - bb * nv) * VS;
        };
        auto single_item = [&](int it, int& bb, int& pos) {
            bb = it / ns;
            const int si = it - bb * ns;
            pos = si < head_of(src + bb * stride) ? si : si + nv * VS;
        };
        // 1. issue every load of this round
#pragma unroll
        for (int u = 0; u < UNR_G; ++u) {
            const int it = first + u * THREADS;
            if (it < nvi) {
                int bb, i0;
                vec_item(it, bb, i0);
                hv[u] = load16<true>(src + bb * stride + i0);
                if constexpr (MASKED) {
#pragma unroll
                    for (int c = 0; c < NST; ++c) {
#pragma unroll
                        for (int e = 0; e < VS; ++e) mv[u][c][e] = mask[c * mstride + (size_t)bb * H + i0 + e];
                    }
                }
            }
            if (it < nsi) {
                int bb, pos;
                single_item(it, bb, pos);
                hs[u] = load_raw_cg(src + bb * stride + pos);
                if constexpr (MASKED) {
#pragma unroll
                    for (int c = 0; c < NST; ++c) ms[u][c] = mask[c * mstride + (size_t)bb * H + pos];
                }
            }
        }
        // 2. convert and store
#pragma unroll
        for (int u = 0; u < UNR_G; ++u) {
            const int it = first + u * THREADS;
            if (it < nvi) {
                int bb, i0;
                vec_item(it, bb, i0);
                D* drow = st + (size_t)bb * ldd;
                if constexpr (MASKED) {  // len = H: the vector lies in one row of every copy
#pragma unroll
                    for (int c = 0; c < NST; ++c) {
                        D d[VS];
#pragma unroll
                        for (int e = 0; e < VS; ++e) d[e] = conv(vec_get<S>(hv[u], e), mv[u][c][e]);
                        store_run<false>(drow + c * cstride + i0, d);
                    }
                } else {
                    int g = NST > 1 ? i0 / H : 0;
                    int k = i0 - g * H;
                    D d[VS];
#pragma unroll
                    for (int e = 0; e < VS; ++e) d[e] = conv(vec_get<S>(hv[u], e), A(1));
                    if (k + VS <= H) {
                        store_run<false>(drow + g * cstride + k, d);
                    } else {  // the vector crosses from one copy into the next
#pragma unroll
                        for (int e = 0; e < VS; ++e) {
                            drow[g * cstride + k] = d[e];
                            if (++k == H) {
                                k = 0;
                                ++g;
                            }
                        }
                    }
                }
            }
            if (it < nsi) {
                int bb, pos;
                single_item(it, bb, pos);
                D* drow = st + (size_t)bb * ldd;
                if constexpr (MASKED) {
#pragma unroll
                    for (int c = 0; c < NST; ++c) drow[c * cstride + pos] = conv(hs[u], ms[u][c]);
                } else {
                    const int g = NST > 1 ? pos / H : 0;
                    drow[g * cstride + (pos - g * H)] = conv(hs[u], A(1));
                }
            }
        }
    }
}

// The (batch row, local unit) of the epilogue call number `slot` (< PF) that this thread makes in
// the first batch tile (nb rows) of matvec_phase; false where it makes no such call. The kernels
// load those epilogue inputs ahead (before the grid barrier), in the thread that will use them.
template <int ROWS, int THREADS, bool MMA>
__device__ __forceinline__ bool epilogue_item(int slot, int nb, int nu, int& bb, int& jl) {
    if constexpr (MMA) {
        const int idx = threadIdx.x + slot * THREADS;
        if (idx >= nb * nu) return false;
        bb = idx / nu;
        jl = idx - bb * nu;
        return true;
    } else {
        const int lane = threadIdx.x & 31;
        const int tile = (threadIdx.x >> 5) + slot * (THREADS / 32);
        if (lane >= ROWS || tile >= ((nb + ROWS - 1) / ROWS) * nu) return false;
        jl = tile % nu;
        bb = (tile / nu) * ROWS + lane;
        return bb < nb;
    }
}

// The fragments a kernel holds for one matvec whose first gate's rows are sm.w (all threads call
// it after load_weights; the FMA path holds none).
template <int NG, int THREADS, typename T, bool MMA>
__device__ __forceinline__ WFrags<T, NG, MMA ? FragBudget<NG>::value : 0> held_frags(const Smem<T, MMA>& sm, int nu,
                                                                                    int H) {
    constexpr int RF = MMA ? FragBudget<NG>::value : 0;
    WFrags<T, NG, RF> f{};  // zeros where the warp has no item (never read there)
    __syncthreads();  // the weight rows were stored by other threads
    if constexpr (RF > 0) load_frags<T, NG, RF, THREADS>(f, sm.w, sm.ug, sm.ld, nu, H);
    return f;
}

// A whole matvec phase for the block: for every batch tile, stage(b0, nb) stages its rows (all
// threads; stage_tile), then each (batch row b, owned unit jl) gets its NOUT sums: epilogue(b, jl,
// pre, slot) runs on exactly one thread per (b, jl); pre[g] is gate g's sum (NOUT = NG), or pre[0]
// the sum over the gates (NOUT = 1, MMA only: the gates accumulate into one tile). slot is Int<q>
// for the thread's call number q < PF in the first batch tile (the items of epilogue_item, whose
// inputs the kernels load ahead), Int<-1> for every other call: compile-time, so that the values
// loaded ahead are dead once the first PF calls are done. `w` is the first gate's rows; `frags`
// the warp's register-held weight fragments of them (load_frags; RF = 0: none). (Declare the
// epilogue's `pre` as `const auto&`: cicc 13.0 crashes on a generic lambda with a parameter
// `const A (&)[N]` whose bound is a constant of the enclosing function template.)
template <int NG, int NST, int ROWS, int THREADS, int PF, int NOUT, bool MMA, typename T, int RF, typename S,
          typename E>
__device__ __forceinline__ void matvec_phase(const Smem<T, MMA>& sm, const T* w, const WFrags<T, NG, RF>& frags,
                                             int nu, int B, int BB, int H, S&& stage, E&& epilogue) {
    using A = acc_t<T>;
    constexpr bool PER_GATE = NST > 1;
    static_assert(NST == 1 || NST == NG, "one staged copy, or one per gate");
    static_assert(NOUT == NG || (NOUT == 1 && MMA), "per-gate sums, or their total on the MMA path");
    static_assert(RF == 0 || MMA, "register-held fragments are MMA operands");
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    constexpr int NWARPS = THREADS / 32;
    auto tile = [&](int b0, auto first_tag) {
        constexpr bool FIRST = decltype(first_tag)::value;
        const int nb = min(BB, B - b0);
        __syncthreads();  // the previous tile's staged rows (and results) are consumed
        stage(b0, nb);
        __syncthreads();
        if constexpr (MMA) {
            const T* st = reinterpret_cast<const T*>(sm.stage);
            const MmaSplit sp = mma_split<T, NWARPS>(nu, H);
            const int mt = (nb + 15) / 16;
            const int rstride = NOUT * sp.ntg * 8;  // result row: the block's units of every output
            const int kstride = mt * 16 * rstride;  // one k split's partial sums
            for (int item = warp; item < sp.items(); item += NWARPS) {
                const int nt = item % sp.ntg;
                const int ks = item / sp.ntg;
                for (int m = 0; m < mt; ++m) {
                    float d[NOUT][4] = {};
                    mma_gates<NG, NOUT, PER_GATE>(d, st + m * 16 * sm.ld, (size_t)sm.bbp * sm.ld, w + nt * 8 * sm.ld,
                                                  (size_t)sm.ug * sm.ld, sm.ld, ks, sp.nk, sp.ksplit, lane, frags,
                                                  item == warp);
#pragma unroll
                    for (int o = 0; o < NOUT; ++o) {
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            const int row = m * 16 + (lane >> 2) + 8 * (i >> 1);
                            const int col = (o * sp.ntg + nt) * 8 + 2 * (lane & 3) + (i & 1);
                            sm.res[ks * kstride + row * rstride + col] = d[o][i];
                        }
                    }
                }
            }
            __syncthreads();
            auto one = [&](int idx, auto slot) {
                const int bb = idx / nu;
                const int jl = idx % nu;
                A pre[NOUT];
#pragma unroll
                for (int o = 0; o < NOUT; ++o) {
                    float s = 0.f;
                    for (int ks = 0; ks < sp.ksplit; ++ks) s += sm.res[ks * kstride + bb * rstride + o * sp.ntg * 8 + jl];
                    pre[o] = s;
                }
                epilogue(b0 + bb, jl, pre, slot);
            };
            int idx = threadIdx.x;
            if constexpr (FIRST) {
                static_for<PF>([&](auto q) {
                    if (idx < nb * nu) one(idx, q);
                    idx += THREADS;
                });
            }
            for (; idx < nb * nu; idx += THREADS) one(idx, Int<-1>{});
        } else {
            const A* st = reinterpret_cast<const A*>(sm.stage);
            const int ntiles = ((nb + ROWS - 1) / ROWS) * nu;
            auto one = [&](int tl, auto slot) {
                const int jl = tl % nu;
                const int rb = (tl / nu) * ROWS;
                A acc[NG][ROWS];
                tile_dot<NG, ROWS, PER_GATE>(acc, w, sm.ug, jl, st, BB, rb, nb, H, lane);
                if (lane < ROWS && rb + lane < nb) {  // lane r: batch row rb + r
                    A pre[NG];
#pragma unroll
                    for (int g = 0; g < NG; ++g) {
                        pre[g] = acc[g][0];
#pragma unroll
                        for (int r = 1; r < ROWS; ++r) pre[g] = lane == r ? acc[g][r] : pre[g];
                    }
                    epilogue(b0 + rb + lane, jl, pre, slot);
                }
            };
            int tl = warp;
            if constexpr (FIRST) {
                static_for<PF>([&](auto q) {
                    if (tl < ntiles) one(tl, q);
                    tl += NWARPS;
                });
            }
            for (; tl < ntiles; tl += NWARPS) one(tl, Int<-1>{});
        }
    };
    if (B > 0) tile(0, Bool<true>{});
    for (int b0 = BB; b0 < B; b0 += BB) tile(b0, Bool<false>{});
}

// The block's dynamic shared memory (one 16-aligned buffer, carved by carve_smem).
#ifndef FRNN_HOST_EMULATION
__device__ __forceinline__ unsigned char* dynamic_smem() {
    extern __shared__ __align__(16) unsigned char frnn_dynamic_smem[];
    return frnn_dynamic_smem;
}
#endif

}  // namespace frnn

// The configurations a standalone compilation (`nvcc --ptx -I kernels kernels/cupy/forward.cu`)
// instantiates, as an X-macro over (KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS,
// DIRS): each cell kind, both GRU forms, every storage type, with and without dropout masks, FMA and
// tensor-core (bf16, fp16, tf32) matvecs, one direction and both. The loader switches them off and
// instantiates its own.
#define FRNN_DEFAULT_CONFIGS(X) \
    X(0, 0, 2, true, float, false, false, 4, 256, 1) \
    X(0, 1, 3, true, frnn::bf16, true, false, 4, 256, 1) \
    X(0, 0, 2, true, frnn::bf16, true, true, 4, 256, 1) \
    X(0, 0, 2, true, frnn::bf16, false, true, 4, 256, 2) \
    X(1, 0, 2, true, frnn::f16, true, true, 4, 256, 1) \
    X(1, 4, 2, false, float, true, false, 4, 256, 1) \
    X(1, 0, 3, false, frnn::bf16, false, true, 4, 256, 2) \
    X(1, 0, 2, false, float, true, true, 4, 256, 1) \
    X(2, 0, 2, true, double, false, false, 4, 256, 2) \
    X(2, 2, 2, true, frnn::f16, true, false, 2, 128, 1)
