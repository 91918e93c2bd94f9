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
//   DIRS        directions in the launch: 1, or 2 (both of a bidirectional layer: recurrence.cuh)
//
// Per step (processing index s, time t = reverse ? T-1-s : s, previous time tp):
//   stage h_{t-1} (= out[tp], or h0) for a batch tile (16-byte loads, all of a thread's in flight
//   together: stage_tile), dot with the block's W_hh rows, apply the cell to the owned units, write
//   out[t] / gates[t] / extra[t], load step t+1's xg and mask bit (and dropout mask) of the
//   thread's first epilogue item, grid barrier: those loads are under way while the block waits.
//   GRU reset_after=False needs (r*h) of ALL units before (r*h) W_n^T: a second barrier per step.
// The owned units' h and c are kept in float/double in `state` (only the owning block touches
// them); the vector exchanged between blocks is out[tp] in the storage type.
// A masked step (mask[t, b] == 0) carries h and c unchanged by selection, so NaN never leaks.
#include "cupy/recurrence.cuh"

namespace frnn {

// __launch_bounds__(THREADS, 1): one block per SM, as every plan launches it (kernels/cupy/__init__.py
// plan), so that ptxas keeps the values loaded ahead of the barrier in registers instead of
// spilling them to reach a higher occupancy that the launch does not use.
template <int KIND, int ACT, int RACT, bool RESET_AFTER, typename T, bool REC_MASK, bool MMA, int ROWS, int THREADS,
          int DIRS>
__global__ void __launch_bounds__(THREADS, 1) rnn_forward(
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
    int U,                                         // hidden units per block (ceil(H / U) blocks a direction)
    int BB,                                        // batch rows per staged tile
    int reverse) {                                 // direction 0 reversed; with two groups, 1 the other way
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
    int blk = blockIdx.x;
    if constexpr (DIRS == 2) {  // both directions in one launch (recurrence.cuh)
        const int nblk = (H + U - 1) / U, dir = blk / nblk;
        forward_direction<G>(dir, steps, B, H, xg, w_hh, b_hh, h0, c0, rec_mask, out, hT, cT, gates, extra);
        shift(state, dir, (size_t)2 * B * H);
        shift(scratch, dir, (size_t)B * H);
        reverse ^= dir;
        blk -= dir * nblk;
    }
    const int j0 = blk * U;
    const int nu = max(0, min(U, H - j0));
    A* state_h = state;
    A* state_c = state + (size_t)B * H;
    unsigned epoch = 0;

    // W_hh rows of the owned units, all gates: row (g, jl) = w_hh[g*H + j0 + jl, :]
    load_weights<THREADS>(sm, G, nu, H, [&](int g, int jl, int k) { return w_hh[(size_t)(g * H + j0 + jl) * H + k]; });
    // the weight fragments of the warp's MMA item in registers (the rest stay in shared memory)
    const auto frags = held_frags<NG1, THREADS>(sm, nu, H);
    for_owned<THREADS>(B, H, j0, nu, [&](int i) {
        state_h[i] = h0 ? to_acc(h0[i]) : A(0);
        if constexpr (KIND == LSTM) state_c[i] = c0 ? to_acc(c0[i]) : A(0);
    });
    __syncthreads();

    // The step's new inputs of the epilogue of item (b, j) at time t, independent of h_{t-1}: loaded
    // ahead for the thread's first PF epilogue calls of a step (epilogue_item), before the grid
    // barrier that precedes the step, and used only after it (kept as loaded, so that no thread
    // waits for these loads before it arrives at the barrier). The rest is what the block reads
    // every step (b_hh, the owned state: L1) and is read where it is used: a register held across
    // the matvec costs one for the whole kernel, and one live across the activations' division
    // slow-path calls is kept in local memory (stored right after its load, i.e. before the barrier).
    constexpr int PF = 1;
    struct Ahead {
        T x[G];                 // xg[t, b, g*H + j]
        A m;                    // GRU reset_after=False with dropout: rec_mask[2, b, j]
        A z;                    // GRU reset_after=False: z from the first phase, for the second
        unsigned char valid;    // mask[t, b] (1 without mask)
    };
    auto fetch = [&](Ahead& in, int t, int b, int j) {
        const T* x = xg + ((size_t)t * B + b) * GH + j;
#pragma unroll
        for (int g = 0; g < G; ++g) in.x[g] = x[g * H];
        if constexpr (TWO_PHASE && REC_MASK) in.m = rec_mask[((size_t)2 * B + b) * H + j];
        in.valid = mask ? mask[(size_t)t * B + b] : (unsigned char)1;
    };
    auto bias = [&](int g, int j) { return b_hh ? to_acc(b_hh[g * H + j]) : A(0); };
    Ahead pf[PF];
    auto prefetch = [&](int s) {
        const int t = reverse ? steps - 1 - s : s;
#pragma unroll
        for (int q = 0; q < PF; ++q) {
            int bb, jl;
            if (epilogue_item<ROWS, THREADS, MMA>(q, min(BB, B), nu, bb, jl)) fetch(pf[q], t, bb, j0 + jl);
        }
    };
    auto ahead = [&](auto slot, int t, int b, int j) {  // the loaded-ahead inputs (slot >= 0), else load now
        if constexpr (decltype(slot)::value >= 0) {
            (void)t;
            (void)b;
            (void)j;
            return pf[decltype(slot)::value];
        } else {
            Ahead in;
            fetch(in, t, b, j);
            return in;
        }
    };
    if (steps > 0) prefetch(0);
    // The same first PF epilogue items every step: their b_hh values and carried h (and c) stay in
    // registers for the whole sequence instead of being re-read each step (`state` is still
    // written: the other items and the final hT / cT read it there).
    struct Owned {
        A bias[G];
        A h, c;
    };
    Owned own[PF];
#pragma unroll
    for (int q = 0; q < PF; ++q) {
        int bb, jl;
        if (epilogue_item<ROWS, THREADS, MMA>(q, min(BB, B), nu, bb, jl)) {
            const int j = j0 + jl;
#pragma unroll
            for (int g = 0; g < G; ++g) own[q].bias[g] = bias(g, j);
            own[q].h = h0 ? to_acc(h0[bb * H + j]) : A(0);
            own[q].c = KIND == LSTM && c0 ? to_acc(c0[bb * H + j]) : A(0);
        }
    }
    auto bias_of = [&](auto slot, int g, int j) {
        if constexpr (decltype(slot)::value >= 0) return own[decltype(slot)::value].bias[g];
        return bias(g, j);
    };
    auto h_prev_of = [&](auto slot, int b, int j) {
        if constexpr (decltype(slot)::value >= 0) return own[decltype(slot)::value].h;
        return state_h[b * H + j];
    };
    auto c_prev_of = [&](auto slot, int b, int j) {
        if constexpr (decltype(slot)::value >= 0) return own[decltype(slot)::value].c;
        return state_c[b * H + j];
    };

    for (int s = 0; s < steps; ++s) {
        const int t = reverse ? steps - 1 - s : s;
        const int tp = reverse ? t + 1 : t - 1;
        const T* hprev = s == 0 ? h0 : out + (size_t)tp * B * H;  // nullptr: zeros
        A* gt = gates + (size_t)t * B * GH;

        auto finish = [&](auto slot, int b, int j, A h, A h_prev, bool valid) {  // carry by selection, publish h
            const A h_keep = valid ? h : h_prev;
            if constexpr (decltype(slot)::value >= 0) own[decltype(slot)::value].h = h_keep;
            state_h[b * H + j] = h_keep;
            out[((size_t)t * B + b) * H + j] = from_acc<T>(h_keep);
        };
        auto stage_h = [&](int b0, int nb) {  // h_{t-1} (times the dropout masks) of batch rows b0..b0+nb
            stage_tile<NST, REC_MASK, THREADS>(sm, BB, nb, H, hprev ? hprev + (size_t)b0 * H : nullptr, (size_t)H, H,
                                               REC_MASK ? rec_mask + (size_t)b0 * H : nullptr, (size_t)B * H);
        };
        auto cell = [&](int b, int jl, const auto& pre, auto slot) {
            const int j = j0 + jl;
            const Ahead in = ahead(slot, t, b, j);
            auto x = [&](int g) { return to_acc(in.x[g]); };
            [[maybe_unused]] const bool valid = in.valid != 0;  // (GRU classic: used in the second phase)
            A* gr = gt + (size_t)b * GH;
            if constexpr (KIND == LSTM) {
                const A i = activate<RACT>(x(0) + pre[0] + bias_of(slot, 0, j));
                const A f = activate<RACT>(x(1) + pre[1] + bias_of(slot, 1, j));
                const A g = activate<ACT>(x(2) + pre[2] + bias_of(slot, 2, j));
                const A o = activate<RACT>(x(3) + pre[3] + bias_of(slot, 3, j));
                gr[j] = i;
                gr[H + j] = f;
                gr[2 * H + j] = g;
                gr[3 * H + j] = o;
                const A c_prev = c_prev_of(slot, b, j);
                A c = f * c_prev + i * g;
                const A h = o * activate<ACT>(c);
                c = valid ? c : c_prev;
                if constexpr (decltype(slot)::value >= 0) own[decltype(slot)::value].c = c;
                state_c[b * H + j] = c;
                extra[((size_t)t * B + b) * H + j] = c;
                finish(slot, b, j, h, h_prev_of(slot, b, j), valid);
            } else if constexpr (KIND == GRU && RESET_AFTER) {
                const A r = activate<RACT>(x(0) + pre[0] + bias_of(slot, 0, j));
                const A z = activate<RACT>(x(1) + pre[1] + bias_of(slot, 1, j));
                const A hn = pre[2] + bias_of(slot, 2, j);
                const A n = activate<ACT>(x(2) + r * hn);
                gr[j] = r;
                gr[H + j] = z;
                gr[2 * H + j] = n;
                extra[((size_t)t * B + b) * H + j] = hn;
                const A h_prev = h_prev_of(slot, b, j);
                finish(slot, b, j, (A(1) - z) * n + z * h_prev, h_prev, valid);
            } else if constexpr (KIND == GRU) {  // classic form, first half: r, z and r*h
                const A r = activate<RACT>(x(0) + pre[0] + bias_of(slot, 0, j));
                const A z = activate<RACT>(x(1) + pre[1] + bias_of(slot, 1, j));
                gr[j] = r;
                gr[H + j] = z;
                if constexpr (decltype(slot)::value >= 0) pf[decltype(slot)::value].z = z;  // for the second phase
                A hm = to_acc(from_acc<T>(h_prev_of(slot, b, j)));  // = out[tp] (h0 at s = 0): h_{t-1} as exchanged
                if constexpr (REC_MASK) hm *= in.m;
                scratch[b * H + j] = r * hm;
            } else {
                const A h = activate<ACT>(x(0) + pre[0] + bias_of(slot, 0, j));
                gr[j] = h;
                finish(slot, b, j, h, h_prev_of(slot, b, j), valid);
            }
        };
        matvec_phase<NG1, NST, ROWS, THREADS, PF, NG1>(sm, sm.w, frags, nu, B, BB, H, stage_h, cell);

        if constexpr (TWO_PHASE) {
            grid_sync(barrier, epoch);
            // second half: n = act(xn + (r*h) W_n^T + b_hn) needs r*h of every unit
            auto stage_rh = [&](int b0, int nb) {
                stage_tile<1, false, THREADS>(sm, BB, nb, H, scratch + (size_t)b0 * H, (size_t)H, H,
                                              static_cast<const A*>(nullptr), 0);
            };
            auto cell_n = [&](int b, int jl, const auto& pre, auto slot) {
                const int j = j0 + jl;
                const Ahead in = ahead(slot, t, b, j);
                A* gr = gt + (size_t)b * GH;
                A z;
                if constexpr (decltype(slot)::value >= 0) {
                    z = in.z;
                } else {
                    z = load_cg(gr + H + j);
                }
                const A n = activate<ACT>(to_acc(in.x[2]) + pre[0] + bias_of(slot, 2, j));
                gr[2 * H + j] = n;
                const A h_prev = h_prev_of(slot, b, j);
                finish(slot, b, j, (A(1) - z) * n + z * h_prev, h_prev, in.valid != 0);
            };
            matvec_phase<1, 1, ROWS, THREADS, PF, 1>(sm, sm.gate(2), WFrags<T, 1, 0>{}, nu, B, BB, H, stage_rh, cell_n);
        }
        if (s + 1 < steps) prefetch(s + 1);  // before the barrier: off the critical path
        grid_sync(barrier, epoch);
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
#define FRNN_INSTANTIATE_FORWARD(KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS, DIRS)                \
    template __global__ void frnn::rnn_forward<KIND, ACT, RACT, RESET_AFTER, T, REC_MASK, MMA, ROWS, THREADS, DIRS>( \
        const T*, const T*, const T*, const T*, const T*, const unsigned char*, const frnn::acc_t<T>*, T*, \
        T*, T*, frnn::acc_t<T>*, frnn::acc_t<T>*, frnn::acc_t<T>*, frnn::acc_t<T>*, unsigned*, int, int,   \
        int, int, int, int);

// Standalone compilation builds every code path (FRNN_DEFAULT_CONFIGS in recurrence.cuh).
#ifndef FRNN_NO_DEFAULT_INSTANTIATIONS
FRNN_DEFAULT_CONFIGS(FRNN_INSTANTIATE_FORWARD)
#endif
