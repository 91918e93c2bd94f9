"""Tests of the NumPy float64 oracle (rnn/reference.py).

- backward vs central finite differences for every cell, activation and option (masks, dropout
  masks, reverse, absent states / biases), with random upstream gradients on out, hT and cT;
- semantics: masked steps keep state, NaN at masked steps does not leak, reverse == flip,
  hand-computed single steps, GRU forms differ, Keras 3 hard_sigmoid;
- the oracle never imports torch; bad shapes raise errors naming expected vs given.
"""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnn import cells
from rnn import reference as ref
from tolerances import assert_close

ACTS = cells.ACTIVATIONS
KINKS = {"relu": (0.0,), "hard_sigmoid": (-3.0, 3.0)}
SPECS = {
    "lstm": cells.lstm(),
    "gru": cells.gru(reset_after=True),
    "gru_before": cells.gru(reset_after=False),
    "rnn": cells.simple_rnn(),
}
# option sets: what is given / absent, masks, direction
OPTIONS = {
    "plain": {},
    "no_state": dict(h0=False, c0=False),
    "no_bias": dict(b_ih=False, b_hh=False),
    "only_b_hh": dict(b_ih=False),
    "reverse": dict(reverse=True),
    "mask": dict(mask=True),
    "in_mask_shared": dict(in_mask="shared"),
    "in_mask_gate": dict(in_mask="gate"),
    "rec_mask": dict(rec_mask=True),
    "all": dict(reverse=True, mask=True, in_mask="gate", rec_mask=True, h0=False),
    "all_shared": dict(mask=True, in_mask="shared", rec_mask=True, b_hh=False),
}


def make_mask(rng, T, B):
    """Random mask with: row 0 fully masked, row 1 masked at the start, other rows random."""
    m = rng.random((T, B)) > 0.35
    m[:, 0] = False
    m[:, 1] = True
    m[:2, 1] = False
    return m


def make_case(spec, rng, T=5, B=3, I=4, H=3, h0=True, c0=True, b_ih=True, b_hh=True,
              reverse=False, mask=False, in_mask=None, rec_mask=False, proj=None):
    """(differentiable inputs, constant options) for one call of ref.forward; proj=P adds an
    LSTM projection w_hr (P, H), so h is P wide."""
    G = spec.n_gates
    s = 0.9 / math.sqrt(H)
    P = H if proj is None else proj
    inputs = dict(
        x=rng.normal(size=(T, B, I)),
        w_ih=rng.normal(scale=s, size=(G * H, I)),
        w_hh=rng.normal(scale=s, size=(G * H, P)),
        b_ih=rng.normal(scale=0.3, size=G * H) if b_ih else None,
        b_hh=rng.normal(scale=0.3, size=G * H) if b_hh else None,
        h0=rng.normal(scale=0.5, size=(B, P)) if h0 else None,
        c0=rng.normal(scale=0.5, size=(B, H)) if (c0 and spec.kind == "lstm") else None,
    )
    if proj is not None:
        inputs["w_hr"] = rng.normal(scale=1.0 / math.sqrt(H), size=(P, H))
    # dropout masks are already scaled by 1/(1-rate)
    keep = lambda shape: (rng.random(shape) > 0.3) / 0.7  # noqa: E731
    opts = dict(
        reverse=reverse,
        mask=make_mask(rng, T, B) if mask else None,
        in_mask={None: None, "shared": keep((B, I)), "gate": keep((G, B, I))}[in_mask],
        rec_mask=keep((G, B, P)) if rec_mask else None,
    )
    return inputs, opts


def near_kink(spec, cache, dist=1e-3):
    """True if any pre-activation of a kinked activation lies within `dist` of its kink.
    Exact zeros are structural (e.g. c = 0*c0 + i*relu(neg) with c0 absent): locally constant,
    so they do not spoil finite differences."""
    kinks = [k for a in {spec.activation, spec.recurrent_activation} for k in KINKS.get(a, ())]
    if not kinks:
        return False
    vals = np.concatenate([np.ravel(p) for st in cache["steps"].values() for p in st["pre"]])
    vals = vals[vals != 0.0]
    return any(np.any(np.abs(vals - k) < dist) for k in kinks)


