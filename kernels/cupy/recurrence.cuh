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
// vector backward) for a tile of BB batch rows into shared memory, and one warp computes the dot
// products of one owned unit with ROWS batch rows (lanes stride over the reduction axis, then a
// shuffle reduction). The exchange itself goes through global memory (L2) and a grid barrier.
//
// MMA (tensor cores, sm_80+; bf16 / fp16, and fp32 as tf32 when the caller allows it): the same
// phases, but the staged rows are kept in the storage type and each warp computes a 16 x 8 tile
// (16 batch rows x 8 weight rows) with mma.sync and fp32 accumulation; the tiles go through a
// shared result buffer to the same per-(row, unit) epilogue. Rows are padded so that every
// fragment load is one aligned 32-bit word and the 8 row groups of a warp hit 32 distinct banks.
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

// Stage `nst` copies of `nb` rows of length H into shared memory: st[(g*BB + bb)*H + k] =
// value(g, bb, k). All threads of the block take part.
template <int THREADS, typename A, typename F>
__device__ __forceinline__ void stage_rows(A* st, int nst, int BB, int nb, int H, F&& value) {
    const int n = nst * nb * H;
    for (int idx = threadIdx.x; idx < n; idx += THREADS) {
        const int k = idx % H;
        const int rest = idx / H;
        const int bb = rest % nb;
        const int g = rest / nb;
        st[(g * BB + bb) * H + k] = value(g, bb, k);
    }
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

// One warp: d += A B over the k tiles kt0, kt0 + kstep, ... < nk, with A = 16 staged rows and
// B^T = 8 weight rows, both stored row by row with stride ld (k contiguous).
template <typename T>
__device__ __forceinline__ void mma_tile(float (&d)[4], const T* rows_a, const T* rows_b, int ld, int kt0,
                                         int nk, int kstep, int lane) {
    constexpr int E = MmaShape<T>::E, K = MmaShape<T>::K;
    const int g = lane >> 2, q = lane & 3;
    const T* a_lo = rows_a + g * ld + E * q;
    const T* a_hi = a_lo + 8 * ld;
    const T* b_p = rows_b + g * ld + E * q;
    for (int kt = kt0; kt < nk; kt += kstep) {
        const int k = kt * K;
        const unsigned a[4] = {word_at(a_lo + k), word_at(a_hi + k), word_at(a_lo + k + 4 * E), word_at(a_hi + k + 4 * E)};
        const unsigned b[2] = {word_at(b_p + k), word_at(b_p + k + 4 * E)};
        mma_16x8<T>(d, a, b);
    }
}

// ---------------------------------------------------------------------------------------------
// The block's dynamic shared memory: staged rows, the MMA result buffer, the weight slice.
//   FMA: stage = copies x BB rows x H (accumulation type); weights G x U rows x H
//   MMA: stage = copies x round16(BB) rows x ld (storage type); results (fp32, see
//        mma_result_floats); weights G x round8(U) rows x ld, ld = roundK(H) + K/2 (zero padded)
// kernels/cupy/__init__.py (_smem_bytes) mirrors these sizes.
__host__ __device__ constexpr unsigned long long align16(unsigned long long n) { return (n + 15ull) & ~15ull; }
__host__ __device__ constexpr int round_up(int n, int m) { return (n + m - 1) / m * m; }
__host__ __device__ constexpr int mma_result_floats(int nwarps, int bbp, int g, int ug) {
    return nwarps * 128 > bbp * g * ug ? nwarps * 128 : bbp * g * ug;
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

// A whole matvec phase for the block: for every batch tile, stage the rows (stage_value(g, b, k)
// with b the absolute batch row), then hand each (batch row b, owned unit jl) its NG sums:
// epilogue(b, jl, pre) runs on exactly one thread per (b, jl). `w` is the first gate's rows.
template <int NG, int NST, int ROWS, int THREADS, bool MMA, typename T, typename S, typename E>
__device__ __forceinline__ void matvec_phase(const Smem<T, MMA>& sm, const T* w, int nu, int B, int BB, int H,
                                             S&& stage_value, E&& epilogue) {
    using A = acc_t<T>;
    constexpr bool PER_GATE = NST > 1;
    static_assert(NST == 1 || NST == NG, "one staged copy, or one per gate");
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    constexpr int NWARPS = THREADS / 32;
    for (int b0 = 0; b0 < B; b0 += BB) {
        const int nb = min(BB, B - b0);
        __syncthreads();  // the previous tile's staged rows (and results) are consumed
        if constexpr (MMA) {
            constexpr int K = MmaShape<T>::K;
            const int nk = (H + K - 1) / K;
            const int kpad = nk * K;
            T* st = reinterpret_cast<T*>(sm.stage);
            const int n = NST * sm.bbp * kpad;
            for (int idx = threadIdx.x; idx < n; idx += THREADS) {  // zeros past nb rows and H columns
                const int k = idx % kpad;
                const int rest = idx / kpad;
                const int bb = rest % sm.bbp;
                const int gs = rest / sm.bbp;
                st[(gs * sm.bbp + bb) * sm.ld + k] = (bb < nb && k < H) ? mma_operand<T>(stage_value(gs, b0 + bb, k)) : T{};
            }
            __syncthreads();
            // work items: (16-row batch tile, gate, 8-unit tile) x k split (idle warps share the reduction)
            const int mt = (nb + 15) / 16;
            const int ntg = (nu + 7) / 8;
            const int ntiles = mt * NG * ntg;
            const int ksplit = max(1, min(NWARPS / ntiles, nk));
            const int rstride = NG * ntg * 8;   // result row: the block's units of every gate
            const int kstride = mt * 16 * rstride;  // one k split's partial sums
            for (int item = warp; item < ntiles * ksplit; item += NWARPS) {
                const int tile = item % ntiles;
                const int ks = item / ntiles;
                const int m = tile % mt;
                const int nt = (tile / mt) % ntg;
                const int g = tile / (mt * ntg);
                float d[4] = {0.f, 0.f, 0.f, 0.f};
                mma_tile(d, st + ((PER_GATE ? g : 0) * sm.bbp + m * 16) * sm.ld,
                         w + (g * sm.ug + nt * 8) * sm.ld, sm.ld, ks, nk, ksplit, lane);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int row = m * 16 + (lane >> 2) + 8 * (i >> 1);
                    const int col = (g * ntg + nt) * 8 + 2 * (lane & 3) + (i & 1);
                    sm.res[ks * kstride + row * rstride + col] = d[i];
                }
            }
            __syncthreads();
            for (int idx = threadIdx.x; idx < nb * nu; idx += THREADS) {
                const int bb = idx / nu;
                const int jl = idx % nu;
                A pre[NG];
#pragma unroll
                for (int g = 0; g < NG; ++g) {
                    float s = 0.f;
                    for (int ks = 0; ks < ksplit; ++ks) s += sm.res[ks * kstride + bb * rstride + g * ntg * 8 + jl];
                    pre[g] = s;
                }
                epilogue(b0 + bb, jl, pre);
            }
        } else {
            A* st = reinterpret_cast<A*>(sm.stage);
            stage_rows<THREADS>(st, NST, BB, nb, H, [&](int g, int bb, int k) { return stage_value(g, b0 + bb, k); });
            __syncthreads();
            const int ntiles = ((nb + ROWS - 1) / ROWS) * nu;
            for (int tile = warp; tile < ntiles; tile += NWARPS) {
                const int jl = tile % nu;
                const int rb = (tile / nu) * ROWS;
                A acc[NG][ROWS];
                tile_dot<NG, ROWS, PER_GATE>(acc, w, sm.ug, jl, st, BB, rb, nb, H, lane);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    if (lane == r && rb + r < nb) {
                        A pre[NG];
#pragma unroll
                        for (int g = 0; g < NG; ++g) pre[g] = acc[g][r];
                        epilogue(b0 + rb + r, jl, pre);
                    }
                }
            }
        }
    }
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
// instantiates, as an X-macro over (KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS):
// each cell kind, both GRU forms, every storage type, with and without dropout masks, FMA and
// tensor-core (bf16, fp16, tf32) matvecs. The loader switches them off and instantiates its own.
#define FRNN_DEFAULT_CONFIGS(X) \
    X(0, 0, 2, true, float, false, false, 4, 256) \
    X(0, 1, 3, true, frnn::bf16, true, false, 4, 256) \
    X(0, 0, 2, true, frnn::bf16, true, true, 4, 256) \
    X(1, 0, 2, true, frnn::f16, true, true, 4, 256) \
    X(1, 4, 2, false, float, true, false, 4, 256) \
    X(1, 0, 3, false, frnn::bf16, false, true, 4, 256) \
    X(1, 0, 2, false, float, true, true, 4, 256) \
    X(2, 0, 2, true, double, false, false, 4, 256) \
    X(2, 2, 2, true, frnn::f16, true, false, 2, 128)
