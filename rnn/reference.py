"""The NumPy float64 oracle: forward AND hand-written backward (BPTT) of every cell.

Every backend and both public faces are checked against this module; its backward is checked
by finite differences (tests/test_reference.py). It never imports torch.

Layouts, gate order and equations are the recurrence contract in the docstring of rnn/cells.py:

    T time, B batch, I input features, H hidden units, G gates (LSTM 4, GRU 3, SimpleRNN 1)
    x (T, B, I)   w_ih (G*H, I)   w_hh (G*H, H)   b_ih, b_hh (G*H,) | None
    h0, c0 (B, H) | None (zeros)   mask (T, B) bool, True = valid
    in_mask (B, I) | (G, B, I)     rec_mask (G, B, H)     reverse: process t = T-1 .. 0
    w_hr (P, H) | None   LSTM with projections (torch.nn's proj_size = P): the state h and out
                         have P features, h = (o * act(c)) @ w_hr^T, w_hh is (G*H, P) and
                         h0 / rec_mask are P wide (c stays H wide)

`spec` is any object with the attributes kind, activation, recurrent_activation, reset_after and
n_gates (a rnn.cells.CellSpec). The loop is written plainly, one step at a time, for clarity.
"""
from __future__ import annotations

import numpy as np

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_F64 = np.float64


# ----------------------------------------------------------------------------- activations
def activation(name, x):
    """Apply the named activation (tanh, relu, sigmoid, hard_sigmoid, linear) elementwise."""
    x = np.asarray(x, _F64)
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    if name == "hard_sigmoid":  # Keras 3 form (Keras 2 used 0.2x + 0.5)
        return np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    if name in ("linear", None):
        return x.copy()
    raise ValueError(f"activation must be one of tanh, relu, sigmoid, hard_sigmoid, linear; got {name!r}")


def activation_grad(name, y):
    """d activation / d x expressed from the OUTPUT y = activation(name, x)."""
    y = np.asarray(y, _F64)
    if name == "tanh":
        return 1.0 - y * y
    if name == "relu":
        return (y > 0).astype(_F64)
    if name == "sigmoid":
        return y * (1.0 - y)
    if name == "hard_sigmoid":  # slope 1/6 strictly inside the linear segment, 0 where clipped
        return ((y > 0) & (y < 1)).astype(_F64) / 6.0
    if name in ("linear", None):
        return np.ones_like(y)
    raise ValueError(f"activation must be one of tanh, relu, sigmoid, hard_sigmoid, linear; got {name!r}")


# ----------------------------------------------------------------------------- validation
def _arr(a):
    return None if a is None else np.asarray(a, _F64)


def _check(name, a, shape):
    if a is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")


def _gate_count(spec):
    kind = getattr(spec, "kind", None)
    if kind not in GATES:
        raise ValueError(f"spec.kind must be one of {tuple(GATES)}, got {kind!r}")
    return GATES[kind]


