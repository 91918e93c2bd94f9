"""One recurrent layer, one direction: validate the call, pick a backend, run the Function.

Both public faces (the torch.nn drop-ins in rnn.modules and the Keras layers in rnn.keras) end up
in `recurrence`. Layouts and equations: rnn.cells.
"""
from __future__ import annotations

import torch

from kernels import compute_dtype

from . import backends, ops
from .autograd import recurrence as _recurrence_op
from .cells import CellSpec, check_bool, gru as _gru_spec, lstm as _lstm_spec, simple_rnn as _rnn_spec


def _shape(t):
    return tuple(t.shape)


def _check_tensor(name, t, shape, dtype, device, floating=True):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if _shape(t) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {_shape(t)}")
    if floating and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the dtype of x), got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on device {device} (the device of x), got {t.device}")


def _check_types(**tensors):
    """Every tensor argument is a tensor (or None where the name allows it), named in the error."""
    for name, t in tensors.items():
        optional = name not in ("x", "w_ih", "w_hh")
        if t is None and optional:
            continue
        if not isinstance(t, torch.Tensor):
            what = "a torch.Tensor" + (" or None" if optional else "")
            raise TypeError(f"{name} must be {what}, got {type(t).__name__}")


def validate(x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, mask, in_mask, rec_mask, w_hr=None):
    """Raise a clear error for every inconsistent argument; return (T, B, I, H, P), where P is the
    width of h: the projection size with w_hr, else H."""
    if not isinstance(spec, CellSpec):
        raise TypeError(f"spec must be an rnn.cells.CellSpec, got {type(spec).__name__}")
    _check_types(x=x, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, h0=h0, c0=c0, mask=mask,
                 in_mask=in_mask, rec_mask=rec_mask, w_hr=w_hr)
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (T, B, input_size), got {x.dim()}-D with shape {_shape(x)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    T, B, I = x.shape
    G = spec.n_gates
    dt, dev = x.dtype, x.device
    if w_hr is not None:
        if spec.kind != "lstm":
            raise ValueError(f"w_hr (projections, torch.nn's proj_size) is only for LSTM cells, got one "
                             f"for a {spec.kind} cell")
        if w_hr.dim() != 2 or w_hr.shape[0] < 1:
            raise ValueError(f"w_hr must have shape (P, H) = (proj_size, hidden_size), got {_shape(w_hr)}")
        if rec_mask is not None:
            raise ValueError("rec_mask (Keras recurrent dropout) cannot be combined with w_hr (projections)")
        P, H = w_hr.shape
        _check_tensor("w_hr", w_hr, (P, H), dt, dev)
        if _shape(w_hh) != (G * H, P):
            raise ValueError(f"w_hh must have shape ({G}*H, P) = {(G * H, P)} with w_hr of shape {(P, H)}, "
                             f"got {_shape(w_hh)}")
    else:
        if w_hh.dim() != 2 or w_hh.shape[0] != G * w_hh.shape[1]:
            raise ValueError(f"w_hh must have shape ({G}*H, H) for a {spec.kind} cell, got {_shape(w_hh)}")
        H = P = w_hh.shape[1]
    _check_tensor("w_ih", w_ih, (G * H, I), dt, dev)
    _check_tensor("w_hh", w_hh, (G * H, P), dt, dev)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            _check_tensor(name, b, (G * H,), dt, dev)
    if h0 is not None:
        _check_tensor("h0", h0, (B, P), dt, dev)
    if c0 is not None:
        if spec.kind != "lstm":
            raise ValueError(f"c0 is only for LSTM cells, got one for a {spec.kind} cell")
        _check_tensor("c0", c0, (B, H), dt, dev)
    if mask is not None:
        _check_tensor("mask", mask, (T, B), None, dev, floating=False)
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = valid step), got dtype {mask.dtype}")
    if in_mask is not None:
        if _shape(in_mask) not in ((B, I), (G, B, I)):
            raise ValueError(f"in_mask must have shape {(B, I)} or {(G, B, I)}, got {_shape(in_mask)}")
        _check_tensor("in_mask", in_mask, _shape(in_mask), dt, dev)
    if rec_mask is not None:
        _check_tensor("rec_mask", rec_mask, (G, B, H), dt, dev)
    return T, B, I, H, P


