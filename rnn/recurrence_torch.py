"""The "torch" backend: the recurrence contract written with plain torch ops.

A Python loop over time with an explicit, hand-written backward (not autograd through the loop).
It runs on any device and dtype and is the fallback without a GPU. fp16/bf16 inputs are computed
in fp32. `cell_step` / `unrolled` are the readable, differentiable form of one step (the math the
Triton and CuPy kernels follow); `TorchBackend` computes the same with buffers allocated once and
in-place ops, because a Python loop's cost at small sizes is its number of torch calls per step.
"""
from __future__ import annotations

import torch

from kernels import Saved, compute_dtype, new_empty


def activate(name, x):
    if name == "tanh":
        return torch.tanh(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "relu":
        return torch.relu(x)
    if name == "hard_sigmoid":
        return torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)
    return x  # linear


def activation_grad(name, y):
    """d act / d x, written in terms of the output y = act(x) (so only outputs need saving)."""
    if name == "tanh":
        return 1.0 - y * y
    if name == "sigmoid":
        return y * (1.0 - y)
    if name == "relu":
        return (y > 0).to(y.dtype)
    if name == "hard_sigmoid":
        return ((y > 0) & (y < 1)).to(y.dtype) / 6.0
    return torch.ones_like(y)


def previous_states(out, h0, reverse):
    """(T, B, H): the hidden state each step started from (h0 for the first processed step)."""
    h0 = h0.to(out.dtype).unsqueeze(0)
    if reverse:
        return torch.cat([out[1:], h0], 0)
    return torch.cat([h0, out[:-1]], 0)


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _cast(cd, *tensors):
    return tuple(None if t is None else t.to(cd) for t in tensors)


def _carry(mask, t, new, old):
    """A masked step carries the state; where() (not arithmetic) keeps NaN from padding out."""
    if mask is None or new is None:
        return new
    return torch.where(mask[t].unsqueeze(1), new, old)


def _recurrent(h, w, b, rec_mask, gates):
    """Recurrent pre-activations of the listed gate blocks: (h * rec_mask[g]) @ W_g^T + b_g."""
    H = w.shape[1]
    lo, hi = gates[0] * H, (gates[-1] + 1) * H
    if rec_mask is None:
        r = h @ w[lo:hi].t()
    else:
        r = torch.cat([(h * rec_mask[g]) @ w[g * H:(g + 1) * H].t() for g in gates], 1)
    return r if b is None else r + b[lo:hi]


def cell_step(spec, x, h, c, w, b, rm):
    """One step of one cell, out of place (so autograd can run through it).

    x (B, G*H) input pre-activations, h / c (B, H) carried states, w (G*H, H), b (G*H,) | None,
    rm (G, B, H) | None. Returns (h_new, c_new or None, gate values (B, G*H) after their
    activations, extra (B, H) | None: GRU reset_after's h W_n^T + b_hn)."""
    H = w.shape[1]
    act, ract = spec.activation, spec.recurrent_activation
    if spec.kind == "lstm":
        pre = x + _recurrent(h, w, b, rm, (0, 1, 2, 3))
        i, f, o = (activate(ract, pre[:, k * H:(k + 1) * H]) for k in (0, 1, 3))
        g = activate(act, pre[:, 2 * H:3 * H])
        c_new = f * c + i * g
        return o * activate(act, c_new), c_new, torch.cat([i, f, g, o], 1), None
    if spec.kind == "gru":
        rz = activate(ract, x[:, :2 * H] + _recurrent(h, w, b, rm, (0, 1)))
        r, z = rz[:, :H], rz[:, H:]
        if spec.reset_after:
            hn = _recurrent(h, w, b, rm, (2,))
            n = activate(act, x[:, 2 * H:] + r * hn)
        else:
            hn = None
            n = activate(act, x[:, 2 * H:] + _recurrent(r * h, w, b, rm, (2,)))  # (r*h*m_n) W_n^T + b_n
        return (1 - z) * n + z * h, None, torch.cat([r, z, n], 1), hn
    h_new = activate(act, x + _recurrent(h, w, b, rm, (0,)))
    return h_new, None, h_new, None