def draw_case(spec, rng, **kw):
    """Draw until no pre-activation sits near a kink (relu / hard_sigmoid)."""
    for _ in range(50):
        inputs, opts = make_case(spec, rng, **kw)
        cache = ref.forward(spec, **inputs, **opts)[3]
        if not near_kink(spec, cache):
            return inputs, opts
    raise RuntimeError("could not draw a case away from the activation kinks")


def loss(spec, inputs, opts, up):
    out, hT, cT, _ = ref.forward(spec, **inputs, **opts)
    total = np.sum(up["dout"] * out) + np.sum(up["dhT"] * hT)
    if cT is not None:
        total += np.sum(up["dcT"] * cT)
    return total


def check_fd(spec, rng, eps=1e-6, **kw):
    inputs, opts = draw_case(spec, rng, **kw)
    T, B, _ = inputs["x"].shape
    P = inputs["w_hh"].shape[1]  # width of h: H, or the projection size
    H = inputs["w_hh"].shape[0] // spec.n_gates
    up = dict(dout=rng.normal(size=(T, B, P)), dhT=rng.normal(size=(B, P)),
              dcT=rng.normal(size=(B, H)) if spec.kind == "lstm" else None)
    out, hT, cT, cache = ref.forward(spec, **inputs, **opts)
    grads = ref.backward(cache, **up)
    assert set(grads) == {"x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr"}
    assert (grads["w_hr"] is None) == ("w_hr" not in inputs)
    for name, value in inputs.items():
        if value is None:
            assert grads[name] is None, f"{name} was None but got a gradient"
            continue
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            orig = value[idx]
            value[idx] = orig + eps
            lp = loss(spec, inputs, opts, up)
            value[idx] = orig - eps
            lm = loss(spec, inputs, opts, up)
            value[idx] = orig
            fd[idx] = (lp - lm) / (2 * eps)
        # Custom tolerance on purpose: central differences carry O(eps^2) truncation and
        # O(ulp/eps) rounding error (~1e-9 here), far above the float64 table entry.
        assert_close(f"{spec.kind} d{name}", grads[name], fd, torch.float64, rtol=1e-5, atol=1e-7)
    return inputs, opts, grads


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("cell", list(SPECS))
def test_backward_matches_finite_differences(cell, option, rng):
    check_fd(SPECS[cell], rng, **OPTIONS[option])


@pytest.mark.parametrize("option", ["plain", "no_state", "no_bias", "reverse", "mask", "in_mask_gate",
                                    "rec_mask", "all"])
def test_projection_backward_matches_finite_differences(option, rng):
    """LSTM with projections (w_hr, torch.nn's proj_size): h is P = 2 wide, c is H = 3 wide."""
    check_fd(SPECS["lstm"], rng, proj=2, **OPTIONS[option])


def test_projection_one_step_by_hand(rng):
    x, w_ih, w_hh, w_hr = (rng.normal(size=s) for s in ((1, 2, 3), (12, 3), (12, 2), (2, 3)))
    h0, c0 = rng.normal(size=(2, 2)), rng.normal(size=(2, 3))
    out, hT, cT, _ = ref.forward(SPECS["lstm"], x, w_ih, w_hh, h0=h0, c0=c0, w_hr=w_hr)
    pre = x[0] @ w_ih.T + h0 @ w_hh.T
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, g, o = sig(pre[:, :3]), sig(pre[:, 3:6]), np.tanh(pre[:, 6:9]), sig(pre[:, 9:])
    c = f * c0 + i * g
    np.testing.assert_allclose(cT, c, rtol=1e-12)
    np.testing.assert_allclose(hT, (o * np.tanh(c)) @ w_hr.T, rtol=1e-12)
    np.testing.assert_allclose(out[0], hT, rtol=0)


def test_projection_shape_errors(rng):
    lstm = SPECS["lstm"]
    x = rng.normal(size=(2, 1, 3))
    with pytest.raises(ValueError, match=r"w_hh: expected shape \(12, 2\)"):
        ref.forward(lstm, x, np.zeros((12, 3)), np.zeros((12, 3)), w_hr=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="projections are for LSTM"):
        ref.forward(SPECS["gru"], x, np.zeros((9, 3)), np.zeros((9, 2)), w_hr=np.zeros((2, 3)))


