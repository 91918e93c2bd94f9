"""What the benchmark runs: the baseline torch.nn (cuDNN on a GPU), our drop-ins per backend,
a torch.compile'd step loop and FlashRNN, all behind one small interface, plus the float64
oracle every implementation is checked against before it is timed.

Shapes follow torch.nn (batch_first=False, one layer, D = 1 direction, or 2 with Case.directions):
    x (T, B, I); state (h0, c0) for LSTM or h0 for GRU, each (D, B, H);
    an implementation returns (out (T, B, D*H), h_n (D, B, H)[, c_n (D, B, H)]).
"""
from __future__ import annotations

import copy
import math
import types
from dataclasses import dataclass

import torch

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
}
NN_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


class Skip(Exception):
    """This implementation cannot run this case; the message is the reason."""


@dataclass(frozen=True)
class Case:
    cell: str
    dtype: str  # key of TORCH_DTYPES
    batch: int
    hidden: int
    input_size: int
    seq_len: int
    device: str
    directions: int = 1  # 2: one bidirectional layer (our drop-ins run both directions as one call)

    @property
    def torch_dtype(self):
        return TORCH_DTYPES[self.dtype]


class Impl:
    """run(x, state) -> tuple of outputs; params: the weights whose gradients training computes."""

    def __init__(self, run, params, note=""):
        self.run = run
        self.params = list(params)
        self.note = note


@dataclass
class Inputs:
    x: torch.Tensor
    state: object  # (h0, c0) or h0
    grads: tuple  # upstream gradient for every output, final states included


def reference_module(case: Case, seed: int) -> torch.nn.Module:
    """torch.nn.LSTM / GRU with torch's default initialisation from `seed`."""
    torch.manual_seed(seed)
    return NN_CLASSES[case.cell](
        case.input_size, case.hidden, device=case.device, dtype=case.torch_dtype,
        bidirectional=case.directions == 2,
    )


def make_inputs(case: Case, seed: int) -> Inputs:
    """Random (never zero) input, initial states and upstream gradients, built once per case."""
    g = torch.Generator(device=case.device).manual_seed(seed + 1)
    T, B, I, H = case.seq_len, case.batch, case.input_size, case.hidden

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, device=case.device)).to(case.torch_dtype)

    D = case.directions
    x = rand(T, B, I)
    h0 = rand(D, B, H, scale=0.5)
    state = (h0, rand(D, B, H, scale=0.5)) if case.cell == "lstm" else h0
    n_out = 3 if case.cell == "lstm" else 2
    grads = (rand(T, B, D * H),) + tuple(rand(D, B, H) for _ in range(n_out - 1))
    return Inputs(x, state, grads)


def module_impl(module, cell, note="") -> Impl:
    """Wrap a torch.nn-style module (torch.nn or our drop-ins) into an Impl."""

    def run(x, state):
        out, hs = module(x, state)
        return (out, *hs) if cell == "lstm" else (out, hs)

    return Impl(run, module.parameters(), note)


def oracle(case: Case, ref, inputs: Inputs, need_grad: bool):
    """float64 outputs (and input gradient) of the reference with the same (rounded) weights and
    inputs, stored as float32 on the device: what every implementation is compared with."""
    ref64 = copy.deepcopy(ref).to(torch.float64)
    x = inputs.x.detach().to(torch.float64).requires_grad_(need_grad)
    state = inputs.state
    state = tuple(s.to(torch.float64) for s in state) if isinstance(state, tuple) else state.to(torch.float64)
    with torch.set_grad_enabled(need_grad):
        outs = module_impl(ref64, case.cell).run(x, state)
        dx = None
        if need_grad:
            grads = tuple(g.to(torch.float64) for g in inputs.grads)
            (dx,) = torch.autograd.grad(outs, [x], grad_outputs=grads)
            dx = dx.float()
    return tuple(o.detach().float() for o in outs), dx


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected|; inf when actual has a NaN or Inf."""
    a = actual.detach().float()
    if a.shape != expected.shape:
        raise ValueError(f"output shape {tuple(a.shape)} != reference shape {tuple(expected.shape)}")
    if not bool(torch.isfinite(a).all()):
        return math.inf
    scale = float(expected.abs().max()) or 1.0
    return float((a - expected).abs().max()) / scale


# --- our drop-ins --------------------------------------------------------------------------------
# Without a GPU the Triton kernels run under the Triton interpreter (TRITON_INTERPRET=1), about a
# second per call even at T*B*H = 1024 on this project's CPU; a case above this T*B*H is refused
# rather than left running for many minutes (H=768, T=1024 did not finish in 590 s).
INTERPRET_MAX_TBH = 4096


def interpreted_too_big(case: Case):
    """The reason a Triton case on a non-CUDA device is too big for the interpreter, or None."""
    size = case.seq_len * case.batch * case.hidden
    if torch.device(case.device).type == "cuda" or size <= INTERPRET_MAX_TBH:
        return None
    return (f"triton without a GPU runs under the Triton interpreter: T*B*H = {case.seq_len}*{case.batch}"
            f"*{case.hidden} = {size} is above its limit {INTERPRET_MAX_TBH} "
            f"(profiling.impls.INTERPRET_MAX_TBH); run this case on a GPU")


def ours(backend):
    """Factory for rnn.LSTM / rnn.GRU with `backend=` and the reference's weights."""

    def make(case: Case, ref) -> Impl:
        try:
            from rnn import backends, cells, modules
        except ImportError as exc:
            raise Skip(f"rnn.modules is not importable yet ({exc})") from exc
        spec = cells.lstm() if case.cell == "lstm" else cells.gru()
        args = (case.device, spec, case.hidden, case.batch, case.torch_dtype)
        if backends.validate(backend) == "triton" and (why := interpreted_too_big(case)):
            raise Skip(why)  # before anything is built: the refusal is instant
        try:
            choice = backends.choose(backend, *args)
        except backends.BackendUnavailable as exc:
            raise Skip(str(exc)) from exc
        module = getattr(modules, case.cell.upper())(
            case.input_size, case.hidden, device=case.device, dtype=case.torch_dtype, backend=backend,
            bidirectional=case.directions == 2,
        )
        module.load_state_dict(ref.state_dict())
        notes = [f"auto chose {choice.name}: {choice.reason}"] if backend == "auto" else []
        if choice.name == "triton" and torch.device(case.device).type != "cuda":
            notes.append("Triton interpreter (no GPU): the time is the interpreter's, not a kernel's")
        if choice.name == "cupy":  # which matvec path (tensor cores or FMA) and launch shape ran
            notes.append(backends.get("cupy").describe(case.device, spec, case.hidden, case.batch, case.torch_dtype))
        return module_impl(module, case.cell, "; ".join(notes))

    return make