_AUTOCAST_FROM = (torch.float32, torch.float16, torch.bfloat16)  # autocast leaves float64 alone


def _autocast_dtype(spec, x):
    """Under torch.autocast: the dtype torch.nn's own recurrent op returns for a float32 input there
    (autocast's op lists differ per device and cell: on a CPU, bf16 for LSTM and RNN but float32 for
    GRU), found by running that op on a one-element input; None outside autocast."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _AUTOCAST_FROM:
        return None
    dev = x.device.type
    if not torch.is_autocast_enabled(dev):
        return None
    one = torch.zeros(1, 1, 1, device=x.device)
    w = [torch.zeros(spec.n_gates, 1, device=x.device), torch.zeros(spec.n_gates, 1, device=x.device)]
    try:
        if spec.kind == "lstm":
            out = torch.lstm(one, (one, one), w, False, 1, 0.0, False, False, False)[0]
        elif spec.kind == "gru":
            out = torch.gru(one, one, w, False, 1, 0.0, False, False, False)[0]
        else:
            out = torch.rnn_tanh(one, one, w, False, 1, 0.0, False, False, False)[0]
    except RuntimeError:  # torch.nn cannot run there (CPU fp16 LSTM): use the autocast dtype
        return torch.get_autocast_dtype(dev)
    return out.dtype


# (kind, activation, recurrent_activation, reset_after) -> torch's native op with these semantics
_NATIVE = {
    ("lstm", "tanh", "sigmoid", True): torch.lstm,
    ("gru", "tanh", "sigmoid", True): torch.gru,
    ("rnn", "tanh", "sigmoid", True): torch.rnn_tanh,
    ("rnn", "relu", "sigmoid", True): torch.rnn_relu,
}


def _native(op, x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, w_hr=None):
    """One layer, one direction through torch's native RNN op (autograd included, any order)."""
    if (b_ih is None) != (b_hh is None):  # the native op takes both biases or none
        b_ih = torch.zeros_like(b_hh) if b_ih is None else b_ih
        b_hh = torch.zeros_like(b_ih) if b_hh is None else b_hh
    params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else []) + ([w_hr] if w_hr is not None else [])
    xs = x.flip(0) if reverse else x
    hx = (h0.unsqueeze(0), c0.unsqueeze(0)) if op is torch.lstm else h0.unsqueeze(0)
    res = op(xs, hx, params, b_ih is not None, 1, 0.0, torch.is_grad_enabled(), False, False)
    out = res[0].flip(0) if reverse else res[0]
    return out, res[1][0], (res[2][0] if op is torch.lstm else None)


# (largest B * H, fewest steps T) at which our torch loop trains (forward + backward) faster on a CPU
# than torch's native op for the same call: torch's CPU GRU and RNN are unfused per-step ops under
# autograd, our loop has a hand-written backward but a fixed cost per call (a few tenths of a ms)
# that short sequences do not repay. Measured on the 2-core CPU of the README's table (torch 2.13,
# ours / torch.nn, training): GRU 0.37-0.93x up to B*H = 8192, 1.09x at 16384, 1.3-1.5x at T = 5-8;
# SimpleRNN 0.55-0.95x up to 16384, 1.02x at 32768, 1.2-2.1x at T <= 24. LSTM is absent: torch's
# CPU LSTM is oneDNN's fused kernel, faster.
LOOP_TRAINS_FASTER = {"gru": (8192, 20), "rnn": (16384, 32)}


