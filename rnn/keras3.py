"""Keras 3's own recurrent layers (torch backend), accelerated through rnn.functional.

    import rnn.keras3
    rnn.keras3.install()            # from now on keras.layers.LSTM / GRU / SimpleRNN run fused
    model.fit(...); model.predict(...)
    rnn.keras3.fused_layers(model)  # names of the model's recurrent layers that run fused
    rnn.keras3.uninstall()          # Keras exactly as it was

`install(backend="auto")` replaces the time loop of Keras's `RNN.inner_loop` (and the LSTM / GRU
overrides of it) with one `rnn.functional.recurrence` call per layer and direction, on the named
backend (rnn.backends: "auto", "torch", "triton", "cupy"). Everything around the loop stays
Keras's: `RNN.call` still draws the dropout masks, handles `initial_state` and `stateful`
(assigning the final states to its state variables), casts, and `Bidirectional` still splits the
states and merges the two directions. A `Bidirectional` whose two layers have the same cell (kind,
activations, GRU form, units) and are not stateful runs both directions as ONE call
(`rnn.functional.bidirectional_layer`) where the backend runs that as one launch (Triton, CuPy):
the forward layer's loop computes both, the backward layer's loop takes its half after checking
that it got the inputs that were assumed (else it runs alone). On a CPU each direction stays its
own call (it may run torch's native op there). The weights stay Keras variables (saving, loading,
`summary()` and parameter counts are untouched); on the torch backend `variable.value` is the
torch Parameter itself, so gradients land on it and `fit` / the optimizer see them.

Runs fused: keras.layers.LSTM, GRU (reset_after True and False), SimpleRNN, keras.layers.RNN
over an LSTMCell / GRUCell / SimpleRNNCell or a list of them (StackedRNNCells: one recurrence per
cell), subclasses of these layers, and Bidirectional around any of them; masks (an
Embedding(mask_zero=True) in front), go_backwards, return_sequences, return_state, stateful,
initial states, use_bias=False, activation / recurrent_activation in rnn.cells.ACTIVATIONS
(tanh, relu, sigmoid, hard_sigmoid, linear/None; the keras.activations, keras.ops and torch
functions of those names), dropout and recurrent_dropout in training with the
masks Keras itself drew (`cell.get_dropout_mask` / `get_recurrent_dropout_mask`: one input mask,
or one per gate when the cell uses `implementation=1`, which Keras forces whenever
recurrent_dropout > 0; one recurrent mask per gate), so an accelerated model computes what Keras
computes given the same seed. `unroll=True` is only a speed hint in Keras and runs fused too (so
does unroll + mask + go_backwards, which Keras's torch backend cannot run). `use_cudnn` is
ignored: the fused path replaces cuDNN as well. Inside Bidirectional, Keras's own fused cuDNN
attempt is skipped when both directions run fused here.

Falls back to Keras's own loop, with one FallbackWarning per (layer class, reason) and a count in
`stats["fallback"]`: any other cell (custom cells, ConvLSTM, a stack holding one), any other
activation, a dropout rate of 1. `explain(model)` gives the reason per layer. Shape inference
(symbolic calls while a functional model is built) always runs Keras's own code.

`stats` counts the layer calls (one per direction) that ran fused ("fused") or fell back
("fallback"), the fused recurrences per cell kind ("fused_lstm" / "fused_gru" / "fused_rnn"), and
the Bidirectional calls whose two directions ran as one call ("bidirectional_one_call");
`reset_stats()` zeroes it.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import sys
import threading
import warnings

import torch

from . import backends as _backends
from . import functional as F
from .cells import ACTIVATIONS, CellSpec
from .keras.cells import check_backend, keras_to_torch_weights


class FallbackWarning(UserWarning):
    """A Keras recurrent layer runs on Keras's own (slow) loop instead of the fused recurrence."""


stats = collections.Counter()

# (class, attribute name) -> the original function, while installed
_patches: dict = {}
_config = {"backend": "auto"}
_warned: set = set()
_reentry = threading.local()  # ids of layers currently inside Keras's own inner_loop
_pairing = threading.local()  # the Bidirectional call whose two directions run as one call


def reset_stats():
    stats.clear()


def installed() -> bool:
    return bool(_patches)


def backend() -> str:
    """The rnn.backends name the fused layers run on (meaningful while installed)."""
    return _config["backend"]


