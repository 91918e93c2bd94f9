// Persistent backward recurrence: ONE cooperative launch runs all T steps in reverse processing
// order and produces dxg (the gradient of the gate pre-activations), dh0 and dc0.
//
// Dimensions and layouts: see recurrence.cuh; template parameters as in forward.cu.
// Block `blk` owns hidden units [blk*U, blk*U + nu) and keeps the matching COLUMNS of W_hh for
// every gate in shared memory (row (g, kl) of the slice = w_hh[g*H : (g+1)*H, k0 + kl]).
//
// Per step (processing index s from T-1 down to 0):
//   phase A (owned units j, elementwise): dh = dh_rec + dout[t]; gate gradients from the saved
//     gates / extra; write dxg[t] and dA (the gradients that flow into h W^T, float/double,
//     double-buffered by step parity); keep the direct part of dh_{t-1} (GRU z*dh) and dc_{t-1}.
//   grid barrier
//   phase B (owned units k, matvec): dh_rec[b, k] = direct + sum_g m_g[b, k] sum_j dA_g[b, j] W_g[j, k]
//   GRU reset_after=False: (r*h) W_n^T couples r to every unit, so phase B first computes
//     d(r*h) = dA_n W_n for the owned units, then dr, then (after a second barrier) the r, z terms.
// A masked step passes dh and dc through unchanged and writes dxg[t] = 0 (by selection).
// No atomics: every sum has one owner and a fixed order, so results are deterministic.
#include "cupy/recurrence.cuh"