# --- torch.compile'd step loop -------------------------------------------------------------------
def _lstm_step(xg_t, h, c, w_hh, b_hh):
    i, f, g, o = (xg_t + torch.addmm(b_hh, h, w_hh.t())).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_step(xg_t, h, w_hh, b_hh):
    xr, xz, xn = xg_t.chunk(3, 1)
    hr, hz, hn = torch.addmm(b_hh, h, w_hh.t()).chunk(3, 1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


_compiled_steps: dict = {}


def _compiled_step(cell):
    # One compiled step function per cell with dynamic shapes: the guards then only split on
    # dtype and grad mode, so a whole grid compiles a handful of graphs instead of one per case.
    # (Compiling the whole T-step loop would unroll it: minutes per case at T=1024.)
    if cell not in _compiled_steps:
        cfg = torch._dynamo.config
        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(cfg, knob):
                setattr(cfg, knob, max(getattr(cfg, knob), 64))
        fn = _lstm_step if cell == "lstm" else _gru_step
        _compiled_steps[cell] = torch.compile(fn, dynamic=True)
    return _compiled_steps[cell]


def compiled(case: Case, ref) -> Impl:
    """A Python loop over T calls of a torch.compile'd cell step, same weights as the reference;
    the input projection is one GEMM over all steps, as in our drop-ins."""
    if not hasattr(torch, "compile"):
        raise Skip("torch.compile is not available in this torch")
    if case.directions != 1:
        raise Skip("the torch.compile'd step loop runs one direction")
    step = _compiled_step(case.cell)
    w_ih, w_hh, b_ih, b_hh = (
        p.detach().clone().requires_grad_(True)
        for p in (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)
    )

    def run(x, state):
        T, B, _ = x.shape
        xg = torch.addmm(b_ih, x.reshape(T * B, -1), w_ih.t()).view(T, B, -1)
        outs = []
        if case.cell == "lstm":
            h, c = state[0][0], state[1][0]
            for t in range(T):
                h, c = step(xg[t], h, c, w_hh, b_hh)
                outs.append(h)
            return torch.stack(outs), h[None], c[None]
        h = state[0]
        for t in range(T):
            h = step(xg[t], h, w_hh, b_hh)
            outs.append(h)
        return torch.stack(outs), h[None]

    return Impl(run, (w_ih, w_hh, b_ih, b_hh), "torch.compile(step, dynamic=True) in a Python loop")


# --- FlashRNN (optional) ---------------------------------------------------------------------------
def flashrnn_available():
    """None if `import flashrnn` works, else the reason."""
    try:
        import flashrnn  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA extension set-up
        return f"flashrnn is not installed ({type(exc).__name__}: {exc})"
    return None


def flashrnn_impl(case: Case, ref) -> Impl:
    """FlashRNN's fused CUDA LSTM with the reference's weights mapped to its layouts
    (Wx (B, T, G, NH, D), R (G, NH, D_in, D_out), b (G, NH, D), states (S, B, 1, NH, D)); the
    correctness check catches a wrong mapping. Its GRU is parameterised differently: skipped."""
    why = flashrnn_available()
    if why:
        raise Skip(why)
    if not str(case.device).startswith("cuda"):
        raise Skip("flashrnn needs a CUDA device")
    if case.directions != 1:
        raise Skip("flashrnn is timed on one direction")
    if case.cell != "lstm":
        raise Skip("flashrnn's GRU uses a different parameterisation than torch.nn.GRU")
    from flashrnn.flashrnn import flashrnn as fr

    if isinstance(fr, types.ModuleType):
        fr = fr.flashrnn
    H, G = case.hidden, 4
    dtype_name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[case.dtype]
    w_ih, w_hh, b_ih, b_hh = (
        p.detach().clone().requires_grad_(True)
        for p in (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)
    )

    def run(x, state):
        T, B, _ = x.shape
        wx = torch.addmm(b_ih, x.reshape(T * B, -1), w_ih.t()).view(T, B, G, 1, H).transpose(0, 1)
        R = w_hh.view(G, H, H).transpose(1, 2).unsqueeze(1)
        b = b_hh.view(G, 1, H)
        states = torch.stack([state[0][0], state[1][0]])[:, :, None, None, :]
        h, last = fr(wx.contiguous(), R.contiguous(), b, states=states, function="lstm",
                     backend="cuda_fused", dtype=dtype_name)
        out = h[0, :, :, 0, :].transpose(0, 1)
        return out, last[0, :, 0, 0][None], last[1, :, 0, 0][None]

    return Impl(run, (w_ih, w_hh, b_ih, b_hh), "flashrnn cuda_fused")
