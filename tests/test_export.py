"""torch.export with dynamic batch and time, and ONNX export (both exporters) checked with onnxruntime.

torch.export keeps one fused_rnn.recurrence operator per layer and direction (rnn.ops). During
torch.onnx.export every layer and direction becomes one ONNX LSTM / GRU / RNN node instead
(rnn.onnx_export), with dynamic B and T; what ONNX cannot express raises a clear error.
"""
import io
import warnings

import numpy as np
import pytest
import torch
from torch.export import Dim

import rnn
from rnn import keras as K
from rnn.onnx_export import NotExportable
from tolerances import assert_close

I, H = 5, 6
KINDS = ["LSTM", "GRU", "RNN"]


class Model(torch.nn.Module):
    """A two-layer bidirectional drop-in and a Linear: outputs (y, final states...)."""

    def __init__(self, kind, **kw):
        super().__init__()
        self.recurrent = getattr(rnn, kind)(I, H, num_layers=2, bidirectional=True, batch_first=True, **kw)
        self.linear = torch.nn.Linear(2 * (kw.get("proj_size") or H), 3)

    def forward(self, x):
        out, states = self.recurrent(x)
        states = states if isinstance(states, tuple) else (states,)
        return (self.linear(out), *states)


def _check_outputs(label, got, want):
    assert len(got) == len(want), label
    for k, (a, b) in enumerate(zip(got, want)):
        a = torch.from_numpy(a) if isinstance(a, np.ndarray) else a  # onnxruntime returns arrays
        assert_close(f"{label} output {k}", a, b.detach(), torch.float32)


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
@pytest.mark.parametrize("kind", KINDS)
def test_torch_export_dynamic_batch_and_time(kind, strict):
    model = Model(kind).eval()
    ep = torch.export.export(model, (torch.randn(3, 7, I),), dynamic_shapes=({0: Dim("B"), 1: Dim("T")},),
                             strict=strict)
    fused = [n for n in ep.graph.nodes if n.op == "call_function" and n.target is torch.ops.fused_rnn.recurrence.default]
    assert len(fused) == 2  # one per layer (both directions in one), whatever T
    for B, T in ((2, 11), (5, 3)):
        x = torch.randn(B, T, I)
        _check_outputs(f"exported {kind} at B={B}, T={T}", ep.module()(x), model(x))


def test_exported_program_saves_and_loads():
    model = Model("LSTM").eval()
    ep = torch.export.export(model, (torch.randn(3, 7, I),), dynamic_shapes=({0: Dim("B"), 1: Dim("T")},))
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    x = torch.randn(4, 9, I)
    _check_outputs("loaded program", loaded.module()(x), model(x))


def test_export_keras_layer():
    layer = K.GRU(H, reset_after=False, return_sequences=True, input_dim=I).eval()
    ep = torch.export.export(layer, (torch.randn(3, 7, I),), dynamic_shapes=({0: Dim("B"), 1: Dim("T")},))
    x = torch.randn(2, 12, I)
    assert_close("exported keras GRU", ep.module()(x), layer(x), torch.float32)


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------
def _onnx_export(model, x, path, dynamo, training=False):
    """Export with dynamic batch (dim 0) and time (dim 1) of the single input x."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if dynamo:
            torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False,
                              dynamic_shapes=({0: Dim("B"), 1: Dim("T")},))
        else:
            mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "B", 1: "T"}}, training=mode)


def _round_trip(model, path, dynamo, label):
    """Export, check the ONNX recurrent nodes, run onnxruntime at two other (B, T) against eager."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    _onnx_export(model, torch.randn(3, 7, I), path, dynamo)
    graph = onnx.load(str(path)).graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for B, T in ((2, 11), (5, 3)):
        x = torch.randn(B, T, I)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        want = model(x)
        _check_outputs(f"{label} onnxruntime at B={B}, T={T}", got, want if isinstance(want, tuple) else (want,))
    return [n.op_type for n in graph.node]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", KINDS)
def test_onnx_drop_in_round_trip(kind, dynamo, tmp_path):
    ops = _round_trip(Model(kind).eval(), tmp_path / "model.onnx", dynamo, f"{kind} (dynamo={dynamo})")
    assert ops.count(kind) == 4, ops  # one ONNX node per layer and direction, no unrolled loop
    assert "Loop" not in ops and "Scan" not in ops


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_lstm_with_projections_round_trip(dynamo, tmp_path):
    """ONNX's LSTM node has no projection; the recurrence runs over o * tanh(c) with W_hh W_hr
    (rnn.functional._projected), which is an LSTM node, then one MatMul gives h."""
    model = Model("LSTM", proj_size=4).eval()
    ops = _round_trip(model, tmp_path / "proj.onnx", dynamo, f"LSTM proj_size (dynamo={dynamo})")
    assert ops.count("LSTM") == 4, ops
    assert "Loop" not in ops and "Scan" not in ops


KERAS = [
    ("LSTM_hard_sigmoid", "LSTM", lambda: K.LSTM(H, recurrent_activation="hard_sigmoid", return_sequences=True,
                                                   input_dim=I)),
    ("GRU_reset_before_backwards", "GRU", lambda: K.GRU(H, reset_after=False, go_backwards=True,
                                                          return_sequences=True, input_dim=I)),
    ("SimpleRNN_linear", "RNN", lambda: K.SimpleRNN(H, activation=None, return_sequences=True, input_dim=I)),
]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_keras_bidirectional_round_trip(dynamo, tmp_path):
    """Both directions run as one call in eager (rnn.functional.bidirectional_layer); exported, they
    are one ONNX node per direction."""
    layer = K.Bidirectional(K.GRU(H, return_sequences=True))
    layer(torch.randn(2, 3, I))  # built
    assert layer._one_call()
    ops = _round_trip(layer.eval(), tmp_path / "bi.onnx", dynamo, f"Bidirectional (dynamo={dynamo})")
    assert ops.count("GRU") == 2, ops


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name,op,make", KERAS, ids=[k[0] for k in KERAS])
def test_onnx_keras_layer_round_trip(name, op, make, dynamo, tmp_path):
    """Keras semantics ONNX can express: HardSigmoid / Affine activations, GRU linear_before_reset=0."""
    ops = _round_trip(make().eval(), tmp_path / "layer.onnx", dynamo, f"{name} (dynamo={dynamo})")
    assert ops.count(op) == 1, ops


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_refuses_masks_and_dropout_clearly(dynamo, tmp_path):
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = K.LSTM(H, input_dim=I)

        def forward(self, x):
            return self.layer(x, mask=x[..., 0] > 0)

    with pytest.raises(Exception, match="step mask") as info:
        _onnx_export(Masked().eval(), torch.randn(3, 7, I), tmp_path / "masked.onnx", dynamo)
    assert _cause(info.value, NotExportable)
    dropout = K.GRU(H, dropout=0.2, recurrent_dropout=0.2, input_dim=I).train()
    with pytest.raises(Exception, match=r"model\.eval\(\)") as info:
        _onnx_export(dropout, torch.randn(3, 7, I), tmp_path / "dropout.onnx", dynamo, training=True)
    assert _cause(info.value, NotExportable)


def _cause(exc, kind):
    """Whether exc is, or was raised from, an exception of this kind (exporters wrap errors)."""
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
