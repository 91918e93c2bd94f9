"""Shared bits of the Keras 3 examples: the torch backend, the acceleration switch, seeding, a report."""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

import keras  # noqa: E402
import torch  # noqa: E402

import rnn.keras3  # noqa: E402

from .._common import pyplot, save  # noqa: E402,F401  (plots go where the other examples' go)


def setup(seed=0):
    """The two-line switch, plus seeds. One intra-op thread: these models are tiny, and one thread
    is faster than two that wait on each other (or on anything else running)."""
    torch.set_num_threads(1)
    rnn.keras3.install()
    rnn.keras3.reset_stats()
    keras.utils.set_random_seed(seed)


def report(*models):
    """Print which recurrent layers ran fused and the call counts; return the counts for the summary."""
    names = [name for m in models for name in rnn.keras3.fused_layers(m)]
    stats = rnn.keras3.stats
    print(f"fused layers: {', '.join(names) or 'none'}; {stats['fused']} fused layer calls, "
          f"{stats['fallback']} fallbacks")
    return {"fused_calls": stats["fused"], "fallbacks": stats["fallback"]}
