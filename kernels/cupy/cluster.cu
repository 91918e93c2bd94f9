// Hopper (sm_90) thread-block-cluster recurrence: ONE cluster of NC CTAs runs all T steps of one
// layer / direction, forward (rnn_cluster_forward) or backward (rnn_cluster_backward); a launch of
// two clusters runs both directions of a bidirectional layer (recurrence.cuh: direction groups).
//
// Legend: T steps, B batch, H hidden, G gates, U units per CTA (a multiple of 8; the last CTA
// may own fewer: nu = min(U, H - rank*U)), NC CTAs per cluster = ceil(H / U).
// Layouts of the global tensors: see recurrence.cuh (the same contract as forward.cu/backward.cu).
//
// Why a cluster: the grid-wide kernels exchange h through L2 and a grid barrier each step. Here
// the CTAs of one cluster are co-scheduled by hardware and write straight into each other's
// shared memory: after its epilogue a CTA copies its slice of the exchanged vector (forward: h_t,
// backward: the gate gradients dA) into the same place of every other CTA's double-buffered
// exchange buffer with cp.async.bulk, each copy completing a transaction count on the
// destination's mbarrier. A CTA waits on its OWN mbarrier only; there is no grid barrier.
//
// Per CTA, for the whole sequence: the W_hh slice of its units (forward: rows (g, u), reduction
// over k; backward: rows (g, k) = W_g[:, k], reduction over j). MMA path (bf16 / fp16 m16n8k16,
// fp32 as tf32 m16n8k8): W is the M operand and the batch is N. Every warp owns a fixed list of
// (16-row m-tile, k-tile) fragment pairs; the first RF of them live in registers, the rest in
// shared memory in fragment order (one 16-byte load per lane). FMA path (fp32 exact, fp64): W
// rows in shared memory, one thread per (row, batch) dot product.
//
// Per forward step s (t = reverse ? T-1-s : s):
//   wait own mbarrier (h_{t-1} of every CTA is in xbuf[s&1]) -> matvec -> epilogue on the owned
//   units (gates, c, h; writes out/gates/extra) which also writes h_t into its own xbuf[(s+1)&1]
//   -> push the slice to the other CTAs -> prefetch xg[t+1] and the mask row into shared memory.
//   GRU reset_after=False: a second exchange per step carries r*h (the n gate needs all of it).
// Backward step i (t processed in reverse): phase A (elementwise) writes dxg[t] and this CTA's
//   slices of dA into xbuf[i&1] -> push -> prefetch step i+1's saved tensors -> wait ->
//   matvec dh_rec = sum_g m_g * (dA_g W_g) on the owned units.
//
// Exchange safety (why double buffering is enough): a CTA overwrites a remote buffer of parity p
// at step s+2 only after it has received that CTA's step-s+1 data, which that CTA sends only after
// it finished reading parity p at step s. Bulk-copy sources are the CTA's own slice of the buffer,
// rewritten two steps later under the same argument.
//
// Spins are bounded: a wait that times out sets bit 0 of *status and the kernel carries on (wrong
// numbers, no hang); the host turns the flag into an error.
#include "cupy/recurrence.cuh"

#ifdef FRNN_HOST_EMULATION
#define FRNN_CLUSTER_DIMS(n)
#else
#define FRNN_CLUSTER_DIMS(n) __cluster_dims__(n, 1, 1)
#endif

namespace frnn {
namespace cl {

constexpr unsigned SPIN_LIMIT = 1u << 26;  // try_wait rounds before a wait is declared hung

// ---- cluster / mbarrier / bulk-copy primitives (PTX ISA 8.0, sm_90) -------------------------
#ifdef FRNN_HOST_EMULATION
__device__ __forceinline__ unsigned rank() { return frnn_emu_cluster_rank(); }
__device__ __forceinline__ void cluster_sync() { frnn_emu_cluster_sync(); }
__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) { frnn_emu_mbar_init(bar, count); }
__device__ __forceinline__ void fence_init() {}
__device__ __forceinline__ void fence_proxy_async() {}
__device__ __forceinline__ void arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
    frnn_emu_mbar_arrive_expect_tx(bar, bytes);
}
__device__ __forceinline__ bool wait_parity(unsigned long long* bar, unsigned parity) {
    return frnn_emu_mbar_wait(bar, parity);
}
// copy `bytes` from this CTA's shared memory at `src` to the same offset of `dst` in CTA `to`,
// completing `bytes` transactions on that CTA's copy of `bar`
__device__ __forceinline__ void push(const void* dst, const void* src, unsigned bytes, unsigned long long* bar,
                                     unsigned to) {
    frnn_emu_bulk_push(dst, src, bytes, bar, to);
}
__device__ __forceinline__ void copy_async16(void* dst, const void* src) { frnn_emu_copy_async16(dst, src); }
__device__ __forceinline__ void wait_async() { frnn_emu_wait_async(); }
#else
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ unsigned rank() {
    unsigned r;
    asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
__device__ __forceinline__ void arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ bool wait_parity(unsigned long long* bar, unsigned parity) {
    const unsigned a = smem_u32(bar);
    for (unsigned n = 0; n < SPIN_LIMIT; ++n) {
        unsigned done;
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(a), "r"(parity)
            : "memory");
        if (done) return true;
    }
    return false;
}
__device__ __forceinline__ void push(const void* dst, const void* src, unsigned bytes, unsigned long long* bar,
                                     unsigned to) {
    unsigned d, b;
    asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(d) : "r"(smem_u32(dst)), "r"(to));
    asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(b) : "r"(smem_u32(bar)), "r"(to));
    asm volatile("cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(d),
                 "r"(smem_u32(src)), "r"(bytes), "r"(b)
                 : "memory");
}
// 16 bytes global -> shared memory, completing in the background (the load is not waited for
// here); wait_async waits for all of this thread's copies (other threads see them after a barrier)
__device__ __forceinline__ void copy_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void wait_async() { asm volatile("cp.async.wait_all;" ::: "memory"); }
#endif