# ----------------------------------------------------------------------------- forward
def forward(spec, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None,
            mask=None, in_mask=None, rec_mask=None, reverse=False, w_hr=None):
    """Run one layer, one direction. Returns (out (T,B,P), hT (B,P), cT (B,H) | None, cache)
    with P = H unless w_hr is given; `cache` is what `backward` needs."""
    G = _gate_count(spec)
    x, w_ih, w_hh, w_hr = _arr(x), _arr(w_ih), _arr(w_hh), _arr(w_hr)
    b_ih, b_hh, h0, c0 = _arr(b_ih), _arr(b_hh), _arr(h0), _arr(c0)
    in_mask, rec_mask = _arr(in_mask), _arr(rec_mask)
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (T, B, I), got {tuple(x.shape)}")
    T, B, I = x.shape
    if w_hr is not None:
        if spec.kind != "lstm":
            raise ValueError(f"w_hr: projections are for LSTM cells, got w_hr for {spec.kind!r}")
        if w_hr.ndim != 2:
            raise ValueError(f"w_hr: expected shape (P, H), got {tuple(w_hr.shape)}")
        P, H = w_hr.shape
        _check("w_hh", w_hh, (G * H, P))
    else:
        if w_hh.ndim != 2 or w_hh.shape[0] % G or w_hh.shape[0] != G * w_hh.shape[1]:
            raise ValueError(f"w_hh: expected shape ({G}*H, H) for {spec.kind}, got {tuple(w_hh.shape)}")
        H = P = w_hh.shape[1]
    _check("w_ih", w_ih, (G * H, I))
    _check("b_ih", b_ih, (G * H,))
    _check("b_hh", b_hh, (G * H,))
    _check("h0", h0, (B, P))
    if c0 is not None and spec.kind != "lstm":
        raise ValueError(f"c0: only an LSTM has a cell state, got c0 for {spec.kind!r}")
    _check("c0", c0, (B, H))
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"mask: expected dtype bool, got {mask.dtype}")
        _check("mask", mask, (T, B))
    if in_mask is not None:
        if in_mask.ndim == 2:
            _check("in_mask", in_mask, (B, I))
            in_mask = np.broadcast_to(in_mask, (G, B, I))
        else:
            _check("in_mask", in_mask, (G, B, I))
    _check("rec_mask", rec_mask, (G, B, P))

    act, ract = spec.activation, spec.recurrent_activation
    gru_before = spec.kind == "gru" and not spec.reset_after
    wi = w_ih.reshape(G, H, I)
    wh = w_hh.reshape(G, H, P)
    bi = np.zeros((G, H)) if b_ih is None else b_ih.reshape(G, H)
    bh = np.zeros((G, H)) if b_hh is None else b_hh.reshape(G, H)

    h = np.zeros((B, P)) if h0 is None else h0.copy()
    c = (np.zeros((B, H)) if c0 is None else c0.copy()) if spec.kind == "lstm" else None
    out = np.empty((T, B, P))
    steps = {}
    order = range(T - 1, -1, -1) if reverse else range(T)
    for t in order:
        # per-gate inputs (dropout masks applied to the copy feeding that gate)
        xin = x[t][None] if in_mask is None else x[t][None] * in_mask        # (1|G, B, I)
        xin = np.broadcast_to(xin, (G, B, I))
        hin = np.broadcast_to(h[None], (G, B, P)) if rec_mask is None else h[None] * rec_mask
        xg = xin @ wi.transpose(0, 2, 1) + bi[:, None]                        # (G, B, H)
        st = {"xin": xin, "h_prev": h, "hin": hin}
        if spec.kind == "lstm":
            rec = hin @ wh.transpose(0, 2, 1) + bh[:, None]
            pre = xg + rec
            i, f, o = (activation(ract, pre[k]) for k in (0, 1, 3))
            g = activation(act, pre[2])
            c_new = f * c + i * g
            tc = activation(act, c_new)
            h_new = o * tc
            st.update(i=i, f=f, g=g, o=o, c_prev=c, tc=tc, hin_eff=hin, pre=[pre, c_new], m_out=h_new)
            if w_hr is not None:
                h_new = h_new @ w_hr.T
        elif spec.kind == "gru":
            hin_eff = hin
            rec_rz = hin[:2] @ wh[:2].transpose(0, 2, 1) + bh[:2, None]
            r = activation(ract, xg[0] + rec_rz[0])
            z = activation(ract, xg[1] + rec_rz[1])
            if gru_before:  # n = act(xn + (r*h) W_n^T + b_hn)
                hn = r * hin[2]
                rec_n = hn @ wh[2].T + bh[2]
                pre_n = xg[2] + rec_n
                hin_eff = np.stack([hin[0], hin[1], hn])
            else:           # n = act(xn + r * (h W_n^T + b_hn))
                rec_n = hin[2] @ wh[2].T + bh[2]
                pre_n = xg[2] + r * rec_n
            n = activation(act, pre_n)
            h_new = (1.0 - z) * n + z * h
            st.update(r=r, z=z, n=n, rec_n=rec_n, hin_eff=hin_eff,
                      pre=[xg[0] + rec_rz[0], xg[1] + rec_rz[1], pre_n])
        else:
            pre = xg[0] + hin[0] @ wh[0].T + bh[0]
            h_new = activation(act, pre)
            st.update(hin_eff=hin, pre=[pre])
        st["h_new"] = h_new
        # a masked step keeps the state; np.where so NaN in its inputs never leaks
        if mask is not None:
            m = mask[t][:, None]
            st["m"] = m
            h_new = np.where(m, h_new, h)
            if c is not None:
                c_new = np.where(m, c_new, c)
        h = h_new
        if spec.kind == "lstm":
            c = c_new
        out[t] = h
        steps[t] = st

    cache = dict(spec=spec, order=list(order), steps=steps, shapes=(T, B, I, H, G, P),
                 w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, in_mask=in_mask, rec_mask=rec_mask, mask=mask,
                 has=dict(b_ih=b_ih is not None, b_hh=b_hh is not None,
                          h0=h0 is not None, c0=c0 is not None))
    return out, h, (c if spec.kind == "lstm" else None), cache


