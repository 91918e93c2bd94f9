"""Keras-semantics recurrent layers: RNN (over one cell or a stack of cells), LSTM, GRU, SimpleRNN.

    layer = rnn.keras.LSTM(32, return_sequences=True)        # a torch.nn.Module
    y = layer(x, mask=None, initial_state=None, training=None)

x is batch-first (B, T, F), a tensor or a NumPy array; F comes from the first call or from
`input_dim=` / `input_shape=(T, F)` given up front. `training=None` follows `module.training`
(dropout is active in train mode only). Outputs are what Keras returns: the output tensor, or with
`return_state=True` the list [output, h, c] (LSTM) / [output, h] (GRU, SimpleRNN).

Semantics (Keras 3.15, checked against Keras in tests/test_keras.py):
  * go_backwards=True processes x from the end and returns outputs in processing order
    (out[:, t] follows x[:, T-1-t]); the final state is the one after x[:, 0].
  * mask (B, T) bool, True = valid: a masked step keeps every state and emits the previous output
    (zeros before the first valid step), or zeros with zero_output_for_mask=True (what
    Bidirectional sets when return_sequences=True). With go_backwards the mask follows the inputs.
  * stateful=True keeps the final states (detached) as the next call's initial states; the batch
    size is fixed by the first call; reset_state() zeroes the states.
  * unroll / use_cudnn are accepted for signature compatibility and ignored: every call runs one
    fused recurrence per cell (rnn.functional.recurrence) on the chosen backend=.
Inputs of another floating dtype are cast to the parameters' dtype (as Keras casts to its compute
dtype). Masks are passed explicitly: there is no implicit mask propagation from an Embedding layer.
Versions: Keras 3 "hard_sigmoid" is clip(x/6 + 0.5, 0, 1) (tf.keras 2.x used 0.2x + 0.5);
tf.keras 2.x named reset_state() reset_states() (both exist here); Keras on JAX starts masked
outputs from h0 rather than zeros, here they start from zeros as on Keras's torch/TF backends.
Regularizers and constraints are not supported.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..cells import check_bool
from .cells import GRUCell, LSTMCell, SimpleRNNCell, _KerasCell, as_input, as_state


def _as_mask(mask, batch, steps, device):
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(np.asarray(mask), device=device)
    if tuple(mask.shape) != (batch, steps):
        raise ValueError(f"mask must have shape (batch, timesteps) = {(batch, steps)} like the input, "
                         f"got {tuple(mask.shape)}")
    return mask.to(device) if mask.dtype == torch.bool else (mask.to(device) != 0)


class StackedRNNCells(nn.Module):
    """keras.layers.StackedRNNCells: cells applied one after the other at every step."""

    def __init__(self, cells):
        super().__init__()
        cells = list(cells)
        if not cells or not all(isinstance(c, _KerasCell) for c in cells):
            raise ValueError("StackedRNNCells needs a non-empty list of rnn.keras cells, got "
                             f"{[type(c).__name__ for c in cells]}")
        self.cells = nn.ModuleList(cells)

    @property
    def state_size(self):
        return [c.state_size for c in self.cells]

    @property
    def output_size(self):
        return self.cells[-1].units


class RNN(nn.Module):
    """keras.layers.RNN over an rnn.keras cell or a list of them (stacked).

    Each cell runs as one fused recurrence over the whole sequence (a stack of cells is exactly a
    stack of layers: step t of cell k only needs step t of cell k-1). With stacked cells the states
    (initial_state, return_state, stateful) are nested per cell, as in Keras.
    """

    def __init__(self, cell, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, zero_output_for_mask=False, *, input_shape=None, name=None):
        super().__init__()
        if isinstance(cell, (list, tuple)):
            cell = StackedRNNCells(cell)
        if not isinstance(cell, (_KerasCell, StackedRNNCells)):
            raise ValueError(f"cell must be an rnn.keras cell (LSTMCell, GRUCell, SimpleRNNCell) or a list "
                             f"of them, got {type(cell).__name__}")
        self.cell = cell
        self.return_sequences = check_bool("return_sequences", return_sequences)
        self.return_state = check_bool("return_state", return_state)
        self.go_backwards = check_bool("go_backwards", go_backwards)
        self.stateful = check_bool("stateful", stateful)
        self.unroll = check_bool("unroll", unroll)
        self.zero_output_for_mask = check_bool("zero_output_for_mask", zero_output_for_mask)
        self.name = name
        self.states = None  # stateful: list of detached final states (nested per cell if stacked)
        if input_shape is not None:
            self.build(int(tuple(input_shape)[-1]))

    # -- structure ---------------------------------------------------------------------------
    @property
    def stacked(self):
        return isinstance(self.cell, StackedRNNCells)

    def _cells(self):
        return list(self.cell.cells) if self.stacked else [self.cell]

    @property
    def state_size(self):
        return self.cell.state_size

    @property
    def built(self):
        return all(c.built for c in self._cells())

    def build(self, input_dim):
        """Create the parameters for `input_dim` input features."""
        for c in self._cells():
            c.build(input_dim)
            input_dim = c.units

    def count_params(self):
        return sum(c.count_params() for c in self._cells())

    def get_keras_weights(self):
        """Keras's get_weights(): every cell's [kernel, recurrent_kernel, (bias)] as NumPy arrays."""
        return [w for c in self._cells() for w in c.get_keras_weights()]

    def set_keras_weights(self, arrays):
        """Load Keras's get_weights() arrays, building the layer from their shapes if needed."""
        arrays = list(arrays)
        want = sum(3 if c.use_bias else 2 for c in self._cells())
        if len(arrays) != want:
            raise ValueError(f"{type(self).__name__} expects {want} weight arrays, got {len(arrays)}")
        for c in self._cells():
            n = 3 if c.use_bias else 2
            c.set_keras_weights(arrays[:n])
            arrays = arrays[n:]

    # -- states ------------------------------------------------------------------------------
    def reset_state(self):
        """Zero the states kept by a stateful layer."""
        if self.states is not None:
            self.states = _map_states(torch.zeros_like, self.states)

    reset_states = reset_state  # Keras's compatibility alias

    def get_initial_state(self, batch_size):
        states = [c.get_initial_state(batch_size) for c in self._cells()]
        states = [s if isinstance(s, list) else [s] for s in states]
        return states if self.stacked else states[0]

    def _initial_states(self, initial_state, batch, dtype, device):
        """Per cell: (h0, c0) tensors or None."""
        cells = self._cells()
        if initial_state is None and self.stateful and self.states is not None:
            initial_state = self.states
        if initial_state is None:
            return [(None, None)] * len(cells)
        if isinstance(initial_state, (torch.Tensor, np.ndarray)):
            initial_state = [initial_state]
        per_cell = list(initial_state) if self.stacked else [list(initial_state)]
        if len(per_cell) != len(cells):
            raise ValueError(f"initial_state must hold one entry per stacked cell ({len(cells)}), "
                             f"got {len(per_cell)}")
        out = []
        for k, (c, s) in enumerate(zip(cells, per_cell)):
            s = [s] if isinstance(s, (torch.Tensor, np.ndarray)) else list(s)
            if len(s) != c.n_states:
                raise ValueError(f"initial_state must be a list of {c.n_states} tensors (batch, units) for "
                                 f"{type(c).__name__}, got {len(s)}")
            s = [as_state(v, f"initial_state[{j}]", batch, c.units, dtype, device) for j, v in enumerate(s)]
            out.append((s[0], s[1] if c.n_states > 1 else None))
        return out

    # -- call --------------------------------------------------------------------------------
    def forward(self, inputs, mask=None, initial_state=None, training=None):
        from .. import functional as F

        x, mask, starts, training = self._prepare(inputs, mask, initial_state, training)
        B = x.shape[0]
        seq, finals = x, []
        for c, (h0, c0) in zip(self._cells(), starts):
            in_mask = rec_mask = None
            if training:
                in_mask, rec_mask = c.draw_dropout_masks(B, x.dtype, x.device)
            w_ih, w_hh, b_ih, b_hh = c.torch_weights()
            seq, hT, cT = F.recurrence(seq, w_ih, w_hh, b_ih, b_hh, h0, c0, spec=c.spec, mask=mask,
                                       in_mask=in_mask, rec_mask=rec_mask, reverse=self.go_backwards,
                                       backend=c.backend, batch_first=True)
            finals.append([hT, cT] if c.n_states > 1 else [hT])
        return self._finish(seq, finals, mask)

    def _prepare(self, inputs, mask, initial_state, training):
        """The checked call arguments: (x (B, T, I), mask (B, T) or None, per cell (h0, c0), training)."""
        cells = self._cells()
        first = cells[0]
        x = as_input(inputs, "inputs", 3, first.kernel.dtype, first.kernel.device)
        B, T, I = x.shape
        if not self.built:
            self.build(I)
        if I != first.input_dim:
            raise ValueError(f"inputs must have {first.input_dim} features (the layer's input_dim), "
                             f"got shape {tuple(x.shape)}")
        if mask is not None:
            mask = _as_mask(mask, B, T, x.device)
        if self.stateful and self.states is not None:
            expected = _first_tensor(self.states).shape[0]
            if expected != B:
                raise ValueError(f"a stateful layer keeps the batch size of its first call: expected "
                                 f"batch size {expected}, got inputs of shape {tuple(x.shape)}")
        starts = self._initial_states(initial_state, B, x.dtype, x.device)
        training = self.training if training is None else check_bool("training", training)
        return x, mask, starts, training

    def _finish(self, seq, finals, mask):
        """Keras's outputs from the last cell's sequence (B, T, H), aligned with the input, and every
        cell's final states."""
        from .. import functional as F

        # seq[:, t] is aligned with x[:, t]; Keras returns go_backwards outputs in processing order.
        out, step_mask = seq, mask
        if self.go_backwards:
            out = out.flip(1)
            step_mask = None if mask is None else mask.flip(1)
        if step_mask is not None:
            mode = "zeros" if self.zero_output_for_mask else "previous"
            out = F.mask_outputs(out, step_mask, mode, batch_first=True)
        output = out if self.return_sequences else out[:, -1]
        states = finals if self.stacked else finals[0]
        if self.stateful:
            self.states = _map_states(torch.Tensor.detach, states)
        if self.return_state:
            return [output, *states]
        return output

    # -- config ------------------------------------------------------------------------------
    def _layer_config(self):
        return dict(return_sequences=self.return_sequences, return_state=self.return_state,
                    go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
                    zero_output_for_mask=self.zero_output_for_mask, name=self.name)

    def get_config(self):
        """Constructor arguments; `type(layer).from_config(cfg)` makes a fresh, unbuilt copy."""
        cells = [(type(c), c.get_config()) for c in self._cells()]
        return {"cell": cells if self.stacked else cells[0], **self._layer_config()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if cls is RNN:
            spec = config.pop("cell")
            cell = [k(**cfg) for k, cfg in spec] if isinstance(spec, list) else spec[0](**spec[1])
            return cls(cell, **config)
        return cls(**config)

    def extra_repr(self):
        flags = [k for k in ("return_sequences", "return_state", "go_backwards", "stateful") if getattr(self, k)]
        return ", ".join(flags)


def _first_tensor(states):
    while isinstance(states, (list, tuple)):
        states = states[0]
    return states


def _map_states(fn, states):
    if isinstance(states, (list, tuple)):
        return [_map_states(fn, s) for s in states]
    return fn(states)


class _SingleCellLayer(RNN):
    """LSTM / GRU / SimpleRNN: an RNN over one cell built from the layer's arguments."""

    CELL = None

    def __init__(self, units, *, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, zero_output_for_mask=False, use_cudnn="auto",
                 input_shape=None, input_dim=None, name=None, **cell_args):
        if input_shape is not None and input_dim is None:
            input_dim = int(tuple(input_shape)[-1])
        cell = self.CELL(units, input_dim=input_dim, **cell_args)
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll,
                         zero_output_for_mask=zero_output_for_mask, name=name)
        self.use_cudnn = use_cudnn

    def get_config(self):
        cfg = self.cell.get_config()
        return {**cfg, **self._layer_config(), "use_cudnn": self.use_cudnn}

    # Keras exposes the cell's attributes on the layer.
    units = property(lambda self: self.cell.units)
    activation = property(lambda self: self.cell.activation)
    use_bias = property(lambda self: self.cell.use_bias)
    dropout = property(lambda self: self.cell.dropout)
    recurrent_dropout = property(lambda self: self.cell.recurrent_dropout)
    backend = property(lambda self: self.cell.backend)
    kernel = property(lambda self: self.cell.kernel)
    recurrent_kernel = property(lambda self: self.cell.recurrent_kernel)
    bias = property(lambda self: self.cell.bias)


