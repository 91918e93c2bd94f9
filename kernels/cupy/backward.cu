// Persistent backward recurrence: ONE cooperative launch runs all T steps in reverse processing
// order and produces dxg (the gradient of the gate pre-activations), dh0 and dc0.
//
// Dimensions and layouts: see recurrence.cuh; template parameters as in forward.cu.
// Block `blk` owns hidden units [blk*U, blk*U + nu) and keeps the matching COLUMNS of W_hh for
// every gate in shared memory (row (g, kl) of the slice = w_hh[g*H : (g+1)*H, k0 + kl]).
//
// Per step (processing index s from T-1 down to 0):
//   phase A (owned units j, elementwise): dh = dh_rec + dout[t]; gate gradients from the saved
//     gates / extra; write dxg[t] and dA (the gradients that flow into h W^T, in the storage type
//     (bf16 / fp16 for half inputs: half the exchanged bytes; sums stay fp32), double-buffered by
//     step parity); keep the direct part of dh_{t-1} (GRU z*dh) and dc_{t-1}.
//   load phase B's epilogue inputs of this step and phase A's inputs of the next (the thread's
//     first item of each), grid barrier: those loads are under way while the block waits
//   phase B stages dA rows with 16-byte loads (stage_tile)
//   phase B (owned units k, matvec): dh_rec[b, k] = direct + sum_g m_g[b, k] sum_j dA_g[b, j] W_g[j, k]
//   GRU reset_after=False: (r*h) W_n^T couples r to every unit, so phase B first computes
//     d(r*h) = dA_n W_n for the owned units, then dr, then (after a second barrier) the r, z terms.
// A masked step passes dh and dc through unchanged and writes dxg[t] = 0 (by selection).
// No atomics: every sum has one owner and a fixed order, so results are deterministic.
#include "cupy/recurrence.cuh"

