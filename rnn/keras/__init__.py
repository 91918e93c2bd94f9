"""Keras-semantics recurrent layers for PyTorch, running on the fused recurrence (rnn.functional).

    from rnn.keras import LSTM, GRU, SimpleRNN, RNN, Bidirectional
    from rnn.keras import LSTMCell, GRUCell, SimpleRNNCell, StackedRNNCells, initializers

Every class is a torch.nn.Module with Keras 3.15 argument names, defaults, parameter names and
shapes (kernel, recurrent_kernel, bias) and behaviour (docs: rnn/keras/layers.py, cells.py,
bidirectional.py; the rules: KERAS_SEMANTICS in the docs). Inputs are batch-first (B, T, F).
`set_keras_weights(keras_layer.get_weights())` / `get_keras_weights()` move weights to and from
Keras; `count_params()` equals Keras's.
"""
from . import initializers
from .bidirectional import Bidirectional
from .cells import GRUCell, LSTMCell, SimpleRNNCell
from .layers import GRU, LSTM, RNN, SimpleRNN, StackedRNNCells

__all__ = ["LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "LSTMCell", "GRUCell", "SimpleRNNCell",
           "StackedRNNCells", "initializers"]
