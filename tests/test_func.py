"""torch.func transforms on the drop-ins and rnn.functional, against torch.nn.

Under a transform the layer runs as plain differentiable torch ops (rnn.autograd.recurrence), so
grad, vjp, jacrev, jvp and vmap, and their nestings (per-sample gradients: vmap(grad(f))), work.
"""
import pytest
import torch
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap

import rnn
from rnn import functional as F
from tolerances import assert_close

KINDS = ["LSTM", "GRU", "RNN"]
I, H = 4, 5


def _pair(kind):
    ours = getattr(rnn, kind)(I, H, num_layers=2, bidirectional=True, batch_first=True, backend="torch").double()
    ref = getattr(torch.nn, kind)(I, H, num_layers=2, bidirectional=True, batch_first=True).double()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_gradients_vmap_grad_match_a_loop_over_torch_nn(kind):
    """Opacus-style DP training: vmap(grad(loss)) over samples, against one torch.nn grad per sample."""
    ours, ref = _pair(kind)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    xs, ys = torch.randn(6, 7, I, dtype=torch.float64), torch.randn(6, dtype=torch.float64)

    def loss(model, p, x, y):
        out, _ = functional_call(model, p, (x.unsqueeze(0),))
        return (out[0, -1].sum() - y) ** 2

    per_sample = vmap(grad(lambda p, x, y: loss(ours, p, x, y)), in_dims=(None, 0, 0))(params, xs, ys)
    for i in range(len(xs)):
        expected = grad(lambda p: loss(ref, p, xs[i], ys[i]))(params)
        for name in params:
            assert_close(f"{kind} per-sample grad {name}[{i}]", per_sample[name][i], expected[name])


@pytest.mark.parametrize("kind", KINDS)
def test_vjp_jacrev_jvp_vmap_match_torch_nn(kind):
    """Ours under each transform against torch.nn through plain autograd (torch.nn's own LSTM has
    no vmap rule, so its per-sequence results come from a loop)."""
    ours, ref = _pair(kind)
    x = torch.randn(3, 6, I, dtype=torch.float64)
    v = torch.randn_like(x)

    def last(m):
        return lambda x: m(x)[0][:, -1].sum(0)

    out, pullback = vjp(lambda x: ours(x)[0], x)
    got = dict(vjp=pullback(torch.ones_like(out))[0], jacrev=jacrev(last(ours))(x),
               jvp=jvp(lambda x: ours(x)[0], (x,), (v,))[1], vmap=vmap(lambda x: ours(x)[0])(x.unsqueeze(1)))
    leaf = x.clone().requires_grad_()
    want = dict(vjp=torch.autograd.grad(ref(leaf)[0].sum(), leaf)[0],
                jacrev=torch.autograd.functional.jacobian(last(ref), x),
                jvp=torch.autograd.functional.jvp(lambda x: ref(x)[0], x, v)[1],
                vmap=torch.stack([ref(x[i:i + 1])[0] for i in range(len(x))]))
    for name in got:
        assert_close(f"{kind} {name}", got[name], want[name])


def test_functional_jacfwd_matches_the_operator_backward():
    """The transform path (plain ops, forward mode) against plain autograd through the operator
    and its registered backward, with a mask and another activation."""
    T, B = 5, 2
    x = torch.randn(T, B, I, dtype=torch.float64)
    w_ih, w_hh = torch.randn(4 * H, I, dtype=torch.float64), torch.randn(4 * H, H, dtype=torch.float64)
    mask = torch.rand(T, B) > 0.3

    def f(w_hh):
        out, hT, cT = F.lstm(x, w_ih, w_hh, mask=mask, activation="relu", backend="torch")
        return hT.sum(0) + cT.sum(0)

    assert_close("jacfwd vs autograd", jacfwd(f)(w_hh), torch.autograd.functional.jacobian(f, w_hh))