namespace frnn {

// __launch_bounds__(THREADS, 1): one block per SM, as in forward.cu.
template <int KIND, int ACT, int RACT, bool RESET_AFTER, typename T, bool REC_MASK, bool MMA, int ROWS, int THREADS,
          int DIRS>
__global__ void __launch_bounds__(THREADS, 1) rnn_backward(
    const T* __restrict__ w_hh,                    // (GH, H)
    const T* __restrict__ h0,                      // (B, H) or nullptr (zeros)
    const T* __restrict__ c0,                      // (B, H) or nullptr (zeros; LSTM only)
    const unsigned char* __restrict__ mask,        // (T, B) or nullptr (all valid)
    const acc_t<T>* __restrict__ rec_mask,         // (G, B, H), read only when REC_MASK
    const T* __restrict__ out,                     // (T, B, H) forward outputs (h_t)
    const acc_t<T>* __restrict__ gates,            // (T, B, GH) forward gates (post-activation)
    const acc_t<T>* __restrict__ extra,            // (T, B, H) LSTM c_t; GRU reset_after hn
    const T* __restrict__ dout,                    // (T, B, H) or nullptr (zeros)
    const T* __restrict__ dhT,                     // (B, H) or nullptr (zeros)
    const T* __restrict__ dcT,                     // (B, H) or nullptr (zeros)
    T* dxg,                                        // (T, B, GH)
    T* dh0,                                        // (B, H)
    T* dc0,                                        // (B, H) LSTM only, else unused
    acc_t<T>* state,                               // (2, B, H) scratch: owned dh, dc
    T* scratch,                                    // (2, B, GH) scratch: dA (storage type), double-buffered
    unsigned* barrier,                             // zeroed counter (FRNN_ATOMIC_BARRIER only)
    int steps, int B, int H,
    int U,                                         // hidden units per block (ceil(H / U) blocks a direction)
    int BB,                                        // batch rows per staged tile
    int reverse) {                                 // direction 0 reversed; with two groups, 1 the other way
    using A = acc_t<T>;
    constexpr int G = Gates<KIND>::value;
    constexpr bool TWO_PHASE = KIND == GRU && !RESET_AFTER;
    static_assert(ROWS >= 1 && ROWS <= 32 && THREADS % 32 == 0, "bad tile configuration");
    static_assert(!MMA || sizeof(T) <= 4, "no tensor-core path for double");

    // G staged copies (one per gate) of the batch tile, then the weight slice
    const Smem<T, MMA> sm = carve_smem<T, MMA, THREADS>(dynamic_smem(), G, BB, G, U, H);

    const int GH = G * H;
    int blk = blockIdx.x;
    if constexpr (DIRS == 2) {  // both directions in one launch (recurrence.cuh)
        const int nblk = (H + U - 1) / U, dir = blk / nblk;
        backward_direction<G>(dir, steps, B, H, w_hh, h0, c0, rec_mask, out, gates, extra, dout, dhT, dcT, dxg, dh0,
                              dc0);
        shift(state, dir, (size_t)2 * B * H);
        shift(scratch, dir, (size_t)2 * B * GH);
        reverse ^= dir;
        blk -= dir * nblk;
    }
    const int k0 = blk * U;
    const int nu = max(0, min(U, H - k0));
    A* dstate_h = state;
    A* dstate_c = state + (size_t)B * H;
    unsigned epoch = 0;

    load_weights<THREADS>(sm, G, nu, H, [&](int g, int kl, int j) { return w_hh[(size_t)(g * H + j) * H + k0 + kl]; });
    // the weight fragments of the warp's MMA item in registers for dh's matvec (all gates; GRU
    // reset_after=False: r and z), the rest in shared memory
    const auto frags = held_frags<TWO_PHASE ? 2 : G, THREADS>(sm, nu, H);
    for_owned<THREADS>(B, H, k0, nu, [&](int i) {
        dstate_h[i] = dhT ? to_acc(dhT[i]) : A(0);
        if constexpr (KIND == LSTM) dstate_c[i] = dcT ? to_acc(dcT[i]) : A(0);
    });

    // Everything of step s that does not depend on the recurrent gradient is loaded ahead, before
    // the grid barrier that precedes its use, and used only after it (kept as loaded): phase A's
    // inputs for the thread's first PF items before the previous step's barrier, phase B's
    // epilogue inputs (epilogue_item) before this step's.
    constexpr int PF = 1;
    auto time_of = [&](int s) { return reverse ? steps - 1 - s : s; };
    auto prev_of = [&](int t) { return reverse ? t + 1 : t - 1; };
    struct AheadA {
        A gate[G];             // gates[t, b, g*H + j]
        A ex;                  // extra[t, b, j]: LSTM c_t, GRU reset_after hn
        A c_prev;              // LSTM c_{t-1}
        T hp;                  // GRU: h_{t-1}[b, j] (out[tp], h0 at s = 0)
        T dout;                // dout[t, b, j] (zero without dout)
        unsigned char valid;   // mask[t, b]
    };
    auto fetch_a = [&](AheadA& in, int s, int b, int j) {
        const int t = time_of(s), tp = prev_of(t);
        const A* gr = gates + ((size_t)t * B + b) * GH + j;
#pragma unroll
        for (int g = 0; g < G; ++g) in.gate[g] = gr[g * H];
        if constexpr (KIND == LSTM || (KIND == GRU && RESET_AFTER)) in.ex = extra[((size_t)t * B + b) * H + j];
        if constexpr (KIND == LSTM)
            in.c_prev = s > 0 ? extra[((size_t)tp * B + b) * H + j] : (c0 ? to_acc(c0[b * H + j]) : A(0));
        if constexpr (KIND == GRU) in.hp = s > 0 ? out[((size_t)tp * B + b) * H + j] : (h0 ? h0[b * H + j] : T{});
        in.dout = dout ? dout[((size_t)t * B + b) * H + j] : T{};
        in.valid = mask ? mask[(size_t)t * B + b] : (unsigned char)1;
    };
    struct AheadB {
        A m[G];                // rec_mask[g, b, k] (REC_MASK)
        A r;                   // GRU reset_after=False: gates[t, b, k] (r)
        T hp;                  //   h_{t-1}[b, k]
        unsigned char valid;   //   mask[t, b]
    };
    auto fetch_b = [&](AheadB& in, int s, int b, int k) {
        const int t = time_of(s), tp = prev_of(t);
        if constexpr (REC_MASK) {
#pragma unroll
            for (int g = 0; g < G; ++g) in.m[g] = rec_mask[((size_t)g * B + b) * H + k];
        }
        if constexpr (TWO_PHASE) {
            in.r = gates[((size_t)t * B + b) * GH + k];
            in.hp = s > 0 ? out[((size_t)tp * B + b) * H + k] : (h0 ? h0[b * H + k] : T{});
            in.valid = mask ? mask[(size_t)t * B + b] : (unsigned char)1;
        }
    };
    AheadA pa[PF];
    AheadB pb[PF];
    auto prefetch_a = [&](int s) {
#pragma unroll
        for (int q = 0; q < PF; ++q) {
            const int idx = threadIdx.x + q * THREADS;
            if (idx < B * nu) fetch_a(pa[q], s, idx / nu, k0 + idx % nu);
        }
    };
    auto prefetch_b = [&](int s) {
#pragma unroll
        for (int q = 0; q < PF; ++q) {
            int bb, kl;
            if (epilogue_item<ROWS, THREADS, MMA>(q, min(BB, B), nu, bb, kl)) fetch_b(pb[q], s, bb, k0 + kl);
        }
    };
    if (steps > 0) prefetch_a(steps - 1);

    for (int s = steps - 1; s >= 0; --s) {
        const int t = time_of(s);
        T* dA = scratch + (size_t)(s & 1) * B * GH;
        T* dxt = dxg + (size_t)t * B * GH;
        auto ahead_b = [&](auto slot, int b, int k) {  // the loaded-ahead inputs (slot >= 0), else load now
            if constexpr (decltype(slot)::value >= 0) {
                (void)b;
                (void)k;
                return pb[decltype(slot)::value];
            } else {
                AheadB in;
                fetch_b(in, s, b, k);
                return in;
            }
        };
        auto rmask = [&](const AheadB& in, int g) {
            if constexpr (REC_MASK) return in.m[g];
            (void)in;
            (void)g;
            return A(1);
        };

        __syncthreads();  // dstate was last written by other threads of this block (phase B)
        // ---- phase A: elementwise over the owned units
        auto phase_a = [&](int idx, auto slot) {
            const int b = idx / nu;
            const int j = k0 + idx % nu;
            AheadA in;
            if constexpr (decltype(slot)::value >= 0) {
                in = pa[decltype(slot)::value];
            } else {
                fetch_a(in, s, b, j);
            }
            const bool valid = in.valid != 0;
            T* da = dA + (size_t)b * GH;
            T* dx = dxt + (size_t)b * GH;
            const A dh = dstate_h[b * H + j] + to_acc(in.dout);
            A d[G];          // gradients of the gate pre-activations (dxg)
            A dr[G];         // gradients that flow into h W^T (dA)
            A direct = A(0);  // part of dh_{t-1} that does not go through W_hh
            if constexpr (KIND == LSTM) {
                const A i = in.gate[0], f = in.gate[1], g = in.gate[2], o = in.gate[3];
                const A c = in.ex;
                const A c_prev = in.c_prev;
                const A tc = activate<ACT>(c);
                const A dc_in = dstate_c[b * H + j];
                const A dc = dc_in + dh * o * activate_grad<ACT>(tc);
                d[0] = dc * g * activate_grad<RACT>(i);
                d[1] = dc * c_prev * activate_grad<RACT>(f);
                d[2] = dc * i * activate_grad<ACT>(g);
                d[3] = dh * tc * activate_grad<RACT>(o);
#pragma unroll
                for (int q = 0; q < 4; ++q) dr[q] = d[q];
                dstate_c[b * H + j] = valid ? dc * f : dc_in;
            } else if constexpr (KIND == GRU) {
                const A r = in.gate[0], z = in.gate[1], n = in.gate[2];
                const A hp = to_acc(in.hp);
                const A dn = dh * (A(1) - z) * activate_grad<ACT>(n);
                d[1] = dh * (hp - n) * activate_grad<RACT>(z);
                d[2] = dn;
                dr[1] = d[1];
                if constexpr (RESET_AFTER) {
                    const A hn = in.ex;
                    d[0] = dn * hn * activate_grad<RACT>(r);
                    dr[0] = d[0];
                    dr[2] = dn * r;
                } else {  // dr is known only after d(r*h) = dA_n W_n (phase B1)
                    (void)r;
                    d[0] = A(0);
                    dr[0] = A(0);
                    dr[2] = dn;
                }
                direct = dh * z;
            } else {
                d[0] = dh * activate_grad<ACT>(in.gate[0]);
                dr[0] = d[0];
            }
#pragma unroll
            for (int q = 0; q < G; ++q) {
                if (TWO_PHASE && q == 0) continue;  // written in phase B1
                dx[q * H + j] = from_acc<T>(valid ? d[q] : A(0));
                da[q * H + j] = from_acc<T>(valid ? dr[q] : A(0));
            }
            dstate_h[b * H + j] = valid ? direct : dh;
        };
        int idx = threadIdx.x;
        static_for<PF>([&](auto q) {  // the items loaded ahead first: their registers are free after
            if (idx < B * nu) phase_a(idx, q);
            idx += THREADS;
        });
        for (; idx < B * nu; idx += THREADS) phase_a(idx, Int<-1>{});
        prefetch_b(s);  // before the barrier: off the critical path
        if (s > 0) prefetch_a(s - 1);
        grid_sync(barrier, epoch);

        // ---- phase B: dh_{t-1}[b, k] += sum_g m_g[b, k] * (dA_g[b, :] . W_g[:, k])
        if constexpr (TWO_PHASE) {
            auto stage_n = [&](int b0, int nb) {
                stage_tile<1, false, THREADS>(sm, BB, nb, H, dA + (size_t)b0 * GH + 2 * H, (size_t)GH, H,
                                              static_cast<const A*>(nullptr), 0);
            };
            auto grad_r = [&](int b, int kl, const auto& pre, auto slot) {
                const int k = k0 + kl;
                const AheadB in = ahead_b(slot, b, k);
                const bool valid = in.valid != 0;
                const A r = in.r;
                const A hm = to_acc(in.hp) * rmask(in, 2);
                const A d_r = pre[0] * hm * activate_grad<RACT>(r);  // pre[0] = d(r*h)[b, k]
                dxt[(size_t)b * GH + k] = from_acc<T>(valid ? d_r : A(0));
                dA[(size_t)b * GH + k] = from_acc<T>(valid ? d_r : A(0));
                if (valid) dstate_h[b * H + k] += rmask(in, 2) * r * pre[0];
            };
            matvec_phase<1, 1, ROWS, THREADS, PF, 1>(sm, sm.gate(2), WFrags<T, 1, 0>{}, nu, B, BB, H, stage_n, grad_r);
            grid_sync(barrier, epoch);
            auto stage_rz = [&](int b0, int nb) {
                stage_tile<2, false, THREADS>(sm, BB, nb, H, dA + (size_t)b0 * GH, (size_t)GH, 2 * H,
                                              static_cast<const A*>(nullptr), 0);
            };
            auto grad_h = [&](int b, int kl, const auto& pre, auto slot) {
                const int k = k0 + kl;
                A m0 = A(1), m1 = A(1);
                if constexpr (REC_MASK) {
                    const AheadB in = ahead_b(slot, b, k);
                    m0 = in.m[0];
                    m1 = in.m[1];
                }
                (void)slot;
                dstate_h[b * H + k] += m0 * pre[0] + m1 * pre[1];
            };
            matvec_phase<2, 2, ROWS, THREADS, PF, 2>(sm, sm.w, frags, nu, B, BB, H, stage_rz, grad_h);
        } else {
            auto stage_all = [&](int b0, int nb) {
                stage_tile<G, false, THREADS>(sm, BB, nb, H, dA + (size_t)b0 * GH, (size_t)GH, GH,
                                              static_cast<const A*>(nullptr), 0);
            };
            // without dropout masks only the sum over the gates is needed: on the MMA path the
            // gates accumulate into one tile (a quarter of the LSTM's result traffic)
            constexpr int NOUT = MMA && !REC_MASK ? 1 : G;
            auto grad_h = [&](int b, int kl, const auto& pre, auto slot) {
                const int k = k0 + kl;
                A sum = A(0);
                if constexpr (REC_MASK) {
                    const AheadB in = ahead_b(slot, b, k);
#pragma unroll
                    for (int g = 0; g < G; ++g) sum += in.m[g] * pre[g];
                } else {
                    (void)slot;
#pragma unroll
                    for (int o = 0; o < NOUT; ++o) sum += pre[o];
                }
                dstate_h[b * H + k] += sum;
            };
            matvec_phase<G, (G > 1 ? G : 1), ROWS, THREADS, PF, NOUT>(sm, sm.w, frags, nu, B, BB, H, stage_all, grad_h);
        }
    }

    __syncthreads();
    for_owned<THREADS>(B, H, k0, nu, [&](int i) {
        dh0[i] = from_acc<T>(dstate_h[i]);
        if constexpr (KIND == LSTM) dc0[i] = from_acc<T>(dstate_c[i]);
    });
}

}  // namespace frnn

#define FRNN_INSTANTIATE_BACKWARD(KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS, DIRS)                \
    template __global__ void frnn::rnn_backward<KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS, DIRS>( \
        const T*, const T*, const T*, const unsigned char*, const frnn::acc_t<T>*, const T*,                \
        const frnn::acc_t<T>*, const frnn::acc_t<T>*, const T*, const T*, const T*, T*, T*, T*,             \
        frnn::acc_t<T>*, T*, unsigned*, int, int, int, int, int, int);

// Standalone compilation builds every code path (FRNN_DEFAULT_CONFIGS in recurrence.cuh).
#ifndef FRNN_NO_DEFAULT_INSTANTIATIONS
FRNN_DEFAULT_CONFIGS(FRNN_INSTANTIATE_BACKWARD)
#endif
