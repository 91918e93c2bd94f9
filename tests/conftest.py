"""Shared test set-up: CPU-only defaults, the seed fixture, GPU skipping."""
import os

import pytest

# Triton kernels run in the interpreter on a CPU-only machine; Keras runs on its torch backend.
# Both must be set before triton / keras are first imported.
os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("FUSED_RNN_BACKEND", None)  # tests choose their backends explicitly


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A seeded NumPy generator; every test that draws numbers takes it."""
    import numpy as np

    return np.random.default_rng(1234)


@pytest.fixture
def set_tf32():
    """Setter for torch.backends.cuda.matmul.allow_tf32, restored after the test.

    Not monkeypatch.setattr: torch's cuBLAS flag module has no __delattr__, so pytest's undo can
    fail and leave the flag changed for the rest of the run.
    """
    import torch

    flags = torch.backends.cuda.matmul
    old = flags.allow_tf32

    def set_(value):
        flags.allow_tf32 = bool(value)

    yield set_
    flags.allow_tf32 = old


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(1234)