class LSTM(_SingleCellLayer):
    """keras.layers.LSTM(units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
    kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
    unit_forget_bias=True, dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False,
    return_state=False, go_backwards=False, stateful=False, unroll=False, use_cudnn="auto")
    plus the torch additions input_dim= / input_shape=, backend="auto", dtype=, device=.
    Regularizers and constraints are not supported."""

    CELL = LSTMCell

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, dropout=0.0, recurrent_dropout=0.0,
                 seed=None, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                         unit_forget_bias=unit_forget_bias, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, seed=seed, **kwargs)

    recurrent_activation = property(lambda self: self.cell.recurrent_activation)
    unit_forget_bias = property(lambda self: self.cell.unit_forget_bias)


class GRU(_SingleCellLayer):
    """keras.layers.GRU(units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
    kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
    dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
    go_backwards=False, stateful=False, unroll=False, reset_after=True, use_cudnn="auto")
    plus input_dim= / input_shape=, backend=, dtype=, device=."""

    CELL = GRUCell

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, seed=None,
                 reset_after=True, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                         dropout=dropout, recurrent_dropout=recurrent_dropout, seed=seed,
                         reset_after=reset_after, **kwargs)

    recurrent_activation = property(lambda self: self.cell.recurrent_activation)
    reset_after = property(lambda self: self.cell.reset_after)


class SimpleRNN(_SingleCellLayer):
    """keras.layers.SimpleRNN(units, activation="tanh", use_bias=True, kernel_initializer=
    "glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros", dropout=0.0,
    recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
    go_backwards=False, stateful=False, unroll=False) plus input_dim= / input_shape=, backend=,
    dtype=, device=."""

    CELL = SimpleRNNCell

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", dropout=0.0,
                 recurrent_dropout=0.0, seed=None, **kwargs):
        super().__init__(units, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, seed=seed, **kwargs)