// ---- geometry shared by the host (kernels/cupy/__init__.py: _cluster_geometry) and the kernel --
// MMA schedule: warp w is (k group w % ks, m group w / ks); m group i owns the MPW consecutive
// m-tiles [i * MPW, (i + 1) * MPW) and k group kg the k-tiles kg, kg + ks, ... (kper of them).
// The warp walks its k-tiles once and, per k-tile, loads the h (backward: dA) fragment once for
// all of its m-tiles of one gate: consecutive m-tiles share a gate, so even the backward, whose
// operand differs per gate, reuses it. Its fragment pair j is (k-tile j / MPW, m-tile j % MPW).
struct Geometry {
    int G, U, nu, j0, ug, bp, kpad, ld, slots;  // ld: exchange / weight row stride (elements)
    int mt, nk, ks, mg, kper, wpw;              // MMA schedule (above); wpw: pairs per warp in smem
};

template <typename T, bool MMA>
__device__ __forceinline__ Geometry geometry(int G, int H, int B, int U, int NT, int KS, int NW, int RF, int MPW,
                                             int slots, int rank) {
    Geometry g;
    constexpr int K = MMA ? MmaShape<T>::K : 8;
    g.G = G;
    g.U = U;
    g.j0 = rank * U;
    g.nu = max(0, min(U, H - g.j0));
    g.ug = round_up(U, 16);
    g.bp = MMA ? NT * 8 : B;
    g.kpad = round_up(H, K);
    g.ld = g.kpad + 16 / (int)sizeof(T);
    g.slots = slots;
    g.mt = G * g.ug / 16;
    g.nk = g.kpad / K;
    g.ks = KS;
    g.mg = NW / KS;
    g.kper = (g.nk + KS - 1) / KS;
    g.wpw = max(0, MPW * g.kper - RF);
    return g;
}

// The CTA's dynamic shared memory, carved in this order (each region 16-byte aligned):
//   bars[4] (exchange e, parity p at 2e + p) | xbuf[2][slots][bp][ld] T | res | w | bias[G][U]
//   | rm[G][B][U] (REC_MASK) | st0[B][U] | st1[B][U] | stage[2][...] | valid[2][B] int
//   stage holds prefetched inputs: forward xg [G][B][U] in the storage type, backward saved
//   tensors [B][U][npin] in acc.
//   res: MMA [ks][G*ug][bp] float; FMA [G*ug][B] acc.   w: MMA [NW][wpw][32 lanes] uint4;
//   FMA [G*ug][ld] T.  st0 / st1: forward h, c; backward dh, dc (acc, owned units).
template <typename T, bool MMA>
struct Smem {
    unsigned long long* bars;
    T* xbuf;
    float* res;
    void* w;
    acc_t<T>* bias;
    acc_t<T>* rm;
    acc_t<T>* st0;
    acc_t<T>* st1;
    void* stage;
    int* valid;
    __device__ __forceinline__ T* x(int parity, int slot, const Geometry& g) const {
        return xbuf + ((size_t)parity * g.slots + slot) * g.bp * g.ld;
    }
};

template <typename T, bool MMA, bool REC_MASK>
__device__ __forceinline__ Smem<T, MMA> carve(unsigned char* base, const Geometry& g, int B, int npin, int pin_size,
                                              int NW) {
    using A = acc_t<T>;
    Smem<T, MMA> s;
    unsigned long long off = 0;
    auto take = [&](unsigned long long bytes) {
        unsigned char* p = base + off;
        off += align16(bytes);
        return p;
    };
    s.bars = reinterpret_cast<unsigned long long*>(take(4 * sizeof(unsigned long long)));
    s.xbuf = reinterpret_cast<T*>(take((unsigned long long)2 * g.slots * g.bp * g.ld * sizeof(T)));
    if constexpr (MMA) {
        s.res = reinterpret_cast<float*>(take((unsigned long long)g.ks * g.G * g.ug * g.bp * sizeof(float)));
        s.w = take((unsigned long long)NW * g.wpw * 32 * 16);
    } else {
        s.res = reinterpret_cast<float*>(take((unsigned long long)g.G * g.ug * B * sizeof(A)));
        s.w = take((unsigned long long)g.G * g.ug * g.ld * sizeof(T));
    }
    s.bias = reinterpret_cast<A*>(take((unsigned long long)g.G * g.U * sizeof(A)));
    s.rm = reinterpret_cast<A*>(take(REC_MASK ? (unsigned long long)g.G * B * g.U * sizeof(A) : 0));
    s.st0 = reinterpret_cast<A*>(take((unsigned long long)B * g.U * sizeof(A)));
    s.st1 = reinterpret_cast<A*>(take((unsigned long long)B * g.U * sizeof(A)));
    s.stage = take((unsigned long long)2 * B * g.U * npin * pin_size);
    s.valid = reinterpret_cast<int*>(take((unsigned long long)2 * B * sizeof(int)));
    return s;
}

// Zero both exchange buffers (padding rows / columns must be finite: they meet zero weights),
// init the mbarriers (one arrival each: the owner's expect_tx), make both visible cluster-wide.
template <typename T, bool MMA, int THREADS>
__device__ __forceinline__ void init_exchange(const Smem<T, MMA>& s, const Geometry& g) {
    const int n = 2 * g.slots * g.bp * g.ld;
    for (int i = threadIdx.x; i < n; i += THREADS) s.xbuf[i] = T{};
    if (threadIdx.x == 0) {
        for (int i = 0; i < 4; ++i) mbar_init(&s.bars[i], 1);
        fence_init();
    }
    fence_proxy_async();  // the zeros (generic proxy) before remote bulk copies (async proxy)
    cluster_sync();
}

// Bytes a CTA receives per exchange: `nslots` slots x B rows x every OTHER CTA's chunk.
__device__ __forceinline__ unsigned rx_bytes(int H, int U, int NC, int rank, int nslots, int B, int size) {
    unsigned total = 0;
    for (int c = 0; c < NC; ++c) {
        const int nu = max(0, min(U, H - c * U));
        if (c != rank) total += (unsigned)(round_up(nu, 8) * size);
    }
    return total * (unsigned)(nslots * B);
}

// Copy this CTA's columns [j0, j0 + round8(nu)) of slots [slot0, slot0 + nslots) of parity p to
// every other CTA (the writers fenced and synchronized before the call).
template <int NC, int THREADS, typename T, bool MMA>
__device__ __forceinline__ void push_slices(const Smem<T, MMA>& s, const Geometry& g, int p, int slot0, int nslots,
                                            int e, int B, int me) {
    const unsigned bytes = (unsigned)(round_up(g.nu, 8) * sizeof(T));
    const int n = (NC - 1) * nslots * B;
    for (int i = threadIdx.x; i < n; i += THREADS) {
        const int b = i % B;
        const int rest = i / B;
        const int slot = slot0 + rest % nslots;
        int to = rest / nslots;
        to += to >= me;  // skip self
        const T* row = s.x(p, slot, g) + (size_t)b * g.ld + g.j0;
        push(row, row, bytes, &s.bars[2 * e + p], (unsigned)to);
    }
}

