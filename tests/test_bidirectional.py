"""Both directions of a bidirectional layer as one operator call (rnn.functional.bidirectional_layer,
rnn.ops: w_hh stacked over the two directions): the same as two `recurrence` calls, and on the
Triton backend one launch for both directions (forward and backward) instead of two."""
import pytest
import torch

import rnn
from problems import CELLS
from rnn import functional as F
from tolerances import DROP_IN_RTOL, assert_close, assert_rel_close

T, B, I, H = 6, 3, 5, 7


@pytest.fixture
def triton_calls(monkeypatch):
    """The TritonBackend methods called, in order (one-direction and both-directions ones)."""
    pytest.importorskip("triton")
    from kernels.triton import TritonBackend

    calls = []
    for method in ("forward", "backward", "forward_both", "backward_both"):
        real = getattr(TritonBackend, method)

        def spy(self, *args, _real=real, _name=method, **kwargs):
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(TritonBackend, method, spy)
    return calls


def _params(spec, bias, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    G = spec.n_gates

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).to(dtype).requires_grad_()

    return [(r(G * H, I), r(G * H, H), r(G * H) if bias else None, r(G * H) if bias else None) for _ in range(2)]


@pytest.mark.parametrize("opts", ["plain", "mask-states", "nobias"])
@pytest.mark.parametrize("name,spec", CELLS, ids=[c[0] for c in CELLS])
def test_bidirectional_layer_is_two_recurrence_calls(name, spec, opts):
    """Outputs [forward | reverse], final states and every gradient against two recurrence() calls
    (torch backend, float64)."""
    dtype = torch.float64
    params = _params(spec, opts != "nobias", dtype, 0)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    mask = h0 = c0 = None
    if opts == "mask-states":
        mask = torch.arange(T).unsqueeze(1) < torch.tensor([T, 4, 1])
        h0 = torch.randn(2, B, H, dtype=dtype, requires_grad=True)
        c0 = torch.randn(2, B, H, dtype=dtype, requires_grad=True) if spec.kind == "lstm" else None
    got = F.bidirectional_layer(x, params, h0, c0, spec=spec, mask=mask, backend="torch")
    parts = [F.recurrence(x, *params[d], None if h0 is None else h0[d], None if c0 is None else c0[d], spec=spec,
                          mask=mask, reverse=bool(d), backend="torch") for d in (0, 1)]
    want = (torch.cat((parts[0][0], parts[1][0]), -1), torch.stack((parts[0][1], parts[1][1])),
            torch.stack((parts[0][2], parts[1][2])) if spec.kind == "lstm" else None)
    leaves = [t for t in [x, h0, c0, *params[0], *params[1]] if t is not None]
    ups = [torch.randn_like(w) for w in want if w is not None]

    def grads(outs):
        return torch.autograd.grad(sum((o * u).sum() for o, u in zip([o for o in outs if o is not None], ups)),
                                   leaves)

    for label, a, b in zip(("out", "hT", "cT"), got, want):
        assert (a is None) == (b is None), label
        if b is not None:
            assert_close(f"{name} {label}", a, b, dtype)
    for k, (a, b) in enumerate(zip(grads(got), grads(want))):
        assert_close(f"{name} grad[{k}]", a, b, dtype)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_triton_drop_in_launches_both_directions_together(kind, triton_calls):
    """A two-layer bidirectional drop-in on the Triton backend: one forward_both and one
    backward_both per layer, no single-direction launch, results as torch.nn's."""
    calls = triton_calls
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(I, H, num_layers=2, bidirectional=True)
    ours = getattr(rnn, kind)(I, H, num_layers=2, bidirectional=True, backend="triton")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    results = []
    for m in (ours, ref):
        xx = x.clone().requires_grad_()
        out, _ = m(xx)
        out.square().sum().backward()
        results.append([out, xx.grad] + [p.grad for p in m.parameters()])
    assert calls == ["forward_both"] * 2 + ["backward_both"] * 2
    for k, (a, b) in enumerate(zip(*results)):
        assert_rel_close(f"{kind} [{k}]", a, b, DROP_IN_RTOL[torch.float32])


def test_bidirectional_layer_errors():
    spec = rnn.cells.lstm()
    params = _params(spec, True, torch.float32, 1)
    x = torch.randn(T, B, I)
    with pytest.raises(ValueError, match="two tuples"):
        F.bidirectional_layer(x, params[:1], spec=spec)
    with pytest.raises(ValueError, match="biases, or neither"):
        F.bidirectional_layer(x, [params[0], params[1][:2] + (None, None)], spec=spec)
    with pytest.raises(ValueError, match="h0 must have a leading dimension of 2"):
        F.bidirectional_layer(x, params, torch.zeros(B, H), spec=spec)
    with pytest.raises(ValueError, match="h0 must have shape"):
        F.bidirectional_layer(x, params, torch.zeros(2, B, H + 1), spec=spec)
    with pytest.raises(TypeError, match=r"params\[1\]\[0\] must be a torch.Tensor"):
        F.bidirectional_layer(x, [params[0], ([1.0],) + params[1][1:]], spec=spec)