def _activation_specs():
    for a in ACTS:
        yield f"lstm-act-{a}", cells.lstm(activation=a)
        yield f"lstm-ract-{a}", cells.lstm(activation="tanh", recurrent_activation=a)
        for ra in (True, False):
            form = "after" if ra else "before"
            yield f"gru_{form}-act-{a}", cells.gru(activation=a, reset_after=ra)
            yield f"gru_{form}-ract-{a}", cells.gru(recurrent_activation=a, reset_after=ra)
        yield f"rnn-act-{a}", cells.simple_rnn(activation=a)


_ACT_CASES = list(_activation_specs())


@pytest.mark.parametrize("spec", [s for _, s in _ACT_CASES], ids=[i for i, _ in _ACT_CASES])
def test_backward_activations_finite_differences(spec, rng):
    # every option at once, odd sizes
    check_fd(spec, rng, T=4, B=3, I=3, H=5, mask=True, in_mask="gate", rec_mask=True, reverse=True)


def test_masked_steps_get_no_gradient(rng):
    spec = SPECS["lstm"]
    inputs, opts = make_case(spec, rng, mask=True)
    out, hT, cT, cache = ref.forward(spec, **inputs, **opts)
    g = ref.backward(cache, dout=rng.normal(size=out.shape), dhT=rng.normal(size=hT.shape))
    m = opts["mask"]
    assert np.all(g["x"][~m] == 0)
    assert np.any(g["x"][m] != 0)


def test_fully_masked_row_passes_gradient_through(rng):
    spec = SPECS["lstm"]
    inputs, opts = make_case(spec, rng, mask=True)
    out, hT, cT, cache = ref.forward(spec, **inputs, **opts)
    dout, dhT, dcT = rng.normal(size=out.shape), rng.normal(size=hT.shape), rng.normal(size=cT.shape)
    g = ref.backward(cache, dout=dout, dhT=dhT, dcT=dcT)
    # row 0 of make_mask is fully masked: out[:, 0] == h0[0], so dh0[0] = dhT[0] + sum_t dout[t, 0]
    assert np.array_equal(out[:, 0], np.broadcast_to(inputs["h0"][0], out[:, 0].shape))
    assert_close("dh0 row 0", g["h0"][0], dhT[0] + dout[:, 0].sum(0))
    assert_close("dc0 row 0", g["c0"][0], dcT[0])


# ----------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("cell", list(SPECS))
@pytest.mark.parametrize("reverse", [False, True])
def test_masked_step_keeps_state(cell, reverse, rng):
    spec = SPECS[cell]
    inputs, opts = make_case(spec, rng, T=7, mask=True, reverse=reverse)
    out, hT, cT, _ = ref.forward(spec, **inputs, **opts)
    m = opts["mask"]
    T = m.shape[0]
    order = list(range(T - 1, -1, -1)) if reverse else list(range(T))
    prev = inputs["h0"]
    for t in order:
        for b in range(m.shape[1]):
            if not m[t, b]:
                assert np.array_equal(out[t, b], prev[b]), (t, b)
            else:
                assert not np.array_equal(out[t, b], prev[b]), (t, b)
        prev = out[t]
    assert np.array_equal(hT, prev)


@pytest.mark.parametrize("cell", list(SPECS))
def test_nan_at_masked_step_does_not_leak(cell, rng):
    spec = SPECS[cell]
    inputs, opts = make_case(spec, rng, T=6, B=4, mask=True, in_mask="gate", rec_mask=True)
    m = opts["mask"]
    m[3, 2] = False
    inputs["x"][~m] = np.nan
    out, hT, cT, cache = ref.forward(spec, **inputs, **opts)
    assert np.isfinite(out).all() and np.isfinite(hT).all()
    assert cT is None or np.isfinite(cT).all()
    g = ref.backward(cache, dout=rng.normal(size=out.shape), dhT=rng.normal(size=hT.shape))
    for name, v in g.items():
        assert v is None or np.isfinite(v).all(), name
    # other rows are untouched by the NaN: same result as with finite garbage in its place
    inputs["x"][~m] = 1e3
    out2, hT2, _, cache2 = ref.forward(spec, **inputs, **opts)
    assert np.array_equal(out, out2) and np.array_equal(hT, hT2)