// Wait for exchange e, parity p, completion number k; the owner then re-arms it for the next use.
template <int NC, typename T, bool MMA>
__device__ __forceinline__ void wait_exchange(const Smem<T, MMA>& s, int e, int p, int k, unsigned rearm,
                                              unsigned* status) {
    if constexpr (NC > 1) {
        if (!wait_parity(&s.bars[2 * e + p], (unsigned)(k & 1)) && status) atomicOr(status, 1u);
        if (threadIdx.x == 0 && rearm) arrive_expect_tx(&s.bars[2 * e + p], rearm);
    }
}

// Load the weight slice once. w(g, u, k): element of gate g, local row u (< nu), reduction k (< H).
// MMA: fragment pair j of warp `warp` goes to registers (j < RF) or to shared memory.
template <int RF, int MPW, int THREADS, bool MMA, typename T, typename F>
__device__ __forceinline__ void load_w(const Smem<T, MMA>& s, const Geometry& g, int H, unsigned (&areg)[RF > 0 ? RF : 1][4],
                                       F&& w) {
    if constexpr (MMA) {
        constexpr int E = MmaShape<T>::E, K = MmaShape<T>::K;
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int gr = lane >> 2, q = lane & 3;
        const int kg = warp % g.ks, m0 = warp / g.ks * MPW;
        if (warp / g.ks >= g.mg) return;  // a warp outside the schedule (ks does not divide the warps)
        auto frag = [&](int j, unsigned (&a)[4]) {
            const int mtile = m0 + j % MPW, kt = kg + j / MPW * g.ks;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = mtile * 16 + gr + 8 * (i & 1);
                const int gate = r / g.ug, u = r % g.ug;
                unsigned word = 0;
#pragma unroll
                for (int e = 0; e < E; ++e) {
                    const int k = kt * K + E * q + 4 * E * (i >> 1) + e;
                    T v{};
                    if (mtile < g.mt && u < g.nu && k < H && kt < g.nk) v = mma_operand<T>(to_acc(w(gate, u, k)));
                    unsigned bits;
                    if constexpr (sizeof(T) == 2) {
                        bits = *reinterpret_cast<const unsigned short*>(&v);
                    } else {
                        bits = __float_as_uint(*reinterpret_cast<const float*>(&v));
                    }
                    word |= bits << (16 * e);
                }
                a[i] = word;
            }
        };
        const int npairs = MPW * g.kper;
#pragma unroll
        for (int j = 0; j < (RF > 0 ? RF : 0); ++j)
            if (j < npairs) frag(j, areg[j]);
        unsigned* ws = reinterpret_cast<unsigned*>(s.w);
        for (int j = RF; j < npairs; ++j) {
            unsigned a[4];
            frag(j, a);
            unsigned* dst = ws + (((size_t)warp * g.wpw + (j - RF)) * 32 + lane) * 4;
#pragma unroll
            for (int i = 0; i < 4; ++i) dst[i] = a[i];
        }
    } else {
        (void)areg;
        T* ws = reinterpret_cast<T*>(s.w);
        const int n = g.G * g.ug * g.ld;
        for (int idx = threadIdx.x; idx < n; idx += THREADS) {
            const int k = idx % g.ld, r = idx / g.ld;
            const int gate = r / g.ug, u = r % g.ug;
            ws[idx] = (u < g.nu && k < H) ? w(gate, u, k) : T{};
        }
    }
}

// The matvec of one phase over the rows of gates [glo, ghi): res[(ks,) row, b] = W[row, :] . x[b, :]
// with x = xbuf[p][slot0 + (PER_GATE ? gate - glo : 0)]. Ends with __syncthreads.
template <int RF, int NT, int MPW, int THREADS, bool PER_GATE, bool MMA, typename T>
__device__ __forceinline__ void matvec(const Smem<T, MMA>& s, const Geometry& g, const unsigned (&areg)[RF > 0 ? RF : 1][4],
                                       int p, int glo, int ghi, int slot0, int B) {
    if constexpr (MMA) {
        constexpr int E = MmaShape<T>::E, K = MmaShape<T>::K;
        constexpr int RJ = (RF + MPW - 1) / MPW;  // k-tiles whose pairs start in registers
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int gr = lane >> 2, q = lane & 3;
        const int kg = warp % g.ks, m0 = warp / g.ks * MPW;
        if (warp / g.ks < g.mg) {
            const uint4* ws = reinterpret_cast<const uint4*>(s.w) + (size_t)warp * g.wpw * 32 + lane;
            float d[MPW][NT][4];
            bool act[MPW], reload[MPW];  // reload: the operand differs from the previous active m-tile's
            const T* xr[MPW];
            const T* last = nullptr;
#pragma unroll
            for (int i = 0; i < MPW; ++i) {
                const int mtile = m0 + i, gate = mtile * 16 / g.ug;
                act[i] = mtile < g.mt && gate >= glo && gate < ghi;
                xr[i] = s.x(p, slot0 + (PER_GATE && act[i] ? gate - glo : 0), g) + (size_t)gr * g.ld + E * q;
                reload[i] = PER_GATE ? act[i] && xr[i] != last : i == 0;  // one operand for all without PER_GATE
                if (act[i]) last = xr[i];
#pragma unroll
                for (int n = 0; n < NT; ++n)
#pragma unroll
                    for (int c = 0; c < 4; ++c) d[i][n][c] = 0.f;
            }
            // k-tile jj of this warp: its h fragment once per operand, then one MMA per m-tile and batch tile
            auto ktile = [&](int jj, auto&& a_of) {
                const int kt = kg + jj * g.ks;
                if (kt >= g.nk) return;
                unsigned b[NT][2];
#pragma unroll
                for (int i = 0; i < MPW; ++i) {
                    if (reload[i]) {
                        const T* xb = xr[i] + kt * K;
#pragma unroll
                        for (int n = 0; n < NT; ++n) {
                            b[n][0] = word_at(xb + n * 8 * g.ld);
                            b[n][1] = word_at(xb + n * 8 * g.ld + 4 * E);
                        }
                    }
                    if (!act[i]) continue;
                    unsigned a[4];
                    a_of(jj * MPW + i, a);
#pragma unroll
                    for (int n = 0; n < NT; ++n) mma_16x8<T>(d[i][n], a, b[n]);
                }
            };
            auto from_smem = [&](int j, unsigned (&a)[4]) {
                const uint4 v = ws[(size_t)(j - RF) * 32];
                a[0] = v.x;
                a[1] = v.y;
                a[2] = v.z;
                a[3] = v.w;
            };
#pragma unroll
            for (int jj = 0; jj < RJ; ++jj)
                if (jj < g.kper)
                    ktile(jj, [&](int j, unsigned (&a)[4]) {
                        if (j < RF) {
#pragma unroll
                            for (int c = 0; c < 4; ++c) a[c] = areg[j < RF ? j : 0][c];
                        } else {
                            from_smem(j, a);
                        }
                    });
            for (int jj = RJ; jj < g.kper; ++jj) ktile(jj, from_smem);
            // partial sums of k group kg: plane kg of res (D fragment layout)
            const int rows = g.G * g.ug;
#pragma unroll
            for (int i = 0; i < MPW; ++i) {
                if (!act[i]) continue;
                float* out = s.res + ((size_t)kg * rows + (m0 + i) * 16) * g.bp;
#pragma unroll
                for (int n = 0; n < NT; ++n)
#pragma unroll
                    for (int c = 0; c < 4; ++c) out[(gr + 8 * (c >> 1)) * g.bp + n * 8 + 2 * q + (c & 1)] = d[i][n][c];
            }
        }
    } else {
        (void)areg;
        using A = acc_t<T>;
        const T* ws = reinterpret_cast<const T*>(s.w);
        A* res = reinterpret_cast<A*>(s.res);
        const int r0 = glo * g.ug, n = (ghi - glo) * g.ug * B;
        for (int idx = threadIdx.x; idx < n; idx += THREADS) {
            const int r = r0 + idx / B, b = idx % B;
            const int gate = r / g.ug;
            if (r % g.ug >= g.nu) continue;
            const T* w = ws + (size_t)r * g.ld;
            const T* x = s.x(p, slot0 + (PER_GATE ? gate - glo : 0), g) + (size_t)b * g.ld;
            A acc = A(0);
            for (int k = 0; k < g.kpad; ++k) acc += to_acc(w[k]) * to_acc(x[k]);
            res[(size_t)r * B + b] = acc;
        }
    }
    __syncthreads();
}