def unrolled(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse):
    """The recurrence as plain differentiable torch ops: (out, hT, cT) like a backend's forward.

    Autograd runs through the loop, so derivatives of any order are right. rnn.autograd uses it
    where the kernels' hand-written first-order backward is not enough (create_graph=True) and
    for empty batches or sequences. Slower than the backends; not used on the common path."""
    T = xg.shape[0]
    H = w_hh.shape[1]
    cd = compute_dtype(xg.dtype)
    w, b, rm, h, c = _cast(cd, w_hh, b_hh, rec_mask, h0, c0 if spec.kind == "lstm" else None)
    outs = [None] * T
    for t in _steps(T, reverse):
        h_new, c_new, _, _ = cell_step(spec, xg[t].to(cd), h, c, w, b, rm)
        h, c = _carry(mask, t, h_new, h), _carry(mask, t, c_new, c)
        outs[t] = h
    out = torch.stack(outs) if T else xg[..., :H] * 0  # T = 0: empty, still attached to x
    return out.to(xg.dtype), h.to(xg.dtype), (None if c is None else c.to(xg.dtype))


def _activate_into(name, x, out):
    """out = activate(name, x) without allocating; out may be x itself (in place) or a strided view."""
    if name == "tanh":
        torch.tanh(x, out=out)
    elif name == "sigmoid":
        torch.sigmoid(x, out=out)
    elif name == "relu":
        torch.clamp(x, min=0.0, out=out)  # what torch.relu computes
    elif name == "hard_sigmoid":
        torch.div(x, 6.0, out=out).add_(0.5).clamp_(0.0, 1.0)  # clamp(x / 6 + 0.5, 0, 1), same rounding
    elif out is not x:
        out.copy_(x)
    return out


def _add_bias(x, b, out):
    """out = x + b (b None: a copy), cast to out's dtype."""
    return out.copy_(x) if b is None else torch.add(x, b, out=out)


def _lerp_ends(B, H, dtype, device):
    """The constant ends (-1, +1) of `_tanh_of_doubled`'s lerp."""
    return torch.full((B, H), -1.0, dtype=dtype, device=device), torch.ones((B, H), dtype=dtype, device=device)


def _tanh_of_doubled(y, ends, sigmoid=True):
    """tanh(x) = 2 sigmoid(2x) - 1 in place, y holding 2x (doubled exactly: a power of two), or
    sigmoid(2x) already (sigmoid=False). On a CPU torch's tanh has no vectorized path for a strided
    slice (a gate block of the gates buffer): sigmoid + lerp are 4-5x faster there from B x H = 2048."""
    if sigmoid:
        torch.sigmoid(y, out=y)
    return torch.lerp(ends[0], ends[1], y, out=y)