@pytest.mark.parametrize("cell", list(SPECS))
def test_reverse_equals_forward_on_flipped_inputs(cell, rng):
    spec = SPECS[cell]
    inputs, opts = make_case(spec, rng, T=7, mask=True, in_mask="gate", rec_mask=True)
    out_r, hT_r, cT_r, cache_r = ref.forward(spec, **inputs, **dict(opts, reverse=True))
    flipped = dict(inputs, x=inputs["x"][::-1].copy())
    out_f, hT_f, cT_f, cache_f = ref.forward(spec, **flipped, **dict(opts, mask=opts["mask"][::-1].copy()))
    assert_close("out", out_r, out_f[::-1])
    assert_close("hT", hT_r, hT_f)
    if cT_r is not None:
        assert_close("cT", cT_r, cT_f)
    dout = rng.normal(size=out_r.shape)
    g_r = ref.backward(cache_r, dout=dout)
    g_f = ref.backward(cache_f, dout=dout[::-1])
    assert_close("dx", g_r["x"], g_f["x"][::-1])
    for k in ("w_ih", "w_hh", "b_ih", "b_hh", "h0"):
        assert_close(f"d{k}", g_r[k], g_f[k])


def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_lstm_one_step_by_hand():
    # H = I = B = 1: the gate blocks are the scalars i, f, g, o in torch order
    wi, wh = [0.5, -0.3, 0.8, 0.1], [0.2, 0.4, -0.6, 0.9]
    bi, bh = [0.1, 0.2, -0.1, 0.05], [-0.2, 0.3, 0.0, 0.1]
    x, h0, c0 = 0.7, -0.4, 0.25
    pre = [wi[k] * x + bi[k] + wh[k] * h0 + bh[k] for k in range(4)]
    i, f, g, o = _sig(pre[0]), _sig(pre[1]), math.tanh(pre[2]), _sig(pre[3])
    c1 = f * c0 + i * g
    h1 = o * math.tanh(c1)
    out, hT, cT, _ = ref.forward(
        SPECS["lstm"], np.full((1, 1, 1), x), np.array(wi)[:, None], np.array(wh)[:, None],
        np.array(bi), np.array(bh), np.full((1, 1), h0), np.full((1, 1), c0))
    assert_close("h1", hT, [[h1]])
    assert_close("c1", cT, [[c1]])
    assert_close("out", out, [[[h1]]])


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_one_step_by_hand(reset_after):
    wi, wh = [0.5, -0.3, 0.8], [0.2, 0.4, -0.6]
    bi, bh = [0.1, 0.2, -0.1], [-0.2, 0.3, 0.45]
    x, h0 = 0.7, -0.4
    r = _sig(wi[0] * x + bi[0] + wh[0] * h0 + bh[0])
    z = _sig(wi[1] * x + bi[1] + wh[1] * h0 + bh[1])
    if reset_after:
        n = math.tanh(wi[2] * x + bi[2] + r * (wh[2] * h0 + bh[2]))
    else:
        n = math.tanh(wi[2] * x + bi[2] + wh[2] * (r * h0) + bh[2])
    h1 = (1 - z) * n + z * h0
    _, hT, cT, _ = ref.forward(
        cells.gru(reset_after=reset_after), np.full((1, 1, 1), x), np.array(wi)[:, None],
        np.array(wh)[:, None], np.array(bi), np.array(bh), np.full((1, 1), h0))
    assert cT is None
    assert_close("h1", hT, [[h1]])


def test_rnn_one_step_by_hand():
    _, hT, _, _ = ref.forward(SPECS["rnn"], np.full((1, 1, 1), 0.7), [[0.5]], [[-0.6]], [0.1], [0.2],
                              np.full((1, 1), -0.4))
    assert_close("h1", hT, [[math.tanh(0.5 * 0.7 + 0.1 - 0.6 * -0.4 + 0.2)]])