// The sum for (gate, local row u, batch b) after matvec (k-split partials added in order).
template <bool MMA, typename T>
__device__ __forceinline__ acc_t<T> result(const Smem<T, MMA>& s, const Geometry& g, int gate, int u, int b, int B) {
    const int r = gate * g.ug + u;
    if constexpr (MMA) {
        float v = 0.f;
        for (int ks = 0; ks < g.ks; ++ks) v += s.res[((size_t)ks * g.G * g.ug + r) * g.bp + b];
        return v;
    } else {
        return reinterpret_cast<const acc_t<T>*>(s.res)[(size_t)r * B + b];
    }
}

// An exchanged value in the storage type (MMA: tf32-rounded fp32 or the 16-bit type).
template <bool MMA, typename T>
__device__ __forceinline__ T exch(acc_t<T> v) {
    if constexpr (MMA) {
        return mma_operand<T>(v);
    } else {
        return from_acc<T>(v);
    }
}

}  // namespace cl

// =============================================================================================
// Forward. Template parameters as in forward.cu, plus NC (CTAs in the cluster), RF (weight
// fragment pairs per warp kept in registers, MMA), NT (8-row batch tiles, MMA: B <= 8 * NT), MPW
// (m-tiles per warp, MMA: its accumulators are NT x MPW fragments).
template <int KIND, int ACT, int RACT, bool RESET_AFTER, typename T, bool REC_MASK, bool MMA, int NC, int RF, int NT,
          int MPW, int THREADS, int DIRS>