class _Recurrent:
    """The recurrent matmul of one step for the gate blocks 0..k-1, into a fixed scratch `out`:

        pre_g = x_g + (h * rec_mask[g]) @ W_g^T        (x_g already holds the biases that go there)

    Without recurrent dropout: ONE addmm for all k blocks, scratch (B, k*H). With per-gate masks: one
    broadcast multiply h * m and ONE baddbmm over the blocks, in a gate-major scratch (k, B, H).
    `views` gives the per-step slices of a (T, B, k*H) buffer in the scratch's shape, so that an
    activation reads the scratch and writes the saved gates in one call either way."""

    def __init__(self, w, rec_mask, k, B):
        H = w.shape[1]
        w_k = w[:k * H]
        self.masks = None if rec_mask is None else rec_mask[:k]
        self.B, self.k, self.H = B, k, H
        self._memo = (None, None)
        if self.masks is None:
            self.w_t = w_k.t()
            self.out = new_empty((B, k * H), w.dtype, w.device)
        else:
            self.w_t = w_k.view(k, H, H).transpose(1, 2)
            self.hm = new_empty((k, B, H), w.dtype, w.device)
            self.out = new_empty((k, B, H), w.dtype, w.device)

    def block(self, j):
        """Block j of the scratch, (B, H)."""
        return self.out[:, j * self.H:(j + 1) * self.H] if self.masks is None else self.out[j]

    def blocks(self, lo, hi):
        """Blocks lo..hi-1 of the scratch, in its own shape."""
        return self.out[:, lo * self.H:hi * self.H] if self.masks is None else self.out[lo:hi]

    def views(self, region):
        """Per-step views of `region` (T, B, m*H) in the scratch's shape: (B, m*H) or (m, B, H)."""
        if self._memo[0] is region:  # the addmm's inputs are the saved gates' own buffer
            return self._memo[1]
        if self.masks is None:
            return region.unbind(0)
        return region.unflatten(-1, (-1, self.H)).transpose(1, 2).unbind(0)

    def inputs(self, region):
        """Where x of every step goes: (a (T, B, k, H) view to fill, per-step list). Without masks that
        is `region` itself (a slice of the gates buffer, overwritten by the gate values as the loop
        goes: no extra buffer); with masks a new gate-major (T, k, B, H) buffer for the baddbmm."""
        if self.masks is None:
            self._memo = (region, region.unbind(0))
            return region.unflatten(-1, (self.k, self.H)), self._memo[1]
        T = region.shape[0]
        buf = new_empty((T, self.k, self.B, self.H), self.out.dtype, self.out.device)
        return buf.transpose(1, 2), buf.unbind(0)

    def __call__(self, x_t, h, out=None):
        """The pre-activations into the scratch, or (without masks) into `out` (x_t itself: in place)."""
        if self.masks is None:
            return torch.addmm(x_t, h, self.w_t, out=self.out if out is None else out)
        torch.baddbmm(x_t, torch.mul(self.masks, h, out=self.hm), self.w_t, out=self.out)
        return self.out


class _RecurrentGrad:
    """The gradient through `_Recurrent` w.r.t. h, plus `add`:

        out = add + sum_g (d_g @ W_g) * rec_mask[g]     over the gate blocks `order` (their order in d)

    One addmm without recurrent dropout (W's rows gathered once in d's block order)."""

    def __init__(self, w, rec_mask, order, B):
        H = w.shape[1]
        w_k = w.view(-1, H, H)[list(order)]  # (k, H, H), a copy made once
        self.k, self.H = len(order), H
        self.masks = None if rec_mask is None else rec_mask[list(order)]
        if self.masks is None:
            self.w = w_k.reshape(-1, H)
        else:
            self.w = w_k
            self.tmp = new_empty((self.k, B, H), w.dtype, w.device)

    def __call__(self, add, d, out):
        """d (B, k*H), may be a strided view; out (B, H)."""
        if self.masks is None:
            return torch.addmm(add, d, self.w, out=out)
        torch.bmm(d.unflatten(1, (self.k, self.H)).transpose(0, 1), self.w, out=self.tmp)  # d_g @ W_g
        torch.sum(self.tmp.mul_(self.masks), 0, out=out)
        return out.add_(add)


# Elements in one (steps, B, H) slice of the backward's precomputed factors: the factors of a chunk
# of steps are computed together (few large ops) but stay small enough to be reused from cache.
_CHUNK_ELEMS = 1 << 15


def _chunks(T, n, reverse):
    """Time ranges [lo, hi) of at most n steps in the backward's order, each with its steps in that
    order (the forward's steps, last first)."""
    if reverse:
        return [(lo, min(T, lo + n), range(lo, min(T, lo + n))) for lo in range(0, T, n)]
    return [(max(0, hi - n), hi, range(hi - 1, max(0, hi - n) - 1, -1)) for hi in range(T, 0, -n)]