def _records_grad(*tensors):
    """Whether this call records gradients (training): grad mode on and some input requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _native_op(spec, x, backend, mask, in_mask, rec_mask, T, B, H, grad, name=None):
    """torch's native op (torch.lstm, ...) where "auto" runs it, else None: "auto" resolved to the
    torch backend (here or as `name`), the call has exactly torch.nn's semantics (torch's
    activations, no masks of any kind), and it is not a CPU training call (`grad`) of a size where
    our loop trains faster (LOOP_TRAINS_FASTER)."""
    op = _NATIVE.get((spec.kind, spec.activation, spec.recurrent_activation, spec.reset_after))
    if (op is None or backends.validate(backend) != "auto"
            or mask is not None or in_mask is not None or rec_mask is not None or not T or not B
            or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
        return None
    most, fewest = LOOP_TRAINS_FASTER.get(spec.kind, (0, 0))
    if grad and x.device.type == "cpu" and B * H <= most and T >= fewest:
        return None
    if name is None:  # "auto" has kernel backends only on CUDA: elsewhere it is the torch backend
        name = backends.choose(backend, x.device, spec, H, B, x.dtype).name if x.is_cuda else "torch"
    return op if name == "torch" else None


def _projected(x, w_ih, w_hh, w_hr, b_ih, b_hh, h0, c0, spec, mask, in_mask, reverse, backend):
    """An LSTM with projections (torch.nn's proj_size) on the backends' plain LSTM recurrence.

    h_t = W_hr m_t with m_t = o_t * act(c_t), so the gates' h_{t-1} W_hh^T equals
    m_{t-1} (W_hh W_hr)^T: the recurrence runs over m with the (4H, H) weight W_hh W_hr, and h at
    every step is one GEMM afterwards. Exact in real arithmetic, every backend and kernel reused as
    is; the price is a recurrent matmul H wide instead of P (more work per step when P < H).
    A given h0 is not of the form W_hr m, so it enters through the input projection: h0 W_hh^T is
    added at each row's first valid step (x gets h0 as P extra features there and W_ih gets W_hh as
    P extra columns), and h stays h0 until that step."""
    T, B = x.shape[:2]
    cd = compute_dtype(x.dtype)
    w_eff = (w_hh.to(cd) @ w_hr.to(cd)).to(x.dtype)
    valid = x.new_ones((T, B), dtype=torch.bool) if mask is None else mask
    count = (valid.flip(0) if reverse else valid).long().cumsum(0)  # valid steps so far, in run order
    count = count.flip(0) if reverse else count
    if h0 is not None:
        first = (valid & (count == 1)).unsqueeze(-1)
        x = torch.cat([x, torch.where(first, h0, 0)], -1)
        w_ih = torch.cat([w_ih, w_hh], 1)
        if in_mask is not None:  # the extra features are never dropped
            in_mask = torch.cat([in_mask, in_mask.new_ones(in_mask.shape[:-1] + (w_hr.shape[0],))], -1)
    out_m, _, cT = _time_major(x, w_ih, w_eff, b_ih, b_hh, None, c0, spec, mask, in_mask, None, reverse,
                               backend)
    out = out_m @ w_hr.t()
    if h0 is not None:
        out = torch.where((count > 0).unsqueeze(-1), out, h0)
    if T:
        hT = out[0 if reverse else T - 1]
    else:  # no step: the final state is the initial one
        hT = x.new_zeros((B, w_hr.shape[0])) if h0 is None else h0.clone()
    return out, hT, cT


def recurrence(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, spec, mask=None,
               in_mask=None, rec_mask=None, reverse=False, backend="auto", batch_first=False, w_hr=None):
    """Run one recurrent layer in one direction.

    x (T, B, I) (or (B, T, I) with batch_first), weights in torch.nn layout, h0/c0 (B, H) or None
    (zeros), mask (T, B) (or (B, T)) bool with True = valid step, in_mask / rec_mask dropout masks
    already scaled, w_hr (P, H) an LSTM's projection (then h, h0 and out are P wide and w_hh is
    (4H, P)). Returns (out, hT, cT): out (T, B, H) (or (B, T, H)) is the carried hidden state
    after every step; cT is None unless LSTM. Differentiable with respect to every tensor argument
    except the masks.
    """
    reverse, batch_first = check_bool("reverse", reverse), check_bool("batch_first", batch_first)
    if batch_first:
        x = x.transpose(0, 1) if isinstance(x, torch.Tensor) else x
        mask = mask.transpose(0, 1) if isinstance(mask, torch.Tensor) else mask
    out, hT, cT = _time_major(x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, mask, in_mask, rec_mask, reverse,
                              backend, w_hr)
    return (out.transpose(0, 1) if batch_first else out), hT, cT


def _autocast_to(cast, *tensors):
    """The floating tensors autocast would lower, in `cast` (float64 and None left alone)."""
    return tuple(None if t is None else (t.to(cast) if t.dtype in _AUTOCAST_FROM else t) for t in tensors)


def _op_backend(backend, x, spec, H, B, both=False):
    """The backend name handed to the operator."""
    if torch.compiler.is_compiling():
        # Traced once for many shapes: the operator resolves "auto" at run time, when B is known.
        return "auto" if backend is None else backend
    # resolved here: an explicit backend that cannot run raises now
    return backends.choose(backend, x.device, spec, H, max(B, 1), x.dtype, both).name


def _time_major(x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, mask, in_mask, rec_mask, reverse, backend,
                w_hr=None):
    """`recurrence` for time-major x and mask: (out (T, B, H), hT, cT)."""
    cast = _autocast_dtype(spec, x)
    if cast is not None:  # the dtype torch.nn's own op gives under this autocast, then no autocast inside
        x, w_ih, w_hh, b_ih, b_hh, h0, c0, in_mask, rec_mask, w_hr = _autocast_to(
            cast, x, w_ih, w_hh, b_ih, b_hh, h0, c0, in_mask, rec_mask, w_hr)
        with torch.autocast(x.device.type, enabled=False):
            return _time_major(x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, mask, in_mask, rec_mask, reverse,
                               backend, w_hr)
    T, B, I, H, P = validate(x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, mask, in_mask, rec_mask, w_hr)
    grad = _records_grad(x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr)
    if w_hr is not None and _native_op(spec, x, backend, mask, in_mask, rec_mask, T, B, H, grad) is None:
        return _projected(x, w_ih, w_hh, w_hr, b_ih, b_hh, h0, c0, spec, mask, in_mask, reverse, backend)
    if torch.onnx.is_in_onnx_export():
        from .onnx_export import recurrence as onnx_recurrence  # an ONNX LSTM / GRU / RNN node

        return onnx_recurrence(x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, mask, in_mask, rec_mask, reverse)
    name = _op_backend(backend, x, spec, H, B)
    if h0 is None:
        h0 = x.new_zeros(B, P)
    if spec.kind == "lstm" and c0 is None:
        c0 = x.new_zeros(B, H)
    native = _native_op(spec, x, backend, mask, in_mask, rec_mask, T, B, H, grad, name)
    if native is not None:
        # "auto" fell back to the torch backend and the call has torch.nn's semantics: torch's own
        # fused RNN kernel (oneDNN on a CPU) computes exactly this, much faster than a Python loop.
        return _native(native, x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, w_hr)
    x = x.contiguous()
    mask = None if mask is None else mask.contiguous()
    # One operator call per layer and direction (rnn.ops); empty batches and sequences included.
    out, hT, cT, _, _ = _recurrence_op(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask,
                                       *ops.spec_args(spec), reverse, name)
    return out, hT, (cT if spec.kind == "lstm" else None)


def bidirectional_layer(x, params, h0=None, c0=None, *, spec, mask=None, in_mask=None, rec_mask=None,
                        backend="auto"):
    """Both directions of one bidirectional layer as ONE operator call (rnn.ops: both directions),
    so that a backend that can (Triton, CuPy) runs the two recurrences in one launch. Where "auto"
    resolves to the torch backend and the call has torch.nn's semantics, torch's own op runs each
    direction instead, as `recurrence` would. x (T, B, I) time-major; params ((w_ih, w_hh, b_ih, b_hh) of the forward direction,
    the same of the reverse one), torch.nn layout, biases None in both or in neither; h0 / c0
    (2, B, H) or None; mask (T, B) bool or None; in_mask / rec_mask the Keras dropout masks of the
    two directions stacked ((2, ...), each as `recurrence` takes it) or None. Returns (out (T, B, 2H)
    = [forward | reverse], hT (2, B, H), cT (2, B, H) or None): what two `recurrence` calls give."""
    if len(params) != 2 or any(len(p) != 4 for p in params):
        raise ValueError("params must be two tuples (w_ih, w_hh, b_ih, b_hh), the forward direction's then "
                         f"the reverse one's; got {len(params)} entries")
    if (params[0][2] is None) != (params[1][2] is None) or (params[0][3] is None) != (params[1][3] is None):
        raise ValueError("both directions must have biases, or neither")
    weights = {f"params[{d}][{k}]": t for d in (0, 1) for k, t in enumerate(params[d])}
    _check_types(x=x, h0=h0, c0=c0, mask=mask, in_mask=in_mask, rec_mask=rec_mask, **weights)
    if torch.onnx.is_in_onnx_export():  # ONNX has a node per direction (rnn.onnx_export), not this operator
        od = ops.of_direction
        return _joined(spec, [_time_major(x, *params[d], od(h0, d), od(c0, d), spec, mask, od(in_mask, d),
                                          od(rec_mask, d), bool(d), backend) for d in (0, 1)])
    cast = _autocast_dtype(spec, x)
    if cast is not None:  # as in _time_major: torch.nn's dtype under this autocast, no autocast inside
        x, h0, c0, in_mask, rec_mask = _autocast_to(cast, x, h0, c0, in_mask, rec_mask)
        with torch.autocast(x.device.type, enabled=False):
            return bidirectional_layer(x, [_autocast_to(cast, *p) for p in params], h0, c0, spec=spec, mask=mask,
                                       in_mask=in_mask, rec_mask=rec_mask, backend=backend)
    for name, s in (("h0", h0), ("c0", c0), ("in_mask", in_mask), ("rec_mask", rec_mask)):
        if s is not None and (s.dim() < 1 or s.shape[0] != 2):
            raise ValueError(f"{name} must have a leading dimension of 2 (one per direction), got shape "
                             f"{tuple(s.shape)}")
    od = ops.of_direction
    for d in (0, 1):
        T, B, _, H, _ = validate(x, *params[d], od(h0, d), od(c0, d), spec, mask, od(in_mask, d), od(rec_mask, d))
    name = _op_backend(backend, x, spec, H, B, both=True)
    if h0 is None:
        h0 = x.new_zeros(2, B, H)
    if spec.kind == "lstm" and c0 is None:
        c0 = x.new_zeros(2, B, H)
    grad = _records_grad(x, h0, c0, *params[0], *params[1])
    native = _native_op(spec, x, backend, mask, in_mask, rec_mask, T, B, H, grad, name)
    if native is not None:  # as in _time_major: torch's own kernel, one call per direction
        return _joined(spec, [_native(native, x, *params[d], h0[d], ops.of_direction(c0, d), bool(d))
                              for d in (0, 1)])
    w_ih, w_hh, b_ih, b_hh = (None if p[0] is None else torch.stack(p) for p in zip(*params))
    mask = None if mask is None else mask.contiguous()
    out, hT, cT, _, _ = _recurrence_op(x.contiguous(), w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask,
                                       *ops.spec_args(spec), False, name)
    return torch.cat((out[0], out[1]), -1), hT, (cT if spec.kind == "lstm" else None)


def _joined(spec, parts):
    """Two directions' (out, hT, cT) as bidirectional_layer returns them."""
    return (torch.cat((parts[0][0], parts[1][0]), -1), torch.stack((parts[0][1], parts[1][1])),
            torch.stack((parts[0][2], parts[1][2])) if spec.kind == "lstm" else None)