__global__ void FRNN_CLUSTER_DIMS(NC) __launch_bounds__(THREADS, 1) rnn_cluster_forward(
    const T* __restrict__ xg,                      // (T, B, GH) input projection incl. b_ih
    const T* __restrict__ w_hh,                    // (GH, H)
    const T* __restrict__ b_hh,                    // (GH) or nullptr
    const T* __restrict__ h0,                      // (B, H) or nullptr (zeros)
    const T* __restrict__ c0,                      // (B, H) or nullptr (zeros; LSTM only)
    const unsigned char* __restrict__ mask,        // (T, B) or nullptr (all valid)
    const acc_t<T>* __restrict__ rec_mask,         // (G, B, H), read only when REC_MASK
    T* __restrict__ out,                           // (T, B, H)
    T* __restrict__ hT,                            // (B, H)
    T* __restrict__ cT,                            // (B, H) LSTM only
    acc_t<T>* __restrict__ gates,                  // (T, B, GH) post-activation gates
    acc_t<T>* __restrict__ extra,                  // (T, B, H) LSTM c_t; GRU reset_after h W_n^T + b_hn
    unsigned* status,                              // bit 0: a wait timed out (or nullptr)
    int steps, int B, int H,
    int U,                                         // units per CTA (multiple of 8)
    int KS,                                        // k splits of the MMA schedule
    int reverse) {                                 // cluster 0 reversed; with two clusters, 1 the other way
    using A = acc_t<T>;
    constexpr int G = Gates<KIND>::value;
    constexpr bool TWO_PHASE = KIND == GRU && !RESET_AFTER;
    constexpr int NG1 = TWO_PHASE ? 2 : G;          // gates of the first matvec
    constexpr int NST = REC_MASK ? NG1 : 1;         // slots of exchange 0 (h, one per gate with dropout)
    constexpr int RH = REC_MASK ? 2 : 1;            // slot of r*h (exchange 1, GRU classic)
    constexpr int SLOTS = REC_MASK ? G : (TWO_PHASE ? 2 : 1);
    constexpr int NW = THREADS / 32;
    static_assert(!MMA || sizeof(T) <= 4, "no tensor-core path for double");
    static_assert(NC >= 1 && NC <= 16, "a cluster has 1 to 16 CTAs");

    if constexpr (DIRS == 2) {  // both directions in one launch: one cluster each (recurrence.cuh)
        const int dir = blockIdx.x / NC;
        forward_direction<G>(dir, steps, B, H, xg, w_hh, b_hh, h0, c0, rec_mask, out, hT, cT, gates, extra);
        reverse ^= dir;
    }
    const int me = (int)cl::rank();
    const cl::Geometry g = cl::geometry<T, MMA>(G, H, B, U, NT, KS, NW, RF, MPW, SLOTS, me);
    const cl::Smem<T, MMA> s = cl::carve<T, MMA, REC_MASK>(dynamic_smem(), g, B, G, sizeof(T), NW);
    const int GH = G * H, nu = g.nu, j0 = g.j0;
    A* hs = s.st0;  // owned h (acc), [b][u]
    A* cs = s.st1;  // owned c (LSTM) / z (GRU classic)
    unsigned areg[RF > 0 ? RF : 1][4];

    cl::init_exchange<T, MMA, THREADS>(s, g);
    const unsigned rx0 = cl::rx_bytes(H, U, NC, me, NST, B, sizeof(T));
    const unsigned rx1 = TWO_PHASE ? cl::rx_bytes(H, U, NC, me, 1, B, sizeof(T)) : 0u;
    if (threadIdx.x == 0 && NC > 1) {  // arm: exchange 0 parities 1 and 0 (steps 1 and 2), exchange 1 both
        cl::arrive_expect_tx(&s.bars[1], rx0);
        cl::arrive_expect_tx(&s.bars[0], rx0);
        if (TWO_PHASE) {
            cl::arrive_expect_tx(&s.bars[2], rx1);
            cl::arrive_expect_tx(&s.bars[3], rx1);
        }
    }

    cl::load_w<RF, MPW, THREADS>(s, g, H, areg, [&](int gate, int u, int k) { return w_hh[(size_t)(gate * H + j0 + u) * H + k]; });
    for (int i = threadIdx.x; i < G * U; i += THREADS) {
        const int gate = i / U, u = i % U;
        s.bias[i] = (b_hh && u < nu) ? to_acc(b_hh[gate * H + j0 + u]) : A(0);
    }
    if constexpr (REC_MASK)
        for (int i = threadIdx.x; i < G * B * U; i += THREADS) {
            const int u = i % U, gb = i / U;
            s.rm[i] = u < nu ? rec_mask[(size_t)gb * H + j0 + u] : A(0);
        }
    auto rmask = [&](int gate, int b, int u) {
        if constexpr (REC_MASK) return s.rm[((size_t)gate * B + b) * U + u];
        return A(1);
    };
    for (int i = threadIdx.x; i < B * U; i += THREADS) {
        const int b = i / U, u = i % U;
        hs[i] = (h0 && u < nu) ? to_acc(h0[(size_t)b * H + j0 + u]) : A(0);
        if constexpr (KIND == LSTM) cs[i] = (c0 && u < nu) ? to_acc(c0[(size_t)b * H + j0 + u]) : A(0);
    }
    // step 0 reads h0 of every unit from its own buffer (no exchange)
    for (int i = threadIdx.x; i < NST * B * H; i += THREADS) {
        const int k = i % H, b = (i / H) % B, slot = i / (H * B);
        A v = h0 ? to_acc(h0[(size_t)b * H + k]) : A(0);
        if constexpr (REC_MASK) v *= rec_mask[((size_t)slot * B + b) * H + k];
        s.x(0, slot, g)[(size_t)b * g.ld + k] = cl::exch<MMA, T>(v);
    }
    // prefetch: xg[t] of the owned units ([gate][b][u]) and the mask row of step s into stage[s & 1].
    // Rows of whole 16-byte pieces go by cp.async, waited for after the next exchange wait, so the
    // loads overlap the exchange; other shapes (or an unaligned xg) are copied by plain loads.
    const bool vec = (size_t)xg % 16 == 0 && ((size_t)H * sizeof(T)) % 16 == 0;
    auto prefetch = [&](int st) {
        const int t = reverse ? steps - 1 - st : st;
        T* x = reinterpret_cast<T*>(s.stage) + (size_t)(st & 1) * G * B * U;
        const T* xt = xg + (size_t)t * B * GH + j0;
        if (vec) {
            constexpr int V = 16 / (int)sizeof(T);
            const int per = nu / V;  // nu * sizeof(T) is a multiple of 16 here
            for (int i = threadIdx.x; i < G * B * per; i += THREADS) {
                const int c = i % per, row = i / per, b = row % B, gate = row / B;
                cl::copy_async16(x + (size_t)row * U + c * V, xt + (size_t)b * GH + gate * H + c * V);
            }
        } else {
            for (int i = threadIdx.x; i < G * B * nu; i += THREADS) {
                const int u = i % nu, row = i / nu, b = row % B, gate = row / B;
                x[(size_t)row * U + u] = xt[(size_t)b * GH + gate * H + u];
            }
        }
        for (int b = threadIdx.x; b < B; b += THREADS) s.valid[(st & 1) * B + b] = mask == nullptr || mask[(size_t)t * B + b] != 0;
    };
    if (steps > 0) prefetch(0);
    __syncthreads();

    for (int st = 0; st < steps; ++st) {
        const int t = reverse ? steps - 1 - st : st;
        const int p = st & 1, pn = p ^ 1;
        const bool more = st + 1 < steps;
        if (st > 0) cl::wait_exchange<NC>(s, 0, p, (st - 1) >> 1, st + 2 < steps ? rx0 : 0u, status);
        cl::wait_async();  // this step's stage (the matvec's closing barrier shows it to every thread)
        cl::matvec<RF, NT, MPW, THREADS, REC_MASK>(s, g, areg, p, 0, NG1, 0, B);

        const T* x = reinterpret_cast<const T*>(s.stage) + (size_t)p * G * B * U;
        const int* valid = s.valid + p * B;
        A* gt = gates + (size_t)t * B * GH;
        // h_t of (b, u): keep it, store it, and write it (masked per gate) into the next buffer
        auto finish = [&](int b, int u, A h, bool ok) {
            const int j = j0 + u;
            const A hn = ok ? h : hs[b * U + u];
            hs[b * U + u] = hn;
            out[((size_t)t * B + b) * H + j] = from_acc<T>(hn);
            if (more)
#pragma unroll
                for (int q = 0; q < NST; ++q) s.x(pn, q, g)[(size_t)b * g.ld + j] = cl::exch<MMA, T>(hn * rmask(q, b, u));
        };
        for (int i = threadIdx.x; i < B * nu; i += THREADS) {
            const int b = i / nu, u = i % nu, j = j0 + u;
            const bool ok = valid[b] != 0;
            auto xv = [&](int gate) { return to_acc(x[((size_t)gate * B + b) * U + u]); };
            auto pre = [&](int gate) { return xv(gate) + cl::result<MMA, T>(s, g, gate, u, b, B) + s.bias[gate * U + u]; };
            A* gr = gt + (size_t)b * GH;
            if constexpr (KIND == LSTM) {
                const A ig = activate<RACT>(pre(0)), fg = activate<RACT>(pre(1));
                const A gg = activate<ACT>(pre(2)), og = activate<RACT>(pre(3));
                gr[j] = ig;
                gr[H + j] = fg;
                gr[2 * H + j] = gg;
                gr[3 * H + j] = og;
                const A c_prev = cs[b * U + u];
                A c = fg * c_prev + ig * gg;
                const A h = og * activate<ACT>(c);
                c = ok ? c : c_prev;
                cs[b * U + u] = c;
                extra[((size_t)t * B + b) * H + j] = c;
                finish(b, u, h, ok);
            } else if constexpr (KIND == GRU && RESET_AFTER) {
                const A r = activate<RACT>(pre(0)), z = activate<RACT>(pre(1));
                const A hn = cl::result<MMA, T>(s, g, 2, u, b, B) + s.bias[2 * U + u];
                const A n = activate<ACT>(xv(2) + r * hn);
                gr[j] = r;
                gr[H + j] = z;
                gr[2 * H + j] = n;
                extra[((size_t)t * B + b) * H + j] = hn;
                finish(b, u, (A(1) - z) * n + z * hs[b * U + u], ok);
            } else if constexpr (KIND == GRU) {  // classic, first half: r, z, and r*h into exchange 1
                const A r = activate<RACT>(pre(0)), z = activate<RACT>(pre(1));
                gr[j] = r;
                gr[H + j] = z;
                cs[b * U + u] = z;
                s.x(p, RH, g)[(size_t)b * g.ld + j] = cl::exch<MMA, T>(r * hs[b * U + u] * rmask(2, b, u));
            } else {
                const A h = activate<ACT>(pre(0));
                gr[j] = h;
                finish(b, u, h, ok);
            }
        }
        if constexpr (TWO_PHASE) {
            cl::fence_proxy_async();
            __syncthreads();
            cl::push_slices<NC, THREADS>(s, g, p, RH, 1, 1, B, me);
            cl::wait_exchange<NC>(s, 1, p, st >> 1, st + 2 < steps ? rx1 : 0u, status);
            __syncthreads();  // the own slice of r*h, written by other threads
            cl::matvec<RF, NT, MPW, THREADS, false>(s, g, areg, p, 2, 3, RH, B);
            for (int i = threadIdx.x; i < B * nu; i += THREADS) {
                const int b = i / nu, u = i % nu, j = j0 + u;
                const A z = cs[b * U + u];
                const A n = activate<ACT>(to_acc(x[((size_t)2 * B + b) * U + u]) + cl::result<MMA, T>(s, g, 2, u, b, B) + s.bias[2 * U + u]);
                gt[(size_t)b * GH + 2 * H + j] = n;
                finish(b, u, (A(1) - z) * n + z * hs[b * U + u], valid[b] != 0);
            }
        }
        cl::fence_proxy_async();  // this thread's slice writes, before the bulk copies read them
        __syncthreads();
        if (more) {
            cl::push_slices<NC, THREADS>(s, g, pn, 0, NST, 0, B, me);
            prefetch(st + 1);  // read after the next matvec's closing barrier
        }
    }

    for (int i = threadIdx.x; i < B * nu; i += THREADS) {
        const int b = i / nu, u = i % nu;
        hT[(size_t)b * H + j0 + u] = from_acc<T>(hs[b * U + u]);
        if constexpr (KIND == LSTM) cT[(size_t)b * H + j0 + u] = from_acc<T>(cs[b * U + u]);
    }
    cl::cluster_sync();  // no CTA leaves while a copy into it could still be in flight
}

