"""The recurrence as registered PyTorch operators: what torch.compile and torch.export see.

    fused_rnn::recurrence           one layer, one direction (or both, stacked), forward: the input
                                    projection (one GEMM) and the backend's recurrence kernel
    fused_rnn::recurrence_backward  the backend's reverse-time recurrence: (dxg, dh0, dc0)

Each is ONE opaque node in a traced graph whatever T is, so compiling does not get slower with the
sequence length, and the fake (meta) implementations give output shapes in terms of the input
shapes, so a new T or B reuses a graph compiled with dynamic shapes. rnn.autograd registers the
backward (register_autograd): it calls `recurrence_backward` and does the weight and input
gradients as large GEMMs in plain torch ops that a compiler sees.

Arguments that are not tensors travel as strings and bools: the cell spec (kind, activation,
recurrent_activation, reset_after), the direction, and the backend name: concrete ("torch",
"triton" or "cupy") when rnn.functional resolved "auto" before the call (eager), or "auto" under
torch.compile, where one traced graph serves many batch sizes and the operator resolves it at run
time (on a GPU the choice can depend on B). An operator cannot
return None, so an absent output (cT and extra when the cell has none, dc0) is an empty tensor of
shape (0,). Empty batches and sequences (B = 0 or T = 0) are handled here without calling a
backend: out is empty and the final states are the initial ones.

Outputs of `recurrence`: out (T, B, H) and hT, cT (B, H) in x's dtype; gates (T, B, G*H) and extra
(T, B, H) in the compute dtype (float32 for fp16 / bf16 input): what the backward needs, see the
contract in rnn.backends.

Both directions of a bidirectional layer: w_hh of shape (2, G*H, H) says so (`both`). Then every
per-direction tensor (w_ih, w_hh, biases, h0, c0, rec_mask, and every output) has a leading
dimension of 2, direction 0 forward in time and 1 reversed (`reverse` is False), in_mask too when
given; x and mask are shared. The input projection of both directions is one GEMM (without input
dropout masks), and a backend with `forward_both` / `backward_both` (Triton, CuPy) runs both recurrences
in one launch; others run them one after the other.
"""
import torch

from kernels import compute_dtype

from . import backends
from .cells import CellSpec

