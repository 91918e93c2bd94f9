"""Empty batches and sequences, argument errors, and what a newcomer meets first."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import rnn
from rnn import backends
from rnn import functional as F
from rnn import keras as K
from tolerances import assert_close

KINDS = ["LSTM", "GRU", "RNN"]


def _states(kind, hn):
    return list(hn) if kind == "LSTM" else [hn]


# ---------------------------------------------------------------------------------------------
# empty batches (B = 0) and empty sequences (T = 0)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_drop_in_matches_torch_nn(kind, batch_first):
    ref = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first).double()
    ours = getattr(rnn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                              backend="torch").double()
    ours.load_state_dict(ref.state_dict())
    shape = (0, 5, 3) if batch_first else (5, 0, 3)
    results = []
    for m in (ref, ours):
        x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        out, hn = m(x)
        loss = out.sum() + sum(s.sum() for s in _states(kind, hn))
        loss.backward()
        results.append((out, _states(kind, hn), x.grad, m.weight_hh_l1.grad))
    (out_r, st_r, gx_r, gw_r), (out_o, st_o, gx_o, gw_o) = results
    assert out_o.shape == out_r.shape and gx_o.shape == gx_r.shape
    assert [s.shape for s in st_o] == [s.shape for s in st_r]
    assert_close("dW_hh of an empty batch", gw_o, gw_r)  # zeros, like torch.nn


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_empty_batch_functional_launches_nothing(kind, backend, monkeypatch):
    """B = 0 never reaches a backend's kernels (an empty batch is a no-op)."""
    if backend == "triton":
        pytest.importorskip("triton")
    from rnn.recurrence_torch import TorchBackend

    def boom(*a, **k):
        raise AssertionError("a backend kernel was called for an empty batch")

    monkeypatch.setattr(TorchBackend, "forward", boom)
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    x = torch.zeros(6, 0, 3, requires_grad=True)
    w_ih = torch.randn(G * 4, 3, requires_grad=True)
    w_hh = torch.randn(G * 4, 4, requires_grad=True)
    try:
        res = getattr(F, kind)(x, w_ih, w_hh, backend=backend)
    except backends.BackendUnavailable:
        pytest.skip("triton cannot run here")
    assert res[0].shape == (6, 0, 4) and res[1].shape == (0, 4)
    sum(r.sum() for r in res).backward()
    assert x.grad.shape == x.shape and torch.count_nonzero(w_hh.grad) == 0


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_empty_sequence_returns_initial_state_and_grads_flow(kind):
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    x = torch.zeros(0, 2, 3, requires_grad=True)
    h0 = torch.randn(2, 4, requires_grad=True)
    c0 = torch.randn(2, 4, requires_grad=True)
    args = (x, torch.randn(G * 4, 3), torch.randn(G * 4, 4), None, None, h0) + ((c0,) if kind == "lstm" else ())
    res = getattr(F, kind)(*args, backend="torch")
    assert res[0].shape == (0, 2, 4)
    assert torch.equal(res[1], h0) and (kind != "lstm" or torch.equal(res[2], c0))
    ((res[1] * 3).sum() + res[0].sum()).backward()
    assert torch.equal(h0.grad, torch.full_like(h0, 3.0))
    assert x.grad is not None and x.grad.shape == x.shape


def test_empty_sequence_drop_in():
    m = rnn.LSTM(3, 4, num_layers=2)
    h0, c0 = torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 5, 4)
    out, (h, c) = m(torch.zeros(0, 5, 3), (h0, c0))
    assert out.shape == (0, 5, 4) and torch.equal(h, h0) and torch.equal(c, c0)
    h.sum().backward()
    assert torch.equal(h0.grad, torch.ones_like(h0))


