"""Drop-ins for torch.nn.LSTM / GRU / RNN.

They subclass torch.nn.RNNBase, the common base of the three torch.nn classes, with torch's own
constructor arguments, so parameter names, shapes, initialisation, state_dict and repr are torch's;
only `forward` is replaced (plus a `backend=` argument). They are deliberately NOT subclasses of
torch.nn.LSTM / GRU / RNN: `isinstance(rnn.LSTM(...), torch.nn.LSTM)` is False (it is an
nn.RNNBase), because torch.compile refuses every instance of those three classes ("Dynamo does not
support RNN, GRU, or LSTM"), and these modules compile.

Every layer and direction is one `rnn.functional.recurrence` call (one operator in a compiled
graph), and both directions of a bidirectional layer one `rnn.functional.bidirectional_layer` call
(one operator, one launch on the Triton and CuPy backends); an LSTM with proj_size passes its weight_hr as
`w_hr` one direction at a time (see rnn.functional._projected).
PackedSequence input is padded once and run with a (T, B) validity mask inside the recurrence, not
a loop over sequences. Where "auto" has no kernel backend for the device (a CPU), the whole module
is instead one call of torch's own multi-layer op, as torch.nn makes it (packed input included),
except GRU / RNN training at sizes where our loop trains faster (functional.LOOP_TRAINS_FASTER).
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence

from . import backends, cells, functional
from .functional import recurrence


class _Fused:
    """forward() shared by the three drop-ins; `_spec()` says which cell."""

    def _setup_backend(self, backend):
        backends.validate(backend)  # raises on an unknown name now, not at the first call
        self.backend = backend

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"

    def forward(self, input, hx=None):
        spec = self._spec()
        lstm = spec.kind == "lstm"
        D = 2 if self.bidirectional else 1
        L, H = self.num_layers, self.hidden_size
        packed = isinstance(input, PackedSequence)
        mask = None
        unbatched = False
        if packed:
            data, batch_sizes, sorted_idx, unsorted_idx = input
            if data.dim() != 2:
                raise ValueError(f"packed data must be 2-D (sum of lengths, input_size), got shape {tuple(data.shape)}")
            x, mask, rows = _pad_packed(data, batch_sizes, sorted_idx)
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: expected input to be 2-D (unbatched) or 3-D "
                                 f"(batched), got {input.dim()}-D with shape {tuple(input.shape)}")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
            sorted_idx = unsorted_idx = None
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}")
        self._check_matches_parameters(x)
        B = x.shape[1]
        P = self.proj_size or H  # width of h (LSTM with projections: h = W_hr (o * tanh(c)))
        h0, c0 = self._initial_states(hx, lstm, L * D, B, H, P, x, unbatched, sorted_idx)

        grad = functional._records_grad(x, h0, c0, *self._flat_weights)
        op = functional._native_op(spec, x, self.backend, None, None, None, x.shape[0], B, H, grad)
        batch_major = False  # seq is (B, T, .): torch's op read batch-first input as it is
        if op is not None:  # one call of torch's own multi-layer op, exactly as torch.nn makes it
            batch_major = self.batch_first and not (packed or unbatched)
            seq, h_n, c_n = self._run_native(op, data if packed else (input if batch_major else x),
                                             batch_sizes if packed else None, batch_major, h0, c0, B, P, lstm)
        else:
            seq, h_n, c_n = self._run_layers(spec, x, h0, c0, mask, lstm)
            if packed:
                seq = seq.flatten(0, 1).index_select(0, rows)
        if packed:
            output = PackedSequence(seq, batch_sizes, sorted_idx, unsorted_idx)
            if unsorted_idx is not None:
                h_n = h_n.index_select(1, unsorted_idx)
                c_n = c_n.index_select(1, unsorted_idx) if lstm else None
        elif unbatched:
            output, h_n = seq.squeeze(1), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if lstm else None
        else:
            output = seq.transpose(0, 1) if self.batch_first and not batch_major else seq
        return output, ((h_n, c_n) if lstm else h_n)

    def _run_native(self, op, x, batch_sizes, batch_first, h0, c0, B, P, lstm):
        """One call of torch's multi-layer op (a drop-in always has torch.nn's semantics, so it is
        exact and costs what torch.nn costs): (output (T, B, D*P), (B, T, D*P) with batch_first, or
        packed data; h_n; c_n | None)."""
        if h0 is None:
            LD = self.num_layers * (2 if self.bidirectional else 1)
            h0 = x.new_zeros(LD, B, P)
            c0 = x.new_zeros(LD, B, self.hidden_size) if lstm else None
        args = ((h0, c0) if lstm else h0, self._flat_weights, self.bias, self.num_layers, float(self.dropout),
                self.training, self.bidirectional)
        res = op(x, batch_sizes, *args) if batch_sizes is not None else op(x, *args, batch_first)
        return res[0], res[1], (res[2] if lstm else None)

    def _run_layers(self, spec, x, h0, c0, mask, lstm):
        """Every layer and direction through rnn.functional (our backends): (out (T, B, D*P), h_n, c_n)."""
        D = 2 if self.bidirectional else 1
        hn, cn = [], []
        layer_in = x
        # both directions of a layer in one operator call (one launch on the Triton and CuPy backends);
        # projections go one direction at a time
        both = D == 2 and not self.proj_size
        for layer in range(self.num_layers):
            if both:
                k = 2 * layer
                layer_in, hT, cT = functional.bidirectional_layer(
                    layer_in, [self._params(layer, 0), self._params(layer, 1)],
                    None if h0 is None else h0[k:k + 2], None if c0 is None else c0[k:k + 2],
                    spec=spec, mask=mask, backend=self.backend)
                hn.extend(hT.unbind(0))
                cn.extend(cT.unbind(0) if lstm else (None, None))
            else:
                outs = []
                for d in range(D):
                    k = layer * D + d
                    out, hT, cT = recurrence(
                        layer_in, *self._params(layer, d), None if h0 is None else h0[k],
                        None if c0 is None else c0[k], spec=spec, mask=mask, reverse=bool(d), backend=self.backend,
                        w_hr=getattr(self, f"weight_hr_l{layer}" + ("_reverse" if d else "")) if self.proj_size
                        else None)
                    outs.append(out)
                    hn.append(hT)
                    cn.append(cT)
                layer_in = outs[0] if D == 1 else torch.cat(outs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = torch.nn.functional.dropout(layer_in, self.dropout, True)
        return layer_in, torch.stack(hn), (torch.stack(cn) if lstm else None)

    def _params(self, layer, d):
        """(w_ih, w_hh, b_ih, b_hh) of one layer and direction (biases None without bias)."""
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        b = self.bias
        return (getattr(self, "weight_ih" + sfx), getattr(self, "weight_hh" + sfx),
                getattr(self, "bias_ih" + sfx) if b else None, getattr(self, "bias_hh" + sfx) if b else None)

    def _check_matches_parameters(self, x):
        """Name the input and the module's parameters, and say how to convert (not the
        layer-level message about w_ih, which the user never passed)."""
        w = self.weight_ih_l0
        name = type(self).__name__
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name}: the input must be a floating-point tensor, got dtype {x.dtype}")
        if x.dtype != w.dtype:
            raise TypeError(f"{name}: the input has dtype {x.dtype} but the module's parameters are "
                            f"{w.dtype}; convert one of them: input.to({w.dtype}) or "
                            f"module.to({x.dtype})")
        if x.device != w.device:
            raise ValueError(f"{name}: the input is on {x.device} but the module's parameters are on "
                             f"{w.device}; move one of them: input.to('{w.device}') or "
                             f"module.to('{x.device}')")

    def _initial_states(self, hx, lstm, LD, B, H, P, x, unbatched, sorted_idx):
        """(h0 (LD, B, P), c0 (LD, B, H) or None), checked and ordered like the batch; (None, None)
        without hx (each layer then starts from zeros)."""
        if hx is None:
            return None, None
        if lstm:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"LSTM expects hx to be a tuple (h_0, c_0), got {type(hx).__name__}")
            h0, c0 = hx
        else:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{type(self).__name__} expects hx to be a Tensor, got {type(hx).__name__}")
            h0, c0 = hx, None
        for name, s, width in (("h_0", h0, P), ("c_0", c0, H)):
            if s is None:
                continue
            want = (LD, width) if unbatched else (LD, B, width)
            if tuple(s.shape) != want:
                raise ValueError(f"Expected hidden size {want} for {name}, got {tuple(s.shape)}")
            if s.dtype != x.dtype:
                raise TypeError(f"{name} must have dtype {x.dtype} (the input's), got {s.dtype}")
        if unbatched:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if c0 is not None else None
        if sorted_idx is not None:  # torch.nn reorders the given states like the packed batch
            h0 = h0.index_select(1, sorted_idx)
            c0 = c0.index_select(1, sorted_idx) if c0 is not None else None
        return h0, c0


def _pad_packed(data, batch_sizes, sorted_idx):
    """Packed data (N, I) -> padded x (T, B, I), the validity mask (T, B) and the row of every packed
    element in x.flatten(0, 1). Index arithmetic on batch_sizes, not a boolean-mask scatter, so the
    shapes do not depend on tensor values and torch.compile traces it without a graph break."""
    T = batch_sizes.shape[0]
    if sorted_idx is not None:
        B = sorted_idx.shape[0]
    elif torch.compiler.is_compiling():
        raise NotImplementedError(
            "torch.compile(fullgraph=True) cannot read the batch size of a PackedSequence made with "
            "enforce_sorted=True (it is a tensor value, batch_sizes[0]); pack with enforce_sorted=False, "
            "or pass padded input with a mask")
    else:
        B = int(batch_sizes[0])
    device = data.device
    sizes = batch_sizes.to(device)
    mask = torch.arange(B, device=device).unsqueeze(0) < sizes.unsqueeze(1)
    ends = sizes.cumsum(0)  # packed data is time-major: step t holds the first sizes[t] sequences
    p = torch.arange(data.shape[0], device=device)
    t = torch.searchsorted(ends, p, right=True)
    rows = t * B + (p - (ends - sizes)[t])
    x = data.new_zeros(T * B, data.shape[1]).index_copy(0, rows, data).view(T, B, data.shape[1])
    return x, mask, rows


class LSTM(_Fused, torch.nn.RNNBase):
    """torch.nn.LSTM with fused recurrence kernels. Extra argument: backend ("auto", "torch",
    "triton", "cupy"; default "auto", overridable by FUSED_RNN_BACKEND)."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self._setup_backend(backend)

    def _spec(self):
        return cells.lstm()


class GRU(_Fused, torch.nn.RNNBase):
    """torch.nn.GRU with fused recurrence kernels (gate order r, z, n; reset_after form)."""

    def __init__(self, *args, backend="auto", **kwargs):
        _no_proj_size(kwargs)
        super().__init__("GRU", *args, **kwargs)
        self._setup_backend(backend)

    def _spec(self):
        return cells.gru()


class RNN(_Fused, torch.nn.RNNBase):
    """torch.nn.RNN (Elman, tanh or relu) with fused recurrence kernels."""

    def __init__(self, *args, backend="auto", **kwargs):
        _no_proj_size(kwargs)
        # torch.nn.RNN's own rule: nonlinearity is the 4th positional argument or a keyword.
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__("RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)
        self._setup_backend(backend)

    def _spec(self):
        return cells.simple_rnn(self.nonlinearity)


def _no_proj_size(kwargs):
    if "proj_size" in kwargs:  # torch.nn.GRU / RNN refuse it with the same message
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