_COMMON_ARGS = """
    x          (T, B, I) input ((B, T, I) with batch_first=True)
    w_ih       (G*H, I) input weights, w_hh (G*H, H) recurrent weights, torch.nn layout and gate order
    b_ih, b_hh (G*H,) biases or None
    h0         (B, H) initial hidden state or None (zeros)
    mask       (T, B) bool, True = valid step; a masked step carries the state unchanged
    in_mask    (B, I) or (G, B, I) input dropout mask, already scaled (one per gate with G)
    rec_mask   (G, B, H) recurrent dropout mask per gate, already scaled (Keras semantics)
    reverse    bool: run t = T-1 .. 0 (out stays aligned with x)
    backend    "auto" (default), "torch", "triton" or "cupy" (see rnn.backends)
    batch_first bool

    Every tensor must share x's dtype and device. Differentiable (any order) in every tensor
    argument except the masks."""


def lstm(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, activation="tanh",
         recurrent_activation="sigmoid", **kwargs):
    """One LSTM layer, one direction: returns (out (T, B, H), hT (B, H), cT (B, H)).

    Gates i, f, g, o: c' = f*c + i*g, h' = o*activation(c'); i, f, o use recurrent_activation.
    c0 (B, H) is the initial cell state or None (zeros). w_hr=(P, H) makes it torch.nn's LSTM with
    projections (proj_size=P): h' = (o*activation(c')) @ w_hr^T, so h0, hT and out are P wide and
    w_hh is (4H, P). Example:

        >>> import torch
        >>> from rnn import functional as F
        >>> T, B, I, H = 5, 2, 3, 4
        >>> x = torch.randn(T, B, I)
        >>> w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
        >>> out, hT, cT = F.lstm(x, w_ih, w_hh)
        >>> out.shape, hT.shape, cT.shape
        (torch.Size([5, 2, 4]), torch.Size([2, 4]), torch.Size([2, 4]))
    """
    return recurrence(x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                      spec=_lstm_spec(activation, recurrent_activation), **kwargs)


