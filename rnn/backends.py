"""The one registry of recurrence backends.

Names: "auto", "torch", "triton", "cupy". The default is "auto"; the environment variable
FUSED_RNN_BACKEND overrides that default (never an explicit `backend=` argument). An explicitly
requested backend that cannot run raises `BackendUnavailable` with the reason: it never falls
back. "auto" may fall back, and `explain()` says what it picked and why.

Every backend implements the recurrence contract of `rnn.cells` with these two methods:

    forward(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse)
        xg (T, B, G*H) = x @ w_ih^T + b_ih, already computed (one GEMM) by rnn.autograd
        -> Saved(out, hT, cT, gates, extra)
           out   (T, B, H)   carried hidden state after each step, dtype of xg
           hT/cT (B, H)      final states, dtype of xg (cT None unless LSTM)
           gates (T, B, G*H) gate values AFTER their activation, in the compute dtype
                             (float32 for fp16/bf16 inputs); garbage is allowed at masked steps
           extra (T, B, H)   LSTM: the carried cell state c_t (valid at masked steps too: it
                             is the c the next step starts from); GRU reset_after=True:
                             h W_n^T + b_hn (garbage allowed at masked steps); otherwise None
                             (compute dtype)

    backward(spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, saved, dout, dhT, dcT)
        dout (T, B, H), dhT, dcT (B, H) upstream gradients (dhT / dcT may be None)
        -> (dxg (T, B, G*H) gradient of the gate pre-activations, zero at masked steps,
            dh0 (B, H), dc0 (B, H) or None)

The weight gradients (dW_hh, db_hh, dW_ih, db_ih) and dx are large GEMMs done once in
rnn.autograd, identical for every backend.
"""
from __future__ import annotations

import importlib
import os
from typing import NamedTuple

import torch

from kernels import Saved  # noqa: F401  (re-exported: the forward result of every backend)

NAMES = ("auto", "torch", "triton", "cupy")
ENV_VAR = "FUSED_RNN_BACKEND"

