"""LSTM with projections (torch.nn's proj_size; `w_hr=` in rnn.functional).

- the drop-in against torch.nn: layers, bidirectional, batch_first, given states, packed input,
  outputs and every gradient (weight_hr included), on the torch backend, "auto" (torch's native op
  on a CPU: bitwise) and the Triton kernels (interpreter);
- rnn.functional against the NumPy oracle (a genuine h = W_hr m loop): masks, reverse, given or
  absent h0, per-gate input masks, T = 0, float64 / float32 / bfloat16;
- second derivatives, torch.compile, and clear errors for what cannot be combined.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnn
from rnn import cells, functional as F, reference as R
from tolerances import assert_close
from test_dropin import _check

I, H, P = 5, 9, 4


def _pair(backend, dtype, **cfg):
    ref = torch.nn.LSTM(I, H, proj_size=P, dtype=dtype, **cfg)
    ours = rnn.LSTM(I, H, proj_size=P, dtype=dtype, backend=backend, **cfg)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _hx(L, D, B, dtype):
    h = torch.randn(L * D, B, P, dtype=dtype, requires_grad=True)
    return h, torch.randn(L * D, B, H, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("torch", torch.float32),
                                           ("auto", torch.float64), ("triton", torch.float32)])
@pytest.mark.parametrize("layers,bidir,batch_first,given",
                         [(1, False, False, False), (2, True, True, True), (2, False, False, True)])
def test_drop_in_matches_torch_nn(backend, dtype, layers, bidir, batch_first, given):
    if backend == "triton" and (layers, bidir) == (2, False):
        pytest.skip("the interpreted triton parity runs a subset to keep CI fast")
    ours, ref = _pair(backend, dtype, num_layers=layers, bidirectional=bidir, batch_first=batch_first)
    B, T = 3, 7
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, requires_grad=True)
    hx = _hx(layers, 2 if bidir else 1, B, dtype) if given else None
    _check(ours, ref, x, hx, dtype, f"proj/{backend}")
    out, (h_n, c_n) = ours(x, hx)
    D = 2 if bidir else 1
    assert out.shape[-1] == D * P and h_n.shape == (layers * D, B, P) and c_n.shape == (layers * D, B, H)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_matches_torch_nn(backend, enforce_sorted):
    dtype = torch.float64 if backend == "torch" else torch.float32
    ours, ref = _pair(backend, dtype, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 6, I, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([6, 5, 3, 1]) if enforce_sorted else torch.tensor([3, 6, 1, 6])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    _check(ours, ref, packed, _hx(2, 2, 4, dtype), dtype, f"proj packed/{backend}")


def test_auto_on_cpu_is_torch_nn_bitwise():
    ours, ref = _pair("auto", torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, I)
    o1, (h1, c1) = ours(x)
    o2, (h2, c2) = ref(x)
    assert torch.equal(o1, o2) and torch.equal(h1, h2) and torch.equal(c1, c2)


def test_state_dict_and_init_are_torch_nn():
    torch.manual_seed(3)
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    torch.manual_seed(3)
    ours = rnn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b) and "weight_hr_l1_reverse" in b
    assert all(torch.equal(a[k], b[k]) for k in a)


def _functional_case(dtype, T=6, B=4, mask=False, h0=True, in_mask=False):
    g = torch.Generator().manual_seed(5)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    args = dict(x=r(T, B, I), w_ih=r(4 * H, I, scale=0.4), w_hh=r(4 * H, P, scale=0.4),
                b_ih=r(4 * H, scale=0.3), b_hh=r(4 * H, scale=0.3), h0=r(B, P, scale=0.5) if h0 else None,
                c0=r(B, H, scale=0.5), w_hr=r(P, H, scale=0.4))
    opts = dict(mask=None, in_mask=None)
    if mask:
        m = torch.rand(T, B, generator=g) > 0.35
        m[:, 0] = False  # a row with no valid step
        m[:3, 1] = False  # a row that starts late
        opts["mask"] = m
    if in_mask:
        opts["in_mask"] = ((torch.rand(4, B, I, generator=g) > 0.3) / 0.7).to(dtype)
    return args, opts


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("torch", torch.float32),
                                           ("triton", torch.float32), ("triton", torch.bfloat16)])
@pytest.mark.parametrize("option", ["plain", "mask", "mask_reverse_no_h0", "in_mask_reverse"])
def test_functional_matches_reference(backend, dtype, option):
    kw = dict(mask="mask" in option, h0="no_h0" not in option, in_mask="in_mask" in option)
    reverse = "reverse" in option
    args, opts = _functional_case(dtype, **kw)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items() if v is not None}
    full = {k: leaves.get(k) for k in args}
    out, hT, cT = F.lstm(**full, **opts, reverse=reverse, backend=backend)
    n = lambda t: None if t is None else t.detach().double().numpy()  # noqa: E731
    r_out, r_hT, r_cT, cache = R.forward(cells.lstm(), **{k: n(v) for k, v in args.items()},
                                         mask=None if opts["mask"] is None else opts["mask"].numpy(), in_mask=n(opts["in_mask"]), reverse=reverse)
    for name, a, b in (("out", out, r_out), ("hT", hT, r_hT), ("cT", cT, r_cT)):
        assert a.dtype == dtype
        assert_close(f"proj {backend} {name}", a, b, dtype)
    g = torch.Generator().manual_seed(9)
    ups = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (out, hT, cT)]
    loss = sum((t.double() * u).sum() for t, u in zip((out, hT, cT), ups))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    want = R.backward(cache, *(u.numpy() for u in ups))
    for (name, _), got in zip(leaves.items(), grads):
        assert_close(f"proj {backend} d{name}", got, want[name], dtype)


def test_masked_row_keeps_h0_until_its_first_valid_step():
    args, opts = _functional_case(torch.float64, mask=True)
    out, hT, _ = F.lstm(**args, **opts, backend="torch")
    h0 = args["h0"]
    assert torch.equal(out[:, 0], h0[0].expand(out.shape[0], P)) and torch.equal(hT[0], h0[0])  # never valid
    first = int(opts["mask"][:, 1].nonzero()[0])  # row 1's first valid step (3 or later)
    assert first >= 3 and torch.equal(out[:first, 1], h0[1].expand(first, P))
    assert not torch.allclose(out[first, 1], h0[1])


def test_empty_sequence_returns_the_initial_states():
    args, _ = _functional_case(torch.float64, T=0)
    args = {k: v.requires_grad_() for k, v in args.items()}
    out, hT, cT = F.lstm(**args, backend="torch")
    assert out.shape == (0, 4, P) and torch.equal(hT, args["h0"]) and torch.equal(cT, args["c0"])
    (hT.sum() + cT.sum()).backward()
    assert torch.equal(args["h0"].grad, torch.ones_like(args["h0"]))


def _second_order_case(dtype):
    args, opts = _functional_case(torch.float64, T=3, B=2, mask=True)
    names = ("x", "w_hh", "w_hr", "h0")
    leaves = [args[k].to(dtype).requires_grad_() for k in names]

    def f(backend, *ts):
        kw = dict({k: v.to(dtype) for k, v in args.items()}, **dict(zip(names, ts)))
        out, hT, cT = F.lstm(**kw, **opts, backend=backend)
        return out.sin().sum() + hT.square().sum() + cT.sum()

    return f, leaves


def test_second_derivatives():
    f, leaves = _second_order_case(torch.float64)
    assert torch.autograd.gradgradcheck(lambda *ts: f("torch", *ts), leaves)


def test_second_derivatives_triton_match_torch_backend():
    f, leaves = _second_order_case(torch.float32)

    def hessian_vector(backend):  # d/dleaves of |d f / d leaves|^2
        grads = torch.autograd.grad(f(backend, *leaves), leaves, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), leaves)

    for a, b in zip(hessian_vector("triton"), hessian_vector("torch")):
        assert_close("proj triton double backward", a, b, torch.float32)


def test_compiles_fullgraph_like_eager():
    model = rnn.LSTM(I, H, proj_size=P, num_layers=2, batch_first=True, backend="torch")
    x = torch.randn(3, 7, I)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    (o1, (h1, c1)), (o2, (h2, c2)) = model(x), compiled(x)
    for name, a, b in (("out", o2, o1), ("h", h2, h1), ("c", c2, c1)):
        assert_close(f"compiled {name}", a, b, torch.float32)


def test_clear_errors():
    args, _ = _functional_case(torch.float32, T=2, B=2)
    gru_w = dict(x=args["x"], w_ih=torch.zeros(3 * H, I), w_hh=torch.zeros(3 * H, P))
    with pytest.raises(ValueError, match="only for LSTM cells"):
        F.recurrence(**gru_w, spec=cells.gru(), w_hr=args["w_hr"])
    with pytest.raises(ValueError, match="cannot be combined with w_hr"):
        F.lstm(**args, rec_mask=torch.ones(4, 2, P))
    with pytest.raises(ValueError, match=r"w_hh must have shape \(4\*H, P\) = \(36, 4\)"):
        F.lstm(**dict(args, w_hh=torch.zeros(4 * H, H)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 4\)"):
        F.lstm(**dict(args, h0=torch.zeros(2, H)))
    model = rnn.LSTM(I, H, proj_size=P)
    with pytest.raises(ValueError, match=r"Expected hidden size \(1, 2, 4\) for h_0"):
        model(torch.randn(3, 2, I), (torch.zeros(1, 2, H), torch.zeros(1, 2, H)))
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        rnn.GRU(I, H, proj_size=P)
