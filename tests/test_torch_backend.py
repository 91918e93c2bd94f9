"""The torch backend (explicit backward) through the autograd Function against the NumPy oracle."""
import itertools

import numpy as np
import pytest
import torch

from problems import CELLS, compare, draw, oracle, run_library, upstream
from rnn import functional
from rnn.cells import ACTIVATIONS, CellSpec

OPTIONS = [  # (reverse, mask, in_mask, rec_mask, bias, h0)
    (False, None, None, False, True, True),
    (True, None, None, False, True, True),
    (False, "some", None, False, True, True),
    (True, "some", None, False, False, False),
    (False, None, "shared", True, True, True),
    (True, "some", "gates", True, True, True),
]


@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(str(v) for v in o))
def test_matches_oracle(rng, name, spec, opts):
    reverse, mask, in_mask, rec_mask, bias, h0 = opts
    p = draw(rng, spec, mask=mask, in_mask=in_mask, rec_mask=rec_mask, bias=bias, h0=h0)
    grads = upstream(rng, spec, 7, 3, 37)
    compare(name, spec, run_library(spec, p, grads, reverse), oracle(spec, p, grads, reverse), torch.float64)


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_classic", "rnn"])
@pytest.mark.parametrize("act,ract", list(itertools.product(ACTIVATIONS, ["sigmoid", "hard_sigmoid", "tanh"]))[::2])
def test_activations(rng, kind, act, ract):
    spec = CellSpec(kind.split("_")[0], act, ract, reset_after=kind != "gru_classic")
    p = draw(rng, spec, T=5, H=11, mask="some", rec_mask=True)
    grads = upstream(rng, spec, 5, 3, 11)
    compare(f"{kind}/{act}/{ract}", spec, run_library(spec, p, grads, True), oracle(spec, p, grads, True), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,spec", CELLS[:2], ids=["lstm", "gru"])
def test_reduced_precision(rng, name, spec, dtype):
    """fp32 / bf16 / fp16 inputs (fp32 compute for half types) against the float64 oracle."""
    p = draw(rng, spec, mask="some")
    grads = upstream(rng, spec, 7, 3, 37)
    lib = run_library(spec, p, grads, False, dtype=dtype)
    (out, hT, cT), g = lib
    assert out.dtype == dtype and hT.dtype == dtype and all(v.dtype == dtype for v in g.values())
    compare(name, spec, lib, oracle(spec, p, grads), dtype)


@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_gradcheck(name, spec):
    """torch.autograd.gradcheck of the whole Function (float64), with masks and dropout masks."""
    g = torch.Generator().manual_seed(0)
    T, B, I, H, G = 4, 2, 3, 4, spec.n_gates
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    x, w_ih, w_hh, b_ih, b_hh, h0 = r(T, B, I), r(G * H, I), r(G * H, H), r(G * H), r(G * H), r(B, H)
    c0 = r(B, H) if spec.kind == "lstm" else None
    mask = torch.tensor([[1, 1], [0, 1], [1, 0], [1, 1]], dtype=torch.bool)
    in_mask = (torch.rand(G, B, I, generator=g) > 0.3).double() / 0.7
    rec_mask = (torch.rand(G, B, H, generator=g) > 0.3).double() / 0.7

    def f(x, w_ih, w_hh, b_ih, b_hh, h0, *c0):
        return functional.recurrence(x, w_ih, w_hh, b_ih, b_hh, h0, c0[0] if c0 else None, spec=spec,
                                     mask=mask, in_mask=in_mask, rec_mask=rec_mask, reverse=True,
                                     backend="torch")[: 3 if spec.kind == "lstm" else 2]

    args = (x, w_ih, w_hh, b_ih, b_hh, h0) + ((c0,) if c0 is not None else ())
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


def test_poisoned_outputs_are_overwritten(rng, monkeypatch):
    """With NaN-filled allocations every output and gradient element must still be written."""
    monkeypatch.setenv("FUSED_RNN_DEBUG_POISON", "1")
    for name, spec in CELLS:
        p = draw(rng, spec, mask="some", rec_mask=True)
        grads = upstream(rng, spec, 7, 3, 37)
        compare(name, spec, run_library(spec, p, grads, True), oracle(spec, p, grads, True), torch.float64)


def test_nan_in_masked_step_does_not_leak(rng):
    """NaN in a padded (masked) step must not reach any output, state or gradient."""
    for name, spec in CELLS:
        p = draw(rng, spec, mask="some")
        grads = upstream(rng, spec, 7, 3, 37)
        p["x"] = p["x"].copy()
        p["x"][~p["mask"]] = np.nan
        lib = run_library(spec, p, grads)
        (out, hT, cT), g = lib
        for label, t in [("out", out), ("hT", hT)] + list(g.items()):
            if label == "x":
                t = t[torch.as_tensor(p["mask"])]  # gradient at the NaN positions themselves is 0
            assert torch.isfinite(t).all(), f"{name}: NaN leaked into {label}"


def test_nan_in_one_sequence_stays_there(rng):
    spec = CellSpec("lstm")
    p = draw(rng, spec)
    p["x"] = p["x"].copy()
    p["x"][3, 1, 0] = np.nan
    (out, hT, cT), _ = run_library(spec, p, upstream(rng, spec, 7, 3, 37))
    assert torch.isnan(out[3:, 1]).all() and torch.isfinite(out[:3, 1]).all()
    assert torch.isfinite(out[:, [0, 2]]).all() and torch.isfinite(hT[[0, 2]]).all()
