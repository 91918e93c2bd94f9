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

// A whole matvec phase for the block: for every batch tile, stage the rows (stage_value(g, b, k)
// with b the absolute batch row), then hand each (batch row b, owned unit jl) its NG sums:
// epilogue(b, jl, pre) runs on exactly one lane per (b, jl).
template <int NG, int NST, int ROWS, int THREADS, typename T, typename A, typename S, typename E>
__device__ __forceinline__ void matvec_phase(A* st, const T* ws, int U, int nu, int B, int BB, int H,
                                             S&& stage_value, E&& epilogue) {
    constexpr bool PER_GATE = NST > 1;
    static_assert(NST == 1 || NST == NG, "one staged copy, or one per gate");
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    constexpr int NWARPS = THREADS / 32;
    for (int b0 = 0; b0 < B; b0 += BB) {
        const int nb = min(BB, B - b0);
        __syncthreads();  // the previous tile's staged rows are consumed
        stage_rows<THREADS>(st, NST, BB, nb, H, [&](int g, int bb, int k) { return stage_value(g, b0 + bb, k); });
        __syncthreads();
        const int ntiles = ((nb + ROWS - 1) / ROWS) * nu;
        for (int tile = warp; tile < ntiles; tile += NWARPS) {
            const int jl = tile % nu;
            const int rb = (tile / nu) * ROWS;
            A acc[NG][ROWS];
            tile_dot<NG, ROWS, PER_GATE>(acc, ws, U, jl, st, BB, rb, nb, H, lane);
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

// The block's dynamic shared memory (one buffer; staged rows first, then the weight slice).
#ifndef FRNN_HOST_EMULATION
__device__ __forceinline__ unsigned char* dynamic_smem() {
    extern __shared__ __align__(16) unsigned char frnn_dynamic_smem[];
    return frnn_dynamic_smem;
}
#endif

// Byte offset of the weight slice in dynamic shared memory (staging buffer first, 16-aligned).
__host__ __device__ constexpr unsigned long long align16(unsigned long long n) { return (n + 15ull) & ~15ull; }

}  // namespace frnn
