"""The backend registry: names, the environment override, no silent fallback, explain()."""
import pytest
import torch

import rnn
from rnn import backends, functional
from rnn.cells import CellSpec


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown backend 'fast'.*auto, torch, triton, cupy"):
        backends.validate("fast")
    with pytest.raises(ValueError, match="unknown backend"):
        rnn.LSTM(3, 4, backend="cudnn")


def test_env_overrides_auto_only(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert backends.validate("auto") == "torch"
    assert backends.validate(None) == "torch"
    assert backends.validate("triton") == "triton"  # explicit beats the environment
    monkeypatch.setenv(backends.ENV_VAR, "nope")
    with pytest.raises(ValueError, match="FUSED_RNN_BACKEND='nope'"):
        backends.validate("auto")


def test_auto_on_cpu_picks_torch_and_says_why():
    choice = backends.choose("auto", "cpu", CellSpec("lstm"), 32, 4, torch.float32)
    assert choice.name == "torch"
    assert "not CUDA" in choice.reason
    assert backends.explain("auto", "cpu").startswith("torch: fallback")


def test_explicit_cupy_without_cuda_raises_not_falls_back():
    x = torch.randn(5, 2, 3)
    w_ih, w_hh = torch.randn(16, 3), torch.randn(16, 4)
    with pytest.raises(backends.BackendUnavailable, match="'cupy' was requested but cannot run"):
        functional.recurrence(x, w_ih, w_hh, spec=CellSpec("lstm"), backend="cupy")


def test_explicit_triton_on_cpu_without_interpreter_raises(monkeypatch):
    triton_backend = pytest.importorskip("kernels.triton.backend")
    # Triton fixes interpreted-or-compiled when the kernels are decorated (at import time).
    monkeypatch.setattr(triton_backend, "INTERPRET", False)
    with pytest.raises(backends.BackendUnavailable, match="'triton' was requested but cannot run"):
        backends.choose("triton", "cpu", CellSpec("gru"), 32, 4, torch.float32)


def test_available_reports_every_backend():
    av = backends.available()
    assert set(av) == {"torch", "triton", "cupy"}
    assert av["torch"] is None


def test_non_float_dtype_rejected_by_torch_backend():
    with pytest.raises(backends.BackendUnavailable, match="not floating point"):
        backends.choose("torch", "cpu", CellSpec("rnn"), 8, 2, torch.int32)


@pytest.mark.parametrize("kw,match", [
    ({"h0": torch.zeros(3, 4)}, r"h0 must have shape \(2, 4\)"),
    ({"c0": torch.zeros(2, 4)}, "c0 is only for LSTM"),
    ({"mask": torch.ones(2, 5, dtype=torch.bool)}, r"mask must have shape \(5, 2\)"),
    ({"mask": torch.ones(5, 2)}, "bool"),
    ({"rec_mask": torch.ones(2, 2, 4)}, r"rec_mask must have shape \(3, 2, 4\)"),
    ({"in_mask": torch.ones(2, 4)}, "in_mask must have shape"),
    ({"b_ih": torch.zeros(11)}, r"b_ih must have shape \(12,\)"),
    ({"w_ih": torch.zeros(12, 3, dtype=torch.float64)}, "w_ih must have dtype torch.float32"),
])
def test_functional_errors_name_expected_and_given(kw, match):
    args = {"x": torch.randn(5, 2, 3), "w_ih": torch.randn(12, 3), "w_hh": torch.randn(12, 4)}
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        functional.recurrence(args.pop("x"), args.pop("w_ih"), args.pop("w_hh"), spec=CellSpec("gru"),
                              backend="torch", **args)


def test_spec_errors():
    with pytest.raises(ValueError, match="activation must be one of"):
        CellSpec("lstm", activation="swish")
    with pytest.raises(ValueError, match="cell kind must be one of"):
        CellSpec("transformer")


def test_auto_order_on_cuda(monkeypatch):
    """On CUDA "auto" takes cupy first up to B = 32, triton first above it where triton's plans are
    persistent, cupy first up to B = 64 where triton would run per step, for one direction and for
    both of a bidirectional layer; the other where the first cannot run."""
    ready = {"cupy": None, "triton": None}
    persistent = {"value": True}
    asked = []

    class Impl:
        def runs_persistent(self, device, spec, hidden, batch, dtype, both=False):
            asked.append((hidden, batch, both))
            return persistent["value"]

    monkeypatch.setattr(backends, "_unavailable", lambda name, *a: (Impl(), ready.get(name, "not here")))
    spec = CellSpec("lstm")
    limit = backends.CUPY_FIRST_MAX_BATCH
    per_step_limit = backends.CUPY_FIRST_PER_STEP_MAX_BATCH
    assert backends.choose("auto", "cuda", spec, 768, 16, torch.bfloat16).name == "cupy"
    assert backends.choose("auto", "cuda", spec, 768, limit, torch.bfloat16).name == "cupy"
    assert not asked  # up to the limit the plans are not consulted
    big = backends.choose("auto", "cuda", spec, 768, limit + 1, torch.bfloat16)
    assert big.name == "triton" and f"batch {limit + 1}" in big.reason and "auto_order" in big.reason
    assert asked == [(768, limit + 1, False)]
    persistent["value"] = False
    per_step = backends.choose("auto", "cuda", spec, 768, per_step_limit, torch.bfloat16)
    assert per_step.name == "cupy" and "triton per step" in per_step.reason
    assert backends.choose("auto", "cuda", spec, 768, per_step_limit + 1, torch.bfloat16).name == "triton"
    assert backends.choose("auto", "cuda", spec, 768, per_step_limit, torch.bfloat16, both=True).name == "cupy"
    assert asked[-1] == (768, per_step_limit, True)
    persistent["value"] = True
    both = backends.choose("auto", "cuda", spec, 768, 16, torch.bfloat16, both=True)
    assert both.name == "cupy" and "both directions" in both.reason
    assert backends.choose("auto", "cuda", spec, 768, limit + 1, torch.bfloat16, both=True).name == "triton"
    ready["cupy"] = "no cupy"
    assert backends.choose("auto", "cuda", spec, 768, 16, torch.bfloat16).name == "triton"
    ready["cupy"] = None
    ready["triton"] = "no triton"
    assert backends.choose("auto", "cuda", spec, 768, 16, torch.bfloat16, both=True).name == "cupy"
    assert backends.choose("auto", "cuda", spec, 768, limit + 1, torch.bfloat16).name == "cupy"
    assert backends.choose("auto", "cpu", spec, 768, 16, torch.float32, both=True).name == "torch"