// =============================================================================================
// Backward: dxg, dh0, dc0 (see backward.cu for the math). CTA `me` owns units k in [k0, k0 + nu):
// its W slice is rows (g, kl) = W_g[:, k0 + kl]; exchange 0 carries dA of the gates that phase A
// knows, exchange 1 (GRU classic) the reset gate's dA found after d(r*h) = dA_n W_n.
template <int KIND, int ACT, int RACT, bool RESET_AFTER, typename T, bool REC_MASK, bool MMA, int NC, int RF, int NT,
          int MPW, int THREADS, int DIRS>
__global__ void FRNN_CLUSTER_DIMS(NC) __launch_bounds__(THREADS, 1) rnn_cluster_backward(
    const T* __restrict__ w_hh,                    // (GH, H)
    const T* __restrict__ h0,                      // (B, H) or nullptr
    const T* __restrict__ c0,                      // (B, H) or nullptr (LSTM)
    const unsigned char* __restrict__ mask,        // (T, B) or nullptr
    const acc_t<T>* __restrict__ rec_mask,         // (G, B, H), REC_MASK only
    const T* __restrict__ out,                     // (T, B, H) forward h_t
    const acc_t<T>* __restrict__ gates,            // (T, B, GH)
    const acc_t<T>* __restrict__ extra,            // (T, B, H) LSTM c_t; GRU reset_after hn
    const T* __restrict__ dout,                    // (T, B, H) or nullptr
    const T* __restrict__ dhT,                     // (B, H) or nullptr
    const T* __restrict__ dcT,                     // (B, H) or nullptr
    T* __restrict__ dxg,                           // (T, B, GH)
    T* __restrict__ dh0,                           // (B, H)
    T* __restrict__ dc0,                           // (B, H) LSTM
    unsigned* status,                              // bit 0: a wait timed out (or nullptr)
    int steps, int B, int H, int U, int KS, int reverse) {
    using A = acc_t<T>;
    constexpr int G = Gates<KIND>::value;
    constexpr bool TWO_PHASE = KIND == GRU && !RESET_AFTER;
    constexpr int E0 = TWO_PHASE ? 1 : 0;  // first slot of exchange 0 (GRU classic: z, n)
    constexpr int NPIN = G + 3;            // staged per (b, u): gates, extra, previous (c or h), dout
    constexpr int NW = THREADS / 32;
    static_assert(!MMA || sizeof(T) <= 4, "no tensor-core path for double");
    static_assert(NC >= 1 && NC <= 16, "a cluster has 1 to 16 CTAs");

    if constexpr (DIRS == 2) {  // both directions in one launch: one cluster each (recurrence.cuh)
        const int dir = blockIdx.x / NC;
        backward_direction<G>(dir, steps, B, H, w_hh, h0, c0, rec_mask, out, gates, extra, dout, dhT, dcT, dxg, dh0,
                              dc0);
        reverse ^= dir;
    }
    const int me = (int)cl::rank();
    const cl::Geometry g = cl::geometry<T, MMA>(G, H, B, U, NT, KS, NW, RF, MPW, G, me);
    const cl::Smem<T, MMA> s = cl::carve<T, MMA, REC_MASK>(dynamic_smem(), g, B, NPIN, sizeof(A), NW);
    const int GH = G * H, nu = g.nu, k0 = g.j0;
    A* dsh = s.st0;
    A* dsc = s.st1;
    unsigned areg[RF > 0 ? RF : 1][4];

    cl::init_exchange<T, MMA, THREADS>(s, g);
    const unsigned rx0 = cl::rx_bytes(H, U, NC, me, G - E0, B, sizeof(T));
    const unsigned rx1 = TWO_PHASE ? cl::rx_bytes(H, U, NC, me, 1, B, sizeof(T)) : 0u;
    if (threadIdx.x == 0 && NC > 1) {
        for (int p = 0; p < 2; ++p) {
            cl::arrive_expect_tx(&s.bars[p], rx0);
            if (TWO_PHASE) cl::arrive_expect_tx(&s.bars[2 + p], rx1);
        }
    }
    cl::load_w<RF, MPW, THREADS>(s, g, H, areg, [&](int gate, int u, int j) { return w_hh[(size_t)(gate * H + j) * H + k0 + u]; });
    if constexpr (REC_MASK)
        for (int i = threadIdx.x; i < G * B * U; i += THREADS) {
            const int u = i % U, gb = i / U;
            s.rm[i] = u < nu ? rec_mask[(size_t)gb * H + k0 + u] : A(0);
        }
    auto rmask = [&](int gate, int b, int u) {
        if constexpr (REC_MASK) return s.rm[((size_t)gate * B + b) * U + u];
        return A(1);
    };
    for (int i = threadIdx.x; i < B * U; i += THREADS) {
        const int b = i / U, u = i % U;
        dsh[i] = (dhT && u < nu) ? to_acc(dhT[(size_t)b * H + k0 + u]) : A(0);
        if constexpr (KIND == LSTM) dsc[i] = (dcT && u < nu) ? to_acc(dcT[(size_t)b * H + k0 + u]) : A(0);
    }
    // prefetch what phase A of iteration i needs (independent of the recurrence) into stage[i & 1]
    auto prefetch = [&](int i) {
        const int sidx = steps - 1 - i;
        const int t = reverse ? steps - 1 - sidx : sidx;
        const int tp = reverse ? t + 1 : t - 1;
        A* pin = reinterpret_cast<A*>(s.stage) + (size_t)(i & 1) * B * U * NPIN;
        for (int idx = threadIdx.x; idx < B * nu; idx += THREADS) {
            const int b = idx / nu, u = idx % nu, k = k0 + u;
            A* v = pin + ((size_t)b * U + u) * NPIN;
            const acc_t<T>* gr = gates + ((size_t)t * B + b) * GH;
#pragma unroll
            for (int q = 0; q < G; ++q) v[q] = gr[q * H + k];
            v[G] = (KIND == LSTM || (KIND == GRU && RESET_AFTER)) ? extra[((size_t)t * B + b) * H + k] : A(0);
            if constexpr (KIND == LSTM)
                v[G + 1] = sidx > 0 ? extra[((size_t)tp * B + b) * H + k] : (c0 ? to_acc(c0[(size_t)b * H + k]) : A(0));
            else
                v[G + 1] = sidx > 0 ? to_acc(out[((size_t)tp * B + b) * H + k]) : (h0 ? to_acc(h0[(size_t)b * H + k]) : A(0));
            v[G + 2] = dout ? to_acc(dout[((size_t)t * B + b) * H + k]) : A(0);
        }
        for (int b = threadIdx.x; b < B; b += THREADS) s.valid[(i & 1) * B + b] = mask == nullptr || mask[(size_t)t * B + b] != 0;
    };
    if (steps > 0) prefetch(0);
    __syncthreads();

    for (int i = 0; i < steps; ++i) {
        const int sidx = steps - 1 - i;
        const int t = reverse ? steps - 1 - sidx : sidx;
        const int p = i & 1;
        const A* pin = reinterpret_cast<const A*>(s.stage) + (size_t)p * B * U * NPIN;
        const int* valid = s.valid + p * B;
        T* dxt = dxg + (size_t)t * B * GH;

        // ---- phase A: elementwise over the owned units
        for (int idx = threadIdx.x; idx < B * nu; idx += THREADS) {
            const int b = idx / nu, u = idx % nu, k = k0 + u;
            const bool ok = valid[b] != 0;
            const A* v = pin + ((size_t)b * U + u) * NPIN;
            const A dh = dsh[b * U + u] + v[G + 2];
            A d[G];
            A direct = A(0);
            if constexpr (KIND == LSTM) {
                const A ig = v[0], fg = v[1], gg = v[2], og = v[3];
                const A tc = activate<ACT>(v[G]);
                const A dc_in = dsc[b * U + u];
                const A dc = dc_in + dh * og * activate_grad<ACT>(tc);
                d[0] = dc * gg * activate_grad<RACT>(ig);
                d[1] = dc * v[G + 1] * activate_grad<RACT>(fg);
                d[2] = dc * ig * activate_grad<ACT>(gg);
                d[3] = dh * tc * activate_grad<RACT>(og);
                dsc[b * U + u] = ok ? dc * fg : dc_in;
            } else if constexpr (KIND == GRU) {
                const A r = v[0], z = v[1], n = v[2];
                const A dn = dh * (A(1) - z) * activate_grad<ACT>(n);
                d[1] = dh * (v[G + 1] - n) * activate_grad<RACT>(z);
                d[2] = dn;
                d[0] = RESET_AFTER ? dn * v[G] * activate_grad<RACT>(r) : A(0);
                direct = dh * z;
            } else {
                d[0] = dh * activate_grad<ACT>(v[0]);
            }
#pragma unroll
            for (int q = 0; q < G; ++q) {
                if (TWO_PHASE && q == 0) continue;  // found in phase B1
                dxt[(size_t)b * GH + q * H + k] = from_acc<T>(ok ? d[q] : A(0));
                A da = ok ? d[q] : A(0);
                if (KIND == GRU && RESET_AFTER && q == 2) da *= v[0];  // dA_n = dn * r
                s.x(p, q, g)[(size_t)b * g.ld + k] = cl::exch<MMA, T>(da);
            }
            dsh[b * U + u] = ok ? direct : dh;
        }
        cl::fence_proxy_async();
        __syncthreads();
        cl::push_slices<NC, THREADS>(s, g, p, E0, G - E0, 0, B, me);
        if (i + 1 < steps) prefetch(i + 1);
        cl::wait_exchange<NC>(s, 0, p, i >> 1, i + 2 < steps ? rx0 : 0u, status);

        // ---- phase B: dh_{t-1}[b, k] += sum_g m_g[b, k] * (dA_g[b, :] . W_g[:, k])
        if constexpr (TWO_PHASE) {
            cl::matvec<RF, NT, MPW, THREADS, false>(s, g, areg, p, 2, 3, 2, B);
            for (int idx = threadIdx.x; idx < B * nu; idx += THREADS) {
                const int b = idx / nu, u = idx % nu, k = k0 + u;
                const bool ok = valid[b] != 0;
                const A* v = pin + ((size_t)b * U + u) * NPIN;
                const A pr = cl::result<MMA, T>(s, g, 2, u, b, B);  // d(r*h)[b, k]
                const A r = v[0];
                const A d_r = pr * v[G + 1] * rmask(2, b, u) * activate_grad<RACT>(r);
                dxt[(size_t)b * GH + k] = from_acc<T>(ok ? d_r : A(0));
                s.x(p, 0, g)[(size_t)b * g.ld + k] = cl::exch<MMA, T>(ok ? d_r : A(0));
                if (ok) dsh[b * U + u] += rmask(2, b, u) * r * pr;
            }
            cl::fence_proxy_async();
            __syncthreads();
            cl::push_slices<NC, THREADS>(s, g, p, 0, 1, 1, B, me);
            cl::wait_exchange<NC>(s, 1, p, i >> 1, i + 2 < steps ? rx1 : 0u, status);
            cl::matvec<RF, NT, MPW, THREADS, true>(s, g, areg, p, 0, 2, 0, B);
            for (int idx = threadIdx.x; idx < B * nu; idx += THREADS) {
                const int b = idx / nu, u = idx % nu;
                dsh[b * U + u] += rmask(0, b, u) * cl::result<MMA, T>(s, g, 0, u, b, B) +
                                  rmask(1, b, u) * cl::result<MMA, T>(s, g, 1, u, b, B);
            }
        } else {
            cl::matvec<RF, NT, MPW, THREADS, true>(s, g, areg, p, 0, G, 0, B);
            for (int idx = threadIdx.x; idx < B * nu; idx += THREADS) {
                const int b = idx / nu, u = idx % nu;
                A sum = A(0);
#pragma unroll
                for (int q = 0; q < G; ++q) sum += rmask(q, b, u) * cl::result<MMA, T>(s, g, q, u, b, B);
                dsh[b * U + u] += sum;
            }
        }
        __syncthreads();
    }

    for (int idx = threadIdx.x; idx < B * nu; idx += THREADS) {
        const int b = idx / nu, u = idx % nu;
        dh0[(size_t)b * H + k0 + u] = from_acc<T>(dsh[b * U + u]);
        if constexpr (KIND == LSTM) dc0[(size_t)b * H + k0 + u] = from_acc<T>(dsc[b * U + u]);
    }
    cl::cluster_sync();
}

}  // namespace frnn