namespace frnn {

template <int KIND, int ACT, int RACT, bool RESET_AFTER, typename T, bool REC_MASK, bool MMA, int ROWS, int THREADS>
__global__ void __launch_bounds__(THREADS) rnn_backward(
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
    acc_t<T>* scratch,                             // (2, B, GH) scratch: dA, double-buffered
    unsigned* barrier,                             // zeroed counter (FRNN_ATOMIC_BARRIER only)
    int steps, int B, int H,
    int U,                                         // hidden units per block
    int BB,                                        // batch rows per staged tile
    int reverse) {
    using A = acc_t<T>;
    constexpr int G = Gates<KIND>::value;
    constexpr bool TWO_PHASE = KIND == GRU && !RESET_AFTER;
    static_assert(ROWS >= 1 && ROWS <= 32 && THREADS % 32 == 0, "bad tile configuration");
    static_assert(!MMA || sizeof(T) <= 4, "no tensor-core path for double");

    // G staged copies (one per gate) of the batch tile, then the weight slice
    const Smem<T, MMA> sm = carve_smem<T, MMA, THREADS>(dynamic_smem(), G, BB, G, U, H);

    const int GH = G * H;
    const int k0 = blockIdx.x * U;
    const int nu = max(0, min(U, H - k0));
    A* dstate_h = state;
    A* dstate_c = state + (size_t)B * H;
    unsigned epoch = 0;

    load_weights<THREADS>(sm, G, nu, H, [&](int g, int kl, int j) { return w_hh[(size_t)(g * H + j) * H + k0 + kl]; });
    for_owned<THREADS>(B, H, k0, nu, [&](int i) {
        dstate_h[i] = dhT ? to_acc(dhT[i]) : A(0);
        if constexpr (KIND == LSTM) dstate_c[i] = dcT ? to_acc(dcT[i]) : A(0);
    });

    for (int s = steps - 1; s >= 0; --s) {
        const int t = reverse ? steps - 1 - s : s;
        const int tp = reverse ? t + 1 : t - 1;
        A* dA = scratch + (size_t)(s & 1) * B * GH;
        const A* gt = gates + (size_t)t * B * GH;
        T* dxt = dxg + (size_t)t * B * GH;
        const T* hprev = s == 0 ? h0 : out + (size_t)tp * B * H;  // nullptr: zeros
        auto hprev_at = [&](int b, int k) { return hprev ? to_acc(hprev[(size_t)b * H + k]) : A(0); };
        auto valid_row = [&](int b) { return mask == nullptr || mask[(size_t)t * B + b] != 0; };
        auto rmask = [&](int g, int b, int k) {
            if constexpr (REC_MASK) return rec_mask[((size_t)g * B + b) * H + k];
            return A(1);
        };

        __syncthreads();  // dstate was last written by other threads of this block (phase B)
        // ---- phase A: elementwise over the owned units
        for (int idx = threadIdx.x; idx < B * nu; idx += THREADS) {
            const int b = idx / nu;
            const int j = k0 + idx % nu;
            const bool valid = valid_row(b);
            const A* gr = gt + (size_t)b * GH;
            A* da = dA + (size_t)b * GH;
            T* dx = dxt + (size_t)b * GH;
            const A dh = dstate_h[b * H + j] + (dout ? to_acc(dout[((size_t)t * B + b) * H + j]) : A(0));
            A d[G];          // gradients of the gate pre-activations (dxg)
            A dr[G];         // gradients that flow into h W^T (dA)
            A direct = A(0);  // part of dh_{t-1} that does not go through W_hh
            if constexpr (KIND == LSTM) {
                const A i = gr[j], f = gr[H + j], g = gr[2 * H + j], o = gr[3 * H + j];
                const A c = extra[((size_t)t * B + b) * H + j];
                const A c_prev = s > 0 ? extra[((size_t)tp * B + b) * H + j] : (c0 ? to_acc(c0[b * H + j]) : A(0));
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
                const A r = gr[j], z = gr[H + j], n = gr[2 * H + j];
                const A hp = hprev_at(b, j);
                const A dn = dh * (A(1) - z) * activate_grad<ACT>(n);
                d[1] = dh * (hp - n) * activate_grad<RACT>(z);
                d[2] = dn;
                dr[1] = d[1];
                if constexpr (RESET_AFTER) {
                    const A hn = extra[((size_t)t * B + b) * H + j];
                    d[0] = dn * hn * activate_grad<RACT>(r);
                    dr[0] = d[0];
                    dr[2] = dn * r;
                } else {  // dr is known only after d(r*h) = dA_n W_n (phase B1)
                    d[0] = A(0);
                    dr[0] = A(0);
                    dr[2] = dn;
                }
                direct = dh * z;
            } else {
                d[0] = dh * activate_grad<ACT>(gr[j]);
                dr[0] = d[0];
            }
#pragma unroll
            for (int q = 0; q < G; ++q) {
                if (TWO_PHASE && q == 0) continue;  // written in phase B1
                dx[q * H + j] = from_acc<T>(valid ? d[q] : A(0));
                da[q * H + j] = valid ? dr[q] : A(0);
            }
            dstate_h[b * H + j] = valid ? direct : dh;
        }
        grid_sync(barrier, epoch);

        // ---- phase B: dh_{t-1}[b, k] += sum_g m_g[b, k] * (dA_g[b, :] . W_g[:, k])
        if constexpr (TWO_PHASE) {
            auto stage_n = [&](int, int b, int j) { return load_cg(dA + (size_t)b * GH + 2 * H + j); };
            auto grad_r = [&](int b, int kl, const A (&pre)[1]) {
                const int k = k0 + kl;
                const bool valid = valid_row(b);
                const A r = gt[(size_t)b * GH + k];
                const A hm = hprev_at(b, k) * rmask(2, b, k);
                const A d_r = pre[0] * hm * activate_grad<RACT>(r);  // pre[0] = d(r*h)[b, k]
                dxt[(size_t)b * GH + k] = from_acc<T>(valid ? d_r : A(0));
                dA[(size_t)b * GH + k] = valid ? d_r : A(0);
                if (valid) dstate_h[b * H + k] += rmask(2, b, k) * r * pre[0];
            };
            matvec_phase<1, 1, ROWS, THREADS>(sm, sm.gate(2), nu, B, BB, H, stage_n, grad_r);
            grid_sync(barrier, epoch);
            auto stage_rz = [&](int g, int b, int j) { return load_cg(dA + (size_t)b * GH + g * H + j); };
            auto grad_h = [&](int b, int kl, const A (&pre)[2]) {
                const int k = k0 + kl;
                dstate_h[b * H + k] += rmask(0, b, k) * pre[0] + rmask(1, b, k) * pre[1];
            };
            matvec_phase<2, 2, ROWS, THREADS>(sm, sm.w, nu, B, BB, H, stage_rz, grad_h);
        } else {
            auto stage_all = [&](int g, int b, int j) { return load_cg(dA + (size_t)b * GH + g * H + j); };
            auto grad_h = [&](int b, int kl, const A (&pre)[G]) {
                const int k = k0 + kl;
                A sum = A(0);
#pragma unroll
                for (int g = 0; g < G; ++g) sum += rmask(g, b, k) * pre[g];
                dstate_h[b * H + k] += sum;
            };
            matvec_phase<G, (G > 1 ? G : 1), ROWS, THREADS>(sm, sm.w, nu, B, BB, H, stage_all, grad_h);
        }
    }

    __syncthreads();
    for_owned<THREADS>(B, H, k0, nu, [&](int i) {
        dh0[i] = from_acc<T>(dstate_h[i]);
        if constexpr (KIND == LSTM) dc0[i] = from_acc<T>(dstate_c[i]);
    });
}

}  // namespace frnn

#define FRNN_INSTANTIATE_BACKWARD(KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS)                \
    template __global__ void frnn::rnn_backward<KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS>( \
        const T*, const T*, const T*, const unsigned char*, const frnn::acc_t<T>*, const T*,                \
        const frnn::acc_t<T>*, const frnn::acc_t<T>*, const T*, const T*, const T*, T*, T*, T*,             \
        frnn::acc_t<T>*, frnn::acc_t<T>*, unsigned*, int, int, int, int, int, int);

// Standalone compilation builds every code path (FRNN_DEFAULT_CONFIGS in recurrence.cuh).
#ifndef FRNN_NO_DEFAULT_INSTANTIATIONS
FRNN_DEFAULT_CONFIGS(FRNN_INSTANTIATE_BACKWARD)
#endif