# name -> "module:attribute" of a zero-argument factory; imported lazily so that a missing
# optional dependency only matters when that backend is asked for.
_IMPLEMENTATIONS = {
    "torch": "rnn.recurrence_torch:TorchBackend",
    "triton": "kernels.triton:TritonBackend",
    "cupy": "kernels.cupy:CupyBackend",
}
_cache: dict = {}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this call (missing package, device, size)."""


class Choice(NamedTuple):
    backend: object
    name: str
    reason: str


def validate(name) -> str:
    """Return the backend name to use: the argument, or the env override when it is None/"auto"."""
    if name is None:
        name = "auto"
    if not isinstance(name, str) or name.lower() not in NAMES:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(NAMES)}")
    name = name.lower()
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in NAMES:
                raise ValueError(
                    f"environment variable {ENV_VAR}={env!r} is not a backend: "
                    f"expected one of {', '.join(NAMES)}"
                )
            name = env
    return name


def _load(name):
    if name not in _cache:
        module, attr = _IMPLEMENTATIONS[name].split(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
            _cache[name] = factory()
        except ImportError as exc:  # optional dependency missing
            _cache[name] = exc
    return _cache[name]


def get(name):
    """The backend object for an explicit name, or BackendUnavailable if its package is missing."""
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(_IMPLEMENTATIONS)}")
    impl = _load(name)
    if isinstance(impl, Exception):
        raise BackendUnavailable(f"backend {name!r} is not installed: {impl}")
    return impl


def _unavailable(name, device, spec, hidden, batch, dtype):
    try:
        impl = get(name)
    except BackendUnavailable as exc:
        return None, str(exc)
    return impl, impl.unavailable_reason(device, spec, hidden, batch, dtype)


# "auto" on CUDA (see auto_order): cupy first up to this batch size ...
CUPY_FIRST_MAX_BATCH = 32
# ... and up to this one where triton would run per step
CUPY_FIRST_PER_STEP_MAX_BATCH = 64


def auto_order(batch, triton_persistent=True) -> tuple:
    """The GPU backends "auto" tries, in order, for a call of this batch size (one direction, or
    both of a bidirectional layer, which both backends run as one launch: the same rule);
    triton_persistent: whether triton's forward and backward plans for the call are persistent.
    From the sm_90 estimates of profiling.static (not yet measured on a GPU, which will settle the
    rule), bf16, T 1024, us per step forward / backward, lstm / gru / rnn x H 256 / 768 / 1024:
      - up to B = 32 cupy first: at B = 1 it leads the training step in 8 of those 9 rows (B1 H256
        LSTM 0.96 / 1.24 against triton's 1.61 / 2.13). At B = 16 the estimates are mixed: cupy
        leads at H256 GRU / SimpleRNN and LSTM H1024, triton elsewhere (B16 H768 LSTM 2.32 / 3.48
        against cupy's cluster forward 4.87 and grid-wide backward 4.07); the cluster kernel's
        figures rest on the model's assumed exchange time, so the rule waits for a measurement;
      - above, triton first where its plans are persistent: cupy's kernels stage every batch row
        of h in every block each step, so their step grows with B (B64 H256 LSTM triton 2.07 /
        2.66 against cupy 3.58 / 4.76);
      - where triton runs per step (W_hh streamed from L2 every step: LSTM / GRU at H >= 768 from
        B = 64 in bf16), cupy first up to B = 64 (B64 H768 LSTM cupy 5.55 / 13.16 against triton
        7.93 / 20.53), triton above (B256 H768 LSTM triton 12.44 / 22.23 against cupy 19.35 /
        49.52; triton ahead for training in every one-direction bf16 row at B = 256)."""
    if batch <= CUPY_FIRST_MAX_BATCH or (not triton_persistent and batch <= CUPY_FIRST_PER_STEP_MAX_BATCH):
        return ("cupy", "triton")
    return ("triton", "cupy")


def choose(name, device, spec, hidden, batch, dtype, both=False) -> Choice:
    """Resolve a backend name for one recurrence call.

    An explicit name either works or raises BackendUnavailable; "auto" tries the GPU backends in
    the order of auto_order (cupy first for small batches, triton for large ones) on CUDA devices,
    and torch everywhere else.
    """
    name = validate(name)
    device = torch.device(device)
    if name != "auto":
        impl, why = _unavailable(name, device, spec, hidden, batch, dtype)
        if why:
            raise BackendUnavailable(f"backend {name!r} was requested but cannot run: {why}")
        return Choice(impl, name, "requested explicitly")
    skipped = []
    if device.type == "cuda":
        persistent = True
        if CUPY_FIRST_MAX_BATCH < batch <= CUPY_FIRST_PER_STEP_MAX_BATCH:
            impl, why = _unavailable("triton", device, spec, hidden, batch, dtype)
            persistent = bool(why) or impl.runs_persistent(device, spec, hidden, batch, dtype, both)
        order = auto_order(batch, persistent)
        for candidate in order:
            impl, why = _unavailable(candidate, device, spec, hidden, batch, dtype)
            if not why:
                note = "; ".join(skipped)
                why = (f"first of {' / '.join(order)} for batch {batch}{', both directions in one launch' if both else ''}"
                       f"{'' if persistent else ', triton per step'} on CUDA (rnn.backends.auto_order)")
                return Choice(impl, candidate, f"{why}{' (' + note + ')' if note else ''}")
            skipped.append(f"{candidate}: {why}")
    else:
        skipped.append(f"device {device} is not CUDA")
    return Choice(get("torch"), "torch", "fallback: " + "; ".join(skipped)
                  + " (a call with torch.nn's semantics runs torch's native RNN op, except GRU / SimpleRNN "
                  "training at small B*H, where our loop is faster; others our loop)")


def explain(name="auto", device="cpu", spec=None, hidden=128, batch=1, dtype=torch.float32) -> str:
    """One line saying which backend a call with these properties would run on, and why."""
    from .cells import CellSpec

    spec = spec or CellSpec("lstm")
    try:
        choice = choose(name, device, spec, hidden, batch, dtype)
    except BackendUnavailable as exc:  # an explicit name that cannot run: say so, do not raise
        return f"{validate(name)}: unavailable: {exc}"
    return f"{choice.name}: {choice.reason}"


def _install_problem(name):
    """None if the backend's packages import, else why not."""
    impl = _load(name)
    if isinstance(impl, Exception):
        return str(impl)
    check = getattr(impl, "install_problem", None)  # a package the backend imports lazily (cupy)
    return check() if check else None


def available() -> dict:
    """{name: None if its packages are installed and import, else the reason} for every concrete
    backend. Whether a backend can run a given call (device, dtype, size) is `explain`'s job."""
    return {name: _install_problem(name) for name in _IMPLEMENTATIONS}
