"""Smoke test of the examples' models (one forward pass each; `make demo` does the training)."""
import importlib
import sys
from pathlib import Path

import pytest
import torch

# examples/ is not an installed package: import it from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples import EXAMPLES  # noqa: E402


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_module_has_main(name):
    assert callable(importlib.import_module(f"examples.{name}").main)


def test_example_models_forward():
    from examples import adding_problem, macro_bidirectional, stacked_regressor, text_classifier

    assert stacked_regressor.StackedRegressor()(torch.randn(3, stacked_regressor.WINDOW, 1)).shape == (3, 1)
    assert macro_bidirectional.ConvBiRNN(11)(torch.randn(3, macro_bidirectional.WINDOW, 11)).shape == (3, 1)
    ids = torch.tensor([[3, 4, 5, 0, 0], [1, 2, 0, 0, 0]])
    assert text_classifier.TextClassifier(6)(ids).shape == (2, 2)
    x, y = adding_problem.batch(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, adding_problem.T, 2)
    assert torch.equal(x[..., 1].sum(1), torch.full((5,), 2.0))
    torch.testing.assert_close(y[:, 0], (x[..., 0] * x[..., 1]).sum(1))