@pytest.mark.parametrize("layer", ["LSTM", "GRU", "SimpleRNN"])
def test_empty_batch_keras_layers(layer):
    m = K.Bidirectional(getattr(K, layer)(4, return_sequences=True))
    x = torch.zeros(0, 6, 3, requires_grad=True)
    y = m(x)
    assert y.shape == (0, 6, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape


# ---------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("position,name", [(0, "x"), (1, "w_ih"), (2, "w_hh")])
def test_missing_tensor_is_named(position, name):
    args = [torch.randn(5, 2, 3), torch.randn(16, 3), torch.randn(16, 4)]
    args[position] = None
    with pytest.raises(TypeError, match=rf"{name} must be a torch.Tensor, got NoneType"):
        F.lstm(*args)


@pytest.mark.parametrize("name,index", [("b_ih", 3), ("h0", 5), ("c0", 6)])
def test_wrong_type_of_optional_tensor_is_named(name, index):
    args = [torch.randn(5, 2, 3), torch.randn(16, 3), torch.randn(16, 4), None, None, None, None]
    args[index] = np.zeros(3)
    with pytest.raises(TypeError, match=rf"{name} must be a torch.Tensor or None, got ndarray"):
        F.lstm(*args)


@pytest.mark.parametrize("kind", KINDS)
def test_drop_in_dtype_mismatch_names_input_and_module(kind):
    m = getattr(rnn, kind)(3, 4)
    with pytest.raises(TypeError) as info:
        m(torch.randn(5, 2, 3, dtype=torch.float64))
    text = str(info.value)
    assert "input has dtype torch.float64" in text and "parameters are torch.float32" in text
    assert "module.to(torch.float64)" in text and "input.to(torch.float32)" in text
    assert "w_ih" not in text


@pytest.mark.parametrize("merge_mode", ["sum", "mul", "ave"])
def test_bidirectional_elementwise_merge_needs_equal_units(merge_mode):
    with pytest.raises(ValueError, match=r"same number of units: the forward layer has 3, backward_layer has 4"):
        K.Bidirectional(K.LSTM(3), merge_mode=merge_mode, backward_layer=K.GRU(4, go_backwards=True))
    K.Bidirectional(K.LSTM(3), merge_mode="concat", backward_layer=K.GRU(4, go_backwards=True))


@pytest.mark.parametrize("flag", ["reverse", "batch_first"])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_functional_flags_must_be_bools(flag, value):
    with pytest.raises(TypeError, match=rf"{flag} must be a bool"):
        F.gru(torch.randn(5, 2, 3), torch.randn(12, 3), torch.randn(12, 4), **{flag: value})
    F.gru(torch.randn(5, 2, 3), torch.randn(12, 3), torch.randn(12, 4), **{flag: np.bool_(False)})


@pytest.mark.parametrize("flag", ["return_sequences", "return_state", "go_backwards", "stateful", "reset_after"])
def test_keras_flags_must_be_bools(flag):
    with pytest.raises(TypeError, match=rf"{flag} must be a bool"):
        K.GRU(4, **{flag: "no"})


# ---------------------------------------------------------------------------------------------
# newcomer polish
# ---------------------------------------------------------------------------------------------
def test_available_agrees_with_explain_about_cupy():
    try:
        import cupy  # noqa: F401
        has_cupy = True
    except Exception:
        has_cupy = False
    status = backends.available()["cupy"]
    assert (status is None) == has_cupy, status
    if not has_cupy:
        assert "cupy" in status
        assert "cupy" in backends.explain("auto", "cuda")


def test_explain_explicit_backend_that_cannot_run_returns_a_line():
    line = backends.explain("cupy", "cpu")
    assert line.startswith("cupy: unavailable:") and "\n" not in line


def test_dir_lists_the_public_api():
    names = dir(rnn)
    for name in ("LSTM", "GRU", "RNN", "functional", "backends", "keras", "reference", "cells"):
        assert name in names
    assert "importlib" not in names


@pytest.mark.parametrize("fn", ["lstm", "gru", "simple_rnn"])
def test_functional_docstrings(fn):
    doc = getattr(F, fn).__doc__
    assert doc and "returns (out" in doc.lower()
    assert "w_hh" in doc and "backend" in doc and "mask" in doc


def test_functional_docstring_example_runs():
    import doctest

    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(F.lstm, "lstm", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries >= 4


def test_readme_python_snippets_run(tmp_path):
    """Every ```python block of the README runs as written (self-contained), in a fresh process."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    for k, code in enumerate(blocks):
        script = tmp_path / f"snippet{k}.py"
        script.write_text(code)
        env = {k: v for k, v in __import__("os").environ.items() if k != "KERAS_BACKEND"}
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                              cwd=str(pathlib.Path(__file__).parents[1]), env=env)
        assert proc.returncode == 0, f"README block {k} failed:\n{code}\n{proc.stderr[-2000:]}"