def test_gru_reset_after_forms_differ(rng):
    inputs, opts = make_case(SPECS["gru"], rng)
    a = ref.forward(SPECS["gru"], **inputs, **opts)[0]
    b = ref.forward(SPECS["gru_before"], **inputs, **opts)[0]
    assert np.abs(a - b).max() > 1e-3


def test_hard_sigmoid_is_keras3():
    x = np.array([-10.0, -3.0, -1.5, 0.0, 1.5, 3.0, 10.0])
    assert_close("hard_sigmoid", ref.activation("hard_sigmoid", x), [0, 0, 0.25, 0.5, 0.75, 1, 1])


@pytest.mark.parametrize("name", ACTS)
def test_activation_grad_from_output(name):
    # points away from every kink (0, +-3)
    x = np.array([-4.0, -2.5, -0.7, 0.4, 1.9, 3.6])
    eps = 1e-6
    fd = (ref.activation(name, x + eps) - ref.activation(name, x - eps)) / (2 * eps)
    # FD truncation error (see check_fd)
    assert_close(name, ref.activation_grad(name, ref.activation(name, x)), fd, rtol=1e-5, atol=1e-7)


def test_without_upstream_gradients_everything_is_zero(rng):
    inputs, opts = make_case(SPECS["lstm"], rng)
    g = ref.backward(ref.forward(SPECS["lstm"], **inputs, **opts)[3])
    assert g["w_hr"] is None and all(np.all(v == 0) for k, v in g.items() if k != "w_hr")


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "change, pattern",
    [
        (dict(x=np.zeros((5, 3))), r"x: expected shape \(T, B, I\), got \(5, 3\)"),
        (dict(w_ih=np.zeros((12, 5))), r"w_ih: expected shape \(12, 4\), got \(12, 5\)"),
        (dict(w_hh=np.zeros((12, 4))), r"w_hh: expected shape"),
        (dict(b_ih=np.zeros(11)), r"b_ih: expected shape \(12,\), got \(11,\)"),
        (dict(b_hh=np.zeros(13)), r"b_hh: expected shape \(12,\), got \(13,\)"),
        (dict(h0=np.zeros((2, 3))), r"h0: expected shape \(3, 3\), got \(2, 3\)"),
        (dict(c0=np.zeros((3, 4))), r"c0: expected shape \(3, 3\), got \(3, 4\)"),
        (dict(mask=np.ones((5, 2), bool)), r"mask: expected shape \(5, 3\), got \(5, 2\)"),
        (dict(mask=np.ones((5, 3))), r"mask: expected dtype bool, got float64"),
        (dict(in_mask=np.ones((3, 3))), r"in_mask: expected shape \(3, 4\), got \(3, 3\)"),
        (dict(in_mask=np.ones((3, 3, 4))), r"in_mask: expected shape \(4, 3, 4\), got \(3, 3, 4\)"),
        (dict(rec_mask=np.ones((3, 3))), r"rec_mask: expected shape \(4, 3, 3\), got \(3, 3\)"),
    ],
)
def test_bad_shapes_raise(change, pattern, rng):
    inputs, opts = make_case(SPECS["lstm"], rng)
    args = {**inputs, **opts, **change}
    with pytest.raises(ValueError, match=pattern):
        ref.forward(SPECS["lstm"], **args)


def test_bad_upstream_shapes_and_c0_for_gru_raise(rng):
    inputs, opts = make_case(SPECS["gru"], rng)
    with pytest.raises(ValueError, match="c0: only an LSTM"):
        ref.forward(SPECS["gru"], **dict(inputs, c0=np.zeros((3, 3))), **opts)
    cache = ref.forward(SPECS["gru"], **inputs, **opts)[3]
    with pytest.raises(ValueError, match=r"dout: expected shape \(5, 3, 3\), got \(5, 3, 4\)"):
        ref.backward(cache, dout=np.zeros((5, 3, 4)))
    with pytest.raises(ValueError, match="dcT: only an LSTM"):
        ref.backward(cache, dcT=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="activation must be one of"):
        ref.activation("gelu", 1.0)


def test_reference_does_not_import_torch():
    root = Path(__file__).resolve().parents[1]
    code = "import sys, rnn.reference; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False", res.stdout + res.stderr
