"""fused-rnn: fused LSTM / GRU / SimpleRNN recurrences for PyTorch.

    rnn.LSTM, rnn.GRU, rnn.RNN    drop-ins for torch.nn.LSTM / GRU / RNN (plus `backend=`)
    rnn.keras                     Keras-semantics layers (LSTM, GRU, SimpleRNN, cells, Bidirectional)
    rnn.functional                one layer, one direction, any backend
    rnn.backends                  the backend registry ("auto", "torch", "triton", "cupy")
    rnn.reference                 the NumPy float64 oracle (never imports torch)

Submodules load lazily so that `import rnn.reference` stays free of torch.
"""
import importlib as _importlib

__version__ = "0.1.0"
_LAZY = {"LSTM": "modules", "GRU": "modules", "RNN": "modules"}
_SUBMODULES = ("functional", "backends", "cells", "reference", "modules", "autograd", "keras", "keras3", "ops")


def __getattr__(name):
    if name in _LAZY:
        return getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'rnn' has no attribute {name!r}")


__all__ = ["LSTM", "GRU", "RNN", *_SUBMODULES]


def __dir__():
    """Lazily loaded names too, so dir(rnn) and tab completion show the public API."""
    return sorted({*globals(), *__all__})