# ----------------------------------------------------------------------------- Keras access
def _keras():
    """Import Keras (choosing its torch backend when Keras is not imported yet) and check it."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"rnn.keras3 accelerates Keras's torch backend, but Keras runs on "
                           f"{keras.backend.backend()!r}: set KERAS_BACKEND=torch before importing keras")
    return keras


@functools.lru_cache(maxsize=None)
def _classes():
    from keras.src.layers.rnn.bidirectional import Bidirectional
    from keras.src.layers.rnn.gru import GRU, GRUCell
    from keras.src.layers.rnn.lstm import LSTM, LSTMCell
    from keras.src.layers.rnn.rnn import RNN
    from keras.src.layers.rnn.simple_rnn import SimpleRNNCell
    from keras.src.layers.rnn.stacked_rnn_cells import StackedRNNCells

    return {"RNN": RNN, "LSTM": LSTM, "GRU": GRU, "Bidirectional": Bidirectional, "StackedRNNCells": StackedRNNCells,
            "cells": ((LSTMCell, "lstm"), (GRUCell, "gru"), (SimpleRNNCell, "rnn"))}


@functools.lru_cache(maxsize=None)
def _activation_names():
    """Keras / keras.ops / torch activation functions -> rnn.cells.ACTIVATIONS names."""
    from keras.src import activations, ops

    table = {}
    for name in ACTIVATIONS:
        for module in (activations, ops, torch):
            fn = getattr(module, name, None)
            if fn is not None:
                table[fn] = name
    return table


# ----------------------------------------------------------------------------- the decision
def _cell_spec(cell):
    """(CellSpec, None) for a Keras cell the kernels can run, else (None, reason)."""
    kind = None
    for base, k in _classes()["cells"]:
        # A subclass that redefines the step or the weights is a custom cell.
        if isinstance(cell, base) and type(cell).call is base.call and type(cell).build is base.build:
            kind = k
    if kind is None:
        return None, (f"cell {type(cell).__name__} is not Keras's LSTMCell, GRUCell or SimpleRNNCell "
                      f"(custom cells run on Keras's loop)")
    names = _activation_names()
    acts = [("activation", cell.activation)]
    if kind != "rnn":
        acts.append(("recurrent_activation", cell.recurrent_activation))
    found = {}
    for arg, fn in acts:
        try:
            known = fn in names
        except TypeError:  # an unhashable callable object
            known = False
        if not known:
            label = getattr(fn, "__name__", repr(fn))
            return None, f"{arg} {label!r} is not one the kernels have ({', '.join(ACTIVATIONS)})"
        found[arg] = names[fn]
    for arg in ("dropout", "recurrent_dropout"):
        if not getattr(cell, arg) < 1.0:
            return None, f"{arg}={getattr(cell, arg)} (rate 1 drops everything)"
    return CellSpec(kind, found["activation"], found.get("recurrent_activation", "sigmoid"),
                    getattr(cell, "reset_after", True)), None


def plan(layer):
    """(tuple of CellSpec, one per cell, None) if a Keras RNN layer runs fused, else (None, reason).

    A StackedRNNCells of runnable cells runs as one recurrence per cell (step t of cell k only
    needs step t of cell k-1)."""
    cls = _classes()
    if not isinstance(layer, cls["RNN"]):
        return None, f"{type(layer).__name__} is not a Keras RNN layer"
    cell = layer.cell
    if type(cell) is cls["StackedRNNCells"]:
        specs = []
        for k, c in enumerate(cell.cells):
            spec, why = _cell_spec(c)
            if spec is None:
                return None, f"stacked cell {k}: {why}"
            specs.append(spec)
        return tuple(specs), None
    spec, why = _cell_spec(cell)
    return (None, why) if spec is None else ((spec,), None)


def _recurrent_layers(model):
    RNN = _classes()["RNN"]
    layers = model._flatten_layers(include_self=True, recursive=True) if hasattr(model, "_flatten_layers") else [model]
    return [layer for layer in layers if isinstance(layer, RNN)]


def explain(model) -> dict:
    """{layer name: "fused (backend ...)" or why it runs on Keras's loop} for every recurrent layer
    of a model (or a single layer)."""
    _keras()
    out = {}
    for layer in _recurrent_layers(model):
        specs, why = plan(layer)
        if not installed():
            why = "rnn.keras3 is not installed"
        kinds = " + ".join(spec.kind for spec in specs or ())
        out[layer.name] = f"fused ({kinds}, backend {backend()!r})" if why is None else why
    return out


def fused_layers(model) -> list:
    """Names of the model's recurrent layers that run fused (empty while not installed)."""
    return [name for name, what in explain(model).items() if what.startswith("fused")]


def _warn_once(layer, reason):
    key = (type(layer).__name__, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"rnn.keras3: {type(layer).__name__} layer {layer.name!r} runs on Keras's own "
                      f"(slower) loop: {reason}", FallbackWarning, stacklevel=3)


# ----------------------------------------------------------------------------- the fused loop
def torch_weights(spec, kernel, recurrent_kernel, bias):
    """Keras kernel, recurrent_kernel, bias -> (w_ih, w_hh, b_ih, b_hh), torch.nn layout."""
    return keras_to_torch_weights(spec.kind, kernel, recurrent_kernel, bias)


def _stack_mask(mask, spec, per_gate_shape, dtype):
    """Keras's mask (a tensor, or a list with one per gate in Keras gate order) -> ours."""
    if isinstance(mask, (list, tuple)):
        mask = torch.stack([torch.as_tensor(m) for m in mask])
        if spec.kind == "gru":
            mask = mask[[1, 0, 2]]
    elif per_gate_shape is not None:
        mask = mask.unsqueeze(0).expand(per_gate_shape)
    return mask.to(dtype)


def dropout_masks(cell, spec, x, h0, training):
    """(in_mask, rec_mask) for rnn.functional from the masks the Keras cell drew (cached by
    RNN.call for this call), or None where Keras applies none."""
    if not training:
        return None, None
    in_mask = rec_mask = None
    if cell.dropout > 0:
        in_mask = _stack_mask(cell.get_dropout_mask(x[:, 0, :]), spec, None, x.dtype)
    if cell.recurrent_dropout > 0:
        B, H = h0.shape
        rec_mask = _stack_mask(cell.get_recurrent_dropout_mask(h0), spec, (spec.n_gates, B, H), x.dtype)
    return in_mask, rec_mask


def _tensor(variable):
    return None if variable is None else variable.value


def _as_list(s):
    return list(s) if isinstance(s, (list, tuple)) else [s]


def fused_inner_loop(layer, specs, sequences, initial_state, mask, training):
    """What Keras's backend.rnn returns, (last_output, outputs, states), from one fused recurrence
    per cell (specs: one CellSpec per cell, from plan())."""
    stacked = len(specs) > 1 or type(layer.cell) is _classes()["StackedRNNCells"]
    cells = layer.cell.cells if stacked else [layer.cell]
    per_cell = list(initial_state) if stacked else [initial_state]
    dtype = _tensor(cells[0].kernel).dtype
    seq = torch.as_tensor(sequences).to(dtype)
    mask = _bool_mask(mask, seq)
    finals = []
    for cell, spec, start in zip(cells, specs, per_cell):
        # A stateful layer assigns its state variables in place after this call: h0 / c0 must not
        # alias them (autograd saves them).
        states = [torch.as_tensor(s).to(dtype) for s in _as_list(start)]
        states = [s.clone() for s in states] if layer.stateful else states
        h0, c0 = states[0], (states[1] if spec.kind == "lstm" else None)
        in_mask, rec_mask = dropout_masks(cell, spec, seq, h0, training)
        w_ih, w_hh, b_ih, b_hh = torch_weights(spec, _tensor(cell.kernel), _tensor(cell.recurrent_kernel),
                                               _tensor(cell.bias))
        seq, hT, cT = F.recurrence(seq, w_ih, w_hh, b_ih, b_hh, h0, c0, spec=spec, mask=mask, in_mask=in_mask,
                                   rec_mask=rec_mask, reverse=layer.go_backwards, backend=backend(),
                                   batch_first=True)
        new = [hT, cT] if spec.kind == "lstm" else [hT]
        # Keras keeps each cell's state structure: a list, or a bare tensor inside a stack
        finals.append(new if isinstance(start, (list, tuple)) or not stacked else hT)
        stats[f"fused_{spec.kind}"] += 1
    return _keras_result(layer, seq, mask, finals if stacked else finals[0])


def _bool_mask(mask, seq):
    if isinstance(mask, (list, tuple)):
        mask = mask[0]
    return None if mask is None else torch.as_tensor(mask, device=seq.device).bool()


def _keras_result(layer, out, mask, states):
    """(last_output, outputs, states) as Keras's backend.rnn returns them, from the recurrence's
    output (B, T, H), aligned with the input."""
    if layer.go_backwards:  # Keras returns outputs in processing order
        out = out.flip(1)
        mask = None if mask is None else mask.flip(1)
    if mask is not None:
        out = F.mask_outputs(out, mask, "zeros" if layer.zero_output_for_mask else "previous", batch_first=True)
    last = out[:, -1]
    outputs = out if layer.return_sequences else last.unsqueeze(1)
    stats["fused"] += 1
    return last, outputs, states


# ----------------------------------------------------------------------------- Bidirectional
# Keras's Bidirectional calls its forward layer, then its backward layer. Where both run fused
# with the same cell, the forward layer's inner loop runs BOTH directions as one call
# (rnn.functional.bidirectional_layer: one launch on Triton / CuPy) and keeps the backward
# layer's result for that layer's inner loop, which checks that it got the inputs assumed.
def _pair_of(bi):
    """(forward layer, backward layer, CellSpec) of a Bidirectional whose two directions can run as
    one call: single-cell layers with the same cell spec and units, the backward one going
    backwards, neither stateful. None otherwise (each direction then runs on its own)."""
    fwd, bwd = bi.forward_layer, bi.backward_layer
    a, b = plan(fwd)[0], plan(bwd)[0]
    stacked = _classes()["StackedRNNCells"]
    if a is None or a != b or len(a) != 1 or stacked in (type(fwd.cell), type(bwd.cell)):
        return None
    if fwd.stateful or bwd.stateful or fwd.go_backwards or not bwd.go_backwards:
        return None
    return (fwd, bwd, a[0]) if fwd.cell.units == bwd.cell.units else None


def _both(a, b):
    """Two directions' dropout masks stacked; None where neither has one; False where they differ
    in form (one direction only, or other shapes)."""
    if a is None and b is None:
        return None
    if a is None or b is None or a.shape != b.shape:
        return False
    return torch.stack((a, b))


def _same(a, b):
    a, b = _as_list(a), _as_list(b)
    return len(a) == len(b) and all(
        x is y or (torch.is_tensor(x) and torch.is_tensor(y) and x.shape == y.shape and torch.equal(x, y))
        for x, y in zip(a, b))


def _one_launch(spec, seq, units):
    """Whether the backend this call resolves to runs both directions in one launch (Triton,
    CuPy). Elsewhere (a CPU: the torch backend) two calls are as fast or faster: each direction
    alone may take torch's native op, which a call of both directions does not."""
    try:
        choice = _backends.choose(backend(), seq.device, spec, units, seq.shape[0], seq.dtype, both=True)
    except _backends.BackendUnavailable:
        return False  # each direction alone raises it, with the reason
    return hasattr(choice.backend, "forward_both")


def _paired_inner_loop(layer, pending, sequences, initial_state, mask, training):
    """The forward layer's call: both directions in one call, the backward layer's result kept;
    the backward layer's call: that result, if its inputs are the ones assumed. None: run alone."""
    fwd, bwd = pending["layers"]
    if layer is bwd:
        kept, pending["kept"] = pending.get("kept"), None
        if kept is None:
            return None
        (seq, mask0, state, train), result = kept
        states = [torch.as_tensor(v).to(seq.dtype) for v in _as_list(initial_state)]
        seq_now = torch.as_tensor(sequences).to(seq.dtype)
        if train != training or not _same(seq_now, seq) or not _same(states, state) or \
                not _same(_bool_mask(mask, seq), mask0):
            return None
        return result
    spec = pending["spec"]
    dtype = _tensor(fwd.cell.kernel).dtype
    if _tensor(bwd.cell.kernel).dtype != dtype:
        return None
    seq = torch.as_tensor(sequences).to(dtype)
    if not _one_launch(spec, seq, fwd.cell.units):
        return None
    mask = _bool_mask(mask, seq)
    states_f = [torch.as_tensor(v).to(dtype) for v in _as_list(initial_state)]
    half = pending["backward_state"]  # Bidirectional's initial_state, second half, or None: zeros
    states_b = [torch.zeros_like(v) for v in states_f] if half is None else \
        [torch.as_tensor(v, device=seq.device).to(dtype) for v in _as_list(half)]
    drop = [dropout_masks(lay.cell, spec, seq, st[0], training) for lay, st in ((fwd, states_f), (bwd, states_b))]
    in_mask, rec_mask = _both(drop[0][0], drop[1][0]), _both(drop[0][1], drop[1][1])
    if in_mask is False or rec_mask is False or len(states_b) != len(states_f):
        return None
    lstm = spec.kind == "lstm"
    params = [torch_weights(spec, _tensor(lay.cell.kernel), _tensor(lay.cell.recurrent_kernel), _tensor(lay.cell.bias))
              for lay in (fwd, bwd)]
    out, hT, cT = F.bidirectional_layer(seq.transpose(0, 1), params, torch.stack((states_f[0], states_b[0])),
                                        torch.stack((states_f[1], states_b[1])) if lstm else None, spec=spec,
                                        mask=None if mask is None else mask.transpose(0, 1), in_mask=in_mask,
                                        rec_mask=rec_mask, backend=backend())
    H = hT.shape[-1]
    results = []
    for d, lay in enumerate((fwd, bwd)):
        stats[f"fused_{spec.kind}"] += 1
        finals = [hT[d], cT[d]] if lstm else [hT[d]]
        results.append(_keras_result(lay, out[:, :, d * H:(d + 1) * H].transpose(0, 1), mask, finals))
    pending["kept"] = ((seq, mask, states_b, training), results[1])
    stats["bidirectional_one_call"] += 1
    return results[0]


def _symbolic(sequences):
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    return in_symbolic_scope() or not isinstance(sequences, torch.Tensor) or sequences.device.type == "meta"


def _wrap_inner_loop(original):
    def inner_loop(self, sequences, initial_state, mask, training=False):
        inside = getattr(_reentry, "ids", None)
        if inside is None:
            inside = _reentry.ids = set()
        if id(self) in inside or _symbolic(sequences):
            return original(self, sequences, initial_state, mask, training=training)
        specs, why = plan(self)
        if specs is not None:
            pending = getattr(_pairing, "call", None)
            if pending is not None and any(self is lay for lay in pending["layers"]):
                result = _paired_inner_loop(self, pending, sequences, initial_state, mask, training)
                if result is not None:
                    return result
            return fused_inner_loop(self, specs, sequences, initial_state, mask, training)
        _warn_once(self, why)
        stats["fallback"] += 1
        inside.add(id(self))  # LSTM / GRU fall back through RNN.inner_loop, also wrapped
        try:
            return original(self, sequences, initial_state, mask, training=training)
        finally:
            inside.discard(id(self))

    inner_loop.__wrapped__ = original
    inner_loop.__doc__ = original.__doc__
    return inner_loop


def _wrap_bidirectional_call(original):
    """Bidirectional.call with its two directions as one recurrence call where they can be."""
    @functools.wraps(original)
    def call(self, sequences, initial_state=None, mask=None, training=None):
        pair = None if _symbolic(sequences) else _pair_of(self)
        if pair is None:
            return original(self, sequences, initial_state=initial_state, mask=mask, training=training)
        half = None if initial_state is None else list(initial_state)[len(initial_state) // 2:]
        outer = getattr(_pairing, "call", None)
        _pairing.call = {"layers": pair[:2], "spec": pair[2], "backward_state": half}
        try:
            return original(self, sequences, initial_state=initial_state, mask=mask, training=training)
        finally:
            _pairing.call = outer

    return call


def _wrap_bidirectional_gate(original):
    """Bidirectional's cuDNN attempt, skipped when both directions run fused here."""
    def can_attempt(self, *args, **kwargs):
        if plan(self.forward_layer)[0] is not None and plan(self.backward_layer)[0] is not None:
            return False
        return original(self, *args, **kwargs)

    can_attempt.__wrapped__ = original
    return can_attempt


# ----------------------------------------------------------------------------- switch
def install(backend="auto"):
    """Run Keras's LSTM / GRU / SimpleRNN (and Bidirectional around them) on the fused recurrence.

    Idempotent; calling it again only changes the backend. If Keras is not imported yet and
    KERAS_BACKEND is unset, Keras is set to its torch backend; any other Keras backend is an error.
    """
    name = check_backend(backend)
    _keras()
    cls = _classes()
    _config["backend"] = name
    if _patches:
        return
    _warned.clear()
    targets = [(cls[c], "inner_loop", _wrap_inner_loop) for c in ("RNN", "LSTM", "GRU")]
    targets += [(cls["Bidirectional"], attr, _wrap_bidirectional_gate)
                for attr in ("_can_attempt_fused_lstm", "_can_attempt_fused_gru")]
    targets.append((cls["Bidirectional"], "call", _wrap_bidirectional_call))
    for klass, attr, wrap in targets:
        original = klass.__dict__.get(attr)
        if original is None:  # an older Keras without Bidirectional's cuDNN attempt
            continue
        _patches[(klass, attr)] = original
        setattr(klass, attr, wrap(original))


def uninstall():
    """Restore Keras's own methods exactly (idempotent)."""
    while _patches:
        (klass, attr), original = _patches.popitem()
        setattr(klass, attr, original)


@contextlib.contextmanager
def enabled(backend="auto"):
    """`with rnn.keras3.enabled(): ...` installs for the block, then restores the previous state."""
    was, old = installed(), _config["backend"]
    install(backend)
    try:
        yield
    finally:
        if was:
            _config["backend"] = old
        else:
            uninstall()


__all__ = ["install", "uninstall", "enabled", "installed", "backend", "fused_layers", "explain", "plan",
           "stats", "reset_stats", "FallbackWarning", "torch_weights", "dropout_masks", "fused_inner_loop"]
