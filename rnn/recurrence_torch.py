"""The "torch" backend: the recurrence contract written with plain torch ops.

A Python loop over time with an explicit, hand-written backward (not autograd through the loop).
It runs on any device and dtype, is the fallback without a GPU, and is the readable template the
Triton and CuPy kernels follow step for step. fp16/bf16 inputs are computed in fp32.
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


class TorchBackend:
    name = "torch"

    def unavailable_reason(self, device, spec, hidden, batch, dtype):
        if not dtype.is_floating_point:
            return f"dtype {dtype} is not floating point"
        return None

    @staticmethod
    def _recurrent_grad(d, w, rec_mask, gates, H):
        """Gradient w.r.t. h of `_recurrent` given d (B, len(gates)*H)."""
        lo, hi = gates[0] * H, (gates[-1] + 1) * H
        if rec_mask is None:
            return d @ w[lo:hi]
        out = 0
        for k, g in enumerate(gates):
            out = out + (d[:, k * H:(k + 1) * H] @ w[g * H:(g + 1) * H]) * rec_mask[g]
        return out

    def forward(self, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse):
        T, B, GH = xg.shape
        H = w_hh.shape[1]
        cd = compute_dtype(xg.dtype)
        w, b, rm, h, c = _cast(cd, w_hh, b_hh, rec_mask, h0, c0 if spec.kind == "lstm" else None)
        out = new_empty((T, B, H), xg.dtype, xg.device)
        gates = new_empty((T, B, GH), cd, xg.device)
        has_extra = spec.kind == "lstm" or (spec.kind == "gru" and spec.reset_after)
        extra = new_empty((T, B, H), cd, xg.device) if has_extra else None
        for t in _steps(T, reverse):
            h_new, c_new, gates[t], e = cell_step(spec, xg[t].to(cd), h, c, w, b, rm)
            h, c = _carry(mask, t, h_new, h), _carry(mask, t, c_new, c)
            out[t] = h
            if spec.kind == "lstm":
                extra[t] = c
            elif has_extra:
                extra[t] = e
        cT = c.to(xg.dtype) if c is not None else None
        return Saved(out, h.to(xg.dtype), cT, gates, extra)

    def backward(self, spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, saved, dout, dhT, dcT):
        out, gates, extra = saved.out, saved.gates, saved.extra
        T, B, GH = gates.shape
        H = w_hh.shape[1]
        cd = gates.dtype
        w = w_hh.to(cd)
        rm = None if rec_mask is None else rec_mask.to(cd)
        act, ract = spec.activation, spec.recurrent_activation
        dxg = new_empty((T, B, GH), cd, gates.device)
        zeros = torch.zeros((B, H), dtype=cd, device=gates.device)
        dh = zeros if dhT is None else dhT.to(cd)
        dc = (zeros if dcT is None else dcT.to(cd)) if spec.kind == "lstm" else None
        h_prev_all = previous_states(out, h0, reverse)
        steps = range(T) if reverse else range(T - 1, -1, -1)
        for t in steps:
            if dout is not None:
                dh = dh + dout[t].to(cd)
            h_prev = h_prev_all[t].to(cd)
            gt = gates[t]
            if spec.kind == "lstm":
                i, f, g, o = (gt[:, k * H:(k + 1) * H] for k in range(4))
                if (t > 0 and not reverse) or (t < T - 1 and reverse):
                    c_prev = extra[t + 1 if reverse else t - 1]
                else:
                    c_prev = c0.to(cd)
                tc = activate(act, extra[t])
                dct = dc + dh * o * activation_grad(act, tc)
                dpre = torch.cat([
                    dct * g * activation_grad(ract, i),
                    dct * c_prev * activation_grad(ract, f),
                    dct * i * activation_grad(act, g),
                    dh * tc * activation_grad(ract, o),
                ], 1)
                dc_prev = dct * f
                dh_prev = self._recurrent_grad(dpre, w, rm, (0, 1, 2, 3), H)
            elif spec.kind == "gru":
                r, z, n = gt[:, :H], gt[:, H:2 * H], gt[:, 2 * H:]
                dnp = dh * (1 - z) * activation_grad(act, n)
                dzp = dh * (h_prev - n) * activation_grad(ract, z)
                dh_prev = dh * z
                if spec.reset_after:
                    drp = dnp * extra[t] * activation_grad(ract, r)
                    dh_prev = dh_prev + self._recurrent_grad(torch.cat([drp, dzp, dnp * r], 1), w, rm, (0, 1, 2), H)
                else:
                    m_n = 1.0 if rm is None else rm[2]
                    a = dnp @ w[2 * H:]  # gradient w.r.t. (r * h * m_n)
                    drp = a * h_prev * m_n * activation_grad(ract, r)
                    dh_prev = dh_prev + a * r * m_n + self._recurrent_grad(torch.cat([drp, dzp], 1), w, rm, (0, 1), H)
                dpre = torch.cat([drp, dzp, dnp], 1)
            else:
                dpre = dh * activation_grad(act, out[t].to(cd))
                dh_prev = self._recurrent_grad(dpre, w, rm, (0,), H)
            if mask is not None:  # masked step: gradients pass straight through, nothing to the gates
                m = mask[t].unsqueeze(1)
                dpre = torch.where(m, dpre, 0.0)
                dh_prev = torch.where(m, dh_prev, dh)
                if dc is not None:
                    dc_prev = torch.where(m, dc_prev, dc)
            dxg[t] = dpre
            dh = dh_prev
            if dc is not None:
                dc = dc_prev
        return dxg, dh, dc
