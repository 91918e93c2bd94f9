"""keras.layers.Bidirectional for rnn.keras recurrent layers.

    bi = Bidirectional(LSTM(32, return_sequences=True), merge_mode="concat",
                       backward_layer=GRU(32, return_sequences=True, go_backwards=True))
    y = bi(x, mask=None, initial_state=None, training=None)

Like Keras 3: the forward layer is a fresh layer built from `layer`'s configuration (its weights are
not reused); without `backward_layer` the backward layer is the same configuration with the
opposite go_backwards and fresh weights; a given `backward_layer` is used as is and must have the
opposite go_backwards and the same return_sequences / return_state / stateful. Both layers get
zero_output_for_mask = return_sequences (masked steps output zeros in sequences). The backward
output sequence is flipped back to input order only when return_sequences=True.

merge_mode: "concat" (default, last axis), "sum", "mul", "ave", or None (returns [fwd, bwd]).
With return_state: [output(s)..., *forward_states, *backward_states].
initial_state: one flat list, the forward layer's states first, then the backward layer's (Keras
splits it in half; with two layers of one kind that is the same split, and it also works for an
LSTM forward with a GRU backward).
Keras weights (get/set_keras_weights): the forward layer's arrays, then the backward layer's.
Where the two layers are one cell each of the same kind, size, dropout rates and backend (the
default backward layer always is), and not stateful, both directions run as ONE recurrence call
(rnn.functional.bidirectional_layer: one launch on the Triton and CuPy backends), with the same results.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .layers import RNN

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


class Bidirectional(nn.Module):
    def __init__(self, layer, merge_mode="concat", backward_layer=None, *, name=None):
        super().__init__()
        if not isinstance(layer, RNN):
            raise ValueError(f"layer must be an rnn.keras recurrent layer (LSTM, GRU, SimpleRNN, RNN), "
                             f"got {type(layer).__name__}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got merge_mode={merge_mode!r}")
        if backward_layer is not None and not isinstance(backward_layer, RNN):
            raise ValueError(f"backward_layer must be an rnn.keras recurrent layer, got "
                             f"{type(backward_layer).__name__}")
        self.forward_layer = type(layer).from_config(layer.get_config())
        if backward_layer is None:
            cfg = layer.get_config()
            cfg["go_backwards"] = not layer.go_backwards
            backward_layer = type(layer).from_config(cfg)
        else:
            for attr in ("return_sequences", "return_state", "stateful"):
                if getattr(backward_layer, attr) != getattr(layer, attr):
                    raise ValueError(
                        f"backward_layer.{attr}={getattr(backward_layer, attr)} must match the forward "
                        f"layer's {attr}={getattr(layer, attr)}")
            if backward_layer.go_backwards == layer.go_backwards:
                raise ValueError(
                    f"backward_layer.go_backwards={backward_layer.go_backwards} must be the opposite of "
                    f"the forward layer's go_backwards={layer.go_backwards}")
        if merge_mode in ("sum", "mul", "ave"):
            sizes = [self._units(sub) for sub in (layer, backward_layer)]
            if sizes[0] != sizes[1]:
                raise ValueError(
                    f"merge_mode={merge_mode!r} adds or multiplies the two directions elementwise, so "
                    f"both need the same number of units: the forward layer has {sizes[0]}, "
                    f"backward_layer has {sizes[1]} (use merge_mode='concat' or None, or equal units)")
        self.backward_layer = backward_layer
        self.merge_mode = merge_mode
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.stateful = layer.stateful
        self.name = name
        for sub in (self.forward_layer, self.backward_layer):
            sub.zero_output_for_mask = self.return_sequences

    @staticmethod
    def _units(layer):
        cell = layer.cell
        return cell.output_size if hasattr(cell, "cells") else cell.units

    def _n_states(self, layer):
        return sum(c.n_states for c in layer._cells())

    def forward(self, inputs, mask=None, initial_state=None, training=None):
        fwd_state = bwd_state = None
        if initial_state is not None:
            if isinstance(initial_state, (torch.Tensor, np.ndarray)):
                initial_state = [initial_state]
            initial_state = list(initial_state)
            nf, nb = self._n_states(self.forward_layer), self._n_states(self.backward_layer)
            if self.forward_layer.stacked or self.backward_layer.stacked:
                nf = nb = len(initial_state) // 2  # nested per-cell states: split in half (Keras)
            if len(initial_state) != nf + nb:
                raise ValueError(f"initial_state must be a flat list of {nf} forward + {nb} backward "
                                 f"states, got {len(initial_state)}")
            fwd_state, bwd_state = initial_state[:nf], initial_state[nf:]
        if self._one_call():
            y, y_rev = self._both(inputs, mask, fwd_state, bwd_state, training)
        else:
            y = self.forward_layer(inputs, mask=mask, initial_state=fwd_state, training=training)
            y_rev = self.backward_layer(inputs, mask=mask, initial_state=bwd_state, training=training)
        states = []
        if self.return_state:
            states = list(y[1:]) + list(y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:
            y_rev = y_rev.flip(1)
        if self.merge_mode == "concat":
            out = [torch.cat([y, y_rev], dim=-1)]
        elif self.merge_mode == "sum":
            out = [y + y_rev]
        elif self.merge_mode == "mul":
            out = [y * y_rev]
        elif self.merge_mode == "ave":
            out = [(y + y_rev) / 2]
        else:
            out = [y, y_rev]
        if self.return_state or self.merge_mode is None:
            return out + states
        return out[0]

    def _one_call(self):
        """Whether both directions can run as one recurrence call (rnn.functional.bidirectional_layer:
        one launch on the Triton and CuPy backends): one cell each, of the same kind, size, dropout rates and
        backend, the forward layer reading forward in time, and not stateful."""
        f, b = self.forward_layer, self.backward_layer
        if f.stacked or b.stacked or f.stateful or f.go_backwards or not b.go_backwards:
            return False
        cf, cb = f._cells()[0], b._cells()[0]
        return (cf.spec == cb.spec and cf.units == cb.units and cf.use_bias == cb.use_bias
                and cf.dropout == cb.dropout and cf.recurrent_dropout == cb.recurrent_dropout
                and cf.backend == cb.backend and cf.kernel.dtype == cb.kernel.dtype)

    def _both(self, inputs, mask, fwd_state, bwd_state, training):
        """What the two layers return, from one bidirectional_layer call (see _one_call)."""
        from .. import functional as F

        f, b = self.forward_layer, self.backward_layer
        x, mask, (start_f,), training = f._prepare(inputs, mask, fwd_state, training)
        _, _, (start_b,), _ = b._prepare(inputs, mask, bwd_state, training)
        cf, cb = f._cells()[0], b._cells()[0]
        B = x.shape[0]
        drops = [c.draw_dropout_masks(B, x.dtype, x.device) if training else (None, None) for c in (cf, cb)]
        in_mask, rec_mask = (None if m[0] is None else torch.stack(m) for m in zip(*drops))
        h0, c0 = (None if s[0] is None and s[1] is None else
                  torch.stack([torch.zeros(B, cf.units, dtype=x.dtype, device=x.device) if t is None else t for t in s])
                  for s in zip(start_f, start_b))
        seq, hT, cT = F.bidirectional_layer(
            x.transpose(0, 1), [cf.torch_weights(), cb.torch_weights()], h0, c0, spec=cf.spec,
            mask=None if mask is None else mask.transpose(0, 1), in_mask=in_mask, rec_mask=rec_mask,
            backend=cf.backend)
        seq = seq.transpose(0, 1)
        H = cf.units
        finals = [[hT[d], cT[d]] if cf.n_states > 1 else [hT[d]] for d in (0, 1)]
        return f._finish(seq[..., :H], [finals[0]], mask), b._finish(seq[..., H:], [finals[1]], mask)

    # -- weights and states -------------------------------------------------------------------
    @property
    def built(self):
        return self.forward_layer.built and self.backward_layer.built

    def build(self, input_dim):
        self.forward_layer.build(input_dim)
        self.backward_layer.build(input_dim)

    def count_params(self):
        return self.forward_layer.count_params() + self.backward_layer.count_params()

    def get_keras_weights(self):
        return self.forward_layer.get_keras_weights() + self.backward_layer.get_keras_weights()

    def set_keras_weights(self, arrays):
        """Keras's Bidirectional.get_weights() arrays: the forward layer's, then the backward layer's."""
        arrays = list(arrays)
        n_f = sum(3 if c.use_bias else 2 for c in self.forward_layer._cells())
        n_b = sum(3 if c.use_bias else 2 for c in self.backward_layer._cells())
        if len(arrays) != n_f + n_b:
            raise ValueError(f"Bidirectional expects {n_f} forward + {n_b} backward weight arrays, "
                             f"got {len(arrays)}")
        self.forward_layer.set_keras_weights(arrays[:n_f])
        self.backward_layer.set_keras_weights(arrays[n_f:])

    def reset_state(self):
        self.forward_layer.reset_state()
        self.backward_layer.reset_state()

    reset_states = reset_state

    def extra_repr(self):
        return f"merge_mode={self.merge_mode!r}"