# ---- rnn.keras.Bidirectional: one call for both directions where the two layers allow it --------
@pytest.mark.parametrize("opts", ["sequences-mask", "states-dropout", "last-output"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_keras_bidirectional_one_call_is_the_two_layers(kind, opts, monkeypatch):
    """The one-call path gives what the two layers give one after the other: outputs, states and
    every gradient, with masks, initial states and training-mode dropout (the same masks are drawn,
    forward layer first)."""
    import rnn.keras as rk

    kw = dict(return_sequences=opts != "last-output", return_state=opts == "states-dropout")
    if opts == "states-dropout":
        kw.update(dropout=0.3, recurrent_dropout=0.2)  # drawn from torch's global generator, seeded below
    bi = rk.Bidirectional(getattr(rk, kind)(H, backend="torch", dtype=torch.float64, **kw))
    bi.build(I)  # built here: building draws the initial weights from the generator the masks use
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(T) < torch.tensor([[T], [4], [2]]) if opts == "sequences-mask" else None
    n = 2 if kind == "LSTM" else 1
    states = [torch.randn(B, H, dtype=torch.float64) for _ in range(2 * n)] if opts == "states-dropout" else None
    assert bi._one_call()
    runs = []
    for one in (True, False):
        monkeypatch.setattr(rk.Bidirectional, "_one_call", lambda self, _v=one: _v)
        for c in (bi.forward_layer._cells()[0], bi.backward_layer._cells()[0]):
            c.reset_dropout_mask()
        torch.manual_seed(3)
        outs = bi(x, mask=mask, initial_state=states, training=opts == "states-dropout")
        outs = outs if isinstance(outs, list) else [outs]
        params = list(bi.parameters())
        g = torch.autograd.grad(sum((o * (k + 1)).sum() for k, o in enumerate(outs)), [x] + params)
        runs.append(outs + list(g))
    for k, (a, b) in enumerate(zip(*runs)):
        assert_close(f"{kind} {opts} [{k}]", a, b, torch.float64)


def test_keras_bidirectional_takes_one_call_only_where_it_can():
    import rnn.keras as rk

    assert rk.Bidirectional(rk.LSTM(H))._one_call()
    assert not rk.Bidirectional(rk.LSTM(H), backward_layer=rk.GRU(H, go_backwards=True))._one_call()
    assert not rk.Bidirectional(rk.LSTM(H, dropout=0.1), backward_layer=rk.LSTM(H, go_backwards=True))._one_call()
    assert not rk.Bidirectional(rk.LSTM(H), backward_layer=rk.LSTM(H + 1, go_backwards=True))._one_call()
    assert not rk.Bidirectional(rk.GRU(H, stateful=True))._one_call()
    assert not rk.Bidirectional(rk.RNN([rk.LSTMCell(H), rk.LSTMCell(H)]))._one_call()


def test_keras_bidirectional_triton_runs_one_launch(triton_calls):
    """On the Triton backend the Keras tutorials' Bidirectional(LSTM) runs forward_both /
    backward_both, once each."""
    import rnn.keras as rk

    calls = triton_calls
    bi = rk.Bidirectional(rk.LSTM(H, return_sequences=True, backend="triton"))
    x = torch.randn(B, T, I, requires_grad=True)
    bi(x).square().sum().backward()
    assert calls == ["forward_both", "backward_both"]


def test_keras3_bidirectional_triton_runs_one_launch(triton_calls):
    """Keras 3's own Bidirectional(LSTM) with rnn.keras3 installed on the Triton backend: the two
    directions run forward_both / backward_both, once each (not forward, backward twice)."""
    keras = pytest.importorskip("keras")
    import rnn.keras3 as k3

    with k3.enabled(backend="triton"):
        k3.reset_stats()
        bi = keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True))
        x = torch.randn(B, T, I, requires_grad=True)
        bi(x).square().sum().backward()
        assert k3.stats["bidirectional_one_call"] == 1 and k3.stats["fused"] == 2
    assert triton_calls == ["forward_both", "backward_both"]


@pytest.mark.parametrize("name,spec", [c for c in CELLS if c[0] != "gru_classic"], ids=lambda v: getattr(v, "kind", v))
def test_bidirectional_layer_on_cpu_takes_torchs_op_as_recurrence_does(name, spec, monkeypatch):
    """"auto" on a CPU, torch.nn's semantics: each direction through torch's native op, bit for bit
    what two recurrence() calls give (they take it too); no fused_rnn operator call. With a mask,
    the one operator call of both directions."""
    params = _params(spec, True, torch.float32, 1)
    x = torch.randn(T, B, I)
    calls = []
    real = F._recurrence_op
    monkeypatch.setattr(F, "_recurrence_op", lambda *a: calls.append(a[-1]) or real(*a))
    with torch.no_grad():
        got = F.bidirectional_layer(x, params, spec=spec)
        want = [F.recurrence(x, *params[d], spec=spec, reverse=bool(d)) for d in (0, 1)]
    assert calls == []
    assert torch.equal(got[0], torch.cat((want[0][0], want[1][0]), -1))
    assert torch.equal(got[1], torch.stack((want[0][1], want[1][1])))
    with torch.no_grad():
        F.bidirectional_layer(x, params, spec=spec, mask=torch.ones(T, B, dtype=torch.bool))
    assert calls == ["torch"]
