// Persistent forward recurrence: ONE cooperative launch runs all T steps of one layer/direction.
//
// Dimensions and layouts: see recurrence.cuh. Template parameters (compile-time configuration):
//   KIND        frnn::LSTM / GRU / RNN
//   ACT, RACT   activation / recurrent activation (frnn::Act)
//   RESET_AFTER GRU form (true: n = act(xn + r*(h W_n^T + b_hn)); false: act(xn + (r*h) W_n^T + b_hn))
//   T           storage type of xg / w_hh / states / out (float, double, frnn::bf16, frnn::f16)
//   REC_MASK    per-gate recurrent dropout masks are given
//   MMA         tensor-core matvec (bf16 / fp16, fp32 as tf32; sm_80+) instead of FMA dot products
//   ROWS        batch rows per warp tile (FMA path), THREADS threads per block
//
// Per step (processing index s, time t = reverse ? T-1-s : s, previous time tp):
//   stage h_{t-1} (= out[tp], or h0) for a batch tile, dot with the block's W_hh rows, apply the
//   cell to the owned units, write out[t] / gates[t] / extra[t], grid barrier.
//   GRU reset_after=False needs (r*h) of ALL units before (r*h) W_n^T: a second barrier per step.
// The owned units' h and c are kept in float/double in `state` (only the owning block touches
// them); the vector exchanged between blocks is out[tp] in the storage type.
// A masked step (mask[t, b] == 0) carries h and c unchanged by selection, so NaN never leaks.
#include "cupy/recurrence.cuh"

