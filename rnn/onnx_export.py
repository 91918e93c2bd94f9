"""One recurrent layer, one direction, as ONE ONNX LSTM / GRU / RNN node (used only during
torch.onnx.export).

rnn.functional.recurrence calls `recurrence` instead of the fused operator while
torch.onnx.is_in_onnx_export(), for both exporters:
  * dynamo=True (torch.export based): torch.onnx.ops.symbolic_multi_out puts the ONNX node in the
    exported graph, with output shapes written in the input's symbolic sizes (dynamic B and T);
  * dynamo=False (TorchScript based, traced): an autograd.Function whose `symbolic` emits the node.

ONNX's recurrent operators express the torch.nn semantics of this library and more: activations
tanh, sigmoid, relu, hard_sigmoid (HardSigmoid with alpha 1/6, beta 0.5, Keras 3's) and linear
(Affine 1, 0), either direction, GRU in both forms (linear_before_reset=1 is reset_after=True).
They cannot express a (T, B) step mask (Keras masking, PackedSequence: ONNX takes per-sequence
lengths) nor dropout masks (export in eval mode): those raise a clear error.

Gate order: torch's LSTM (i, f, g, o) is ONNX's (i, o, f, c); torch's GRU (r, z, n) is ONNX's
(z, r, h). Weights get a leading num_directions = 1 axis; B is [input biases, recurrent biases].
"""
import torch

_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}  # ONNX block k = torch block order[k]
# our activation -> (ONNX name, alpha, beta); alpha / beta None where the function takes none
_ACTIVATIONS = {"tanh": ("Tanh", None, None), "sigmoid": ("Sigmoid", None, None),
                "relu": ("Relu", None, None), "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
                "linear": ("Affine", 1.0, 0.0)}


class NotExportable(RuntimeError):
    """This layer's configuration has no ONNX LSTM / GRU / RNN equivalent."""


def _check(spec, mask, in_mask, rec_mask):
    if mask is not None:
        raise NotExportable(
            "ONNX export: a (T, B) step mask (Keras masking, or a PackedSequence input) cannot be "
            "expressed by ONNX's LSTM / GRU / RNN, which take per-sequence lengths; export with padded "
            "input and no mask")
    if in_mask is not None or rec_mask is not None:
        raise NotExportable(
            "ONNX export: dropout masks (dropout / recurrent_dropout in training mode) cannot be "
            "exported; call model.eval() before torch.onnx.export")
    for name in (spec.activation, spec.recurrent_activation):
        if name not in _ACTIVATIONS:  # every activation of rnn.cells maps today; a new one must too
            raise NotExportable(f"ONNX export: activation {name!r} has no ONNX equivalent")


def attributes(spec, hidden, reverse):
    """The ONNX node's attributes (name -> value)."""
    if spec.kind == "rnn":
        funcs = [spec.activation]
    elif spec.kind == "gru":
        funcs = [spec.recurrent_activation, spec.activation]  # f (z, r), g (h)
    else:
        funcs = [spec.recurrent_activation, spec.activation, spec.activation]  # f (i, o, f), g (c), h
    onnx = [_ACTIVATIONS[f] for f in funcs]
    attrs = {"hidden_size": int(hidden), "direction": "reverse" if reverse else "forward",
             "activations": [name for name, _, _ in onnx]}
    # alpha / beta are consumed in order by the activations that take them
    alphas = [a for _, a, _ in onnx if a is not None]
    if alphas:
        attrs["activation_alpha"] = alphas
        attrs["activation_beta"] = [b for _, a, b in onnx if a is not None]
    if spec.kind == "gru":
        attrs["linear_before_reset"] = int(spec.reset_after)
    return attrs


def _rows(spec, H):
    """Row indices taking torch's gate blocks to ONNX's order."""
    return torch.cat([torch.arange(g * H, (g + 1) * H) for g in _GATE_ORDER[spec.kind]])


def recurrence(x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, mask, in_mask, rec_mask, reverse):
    """(out (T, B, H), hT (B, H), cT (B, H) or None) computed by one ONNX node in the exported graph."""
    _check(spec, mask, in_mask, rec_mask)
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[1]
    lstm = spec.kind == "lstm"
    if b_ih is None and b_hh is not None:
        b_ih = torch.zeros_like(b_hh)
    if b_hh is None and b_ih is not None:
        b_hh = torch.zeros_like(b_ih)
    if h0 is None:
        h0 = x.new_zeros(B, H)
    if lstm and c0 is None:
        c0 = x.new_zeros(B, H)
    attrs = attributes(spec, H, reverse)
    if torch.jit.is_tracing():  # the TorchScript-based exporter
        res = _TorchScriptNode.apply(x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, reverse, attrs)
    else:  # the torch.export-based exporter
        rows = _rows(spec, H).to(x.device)
        W, R = w_ih[rows].unsqueeze(0), w_hh[rows].unsqueeze(0)
        bias = None if b_ih is None else torch.cat([b_ih[rows], b_hh[rows]]).unsqueeze(0)
        inputs = [x, W, R, bias, None, h0.unsqueeze(0)] + ([c0.unsqueeze(0)] if lstm else [])
        shapes = [(T, 1, B, H), (1, B, H)] + ([(1, B, H)] if lstm else [])
        res = torch.onnx.ops.symbolic_multi_out(_OP[spec.kind], inputs, attrs, dtypes=[x.dtype] * len(shapes),
                                                shapes=shapes)
    return res[0][:, 0], res[1][0], (res[2][0] if lstm else None)


class _TorchScriptNode(torch.autograd.Function):
    """Traced by the TorchScript-based exporter as one node; `symbolic` says which ONNX node."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, reverse, attrs):
        from . import ops

        # the values the tracer sees: the layer itself, on the torch backend
        out, hT, cT, _, _ = torch.ops.fused_rnn.recurrence(x, w_ih, w_hh, b_ih, b_hh, h0, c0, None, None, None,
                                                           *ops.spec_args(spec), reverse, "torch")
        res = (out.unsqueeze(1), hT.unsqueeze(0))
        return res + (cT.unsqueeze(0),) if spec.kind == "lstm" else res

    @staticmethod
    def symbolic(g, x, w_ih, w_hh, b_ih, b_hh, h0, c0, spec, reverse, attrs):
        H = attrs["hidden_size"]
        rows = g.op("Constant", value_t=_rows(spec, H))
        axis0 = g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64))

        def onnx_layout(w):
            return g.op("Unsqueeze", g.op("Gather", w, rows, axis_i=0), axis0)

        if b_ih is None:
            bias = g.op("prim::Constant")
            bias.setType(torch._C.OptionalType.ofTensor())
        else:
            bias = g.op("Unsqueeze", g.op("Concat", g.op("Gather", b_ih, rows, axis_i=0),
                                          g.op("Gather", b_hh, rows, axis_i=0), axis_i=0), axis0)
        lengths = g.op("prim::Constant")  # no sequence_lens: every sequence has T steps
        lengths.setType(torch._C.OptionalType.ofTensor())
        inputs = [x, onnx_layout(w_ih), onnx_layout(w_hh), bias, lengths, g.op("Unsqueeze", h0, axis0)]
        if spec.kind == "lstm":
            inputs.append(g.op("Unsqueeze", c0, axis0))
        suffix = {int: "_i", str: "_s", float: "_f"}
        kwargs = {}
        for key, value in attrs.items():
            kind = type(value[0]) if isinstance(value, list) else type(value)
            kwargs[key + suffix[kind]] = value
        return g.op(_OP[spec.kind], *inputs, outputs=3 if spec.kind == "lstm" else 2, **kwargs)