_SPEC = "str kind, str activation, str recurrent_activation, bool reset_after, bool reverse, str backend"
_FORWARD_SCHEMA = ("(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, Tensor? c0, "
                   "Tensor? mask, Tensor? in_mask, Tensor? rec_mask, " + _SPEC +
                   ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
_BACKWARD_SCHEMA = ("(Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? c0, Tensor? mask, Tensor? rec_mask, "
                    "Tensor out, Tensor gates, Tensor extra, Tensor dout, Tensor dhT, Tensor dcT, " + _SPEC +
                    ") -> (Tensor, Tensor, Tensor)")


def spec_args(spec):
    """The operator arguments that describe a cell: (kind, activation, recurrent_activation, reset_after)."""
    return spec.kind, spec.activation, spec.recurrent_activation, spec.reset_after


def has_extra(spec):
    """Whether the backends save `extra` for this cell (LSTM: c_t; GRU reset_after: h W_n^T + b_hn)."""
    return spec.kind == "lstm" or (spec.kind == "gru" and spec.reset_after)


def project(x, w_ih, b_ih, in_mask, G, H):
    """xg (T, B, G*H) = (x * in_mask) @ W_ih^T + b_ih, with per-gate input masks if given."""
    if in_mask is None or in_mask.dim() == 2:
        xm = x if in_mask is None else x * in_mask
        x2 = xm.reshape(-1, x.shape[-1])
        # addmm: the bias in the GEMM's epilogue, not a second pass over (T, B, G*H)
        xg = x2 @ w_ih.t() if b_ih is None else torch.addmm(b_ih, x2, w_ih.t())
        return xg.view(x.shape[0], x.shape[1], G * H)
    parts = [(x * in_mask[g]) @ w_ih[g * H:(g + 1) * H].t() for g in range(G)]
    xg = torch.cat(parts, -1)
    return xg if b_ih is None else xg + b_ih


def _none(t):
    """An empty placeholder (an absent optional output) back to None."""
    return None if t is None or (t.dim() == 1 and t.numel() == 0) else t


def _fresh(outputs, inputs):
    """Operators must return new, contiguous memory: copy any output that shares storage with an
    input or an earlier output (a backend may return hT as a view of its saved states)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor) and t.numel()}
    result = []
    for t in outputs:
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen or not t.is_contiguous():
                t = t.clone(memory_format=torch.contiguous_format)
                ptr = t.untyped_storage().data_ptr()
            seen.add(ptr)
        result.append(t)
    return tuple(result)


def both(w_hh):
    """Whether an operator call carries both directions of a bidirectional layer (module docstring)."""
    return w_hh.dim() == 3


def _forward_shapes(x, w_hh, kind, activation, recurrent_activation, reset_after):
    """(shape, dtype) of the five outputs; shared by the real and the fake implementation."""
    spec = CellSpec(kind, activation, recurrent_activation, reset_after)
    T, B = x.shape[0], x.shape[1]
    H = w_hh.shape[-1]
    d = tuple(w_hh.shape[:1]) if both(w_hh) else ()
    cd = compute_dtype(x.dtype)
    return [((*d, T, B, H), x.dtype), ((*d, B, H), x.dtype), ((*d, B, H) if kind == "lstm" else (0,), x.dtype),
            ((*d, T, B, spec.n_gates * H), cd), ((*d, T, B, H) if has_extra(spec) else (0,), cd)]


def of_direction(t, d):
    """Direction d of an optional tensor stacked over both directions."""
    return None if t is None else t[d]


def _stack(a, b):
    return None if a is None else torch.stack((a, b))


def _forward_both(impl, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask):
    """Both directions' recurrences: one launch where the backend has forward_both, else two calls."""
    if hasattr(impl, "forward_both"):
        return impl.forward_both(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask)
    od = of_direction
    s = [impl.forward(spec, xg[d], w_hh[d], od(b_hh, d), h0[d], od(c0, d), mask, od(rec_mask, d), bool(d))
         for d in (0, 1)]
    return backends.Saved(*(_stack(a, b) for a, b in zip(*s)))


def _backward_both(impl, spec, w_hh, b_hh, h0, c0, mask, rec_mask, saved, dout, dhT, dcT):
    if hasattr(impl, "backward_both"):
        return impl.backward_both(spec, w_hh, b_hh, h0, c0, mask, rec_mask, saved, dout, dhT, dcT)
    od = of_direction
    g = [impl.backward(spec, w_hh[d], od(b_hh, d), h0[d], od(c0, d), mask, od(rec_mask, d), bool(d),
                       backends.Saved(*(od(t, d) for t in saved)), dout[d], dhT[d], od(dcT, d))
         for d in (0, 1)]
    return tuple(_stack(a, b) for a, b in zip(*g))


@torch.library.custom_op("fused_rnn::recurrence", mutates_args=(), schema=_FORWARD_SCHEMA)
def recurrence(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask,
               kind, activation, recurrent_activation, reset_after, reverse, backend):
    spec = CellSpec(kind, activation, recurrent_activation, reset_after)
    T, B = x.shape[0], x.shape[1]
    if T == 0 or B == 0:  # nothing to launch: empty outputs, the final states are the initial ones
        shapes = _forward_shapes(x, w_hh, *spec_args(spec))
        out, _, _, gates, extra = (x.new_zeros(s, dtype=d) for s, d in shapes)
        cT = c0.clone() if spec.kind == "lstm" else x.new_empty((0,))
        return out, h0.clone(), cT, gates, extra
    H = w_hh.shape[-1]
    impl = backends.choose(backend, x.device, spec, H, B, x.dtype, both(w_hh)).backend
    if both(w_hh):
        if in_mask is None:  # one GEMM projects x for both: (T, B, 2*G*H) -> (2, T, B, G*H)
            xg = project(x, w_ih.flatten(0, 1), None if b_ih is None else b_ih.flatten(), None, 2 * spec.n_gates, H)
            xg = xg.unflatten(-1, (2, spec.n_gates * H)).movedim(2, 0).contiguous()
        else:  # each direction its own input dropout masks
            xg = torch.stack([project(x, w_ih[d], of_direction(b_ih, d), in_mask[d], spec.n_gates, H) for d in (0, 1)])
        s = _forward_both(impl, spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask)
    else:
        xg = project(x, w_ih, b_ih, in_mask, spec.n_gates, H)
        s = impl.forward(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse)
    cd = compute_dtype(x.dtype)
    outs = (s.out.to(x.dtype), s.hT.to(x.dtype),
            x.new_empty((0,)) if s.cT is None else s.cT.to(x.dtype),
            s.gates.to(cd), x.new_empty((0,), dtype=cd) if s.extra is None else s.extra.to(cd))
    return _fresh(outs, (x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask, xg))


@recurrence.register_fake
def _recurrence_fake(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask,
                     kind, activation, recurrent_activation, reset_after, reverse, backend):
    if torch.onnx.is_in_onnx_export():
        # rnn.functional emits ONNX nodes instead of this operator during torch.onnx.export; it is
        # traced here only when that failed (a configuration ONNX cannot express) and the exporter
        # retries with torch.export(strict=True): fail that retry too, so the first, clear error is
        # the one the exporter reports.
        from .onnx_export import NotExportable

        raise NotExportable("fused_rnn::recurrence has no ONNX form (see the first error)")
    return tuple(x.new_empty(s, dtype=d)
                 for s, d in _forward_shapes(x, w_hh, kind, activation, recurrent_activation, reset_after))


@torch.library.custom_op("fused_rnn::recurrence_backward", mutates_args=(), schema=_BACKWARD_SCHEMA)
def recurrence_backward(w_hh, b_hh, h0, c0, mask, rec_mask, out, gates, extra, dout, dhT, dcT,
                        kind, activation, recurrent_activation, reset_after, reverse, backend):
    """(dxg (T, B, G*H) in the compute dtype, dh0 in h0's dtype, dc0 in c0's dtype or empty)."""
    spec = CellSpec(kind, activation, recurrent_activation, reset_after)
    T, B = out.shape[-3], out.shape[-2]
    lstm = spec.kind == "lstm"
    if T == 0 or B == 0:  # the gradients of the final states pass straight to the initial ones
        dc0 = dcT.to(c0.dtype).clone() if lstm else h0.new_empty((0,))
        return gates.new_zeros(gates.shape), dhT.to(h0.dtype).clone(), dc0
    saved = backends.Saved(out, None, None, gates, _none(extra))
    impl = backends.choose(backend, out.device, spec, w_hh.shape[-1], B, out.dtype, both(w_hh)).backend
    if both(w_hh):
        dxg, dh0, dc0 = _backward_both(impl, spec, w_hh, b_hh, h0, c0, mask, rec_mask, saved,
                                       dout, dhT, _none(dcT) if lstm else None)
    else:
        dxg, dh0, dc0 = impl.backward(spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse, saved,
                                      dout, dhT, _none(dcT) if lstm else None)
    outs = (dxg.to(gates.dtype), dh0.to(h0.dtype), dc0.to(c0.dtype) if lstm else h0.new_empty((0,)))
    return _fresh(outs, (w_hh, b_hh, h0, c0, mask, rec_mask, out, gates, extra, dout, dhT, dcT))


@recurrence_backward.register_fake
def _recurrence_backward_fake(w_hh, b_hh, h0, c0, mask, rec_mask, out, gates, extra, dout, dhT, dcT,
                              kind, activation, recurrent_activation, reset_after, reverse, backend):
    dc0 = c0.new_empty(c0.shape) if kind == "lstm" else h0.new_empty((0,))
    return gates.new_empty(gates.shape), h0.new_empty(h0.shape), dc0


from . import autograd as _autograd  # noqa: E402,F401  (registers the backward of `recurrence`)