def gru(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, activation="tanh",
        recurrent_activation="sigmoid", reset_after=True, **kwargs):
    """One GRU layer, one direction: returns (out (T, B, H), hT (B, H)).

    Gates r, z, n: h' = (1-z)*n + z*h. reset_after=True (torch.nn, Keras default):
    n = activation(x W_n^T + b_in + r * (h W_hn^T + b_hn)); reset_after=False (Keras classic):
    n = activation(x W_n^T + b_in + (r*h) W_hn^T + b_hn)."""
    out, hT, _ = recurrence(x, w_ih, w_hh, b_ih, b_hh, h0, None,
                            spec=_gru_spec(activation, recurrent_activation, reset_after), **kwargs)
    return out, hT


def simple_rnn(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, activation="tanh", **kwargs):
    """One Elman RNN layer, one direction: h' = activation(x W_ih^T + b_ih + h W_hh^T + b_hh).
    Returns (out (T, B, H), hT (B, H))."""
    out, hT, _ = recurrence(x, w_ih, w_hh, b_ih, b_hh, h0, None, spec=_rnn_spec(activation), **kwargs)
    return out, hT


def mask_outputs(out, mask, mode, batch_first=False):
    """Outputs at masked steps, from the carried states `out` returned by `recurrence`.

    mode "zeros": 0 at masked steps (torch.nn packed sequences, Keras inside Bidirectional).
    mode "previous": Keras's rule: the last valid output, zeros before the first valid step.
    """
    if mode not in ("zeros", "previous"):
        raise ValueError(f"mode must be 'zeros' or 'previous', got {mode!r}")
    if batch_first:
        out, mask = out.transpose(0, 1), mask.transpose(0, 1)
    keep = mask.unsqueeze(-1)
    zeroed = torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))
    if mode == "previous":
        T = out.shape[0]
        steps = torch.arange(T, device=out.device).unsqueeze(1).expand_as(mask)
        last = torch.where(mask, steps, -1).cummax(0).values  # index of the last valid step <= t
        gathered = zeroed.gather(0, last.clamp(min=0).unsqueeze(-1).expand_as(out))
        zeroed = torch.where((last >= 0).unsqueeze(-1), gathered, zeroed)
    return zeroed.transpose(0, 1) if batch_first else zeroed


for _f in (lstm, gru, simple_rnn):
    _f.__doc__ = _f.__doc__.rstrip() + "\n\n    Arguments:" + _COMMON_ARGS + "\n"
del _f