# ----------------------------------------------------------------------------- backward
def backward(cache, dout=None, dhT=None, dcT=None):
    """Hand-written BPTT. Upstream gradients on out (T,B,H), hT, cT (None = zero).
    Returns {"x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr"}; an entry is None where the
    corresponding input was None (or, for c0, where the cell has no cell state)."""
    spec = cache["spec"]
    T, B, I, H, G, P = cache["shapes"]
    w_hr = cache["w_hr"]
    act, ract = spec.activation, spec.recurrent_activation
    gru_before = spec.kind == "gru" and not spec.reset_after
    wi = cache["w_ih"].reshape(G, H, I)
    wh = cache["w_hh"].reshape(G, H, P)
    in_mask, rec_mask = cache["in_mask"], cache["rec_mask"]
    dout, dhT, dcT = _arr(dout), _arr(dhT), _arr(dcT)
    _check("dout", dout, (T, B, P))
    _check("dhT", dhT, (B, P))
    if dcT is not None and spec.kind != "lstm":
        raise ValueError(f"dcT: only an LSTM has a cell state, got dcT for {spec.kind!r}")
    _check("dcT", dcT, (B, H))

    dx = np.zeros((T, B, I))
    dwi = np.zeros((G, H, I))
    dwh = np.zeros((G, H, P))
    dwr = None if w_hr is None else np.zeros((P, H))
    dbi = np.zeros((G, H))
    dbh = np.zeros((G, H))
    dh = np.zeros((B, P)) if dhT is None else dhT.copy()
    dc = (np.zeros((B, H)) if dcT is None else dcT.copy()) if spec.kind == "lstm" else None

    for t in reversed(cache["order"]):
        st = cache["steps"][t]
        if dout is not None:
            dh = dh + dout[t]
        m = st.get("m")
        dh_prev_extra = None  # gradient reaching h_prev outside the recurrent matmuls
        # dxg: gradient of the input projection per gate; drec: of each gate's recurrent matmul
        # output (rec_g = hin_eff_g @ W_g^T + b_g)
        if spec.kind == "lstm":
            i, f, g, o, tc = st["i"], st["f"], st["g"], st["o"], st["tc"]
            dm = dh  # gradient of o * act(c): through the projection when there is one
            if w_hr is not None:
                dwr += (dh if m is None else np.where(m, dh, 0.0)).T @ st["m_out"]
                dm = dh @ w_hr
            do = dm * tc
            dcs = dc + dm * o * activation_grad(act, tc)
            dpre = np.stack([dcs * g * activation_grad(ract, i),
                             dcs * st["c_prev"] * activation_grad(ract, f),
                             dcs * i * activation_grad(act, g),
                             do * activation_grad(ract, o)])
            dc_prev = dcs * f
            dxg = drec = dpre
        elif spec.kind == "gru":
            r, z, n, h_prev = st["r"], st["z"], st["n"], st["h_prev"]
            dn_pre = dh * (1.0 - z) * activation_grad(act, n)
            dz_pre = dh * (h_prev - n) * activation_grad(ract, z)
            dh_prev_extra = dh * z
            if gru_before:
                drec_n = dn_pre
                dhn = dn_pre @ wh[2]                      # grad of r * hin_n
                dr = dhn * st["hin"][2]
            else:
                drec_n = dn_pre * r
                dr = dn_pre * st["rec_n"]
            dr_pre = dr * activation_grad(ract, r)
            dxg = np.stack([dr_pre, dz_pre, dn_pre])
            drec = np.stack([dr_pre, dz_pre, drec_n])
        else:
            dpre = (dh * activation_grad(act, st["h_new"]))[None]
            dxg = drec = dpre

        if m is not None:  # no gradient into this step's inputs or weights where it is masked
            dxg = np.where(m[None], dxg, 0.0)
            drec = np.where(m[None], drec, 0.0)
            xin = np.where(m[None], st["xin"], 0.0)
            hin_eff = np.where(m[None], st["hin_eff"], 0.0)
        else:
            xin, hin_eff = st["xin"], st["hin_eff"]

        dwi += dxg.transpose(0, 2, 1) @ xin
        dbi += dxg.sum(axis=1)
        dwh += drec.transpose(0, 2, 1) @ hin_eff
        dbh += drec.sum(axis=1)
        dxin = dxg @ wi                                     # (G, B, I)
        if in_mask is not None:
            dxin = dxin * in_mask
        dx[t] = dxin.sum(axis=0)

        dhin = drec @ wh                                   # grad of each gate's hin_eff
        if gru_before:                                     # hin_eff_n = r * hin_n
            dhin = np.stack([dhin[0], dhin[1], dhin[2] * st["r"]])
        if rec_mask is not None:
            dhin = dhin * rec_mask
        dh_new_prev = dhin.sum(axis=0)
        if dh_prev_extra is not None:
            dh_new_prev = dh_new_prev + dh_prev_extra

        if m is not None:  # masked rows: dh / dc pass straight through
            dh = np.where(m, dh_new_prev, dh)
            if dc is not None:
                dc = np.where(m, dc_prev, dc)
        else:
            dh = dh_new_prev
            if dc is not None:
                dc = dc_prev

    has = cache["has"]
    return {
        "x": dx,
        "w_ih": dwi.reshape(G * H, I),
        "w_hh": dwh.reshape(G * H, P),
        "b_ih": dbi.reshape(G * H) if has["b_ih"] else None,
        "b_hh": dbh.reshape(G * H) if has["b_hh"] else None,
        "h0": dh if has["h0"] else None,
        "c0": dc if (has["c0"] and spec.kind == "lstm") else None,
        "w_hr": dwr,
    }
