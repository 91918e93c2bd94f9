"""Keras-semantics recurrent cells: LSTMCell, GRUCell, SimpleRNNCell (torch.nn.Modules).

A cell owns the Keras parameters, with Keras names and shapes (u = units, I = input features):

    cell           kernel (I, G*u)   recurrent_kernel (u, G*u)   bias              Keras gate blocks
    LSTMCell       (I, 4u)           (u, 4u)                     (4u,)             i, f, c, o
    GRUCell        (I, 3u)           (u, 3u)                     (2, 3u) | (3u,)   z, r, h
    SimpleRNNCell  (I, u)            (u, u)                      (u,)              -

and converts them on every call (differentiably) to the torch.nn layout of the recurrence contract
(rnn.cells): w_ih = kernel^T, w_hh = recurrent_kernel^T, GRU blocks permuted z,r,h -> r,z,n, GRU
reset_after=True bias rows -> (b_ih, b_hh), every other bias -> b_ih. All math runs in
rnn.functional.recurrence; a cell call is a T=1 recurrence.

The input size comes from the first call (parameters start as torch.nn.UninitializedParameter and
keep their identity when materialized, so an optimizer made before the first call still works),
from `input_dim=`, from `build(input_dim)` or from `set_keras_weights(arrays)`.

Dropout (training only): masks are drawn per sample and feature, scaled by 1/(1-rate), and reused
at every time step. recurrent_dropout == 0: one input mask (B, I) shared by all gates; otherwise
one input mask per gate (G, B, I) and one recurrent mask per gate (G, B, u). A layer draws fresh
masks on every call. A cell called on its own caches its masks like Keras does, so a hand-written
loop over time reuses them; call `reset_dropout_mask()` / `reset_recurrent_dropout_mask()` before
each new batch (a batch of another size draws new masks by itself).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from .. import backends as _backends
from .. import cells as _cells
from ..cells import check_bool
from . import initializers as _init


# ----------------------------------------------------------------------------- helpers
def check_units(units):
    if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units <= 0:
        raise ValueError(f"units must be a positive integer, got units={units!r}")
    return int(units)


def check_rate(name, rate):
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {name}={rate!r}")
    return float(rate)


def check_backend(backend):
    if backend is None:
        return "auto"
    if not isinstance(backend, str) or backend.lower() not in _backends.NAMES:
        raise ValueError(f"backend must be one of {_backends.NAMES}, got backend={backend!r}")
    return backend.lower()


def resolve_dtype(dtype):
    if dtype is None:
        return torch.get_default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be a torch dtype or its name (e.g. 'float32'), got dtype={dtype!r}")


def as_input(x, name, rank, dtype, device):
    """A floating tensor of the parameters' dtype; NumPy / lists go to the parameters' device."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x), device=device)
    if x.dim() != rank:
        want = "(batch, timesteps, features)" if rank == 3 else "(batch, features)"
        raise ValueError(f"{name} must be {rank}-D {want}, got shape {tuple(x.shape)}")
    return x.to(dtype)


def as_state(s, name, batch, units, dtype, device):
    if not isinstance(s, torch.Tensor):
        s = torch.as_tensor(np.asarray(s), device=device)
    if tuple(s.shape) != (batch, units):
        raise ValueError(f"{name} must have shape (batch, units) = {(batch, units)}, got {tuple(s.shape)}")
    return s.to(device=device, dtype=dtype)


def _to_array(a):
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):  # Keras / TF variables
        a = a.numpy()
    return np.asarray(a)


# ----------------------------------------------------------------------------- base cell
def keras_gru_to_torch_order(t):
    """Keras GRU gate blocks z, r, h (last axis) -> torch's r, z, n."""
    z, r, h = t.chunk(3, dim=-1)
    return torch.cat([r, z, h], dim=-1)


def keras_to_torch_weights(kind, kernel, recurrent_kernel, bias):
    """Keras kernel (I, G*u), recurrent_kernel (u, G*u) and bias ((G*u,), or (2, G*u) for GRU
    reset_after=True: input row, recurrent row) -> (w_ih, w_hh, b_ih, b_hh) in the torch.nn layout
    of rnn.cells. Plain differentiable ops, so gradients reach the Keras-layout tensors."""
    fix = keras_gru_to_torch_order if kind == "gru" else (lambda t: t)
    w_ih, w_hh = fix(kernel).t(), fix(recurrent_kernel).t()
    if bias is None:
        return w_ih, w_hh, None, None
    if bias.dim() == 2:
        return w_ih, w_hh, fix(bias[0]), fix(bias[1])
    return w_ih, w_hh, fix(bias), None


