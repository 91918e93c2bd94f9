""""auto" falling back to the torch backend uses torch's own fused RNN op when the call has exactly
torch.nn's semantics (and our loop otherwise), except CPU training of GRU / RNN at the sizes of
rnn.functional.LOOP_TRAINS_FASTER, which runs our loop; an explicit backend="torch" always runs our
loop. A drop-in makes one call of torch's multi-layer op, as torch.nn does (packed input
included); rnn.functional one per layer and direction."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnn
from rnn import functional as F
from rnn.modules import _Fused
from tolerances import DROP_IN_RTOL, assert_rel_close


@pytest.fixture
def native_calls(monkeypatch):
    """The native ops called, in order: ("module", op) per drop-in call, op per functional call."""
    calls = []
    real_f, real_m = F._native, _Fused._run_native

    def spy_f(*args, **kwargs):
        calls.append(args[0])
        return real_f(*args, **kwargs)

    def spy_m(self, op, *args, **kwargs):
        calls.append(("module", op))
        return real_m(self, op, *args, **kwargs)

    monkeypatch.setattr(F, "_native", spy_f)
    monkeypatch.setattr(_Fused, "_run_native", spy_m)
    return calls


@pytest.fixture
def loop_at_any_length(monkeypatch):
    """The loop's training sizes of LOOP_TRAINS_FASTER at every T (the tests' sequences are short)."""
    for kind, (most, _) in list(F.LOOP_TRAINS_FASTER.items()):
        monkeypatch.setitem(F.LOOP_TRAINS_FASTER, kind, (most, 1))


@pytest.fixture
def native_training(monkeypatch):
    """Training calls take torch's op at every size (the bitwise tests' small sizes included)."""
    monkeypatch.setattr(F, "LOOP_TRAINS_FASTER", {})


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, batch_first=True),
                                dict(bias=False), dict(nonlinearity="relu")])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_auto_on_cpu_is_torch_nn_bitwise(kind, kw, native_calls, native_training):
    if "nonlinearity" in kw and kind != "RNN":
        pytest.skip("nonlinearity is an RNN argument")
    ref = getattr(torch.nn, kind)(5, 7, **kw).double()
    ours = getattr(rnn, kind)(5, 7, **kw).double()  # backend="auto"
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        out, h = m(xx)
        out.square().sum().backward()
        results.append((out, xx.grad, m.weight_hh_l0.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    op = {"LSTM": torch.lstm, "GRU": torch.gru}.get(kind, torch.rnn_relu if "nonlinearity" in kw else torch.rnn_tanh)
    assert native_calls == [("module", op)]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_auto_packed_input_is_torch_nn_bitwise(kind, enforce_sorted, native_calls, native_training):
    ref = getattr(torch.nn, kind)(5, 7, num_layers=2, bidirectional=True, batch_first=True).double()
    ours = getattr(rnn, kind)(5, 7, num_layers=2, bidirectional=True, batch_first=True).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    lengths = torch.tensor([6, 5, 3, 1]) if enforce_sorted else torch.tensor([3, 6, 1, 6])
    h = torch.randn(4, 4, 7, dtype=torch.float64)
    hx = (h, torch.randn_like(h)) if kind == "LSTM" else h
    results = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        out, states = m(pack_padded_sequence(xx, lengths, batch_first=True, enforce_sorted=enforce_sorted), hx)
        out.data.square().sum().backward()
        states = states if isinstance(states, tuple) else (states,)
        results.append((out.data, out.batch_sizes, *states, xx.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert len(native_calls) == 1


def test_explicit_torch_backend_runs_our_loop(native_calls):
    rnn.LSTM(5, 7, backend="torch")(torch.randn(4, 2, 5))
    assert native_calls == []


def test_env_override_counts_as_explicit(native_calls, monkeypatch):
    monkeypatch.setenv("FUSED_RNN_BACKEND", "torch")
    rnn.GRU(5, 7)(torch.randn(4, 2, 5))
    assert native_calls == []


def test_keras_semantics_run_our_loop(native_calls):
    """Masks, dropout masks, other activations and GRU reset_after=False are not torch.nn's."""
    x, G, H = torch.randn(6, 3, 5), 4, 7
    w_ih, w_hh = torch.randn(G * H, 5), torch.randn(G * H, H)
    F.lstm(x, w_ih, w_hh, mask=torch.ones(6, 3, dtype=torch.bool))
    F.lstm(x, w_ih, w_hh, rec_mask=torch.ones(G, 3, H))
    F.lstm(x, w_ih, w_hh, recurrent_activation="hard_sigmoid")
    F.gru(x, w_ih[:3 * H], w_hh[:3 * H], reset_after=False)
    assert native_calls == []
    F.lstm(x, w_ih, w_hh, reverse=True)
    assert native_calls == [torch.lstm]
    rnn.LSTM(5, 7)(torch.randn(6, 3, 5))  # the drop-in: one call for all layers and directions
    assert native_calls == [torch.lstm, ("module", torch.lstm)]


