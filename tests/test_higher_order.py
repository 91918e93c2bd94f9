"""Second derivatives (create_graph=True): gradient penalties, Hessian-vector products.

The backends' hand-written backward is first order; with create_graph=True rnn.autograd
differentiates a differentiable recomputation instead. gradgradcheck (float64, finite differences
of the backward) proves it for every cell and option, and the drop-ins must agree with torch.nn.
"""
import pytest
import torch

import rnn
from problems import CELLS, draw, to_torch
from rnn import functional as F
from rnn.cells import CellSpec
from tolerances import assert_close

T, B, I, H = 3, 2, 2, 3


def _layer(spec, t, reverse, backend):
    """f(x, w_ih, w_hh, b_ih, b_hh, h0, c0) -> outputs, for gradcheck / gradgradcheck."""
    names = [n for n in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0") if t[n] is not None]

    def f(*args):
        a = dict(t, **dict(zip(names, args)))
        out, hT, cT = F.recurrence(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"],
                                   spec=spec, mask=t["mask"], in_mask=t["in_mask"],
                                   rec_mask=t["rec_mask"], reverse=reverse, backend=backend)
        return (out, hT) if cT is None else (out, hT, cT)

    return f, [t[n] for n in names]


OPTIONS = [
    dict(),
    dict(mask="some", reverse=True),
    dict(rec_mask=True, in_mask="gates"),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "mask-reverse", "dropout-masks"])
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_gradgradcheck_torch_backend(rng, name, spec, opts):
    opts = dict(opts)
    reverse = opts.pop("reverse", False)
    t = to_torch(draw(rng, spec, T, B, I, H, **opts))
    f, inputs = _layer(spec, t, reverse, "torch")
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("activation", ["relu", "hard_sigmoid", "linear"])
def test_gradgradcheck_other_activations(rng, activation):
    spec = CellSpec("lstm", activation=activation, recurrent_activation="hard_sigmoid")
    t = to_torch(draw(rng, spec, T, B, I, H))
    f, inputs = _layer(spec, t, False, "torch")
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_gradgradcheck_triton_backend(rng, name, spec):
    """The first-order backward runs in the Triton kernels (the interpreter on a CPU); the second
    order goes through the recomputation, so the two must agree."""
    pytest.importorskip("triton")
    from kernels.triton import backend as tb

    if not tb.INTERPRET and not torch.cuda.is_available():
        pytest.skip("triton needs a GPU or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t = to_torch(draw(rng, spec, T, B, I, H, mask="some"), device=dev)
    f, inputs = _layer(spec, t, False, "triton")
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_drop_in_second_derivative_matches_torch_nn(kind):
    """The issue's reproducer: d/dW_hh of |d loss / dx|^2, ours against torch.nn."""
    ref = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True).double()
    ours = getattr(rnn, kind)(3, 4, num_layers=2, bidirectional=True, backend="torch").double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        gx, = torch.autograd.grad((m(xx)[0] ** 2).sum(), xx, create_graph=True)
        results.append(torch.autograd.grad((gx ** 2).sum(), [m.weight_hh_l0, m.weight_ih_l1_reverse]))
    for a, b in zip(*results):
        assert_close(f"{kind} second derivative", b, a, torch.float64)


def test_first_order_path_unchanged_without_create_graph(rng):
    """Plain backward still uses the backend's kernels: no autograd graph is built for it."""
    spec = CellSpec("gru")
    t = to_torch(draw(rng, spec, T, B, I, H))
    out, hT, _ = F.recurrence(t["x"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t["h0"], None,
                              spec=spec, backend="torch")
    g, = torch.autograd.grad(out.sum() + hT.sum(), t["w_hh"])
    assert g.grad_fn is None and not g.requires_grad