class _KerasCell(nn.Module):
    """Shared parameter handling of the three Keras cells; subclasses set KIND and the shapes."""

    KIND = None  # "lstm" | "gru" | "rnn"

    def __init__(self, units, *, activation, recurrent_activation, use_bias, kernel_initializer,
                 recurrent_initializer, bias_initializer, dropout, recurrent_dropout, seed,
                 input_dim, backend, dtype, device, reset_after=True):
        super().__init__()
        self.units = check_units(units)
        self.spec = _cells.CellSpec(self.KIND, activation, recurrent_activation, reset_after)
        self.activation = self.spec.activation
        self.recurrent_activation = self.spec.recurrent_activation
        self.use_bias = check_bool("use_bias", use_bias)
        self.kernel_initializer = _init.get(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = _init.get(recurrent_initializer, "recurrent_initializer")
        self.bias_initializer = _init.get(bias_initializer, "bias_initializer")
        self.dropout = check_rate("dropout", dropout)
        self.recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"seed must be an int or None, got seed={seed!r}")
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.backend = check_backend(backend)
        factory = {"dtype": resolve_dtype(dtype), "device": device}
        self.kernel = nn.UninitializedParameter(**factory)
        self.recurrent_kernel = nn.UninitializedParameter(**factory)
        if self.use_bias:
            self.bias = nn.UninitializedParameter(**factory)
        else:
            self.register_parameter("bias", None)
        self._cached_masks = None
        self._register_load_state_dict_pre_hook(self._build_from_state_dict)
        if input_dim is not None:
            self.build(input_dim)

    # -- shapes and building -------------------------------------------------------------
    @property
    def n_gates(self):
        return self.spec.n_gates

    @property
    def state_size(self):
        """Keras's state_size: [units, units] for LSTM, units otherwise."""
        return [self.units, self.units] if self.KIND == "lstm" else self.units

    @property
    def output_size(self):
        return self.units

    @property
    def n_states(self):
        return self.spec.n_states

    @property
    def built(self):
        return not isinstance(self.kernel, nn.parameter.UninitializedParameter)

    @property
    def input_dim(self):
        return self.kernel.shape[0] if self.built else None

    def _bias_shape(self):
        return (self.n_gates * self.units,)

    def keras_shapes(self, input_dim):
        """Keras's get_weights() shapes for this input size."""
        G, u = self.n_gates, self.units
        shapes = [(input_dim, G * u), (u, G * u)]
        if self.use_bias:
            shapes.append(self._bias_shape())
        return shapes

    def _initial_bias(self):
        return self.bias_initializer(self._bias_shape())

    def build(self, input_dim):
        """Create and initialize the parameters for `input_dim` input features (once)."""
        if isinstance(input_dim, bool) or not isinstance(input_dim, numbers.Integral) or input_dim <= 0:
            raise ValueError(f"input_dim must be a positive integer, got input_dim={input_dim!r}")
        if self.built:
            if self.input_dim != input_dim:
                raise ValueError(f"{type(self).__name__} was built for {self.input_dim} input features, "
                                 f"got input_dim={input_dim}")
            return
        shapes = self.keras_shapes(int(input_dim))
        inits = [self.kernel_initializer, self.recurrent_initializer]
        with torch.no_grad():
            for param, shape, init in zip((self.kernel, self.recurrent_kernel), shapes, inits):
                param.materialize(shape)
                param.copy_(init(shape))
            if self.use_bias:
                self.bias.materialize(shapes[2])
                self.bias.copy_(self._initial_bias())

    def _build_from_state_dict(self, state_dict, prefix, *args):
        key = prefix + "kernel"
        if not self.built and key in state_dict:
            self.build(int(state_dict[key].shape[0]))

    def _check_built(self, what):
        if not self.built:
            raise RuntimeError(f"{type(self).__name__} is not built yet: call it once, pass input_dim=, "
                               f"or call build() / set_keras_weights() before {what}")

    # -- Keras weights -------------------------------------------------------------------
    def keras_parameters(self):
        return [p for p in (self.kernel, self.recurrent_kernel, self.bias) if p is not None]

    def get_keras_weights(self):
        """Keras's get_weights(): [kernel, recurrent_kernel, (bias)] as NumPy arrays."""
        self._check_built("get_keras_weights()")
        return [p.detach().cpu().numpy().copy() for p in self.keras_parameters()]

    def set_keras_weights(self, arrays):
        """Load Keras's get_weights() arrays (building the cell from their shapes if needed)."""
        arrays = [_to_array(a) for a in arrays]
        want = 3 if self.use_bias else 2
        if len(arrays) != want:
            raise ValueError(f"{type(self).__name__} (use_bias={self.use_bias}) expects {want} weight arrays "
                             f"(kernel, recurrent_kernel{', bias' if self.use_bias else ''}), got {len(arrays)}")
        if arrays[0].ndim != 2:
            raise ValueError(f"kernel must be 2-D (input_dim, {self.n_gates}*units), got shape {arrays[0].shape}")
        input_dim = self.input_dim if self.built else int(arrays[0].shape[0])
        names = ("kernel", "recurrent_kernel", "bias")
        for name, arr, shape in zip(names, arrays, self.keras_shapes(input_dim)):
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(arr.shape)}")
        self.build(input_dim)
        with torch.no_grad():
            for param, arr in zip(self.keras_parameters(), arrays):
                param.copy_(torch.as_tensor(arr, dtype=param.dtype))

    def count_params(self):
        self._check_built("count_params()")
        return sum(p.numel() for p in self.keras_parameters())

    # -- torch layout ----------------------------------------------------------------------
    def torch_weights(self):
        """(w_ih, w_hh, b_ih, b_hh) in the torch.nn layout of rnn.cells, differentiable."""
        self._check_built("torch_weights()")
        return keras_to_torch_weights(self.KIND, self.kernel, self.recurrent_kernel, self.bias)

    # -- dropout ---------------------------------------------------------------------------
    def _keep_mask(self, shape, rate, dtype, device):
        if self._generator is not None:
            if torch.compiler.is_compiling():  # Dynamo cannot trace a torch.Generator
                raise NotImplementedError(
                    f"{type(self).__name__}(seed={self.seed!r}) draws its dropout masks from its own "
                    "torch.Generator, which torch.compile cannot trace: drop seed= (use "
                    "torch.manual_seed instead) or compile without fullgraph=True")
            u = torch.rand(shape, generator=self._generator).to(device)
        else:
            u = torch.rand(shape, device=device)
        return (u >= rate).to(dtype) / (1.0 - rate)

    def draw_dropout_masks(self, batch, dtype, device):
        """Fresh (in_mask, rec_mask) for one call in training mode (None where the rate is 0)."""
        G, I, u = self.n_gates, self.input_dim, self.units
        per_gate = self.recurrent_dropout > 0 and G > 1
        in_mask = rec_mask = None
        if self.dropout > 0:
            shape = (G, batch, I) if per_gate else (batch, I)
            in_mask = self._keep_mask(shape, self.dropout, dtype, device)
        if self.recurrent_dropout > 0:
            rec_mask = self._keep_mask((G, batch, u), self.recurrent_dropout, dtype, device)
        return in_mask, rec_mask

    def reset_dropout_mask(self):
        """Forget the cached masks of stand-alone cell calls (Keras's name)."""
        self._cached_masks = None

    reset_recurrent_dropout_mask = reset_dropout_mask

    # -- calls -----------------------------------------------------------------------------
    def get_initial_state(self, batch_size):
        dtype, device = self.kernel.dtype, self.kernel.device
        zeros = [torch.zeros(batch_size, self.units, dtype=dtype, device=device) for _ in range(self.n_states)]
        return zeros if self.n_states > 1 else zeros[0]

    def forward(self, inputs, states=None, training=None):
        """One step: `output, new_states = cell(x_t, states)` with x_t (B, I) and states a list
        ([h, c] for LSTM, [h] otherwise; a bare tensor h is accepted for GRU / SimpleRNN and then
        a bare tensor comes back, as in Keras)."""
        x = as_input(inputs, "inputs", 2, self.kernel.dtype, self.kernel.device)
        if not self.built:
            self.build(x.shape[1])
        if x.shape[1] != self.input_dim:
            raise ValueError(f"inputs must have {self.input_dim} features (the cell's input_dim), "
                             f"got shape {tuple(x.shape)}")
        B = x.shape[0]
        bare = isinstance(states, (torch.Tensor, np.ndarray))
        if states is None:
            states = []
        elif bare:
            states = [states]
        states = list(states)
        if states and len(states) != self.n_states:
            raise ValueError(f"states must be a list of {self.n_states} tensors (batch, units) for "
                             f"{type(self).__name__}, got {len(states)}")
        states = [as_state(s, f"states[{k}]", B, self.units, x.dtype, x.device) for k, s in enumerate(states)]
        h0 = states[0] if states else None
        c0 = states[1] if states and self.n_states > 1 else None
        training = self.training if training is None else check_bool("training", training)
        in_mask = rec_mask = None
        if training and (self.dropout > 0 or self.recurrent_dropout > 0):
            cached = self._cached_masks
            if cached is None or cached[0] != (B, x.dtype, x.device):
                self._cached_masks = ((B, x.dtype, x.device), self.draw_dropout_masks(B, x.dtype, x.device))
            in_mask, rec_mask = self._cached_masks[1]
        from .. import functional as F

        w_ih, w_hh, b_ih, b_hh = self.torch_weights()
        out, hT, cT = F.recurrence(x.unsqueeze(0), w_ih, w_hh, b_ih, b_hh, h0, c0, spec=self.spec,
                                   in_mask=in_mask, rec_mask=rec_mask, backend=self.backend)
        h = out[0]
        if self.n_states > 1:
            return h, [h, cT]
        return h, (h if bare else [h])

    # -- config ----------------------------------------------------------------------------
    def get_config(self):
        """Constructor arguments: `type(cell)(**cell.get_config())` is a fresh, unbuilt copy."""
        cfg = dict(units=self.units, activation=self.activation, use_bias=self.use_bias,
                   kernel_initializer=self.kernel_initializer, recurrent_initializer=self.recurrent_initializer,
                   bias_initializer=self.bias_initializer, dropout=self.dropout,
                   recurrent_dropout=self.recurrent_dropout, seed=self.seed, backend=self.backend,
                   dtype=self.kernel.dtype, device=self.kernel.device)
        if self.KIND != "rnn":
            cfg["recurrent_activation"] = self.recurrent_activation
        return cfg

    def extra_repr(self):
        shape = f"input_dim={self.input_dim}, " if self.built else "unbuilt, "
        return f"{shape}units={self.units}, activation={self.activation!r}, backend={self.backend!r}"