def test_native_reverse_and_one_bias_match_our_loop():
    x, H = torch.randn(6, 3, 5, dtype=torch.float64), 7
    w_ih, w_hh, b = torch.randn(3 * H, 5).double(), torch.randn(3 * H, H).double(), torch.randn(3 * H).double()
    h0 = torch.randn(3, H, dtype=torch.float64)
    for b_ih, b_hh in ((b, None), (None, b)):
        got = F.gru(x, w_ih, w_hh, b_ih, b_hh, h0, reverse=True)
        want = F.gru(x, w_ih, w_hh, b_ih, b_hh, h0, reverse=True, backend="torch")
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-12)


def _train(m, x, hx=None, packed_lengths=None):
    """Outputs, final states and the gradients of the input and every weight of one training call."""
    xx = x.clone().requires_grad_()
    inp = xx if packed_lengths is None else pack_padded_sequence(xx, packed_lengths, enforce_sorted=False)
    out, h = m(inp) if hx is None else m(inp, hx)
    out = out if packed_lengths is None else out.data
    (out.square().sum() + h.sum()).backward()
    return [out, h, xx.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True), dict(nonlinearity="relu"),
                                dict(packed=True)])
@pytest.mark.parametrize("kind", ["GRU", "RNN"])
def test_auto_trains_gru_and_rnn_in_our_loop_at_small_sizes(kind, kw, dtype, native_calls, loop_at_any_length):
    """CPU training at B*H within LOOP_TRAINS_FASTER: our loop (faster there), matching torch.nn; the
    same module without gradients (inference) and above the size limit: torch's op, bitwise."""
    kw = dict(kw)
    packed = kw.pop("packed", False)
    if "nonlinearity" in kw and kind != "RNN":
        pytest.skip("nonlinearity is an RNN argument")
    ref = getattr(torch.nn, kind)(5, 7, **kw).to(dtype)
    ours = getattr(rnn, kind)(5, 7, **kw).to(dtype)  # backend="auto"
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 5, dtype=dtype)
    lengths = torch.tensor([3, 6, 1, 6]) if packed else None
    h0 = torch.randn(ours.num_layers * (2 if ours.bidirectional else 1), 4, 7, dtype=dtype)
    for hx in (None, h0):
        for name, a, b in zip(["out", "h_n", "dx"] + [n for n, _ in ref.named_parameters()],
                              _train(ours, x, hx, lengths), _train(ref, x, hx, lengths)):
            assert_rel_close(f"{kind} {name}", a, b, DROP_IN_RTOL[dtype])
        ours.zero_grad(), ref.zero_grad()
    assert native_calls == []
    with torch.no_grad():
        assert torch.equal(ours(x)[0], ref(x)[0])
    assert native_calls == [("module", torch.gru if kind == "GRU" else
                             (torch.rnn_relu if "nonlinearity" in kw else torch.rnn_tanh))]


@pytest.mark.parametrize("kind", ["GRU", "RNN"])
def test_loop_trains_faster_is_a_size_limit(kind, native_calls, monkeypatch):
    """B*H at the limit and T at its floor run our loop, one more unit or one step fewer torch's op;
    LSTM (oneDNN on a CPU) never the loop."""
    assert set(F.LOOP_TRAINS_FASTER) == {"gru", "rnn"}
    monkeypatch.setitem(F.LOOP_TRAINS_FASTER, kind.lower(), (3 * 7, 2))
    x = torch.randn(2, 3, 5, requires_grad=True)
    getattr(rnn, kind)(5, 7)(x)
    assert native_calls == []
    getattr(rnn, kind)(5, 7)(x[:1])
    assert len(native_calls) == 1
    native_calls.clear()
    getattr(rnn, kind)(5, 8)(x)
    assert len(native_calls) == 1
    G = 3 if kind == "GRU" else 1
    fn = F.gru if kind == "GRU" else F.simple_rnn
    fn(x, torch.randn(G * 7, 5), torch.randn(G * 7, 7))  # rnn.functional: the same rule
    assert len(native_calls) == 1
    fn(x, torch.randn(G * 8, 5), torch.randn(G * 8, 8))
    assert len(native_calls) == 2
    rnn.LSTM(5, 7)(x)
    assert native_calls[-1] == ("module", torch.lstm)
