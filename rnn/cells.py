"""The cell zoo as data.

Every backend, the NumPy reference and both public faces read the cell from a `CellSpec`, so the
equations live in one place per implementation and the options (activations, GRU form) are data.

Layout conventions used everywhere inside the library (the "recurrence contract"):

    T time, B batch, I input features, H hidden units, G gates (LSTM 4, GRU 3, SimpleRNN 1)

    x        (T, B, I)      time-major input
    w_ih     (G*H, I)       input weights, torch.nn layout, gate blocks in torch order
    w_hh     (G*H, H)       recurrent weights
    b_ih     (G*H,) | None  input bias (added to x @ w_ih^T)
    b_hh     (G*H,) | None  recurrent bias (added to h @ w_hh^T, i.e. inside GRU's r * (...))
    h0, c0   (B, H)         initial states (c0 only for LSTM)
    mask     (T, B) bool    True = valid step; a masked step keeps h and c unchanged
    in_mask  (B, I) | (G, B, I)   input dropout mask (already scaled by 1/(1-rate)); one per gate
                                  when it has a leading G axis
    rec_mask (G, B, H)      recurrent dropout mask per gate: multiplies the copy of h that feeds
                            that gate's recurrent matmul (Keras semantics); c is never dropped
    reverse  bool           process t = T-1 .. 0; out[t] stays aligned with x[t]

    out      (T, B, H)      the carried hidden state after the step at t (a masked step repeats
                            the previous state; zeroing or Keras's "previous output" is applied
                            by the caller, see rnn.functional.mask_outputs)

Gate blocks (torch order):
    LSTM: i, f, g, o   c' = f*c + i*g,  h' = o*act(c'); i, f, o use recurrent_activation
    GRU : r, z, n      h' = (1-z)*n + z*h; r, z use recurrent_activation, n uses activation
          reset_after=True : n = act(xn + r * (h W_n^T + b_hn))         (torch.nn, Keras default)
          reset_after=False: n = act(xn + (r*h) W_n^T + b_hn)           (Keras classic form)
    RNN : h  = act(x W^T + b_ih + h W_hh^T + b_hh)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

ACTIVATIONS = ("tanh", "relu", "sigmoid", "hard_sigmoid", "linear")
KINDS = ("lstm", "gru", "rnn")
_GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ("h",)}


def normalize_activation(name, argument="activation"):
    """Map the accepted spellings to one of ACTIVATIONS; raise a ValueError naming the argument."""
    if name is None:
        return "linear"
    if not isinstance(name, str):
        raise ValueError(f"{argument} must be one of {ACTIVATIONS} (or None for linear), got {name!r}")
    key = name.lower()
    if key in ("linear", "identity", "none"):
        return "linear"
    if key not in ACTIVATIONS:
        raise ValueError(f"{argument} must be one of {ACTIVATIONS} (or None for linear), got {name!r}")
    return key


def check_bool(name, value):
    """Flags must be real booleans: a string such as "no" is truthy and would silently flip them."""
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
        return bool(value)  # numpy's bool scalar is accepted too
    raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class CellSpec:
    kind: str
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    reset_after: bool = True  # GRU only

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"cell kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "activation", normalize_activation(self.activation, "activation"))
        object.__setattr__(
            self,
            "recurrent_activation",
            normalize_activation(self.recurrent_activation, "recurrent_activation"),
        )
        if self.kind != "gru":
            object.__setattr__(self, "reset_after", True)  # irrelevant; keeps specs comparable
        if self.kind == "rnn":
            object.__setattr__(self, "recurrent_activation", "sigmoid")

    @property
    def n_gates(self) -> int:
        return len(_GATES[self.kind])

    @property
    def gate_names(self) -> tuple:
        return _GATES[self.kind]

    @property
    def has_cell_state(self) -> bool:
        return self.kind == "lstm"

    @property
    def n_states(self) -> int:
        return 2 if self.kind == "lstm" else 1


# Cached: the drop-ins ask for their spec on every call, and a CellSpec is immutable. The cache
# sees the arguments only after they are checked, so a bad one still gets its clear error (an
# unhashable one would otherwise fail inside the cache).
@lru_cache(maxsize=None)
def _spec(kind, activation, recurrent_activation, reset_after) -> CellSpec:
    return CellSpec(kind, activation, recurrent_activation, reset_after)


def lstm(activation="tanh", recurrent_activation="sigmoid") -> CellSpec:
    return _spec("lstm", normalize_activation(activation, "activation"),
                 normalize_activation(recurrent_activation, "recurrent_activation"), True)


def gru(activation="tanh", recurrent_activation="sigmoid", reset_after=True) -> CellSpec:
    return _spec("gru", normalize_activation(activation, "activation"),
                 normalize_activation(recurrent_activation, "recurrent_activation"),
                 check_bool("reset_after", reset_after))


def simple_rnn(activation="tanh") -> CellSpec:
    return _spec("rnn", normalize_activation(activation, "activation"), "sigmoid", True)