class LSTMCell(_KerasCell):
    """keras.layers.LSTMCell: c' = sig(f) c + sig(i) act(g), h' = sig(o) act(c').

    `unit_forget_bias=True` *sets* the forget block of the bias to ones (the other blocks come from
    `bias_initializer`). `backend=` picks the recurrence backend (rnn.backends); `input_dim=`,
    `dtype=`, `device=` are torch additions.
    """

    KIND = "lstm"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, dropout=0.0, recurrent_dropout=0.0,
                 seed=None, *, input_dim=None, backend="auto", dtype=None, device=None):
        self.unit_forget_bias = check_bool("unit_forget_bias", unit_forget_bias)
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                         dropout=dropout, recurrent_dropout=recurrent_dropout, seed=seed,
                         input_dim=input_dim, backend=backend, dtype=dtype, device=device)

    def _initial_bias(self):
        if not self.unit_forget_bias:
            return super()._initial_bias()
        u = self.units  # Keras calls the initializer per block: (u,) for i, (2u,) for c and o
        return torch.cat([self.bias_initializer((u,)), torch.ones(u), self.bias_initializer((2 * u,))])

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


class GRUCell(_KerasCell):
    """keras.layers.GRUCell: h' = z h + (1 - z) hh.

    reset_after=True (default): hh = act(x W_h + b0_h + r (h U_h + b1_h)), bias (2, 3u).
    reset_after=False: hh = act(x W_h + b_h + (r h) U_h), bias (3u,).
    """

    KIND = "gru"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, reset_after=True,
                 seed=None, *, input_dim=None, backend="auto", dtype=None, device=None):
        self.reset_after = check_bool("reset_after", reset_after)
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                         dropout=dropout, recurrent_dropout=recurrent_dropout, seed=seed,
                         input_dim=input_dim, backend=backend, dtype=dtype, device=device,
                         reset_after=self.reset_after)

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


class SimpleRNNCell(_KerasCell):
    """keras.layers.SimpleRNNCell: h' = act(x W + b + h U)."""

    KIND = "rnn"

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", dropout=0.0,
                 recurrent_dropout=0.0, seed=None, *, input_dim=None, backend="auto", dtype=None,
                 device=None):
        super().__init__(units, activation=activation, recurrent_activation="sigmoid", use_bias=use_bias,
                         kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, seed=seed, input_dim=input_dim,
                         backend=backend, dtype=dtype, device=device)