namespace frnn {

template <int KIND, int ACT, int RACT, bool RESET_AFTER, typename T, bool REC_MASK, bool MMA, int ROWS, int THREADS>
__global__ void __launch_bounds__(THREADS) rnn_forward(
    const T* __restrict__ xg,                      // (T, B, GH) input projection incl. b_ih
    const T* __restrict__ w_hh,                    // (GH, H)
    const T* __restrict__ b_hh,                    // (GH) or nullptr
    const T* __restrict__ h0,                      // (B, H) or nullptr (zeros)
    const T* __restrict__ c0,                      // (B, H) or nullptr (zeros; LSTM only)
    const unsigned char* __restrict__ mask,        // (T, B) or nullptr (all valid)
    const acc_t<T>* __restrict__ rec_mask,         // (G, B, H), read only when REC_MASK
    T* out,                                        // (T, B, H) carried h after each step
    T* hT,                                         // (B, H)
    T* cT,                                         // (B, H) LSTM only, else unused
    acc_t<T>* gates,                               // (T, B, GH) post-activation gates
    acc_t<T>* extra,                               // (T, B, H) LSTM c_t; GRU reset_after h W_n^T + b_hn
    acc_t<T>* state,                               // (2, B, H) scratch: owned h, c in acc type
    acc_t<T>* scratch,                             // (B, H) scratch: r*h (GRU reset_after=False)
    unsigned* barrier,                             // zeroed counter (FRNN_ATOMIC_BARRIER only)
    int steps, int B, int H,
    int U,                                         // hidden units per block
    int BB,                                        // batch rows per staged tile
    int reverse) {
    using A = acc_t<T>;
    constexpr int G = Gates<KIND>::value;
    constexpr bool TWO_PHASE = KIND == GRU && !RESET_AFTER;
    constexpr int NG1 = TWO_PHASE ? 2 : G;  // gates in the first matvec (GRU classic: r, z)
    constexpr int NST = REC_MASK ? NG1 : 1;  // staged copies of h (one per gate with dropout)
    static_assert(ROWS >= 1 && ROWS <= 32 && THREADS % 32 == 0, "bad tile configuration");
    static_assert(!MMA || sizeof(T) <= 4, "no tensor-core path for double");

    const int stage_copies = REC_MASK ? G : 1;  // host sizes the staging buffer for this many
    const Smem<T, MMA> sm = carve_smem<T, MMA, THREADS>(dynamic_smem(), stage_copies, BB, G, U, H);

    const int GH = G * H;
    const int j0 = blockIdx.x * U;
    const int nu = max(0, min(U, H - j0));
    A* state_h = state;
    A* state_c = state + (size_t)B * H;
    unsigned epoch = 0;

    // W_hh rows of the owned units, all gates: row (g, jl) = w_hh[g*H + j0 + jl, :]
    load_weights<THREADS>(sm, G, nu, H, [&](int g, int jl, int k) { return w_hh[(size_t)(g * H + j0 + jl) * H + k]; });
    for_owned<THREADS>(B, H, j0, nu, [&](int i) {
        state_h[i] = h0 ? to_acc(h0[i]) : A(0);
        if constexpr (KIND == LSTM) state_c[i] = c0 ? to_acc(c0[i]) : A(0);
    });
    __syncthreads();

    for (int s = 0; s < steps; ++s) {
        const int t = reverse ? steps - 1 - s : s;
        const int tp = reverse ? t + 1 : t - 1;
        const T* hprev = s == 0 ? h0 : out + (size_t)tp * B * H;  // nullptr: zeros
        const T* xt = xg + (size_t)t * B * GH;
        A* gt = gates + (size_t)t * B * GH;

        auto bias = [&](int g, int j) { return b_hh ? to_acc(b_hh[g * H + j]) : A(0); };
        auto valid_row = [&](int b) { return mask == nullptr || mask[(size_t)t * B + b] != 0; };
        auto hprev_at = [&](int b, int k) { return hprev ? load_cg(hprev + (size_t)b * H + k) : A(0); };
        auto finish = [&](int b, int j, A h, bool valid) {  // carry by selection, publish h
            const A h_keep = valid ? h : state_h[b * H + j];
            state_h[b * H + j] = h_keep;
            out[((size_t)t * B + b) * H + j] = from_acc<T>(h_keep);
        };

        auto stage_h = [&](int g, int b, int k) {
            A v = hprev_at(b, k);
            if constexpr (REC_MASK) v *= rec_mask[((size_t)g * B + b) * H + k];
            return v;
        };
        auto cell = [&](int b, int jl, const A (&pre)[NG1]) {
            const int j = j0 + jl;
            const bool valid = valid_row(b);
            const T* x = xt + (size_t)b * GH;
            A* gr = gt + (size_t)b * GH;
            if constexpr (KIND == LSTM) {
                const A i = activate<RACT>(to_acc(x[j]) + pre[0] + bias(0, j));
                const A f = activate<RACT>(to_acc(x[H + j]) + pre[1] + bias(1, j));
                const A g = activate<ACT>(to_acc(x[2 * H + j]) + pre[2] + bias(2, j));
                const A o = activate<RACT>(to_acc(x[3 * H + j]) + pre[3] + bias(3, j));
                gr[j] = i;
                gr[H + j] = f;
                gr[2 * H + j] = g;
                gr[3 * H + j] = o;
                const A c_prev = state_c[b * H + j];
                A c = f * c_prev + i * g;
                const A h = o * activate<ACT>(c);
                c = valid ? c : c_prev;
                state_c[b * H + j] = c;
                extra[((size_t)t * B + b) * H + j] = c;
                finish(b, j, h, valid);
            } else if constexpr (KIND == GRU && RESET_AFTER) {
                const A r = activate<RACT>(to_acc(x[j]) + pre[0] + bias(0, j));
                const A z = activate<RACT>(to_acc(x[H + j]) + pre[1] + bias(1, j));
                const A hn = pre[2] + bias(2, j);
                const A n = activate<ACT>(to_acc(x[2 * H + j]) + r * hn);
                gr[j] = r;
                gr[H + j] = z;
                gr[2 * H + j] = n;
                extra[((size_t)t * B + b) * H + j] = hn;
                finish(b, j, (A(1) - z) * n + z * state_h[b * H + j], valid);
            } else if constexpr (KIND == GRU) {  // classic form, first half: r, z and r*h
                const A r = activate<RACT>(to_acc(x[j]) + pre[0] + bias(0, j));
                const A z = activate<RACT>(to_acc(x[H + j]) + pre[1] + bias(1, j));
                gr[j] = r;
                gr[H + j] = z;
                A hm = hprev_at(b, j);
                if constexpr (REC_MASK) hm *= rec_mask[((size_t)2 * B + b) * H + j];
                scratch[b * H + j] = r * hm;
            } else {
                const A h = activate<ACT>(to_acc(x[j]) + pre[0] + bias(0, j));
                gr[j] = h;
                finish(b, j, h, valid);
            }
        };
        matvec_phase<NG1, NST, ROWS, THREADS>(sm, sm.w, nu, B, BB, H, stage_h, cell);
        grid_sync(barrier, epoch);

        if constexpr (TWO_PHASE) {
            // second half: n = act(xn + (r*h) W_n^T + b_hn) needs r*h of every unit
            auto stage_rh = [&](int, int b, int k) { return load_cg(scratch + (size_t)b * H + k); };
            auto cell_n = [&](int b, int jl, const A (&pre)[1]) {
                const int j = j0 + jl;
                const bool valid = valid_row(b);
                A* gr = gt + (size_t)b * GH;
                const A z = load_cg(gr + H + j);
                const A n = activate<ACT>(to_acc(xt[(size_t)b * GH + 2 * H + j]) + pre[0] + bias(2, j));
                gr[2 * H + j] = n;
                finish(b, j, (A(1) - z) * n + z * state_h[b * H + j], valid);
            };
            matvec_phase<1, 1, ROWS, THREADS>(sm, sm.gate(2), nu, B, BB, H, stage_rh, cell_n);
            grid_sync(barrier, epoch);
        }
    }

    __syncthreads();  // owned states were last written by other threads of this block
    for_owned<THREADS>(B, H, j0, nu, [&](int i) {
        hT[i] = from_acc<T>(state_h[i]);
        if constexpr (KIND == LSTM) cT[i] = from_acc<T>(state_c[i]);
    });
}

}  // namespace frnn

// Explicit instantiation of one configuration; the loader appends one for the configuration it
// compiles (and asks NVRTC for its mangled name).
#define FRNN_INSTANTIATE_FORWARD(KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS)                \
    template __global__ void frnn::rnn_forward<KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS>( \
        const T*, const T*, const T*, const T*, const T*, const unsigned char*, const frnn::acc_t<T>*, T*, \
        T*, T*, frnn::acc_t<T>*, frnn::acc_t<T>*, frnn::acc_t<T>*, frnn::acc_t<T>*, unsigned*, int, int,   \
        int, int, int, int);

// Standalone compilation builds every code path (FRNN_DEFAULT_CONFIGS in recurrence.cuh).
#ifndef FRNN_NO_DEFAULT_INSTANTIATIONS
FRNN_DEFAULT_CONFIGS(FRNN_INSTANTIATE_FORWARD)
#endif
