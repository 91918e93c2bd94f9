"""rnn.LSTM / GRU / RNN against torch.nn with the same weights: outputs and all gradients."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnn
from tolerances import DROP_IN_RTOL, assert_rel_close

PAIRS = [(rnn.LSTM, torch.nn.LSTM, {}), (rnn.GRU, torch.nn.GRU, {}), (rnn.RNN, torch.nn.RNN, {}),
         (rnn.RNN, torch.nn.RNN, {"nonlinearity": "relu"})]
PAIR_IDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
BACKENDS = ["torch", "triton"]


def _states(s):
    return s if isinstance(s, tuple) else (s,)


def _pair(ours_cls, ref_cls, kw, backend, dtype, **cfg):
    ref = ref_cls(5, 9, dtype=dtype, **kw, **cfg)
    ours = ours_cls(5, 9, dtype=dtype, backend=backend, **kw, **cfg)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _check(ours, ref, inputs, hx, dtype, label):
    """Run both, backprop random upstream gradients from every output, compare everything."""
    torch.manual_seed(7)
    o_ref, s_ref = ref(inputs, hx)
    o_our, s_our = ours(inputs, hx)
    packed = not isinstance(o_ref, torch.Tensor)
    o_ref, o_our = (o_ref.data, o_our.data) if packed else (o_ref, o_our)
    s_ref, s_our = _states(s_ref), _states(s_our)
    rel = DROP_IN_RTOL[dtype]
    assert_rel_close(f"{label} output", o_our, o_ref, rel)
    for k, (a, b) in enumerate(zip(s_our, s_ref)):
        assert_rel_close(f"{label} state{k}", a, b, rel)
    ups = [torch.randn_like(o_ref)] + [torch.randn_like(s) for s in s_ref]
    leaves = [t for t in ([inputs.data if packed else inputs] + list(_states(hx) if hx is not None else []))
              if t.requires_grad]
    if packed:
        leaves = [t for t in leaves if t.grad_fn is None]
    def grads(model, out, states):
        loss = sum((a * u).sum() for a, u in zip([out, *states], ups))
        return torch.autograd.grad(loss, leaves + list(model.parameters()), retain_graph=True)
    for k, (a, b) in enumerate(zip(grads(ours, o_our, s_our), grads(ref, o_ref, s_ref))):
        assert_rel_close(f"{label} grad[{k}]", a, b, rel)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("layers,bidir,batch_first,given",
                         [(1, False, False, False), (2, True, True, True), (2, False, False, True), (1, True, True, False)])
def test_parity(pair, dtype, layers, bidir, batch_first, given, backend):
    if backend == "triton" and (dtype == torch.float64 or layers == 2 and not bidir):
        pytest.skip("the interpreted triton parity runs a subset to keep CI fast")
    ours, ref = _pair(*pair, backend, dtype, num_layers=layers, bidirectional=bidir, batch_first=batch_first)
    B, T = 3, 7
    x = torch.randn((B, T, 5) if batch_first else (T, B, 5), dtype=dtype, requires_grad=True)
    hx = None
    if given:
        shape = (layers * (2 if bidir else 1), B, 9)
        h = torch.randn(shape, dtype=dtype, requires_grad=True)
        hx = (h, torch.randn(shape, dtype=dtype, requires_grad=True)) if pair[0] is rnn.LSTM else h
    _check(ours, ref, x, hx, dtype, f"{pair[1].__name__}/{backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", PAIRS[:3], ids=PAIR_IDS[:3])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence(pair, enforce_sorted, backend):
    dtype = torch.float64 if backend == "torch" else torch.float32
    ours, ref = _pair(*pair, backend, dtype, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 6, 5, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([6, 5, 3, 1]) if enforce_sorted else torch.tensor([3, 6, 1, 6])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    h = torch.randn(4, 4, 9, dtype=dtype, requires_grad=True)
    hx = (h, torch.randn_like(h).requires_grad_()) if pair[0] is rnn.LSTM else h
    _check(ours, ref, packed, hx, dtype, f"packed/{pair[1].__name__}/{backend}")
    out, _ = ours(packed, hx)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)


@pytest.mark.parametrize("pair", PAIRS[:2], ids=PAIR_IDS[:2])
def test_unbatched_input(pair):
    ours, ref = _pair(*pair, "torch", torch.float64, num_layers=2)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    _check(ours, ref, x, None, torch.float64, "unbatched")


@pytest.mark.parametrize("pair", PAIRS[:3], ids=PAIR_IDS[:3])
def test_state_dict_both_ways_and_init(pair):
    ours_cls, ref_cls, kw = pair
    torch.manual_seed(3)
    ref = ref_cls(4, 6, num_layers=2, bidirectional=True, **kw)
    torch.manual_seed(3)
    ours = ours_cls(4, 6, num_layers=2, bidirectional=True, **kw)
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed must give torch.nn's initialisation"
    ref.load_state_dict(ours.state_dict())
    ours.load_state_dict(ref.state_dict())
    # RNNBase, not the concrete torch.nn class: torch.compile refuses instances of those (see rnn.modules)
    assert isinstance(ours, torch.nn.RNNBase) and not isinstance(ours, ref_cls)


def test_inter_layer_dropout_is_training_only():
    m = rnn.LSTM(5, 9, num_layers=2, dropout=0.5, backend="torch")
    x = torch.randn(7, 3, 5)
    m.eval()
    a, b = m(x)[0], m(x)[0]
    assert torch.equal(a, b)
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])


@pytest.mark.parametrize("bad,match", [
    (lambda m: m(torch.randn(7, 3, 4)), "input_size. Expected 5, got 4"),
    (lambda m: m(torch.randn(3, 7, 3, 5)), "expected input to be 2-D"),
    (lambda m: m(torch.randint(0, 3, (7, 3, 5))), "floating"),
    (lambda m: m(torch.randn(7, 3, 5, dtype=torch.float64)), r"input has dtype torch.float64 but the module.s parameters are torch.float32"),
    (lambda m: m(torch.randn(7, 3, 5), (torch.zeros(1, 2, 9), torch.zeros(1, 3, 9))), r"Expected hidden size \(1, 3, 9\)"),
    (lambda m: m(torch.randn(7, 3, 5), torch.zeros(1, 3, 9)), "tuple"),
    (lambda m: m(torch.randn(7, 3, 5), (torch.zeros(1, 3, 9, dtype=torch.float64),) * 2), "dtype"),
])
def test_bad_input_errors(bad, match):
    m = rnn.LSTM(5, 9, backend="torch")
    with pytest.raises((ValueError, TypeError), match=match):
        bad(m)


def test_nan_in_one_sequence_does_not_leak():
    for cls in (rnn.LSTM, rnn.GRU, rnn.RNN):
        m = cls(5, 9, num_layers=2, bidirectional=True, backend="torch")
        x = torch.randn(7, 3, 5)
        x[4, 1, 2] = float("nan")
        out, _ = m(x)
        assert torch.isnan(out[:, 1]).any()
        assert torch.isfinite(out[:, [0, 2]]).all(), f"{cls.__name__}: NaN crossed into another sequence"
