"""Random recurrence problems shared by the backend tests: one draw, as NumPy (for the oracle)
and as torch tensors (for the library), plus the oracle's answer."""
from __future__ import annotations

import numpy as np
import torch

from rnn import reference
from rnn.cells import CellSpec

# (name, spec) for every cell family and GRU form; activations are varied separately.
CELLS = [
    ("lstm", CellSpec("lstm")),
    ("gru", CellSpec("gru", reset_after=True)),
    ("gru_classic", CellSpec("gru", reset_after=False)),
    ("rnn", CellSpec("rnn")),
]


def draw(rng, spec, T=7, B=3, I=5, H=37, *, bias=True, h0=True, mask=None, in_mask=None,
         rec_mask=False, scale=0.5):
    """A dict of float64 NumPy arrays for one problem.

    mask: None, or "some" (random masked steps incl. a masked first step and one fully masked row).
    in_mask: None, "shared" (B, I) or "gates" (G, B, I).
    """
    G = spec.n_gates
    p = {
        "x": rng.standard_normal((T, B, I)),
        "w_ih": rng.standard_normal((G * H, I)) * scale / np.sqrt(I),
        "w_hh": rng.standard_normal((G * H, H)) * scale / np.sqrt(H),
        "b_ih": rng.standard_normal(G * H) * 0.1 if bias else None,
        "b_hh": rng.standard_normal(G * H) * 0.1 if bias else None,
        "h0": rng.standard_normal((B, H)) * 0.5 if h0 else None,
        "c0": rng.standard_normal((B, H)) * 0.5 if (h0 and spec.kind == "lstm") else None,
        "mask": None, "in_mask": None, "rec_mask": None,
    }
    if mask == "some":
        m = rng.random((T, B)) > 0.3
        m[0, 0] = False  # masked first step
        if B > 2:
            m[:, 2] = False  # a fully masked sequence
        p["mask"] = m
    if in_mask is not None:
        shape = (B, I) if in_mask == "shared" else (G, B, I)
        p["in_mask"] = (rng.random(shape) > 0.25) / 0.75
    if rec_mask:
        p["rec_mask"] = (rng.random((G, B, H)) > 0.25) / 0.75
    return p


def ragged_mask(B, T):
    """(B, T) bool, True = valid: row 0 all valid, row 1 masked first steps and a gap, row 2 right
    padding, row 3 all masked (B >= 4, T >= 6)."""
    m = np.ones((B, T), bool)
    m[1, :2] = False
    m[1, 4] = False
    m[2, 5:] = False
    m[3, :] = False
    return m


def to_torch(p, dtype=torch.float64, device="cpu", requires_grad=True):
    out = {}
    for k, v in p.items():
        if v is None:
            out[k] = None
        elif k == "mask":
            out[k] = torch.as_tensor(v, device=device)
        else:
            t = torch.as_tensor(v, dtype=dtype, device=device)
            if requires_grad and k not in ("in_mask", "rec_mask"):
                t.requires_grad_(True)
            out[k] = t
    return out


def upstream(rng, spec, T, B, H):
    """Random upstream gradients for out, hT and cT (cT None unless LSTM)."""
    return (rng.standard_normal((T, B, H)), rng.standard_normal((B, H)),
            rng.standard_normal((B, H)) if spec.kind == "lstm" else None)


def oracle(spec, p, grads, reverse=False):
    out, hT, cT, cache = reference.forward(spec, p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                           p["h0"], p["c0"], p["mask"], p["in_mask"], p["rec_mask"], reverse)
    g = reference.backward(cache, *grads)
    return (out, hT, cT), g


GRAD_NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


def run_library(spec, p, grads, reverse=False, backend="torch", dtype=torch.float64, device="cpu"):
    """Forward + backward through rnn.functional.recurrence; returns ((out, hT, cT), {name: grad})."""
    from rnn.functional import recurrence

    t = to_torch(p, dtype, device)
    out, hT, cT = recurrence(t["x"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t["h0"], t["c0"],
                             spec=spec, mask=t["mask"], in_mask=t["in_mask"], rec_mask=t["rec_mask"],
                             reverse=reverse, backend=backend)
    loss = (out * torch.as_tensor(grads[0], dtype=dtype, device=device)).sum()
    loss = loss + (hT * torch.as_tensor(grads[1], dtype=dtype, device=device)).sum()
    if cT is not None:
        loss = loss + (cT * torch.as_tensor(grads[2], dtype=dtype, device=device)).sum()
    names = [n for n in GRAD_NAMES if t[n] is not None]
    got = torch.autograd.grad(loss, [t[n] for n in names])
    return (out, hT, cT), dict(zip(names, got))


def compare(label, spec, lib, ref, dtype):
    """Assert every output and gradient of `lib` matches the oracle `ref`."""
    from tolerances import assert_close

    (out, hT, cT), g = lib
    (rout, rhT, rcT), rg = ref
    assert_close(f"{label} out", out, rout, dtype)
    assert_close(f"{label} hT", hT, rhT, dtype)
    if spec.kind == "lstm":
        assert_close(f"{label} cT", cT, rcT, dtype)
    for name, val in g.items():
        assert rg[name] is not None, f"{label}: oracle returned no gradient for {name}"
        assert_close(f"{label} d{name}", val, rg[name], dtype)