#define FRNN_INSTANTIATE_CLUSTER_FORWARD(KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, NC, RF, NT, MPW, THREADS, DIRS)            \
    template __global__ void frnn::rnn_cluster_forward<KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, NC, RF, NT, MPW, THREADS, DIRS>( \
        const T*, const T*, const T*, const T*, const T*, const unsigned char*, const frnn::acc_t<T>*, T*, T*, T*,         \
        frnn::acc_t<T>*, frnn::acc_t<T>*, unsigned*, int, int, int, int, int, int);
#define FRNN_INSTANTIATE_CLUSTER_BACKWARD(KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, NC, RF, NT, MPW, THREADS, DIRS)            \
    template __global__ void frnn::rnn_cluster_backward<KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, NC, RF, NT, MPW, THREADS, DIRS>( \
        const T*, const T*, const T*, const unsigned char*, const frnn::acc_t<T>*, const T*, const frnn::acc_t<T>*,         \
        const frnn::acc_t<T>*, const T*, const T*, const T*, T*, T*, T*, unsigned*, int, int, int, int, int, int);

// Standalone compilation (CI: nvcc -arch=sm_90a) builds every code path: each cell, both GRU
// forms, tensor cores (bf16 / fp16 / tf32, weights partly in registers) and FMA (fp32, fp64), one
// direction and both.
#define FRNN_CLUSTER_DEFAULT_CONFIGS(X)                              \
    X(0, 0, 2, true, frnn::bf16, false, true, 16, 16, 2, 3, 384, 1) \
    X(0, 0, 2, true, frnn::bf16, false, true, 16, 16, 2, 3, 384, 2) \
    X(0, 0, 2, true, frnn::f16, true, true, 8, 0, 1, 1, 256, 1)     \
    X(1, 0, 2, true, frnn::bf16, true, true, 8, 4, 2, 2, 256, 2)    \
    X(1, 0, 2, false, float, true, true, 8, 4, 2, 2, 256, 1)        \
    X(1, 4, 3, false, float, false, false, 4, 0, 1, 1, 256, 1)      \
    X(2, 0, 2, true, double, true, false, 4, 0, 1, 1, 256, 2)       \
    X(2, 1, 2, true, frnn::bf16, false, true, 2, 8, 1, 1, 128, 1)

#ifndef FRNN_NO_DEFAULT_INSTANTIATIONS
FRNN_CLUSTER_DEFAULT_CONFIGS(FRNN_INSTANTIATE_CLUSTER_FORWARD)
FRNN_CLUSTER_DEFAULT_CONFIGS(FRNN_INSTANTIATE_CLUSTER_BACKWARD)
#endif