def _previous_into(src, first, lo, hi, reverse, out):
    """out[t - lo] = the state step t started from, t in [lo, hi): src at the step processed before
    it, `first` (h0 / c0) for the first processed step. Like previous_states, for a chunk."""
    T = src.shape[0]
    if not reverse:
        if lo == 0:
            out[0].copy_(first)
            out[1:].copy_(src[:hi - 1])
        else:
            out.copy_(src[lo - 1:hi - 1])
    elif hi == T:
        out[-1].copy_(first)
        out[:-1].copy_(src[lo + 1:])
    else:
        out.copy_(src[lo + 1:hi + 1])
    return out


class TorchBackend:
    """Forward and hand-written backward as a Python loop over time.

    The loop is dispatch-bound at small sizes, so a step is a few torch calls writing into buffers
    allocated once (out= / in-place): the recurrent matmul and the gate math that depends on h, no
    per-step allocation, cat or host sync. What does not depend on the recurrence is done outside the
    loop in large ops: the forward's bias folding for all steps, the backward's activation
    derivatives per chunk of steps (kept small enough to stay in cache). Per-step views of the
    (T, ...) buffers come from one unbind() each rather than from indexing inside the loop.

    aten ops per step without masks: forward LSTM 7, GRU 7, SimpleRNN 2; backward LSTM 6, GRU 4
    (reset_after=False: 7), SimpleRNN 2, plus the per-chunk factors."""

    name = "torch"

    def unavailable_reason(self, device, spec, hidden, batch, dtype):
        if not dtype.is_floating_point:
            return f"dtype {dtype} is not floating point"
        return None

    @torch.no_grad()
    def forward(self, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse):
        T, B, GH = xg.shape
        H = w_hh.shape[1]
        G = GH // H
        cd, dev = compute_dtype(xg.dtype), xg.device
        kind, act, ract = spec.kind, spec.activation, spec.recurrent_activation
        w, b, rm, h, c = _cast(cd, w_hh, b_hh, rec_mask, h0, c0 if kind == "lstm" else None)
        xg4 = xg.unflatten(-1, (G, H))
        b4 = None if b is None else b.view(G, H)
        empty = lambda *shape: new_empty(shape, cd, dev)  # noqa: E731

        gates = empty(T, B, GH)
        gates4 = gates.view(T, B, G, H)
        extra = empty(T, B, H) if kind == "lstm" or (kind == "gru" and spec.reset_after) else None
        # The carried h of every step, in the compute dtype (it feeds the next step). A SimpleRNN
        # without mask carries its gate values themselves (h' = act(...)): no second buffer.
        hs = gates if kind == "rnn" and mask is None else empty(T, B, H)
        # A masked step carries h and c: where() on the step's results, in place (not arithmetic,
        # which would let NaN from padding through).
        valid = None if mask is None else mask.unsqueeze(-1).unbind(0)
        Hs = hs.unbind(0)
        steps = _steps(T, reverse)

        if kind == "lstm":
            # torch.nn's activations without recurrent dropout: tanh(g) = 2 sigmoid(2 g) - 1, so
            # with g's rows of W_hh and of x + b doubled (exact: a power of two) one sigmoid over
            # all four gates, in place in the gates buffer where the matmul wrote them, and one
            # lerp give every gate: no scratch copy, no strided tanh (CPU tanh is slow on a slice).
            doubled = rm is None and act == "tanh" and ract == "sigmoid"
            if doubled:
                w = w.clone()
                w[2 * H:3 * H] *= 2
            rec = _Recurrent(w, rm, 4, B)
            XL, X = rec.inputs(gates)
            _add_bias(xg4, b4, XL)  # x W_ih^T + b_ih + b_hh, once for all steps
            if doubled:
                XL[:, :, 2].mul_(2)
                ends = _lerp_ends(B, H, cd, dev)
            GA, (Gi, Gf, Gg, Go) = rec.views(gates), (gates4[:, :, k].unbind(0) for k in range(4))
            pre_g = rec.block(2)
            ig = empty(B, H)
            Cs = extra.unbind(0)  # extra = the carried c of every step
            for t in steps:
                if doubled:
                    torch.sigmoid(rec(X[t], h, out=GA[t]), out=GA[t])
                    _tanh_of_doubled(Gg[t], ends, sigmoid=False)
                else:
                    pre = rec(X[t], h)
                    _activate_into(ract, pre, GA[t])  # i, f, o in one call (g too; overwritten next)
                    if act != ract:
                        _activate_into(act, pre_g, Gg[t])
                cn = torch.addcmul(torch.mul(Gi[t], Gg[t], out=ig), Gf[t], c, out=Cs[t])  # c' = f c + i g
                hn = _activate_into(act, cn, Hs[t]).mul_(Go[t])  # h' = o act(c')
                if mask is not None:
                    torch.where(valid[t], cn, c, out=cn)
                    torch.where(valid[t], hn, h, out=hn)
                c, h = cn, hn
        elif kind == "gru" and spec.reset_after:
            # One matmul gives [r, z pre-activations, hn = h W_n^T + b_hn]: x's n block stays out.
            rec = _Recurrent(w, rm, 3, B)
            XL, X = rec.inputs(gates)
            _add_bias(xg4[:, :, :2], None if b4 is None else b4[:2], XL[:, :, :2])
            if b4 is None:
                XL[:, :, 2].zero_()
            else:
                XL[:, :, 2].copy_(b4[2])
            # n = tanh(xn + r hn) as 2 sigmoid(2 xn + 2 r hn) - 1 (_tanh_of_doubled)
            doubled = act == "tanh"
            XN = (xg4[:, :, 2].to(cd) * 2 if doubled else xg4[:, :, 2].to(cd)).unbind(0)
            ends = _lerp_ends(B, H, cd, dev) if doubled else None
            GArz, (Gr, Gz, Gn) = rec.views(gates[:, :, :2 * H]), (gates4[:, :, k].unbind(0) for k in range(3))
            pre_rz, hn_ = rec.blocks(0, 2), rec.block(2)
            Es = extra.unbind(0)
            for t in steps:
                rec(X[t], h)
                _activate_into(ract, pre_rz, GArz[t])
                n = torch.addcmul(XN[t], Gr[t], hn_, value=2 if doubled else 1, out=Gn[t])  # xn + r hn
                n = _tanh_of_doubled(n, ends) if doubled else _activate_into(act, n, n)
                hn = torch.lerp(n, h, Gz[t], out=Hs[t])  # h' = (1 - z) n + z h
                Es[t].copy_(hn_)
                if mask is not None:
                    torch.where(valid[t], hn, h, out=hn)
                h = hn
        elif kind == "gru":  # reset_after=False: n = act(xn + b_hn + (r * h * m_n) W_n^T)
            rec = _Recurrent(w, rm, 2, B)
            rz = gates[:, :, :2 * H]
            XL, X = rec.inputs(rz)
            _add_bias(xg4[:, :, :2], None if b4 is None else b4[:2], XL)
            _add_bias(xg4[:, :, 2], None if b4 is None else b4[2], gates4[:, :, 2])  # xn + b_hn, in gates
            GArz, (Gr, Gz, Gn) = rec.views(rz), (gates4[:, :, k].unbind(0) for k in range(3))
            w_n_t = w[2 * H:].t()
            doubled = act == "tanh"  # n's pre-activation doubled: tanh via _tanh_of_doubled
            if doubled:
                gates4[:, :, 2].mul_(2)
                w_n_t = w_n_t * 2
                ends = _lerp_ends(B, H, cd, dev)
            m_n = None if rm is None else rm[2]
            rh = empty(B, H)
            for t in steps:
                _activate_into(ract, rec(X[t], h), GArz[t])
                torch.mul(Gr[t], h, out=rh)
                if m_n is not None:
                    rh.mul_(m_n)
                n = torch.addmm(Gn[t], rh, w_n_t, out=Gn[t])  # in place
                n = _tanh_of_doubled(n, ends) if doubled else _activate_into(act, n, n)
                hn = torch.lerp(n, h, Gz[t], out=Hs[t])  # h' = (1 - z) n + z h
                if mask is not None:
                    torch.where(valid[t], hn, h, out=hn)
                h = hn
        else:
            rec = _Recurrent(w, rm, 1, B)
            XL, X = rec.inputs(gates)
            _add_bias(xg4, b4, XL)
            GA, Gs = rec.views(gates), gates.unbind(0)
            for t in steps:
                _activate_into(act, rec(X[t], h), GA[t])  # gates = h' = act(x + b + h W^T)
                if mask is not None:
                    torch.where(valid[t], Gs[t], h, out=Hs[t])
                h = Hs[t]
        out = hs.to(xg.dtype, copy=hs is gates)  # a copy of its own, never an alias of gates
        hT = out[0 if reverse else T - 1] if T else h.to(xg.dtype)
        cT = None if c is None else c.to(xg.dtype)
        return Saved(out, hT, cT, gates, extra)

    @torch.no_grad()
    def backward(self, spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, saved, dout, dhT, dcT):
        out, gates, extra = saved.out, saved.gates, saved.extra
        T, B, GH = gates.shape
        H = w_hh.shape[1]
        G = GH // H
        cd, dev = gates.dtype, gates.device
        kind, act, ract = spec.kind, spec.activation, spec.recurrent_activation
        w = w_hh.to(cd)
        rm = None if rec_mask is None else rec_mask.to(cd)
        empty = lambda *shape: new_empty(shape, cd, dev)  # noqa: E731
        zeros = torch.zeros((B, H), dtype=cd, device=dev)
        dxg = empty(T, B, GH)
        dh = zeros if dhT is None else dhT.to(cd)
        dc = (zeros if dcT is None else dcT.to(cd)) if kind == "lstm" else None
        if T == 0:
            return dxg, dh, dc
        g4 = gates.view(T, B, G, H)
        douts = (torch.zeros((T, B, H), dtype=cd, device=dev) if dout is None else dout.to(cd)).unbind(0)
        # dh entering step t = dout[t] + what flows back from the step after it. dnext[t]: the dout of
        # the step processed after t (zero after the last one), added by step t's matmul.
        dnext = list(douts[1:]) + [zeros] if reverse else [zeros] + list(douts[:-1])
        # dh entering (cur) and leaving (nxt) a step: two buffers swapped after each step, as (B, H)
        # and (B, 1, H) views (the latter broadcasts over gate slots)
        cur, nxt = [(d.view(B, H), d) for d in (empty(B, 1, H), empty(B, 1, H))]
        torch.add(dh, douts[0 if reverse else T - 1], out=cur[0])
        Dx = dxg.unbind(0)
        # The factors that do not depend on dh are computed before the steps that use them, for a
        # chunk of steps at once: few large ops, in buffers small enough to stay in cache.
        n = max(1, min(T, _CHUNK_ELEMS // (B * H)))
        chunks = _chunks(T, n, reverse)
        # Masked steps: their precomputed factors are replaced (where(): the gates there may be
        # garbage, even NaN) so that the step gives dxg = 0 and passes dh and dc straight through.
        vm = None if mask is None else mask.view(T, B, 1, 1)

        def keep(k, lo, hi, fill):  # k (m, B, slots, H): masked steps get fill[slot]
            if mask is not None:
                torch.where(vm[lo:hi], k, fill, out=k)
            return k.unbind(0)

        def fills(slots, one=None):  # (slots, 1): 0, and 1 in slot `one` (no host-to-device copy)
            v = torch.zeros((slots, 1), dtype=cd, device=dev)
            if one is not None:
                v[one] = 1.0
            return v

        no = fills(1)

        # 1 at masked steps (dh_prev += dh * skipped[t]) where the step's math does not pass dh through
        skipped = None if mask is None else (~mask).to(cd).unsqueeze(-1).unbind(0)

        if kind == "lstm":
            c0 = c0.to(cd)
            # Scratch S, one (B, H) slot per quantity: [dh*a_o, dc, dpre_i, dpre_f, dpre_g, dpre_o].
            #   multiplied by dh:   [a_o, k_o]             -> slots 0 and 5   (a_o = o act'(tc))
            #   multiplied by dct:  [f, k_i, k_f, k_g]     -> slots 1..4      (dc_prev = dct * f)
            # where dct = dc + dh a_o; slots 2..5 are dpre in torch gate order.
            KH, KD, CP, TC = empty(n, B, 2, H), empty(n, B, 4, H), empty(n, B, H), empty(n, B, H)
            S = empty(B, 6, H)
            s_dh, s_dct, dc_, a_o = S[:, ::5], S[:, 1:5], S[:, 1], S[:, 0]
            dpre = S[:, 2:6].flatten(1)
            dc_.copy_(dc)
            dct3 = empty(B, 1, H)
            dct = dct3.view(B, H)
            rec_grad = _RecurrentGrad(w, rm, (0, 1, 2, 3), B)
            fill = fills(4, 0)  # masked: dc passes (times f = 1), no dpre
            for lo, hi, steps in chunks:
                i, f, g, o = g4[lo:hi].unbind(2)
                kh, kd = KH[:hi - lo], KD[:hi - lo]
                tc = _activate_into(act, extra[lo:hi], TC[:hi - lo])
                torch.mul(o, activation_grad(act, tc), out=kh[:, :, 0])  # a_o
                torch.mul(tc, activation_grad(ract, o), out=kh[:, :, 1])  # k_o
                kd[:, :, 0].copy_(f)
                torch.mul(g, activation_grad(ract, i), out=kd[:, :, 1])  # k_i
                c_prev = _previous_into(extra, c0, lo, hi, reverse, CP[:hi - lo])
                torch.mul(c_prev, activation_grad(ract, f), out=kd[:, :, 2])  # k_f
                torch.mul(i, activation_grad(act, g), out=kd[:, :, 3])  # k_g
                kh, kd = keep(kh, lo, hi, no), keep(kd, lo, hi, fill)
                for t in steps:
                    (dh, dh3), dh_new = cur, nxt[0]
                    torch.mul(kh[t - lo], dh3, out=s_dh)
                    torch.add(dc_, a_o, out=dct)  # dct = dc + dh o act'(tc)
                    torch.mul(kd[t - lo], dct3, out=s_dct)
                    rec_grad(dnext[t], dpre, out=dh_new)
                    Dx[t].copy_(dpre)
                    if mask is not None:
                        dh_new.addcmul_(dh, skipped[t])
                    cur, nxt = nxt, cur
            dc = dc_.clone()
        elif kind == "gru" and spec.reset_after:
            # S = dh * [k_n r, k_r, k_z, k_n, z] = [drec_n, dpre_r, dpre_z, dpre_n, dh z] where
            # dpre_n = dh (1 - z) act'(n), dpre_z = dh (h_prev - n) ract'(z), dpre_r = dpre_n hn ract'(r).
            # The recurrent matmul sees [r, z, r * n] blocks: slots 0..2 with W's rows in order n, r, z.
            K, HP = empty(n, B, 5, H), empty(n, B, H)
            S = empty(B, 5, H)
            drec, dpre, dh_z = S[:, 0:3].flatten(1), S[:, 1:4].flatten(1), S[:, 4]
            rec_grad = _RecurrentGrad(w, rm, (2, 0, 1), B)
            fill = fills(5, 4)  # masked: dh passes (times z = 1), no dpre
            for lo, hi, steps in chunks:
                r, z, n_ = g4[lo:hi].unbind(2)
                kk = K[:hi - lo]
                kn = torch.mul(1 - z, activation_grad(act, n_), out=kk[:, :, 3])
                torch.mul(kn, r, out=kk[:, :, 0])
                torch.mul(kn * extra[lo:hi], activation_grad(ract, r), out=kk[:, :, 1])
                h_prev = _previous_into(out, h0, lo, hi, reverse, HP[:hi - lo])
                torch.mul(h_prev.sub_(n_), activation_grad(ract, z), out=kk[:, :, 2])
                kk[:, :, 4].copy_(z)
                kk = keep(kk, lo, hi, fill)
                for t in steps:
                    (dh, dh3), dh_new = cur, nxt[0]
                    torch.mul(kk[t - lo], dh3, out=S)
                    rec_grad(dnext[t], drec, out=dh_new).add_(dh_z)
                    Dx[t].copy_(dpre)
                    cur, nxt = nxt, cur
        elif kind == "gru":
            m_n = 1.0 if rm is None else rm[2]
            # The n block's matmul input is r * h * m_n: a = dpre_n W_n is its gradient, so
            # dpre_r = a h m_n ract'(r) and dh_prev gets a r m_n besides dh z and the rz matmul.
            # Scratch S = [dpre_r, dpre_z, dpre_n, dh z, a r m_n]:
            #   multiplied by dh: [k_z, k_n, z]            -> slots 1..3
            #   multiplied by a:  [h m_n ract'(r), r m_n]  -> slots 0 and 4
            # with k_z = (h_prev - n) ract'(z), k_n = (1 - z) act'(n).
            K, KA, HP = empty(n, B, 3, H), empty(n, B, 2, H), empty(n, B, H)
            S = empty(B, 5, H)
            s_dh, s_a, dpre_n, dh_z, a_r = S[:, 1:4], S[:, ::4], S[:, 2], S[:, 3], S[:, 4]
            drec, dpre = S[:, 0:2].flatten(1), S[:, 0:3].flatten(1)
            a3 = empty(B, 1, H)
            a_ = a3.view(B, H)
            w_n = w[2 * H:]
            rec_grad = _RecurrentGrad(w, rm, (0, 1), B)
            fill = fills(3, 2)  # masked: dh passes (times z = 1), no dpre
            for lo, hi, steps in chunks:
                r, z, n_ = g4[lo:hi].unbind(2)
                kk, ka = K[:hi - lo], KA[:hi - lo]
                h_prev = _previous_into(out, h0, lo, hi, reverse, HP[:hi - lo])
                torch.mul(h_prev * m_n, activation_grad(ract, r), out=ka[:, :, 0])
                torch.mul(r, m_n, out=ka[:, :, 1])
                torch.mul(h_prev.sub_(n_), activation_grad(ract, z), out=kk[:, :, 0])
                torch.mul(1 - z, activation_grad(act, n_), out=kk[:, :, 1])
                kk[:, :, 2].copy_(z)
                kk, ka = keep(kk, lo, hi, fill), keep(ka, lo, hi, no)
                for t in steps:
                    (dh, dh3), dh_new = cur, nxt[0]
                    torch.mul(kk[t - lo], dh3, out=s_dh)
                    torch.mm(dpre_n, w_n, out=a_)
                    torch.mul(ka[t - lo], a3, out=s_a)
                    torch.add(dh_z, a_r, out=dh_z).add_(dnext[t])  # dh z + a r m_n + dout
                    rec_grad(dh_z, drec, out=dh_new)
                    Dx[t].copy_(dpre)
                    cur, nxt = nxt, cur
        else:
            rec_grad = _RecurrentGrad(w, rm, (0,), B)
            for lo, hi, steps in chunks:
                kk = activation_grad(act, gates[lo:hi])
                kk = (kk if mask is None else torch.where(vm[lo:hi, :, 0], kk, 0.0)).unbind(0)
                for t in steps:
                    dh, dh_new = cur[0], nxt[0]
                    rec_grad(dnext[t], torch.mul(kk[t - lo], dh, out=Dx[t]), out=dh_new)
                    if mask is not None:
                        dh_new.addcmul_(dh, skipped[t])
                    cur, nxt = nxt, cur
        return dxg, cur[0], dc
