"""The benchmark suite on a CPU: the CLI end to end on a tiny grid, the correctness gate that
keeps wrong implementations out of the timings, the timer's defences against a busy machine,
where records go and which are plotted, the floor model, the examples' CLI, and a static check
of the Dockerfile."""
import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from profiling import bench, floor, impls, plot, report, timing

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--device", "cpu", "--cells", "lstm,gru", "--dtypes", "fp32", "--batches", "3",
        "--hiddens", "7", "--seq-len", "5", "--no-compile", "--warmup-ms", "1", "--rep-ms", "3",
        "--no-progress"]


def _perturbed(case, ref):
    """A deliberately wrong implementation: torch.nn with a perturbed recurrent matrix."""
    bad = copy.deepcopy(ref)
    with torch.no_grad():
        bad.weight_hh_l0.add_(0.3 * torch.randn_like(bad.weight_hh_l0))
    return impls.module_impl(bad, case.cell)


def _exact_copy(case, ref):
    return impls.module_impl(copy.deepcopy(ref), case.cell)


def _nan_output(case, ref):
    inner = impls.module_impl(copy.deepcopy(ref), case.cell)

    def run(x, state):
        out, *rest = inner.run(x, state)
        return (out * float("nan"), *rest)

    return impls.Impl(run, inner.params)


def _raises(case, ref):
    raise RuntimeError("kernel exploded")


def _cannot(case, ref):
    raise impls.Skip("needs a GPU")


def _jittery(case, ref):
    """Correct outputs, but every other call does the forward six times: a timing no median can
    summarise, whatever the speed of the machine (a fixed extra sleep is not: on a slow, loaded
    machine it shrinks next to the call)."""
    inner = impls.module_impl(copy.deepcopy(ref), case.cell)
    calls = [0]

    def run(x, state):
        calls[0] += 1
        for _ in range(5 if calls[0] % 2 else 0):
            inner.run(x, state)
        return inner.run(x, state)

    return impls.Impl(run, inner.params)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    extra = {"exact": _exact_copy, "perturbed": _perturbed, "nan": _nan_output,
             "raises": _raises, "cannot": _cannot, "jittery": _jittery}
    assert bench.main(TINY + ["--backends", "torch", "--out", str(out)], extra_impls=extra) == 0
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def _rows(path, **match):
    rows = json.loads(path.read_text())["rows"]
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_cli_writes_a_complete_record(record, capsys):
    data = json.loads(record.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    for key in ("device", "versions", "settings", "git_commit", "date", "config", "rows", "rates"):
        assert key in data, key
    assert data["device"].startswith("cpu: ")
    assert {"torch", "triton", "cupy", "cuda"} <= set(data["versions"])
    assert data["versions"]["torch"] == torch.__version__
    assert re.match(r"^\d{4}-\d\d-\d\dT", data["date"])
    assert data["config"]["seq_len"] == 5 and data["config"]["backends"] == ["torch"]
    rows = data["rows"]
    # 2 cells x 2 modes x (torch.nn, torch, 6 injected)
    assert len(rows) == 2 * 2 * 8
    for r in rows:
        assert set(report.ROW_KEYS) <= set(r), set(report.ROW_KEYS) - set(r)
        assert r["status"] in report.STATUSES
        assert r["mode"] in ("forward", "forward_backward")
        assert (r["batch"], r["hidden"], r["seq_len"], r["dtype"]) == (3, 7, 5, "fp32")
        assert r["reference_impl"].startswith("torch.nn.")
        assert r["peak_mem_bytes"] is None  # CPU
    for r in _rows(record, backend="torch.nn"):
        # timed: "ok", or "unstable" when this shared machine was too busy for a steady timing
        assert r["status"] in ("ok", "unstable"), r
        assert r["max_err"] < 1e-5 and r["floor_ms"] > 0
        assert r["ms_q20"] <= r["ms"] <= r["ms_q80"] and r["ms"] > 0
        if r["status"] == "ok":
            assert r["speedup_vs_torch_nn"] == pytest.approx(1.0) and r["pct_of_floor"] > 0
    for r in _rows(record, backend="torch"):  # our drop-in must match torch.nn
        assert r["status"] in ("ok", "unstable", "skipped"), r


def test_records_name_the_settings_that_change_the_kernels(monkeypatch):
    """A record says which FUSED_RNN_* switches were set and torch's tf32 flags: an fp32 timing
    with FUSED_RNN_FP32_MATMUL=ieee is never mistaken for the 3xtf32 default."""
    monkeypatch.setenv("FUSED_RNN_FP32_MATMUL", "ieee")
    monkeypatch.delenv("FUSED_RNN_TRITON_PERSISTENT", raising=False)
    got = report.environment(torch.device("cpu"))["settings"]
    assert got["FUSED_RNN_FP32_MATMUL"] == "ieee" and "FUSED_RNN_TRITON_PERSISTENT" not in got
    assert got["torch.backends.cuda.matmul.allow_tf32"] is bool(torch.backends.cuda.matmul.allow_tf32)
    assert got["torch.backends.cudnn.allow_tf32"] is bool(torch.backends.cudnn.allow_tf32)


def test_exact_copy_passes_the_check(record):
    rows = _rows(record, backend="exact")
    assert rows and all(r["status"] in ("ok", "unstable") and r["ms"] > 0 for r in rows)
    for r in rows:
        assert r["max_err"] <= r["tolerance"]
        if r["status"] == "ok" and r["ms_torch_nn"] is not None:
            assert r["speedup_vs_torch_nn"] == pytest.approx(r["ms_torch_nn"] / r["ms"])


def test_wrong_implementation_is_reported_wrong_and_not_timed(record):
    rows = _rows(record, backend="perturbed")
    assert len(rows) == 4
    for r in rows:
        assert r["status"] == "wrong", r
        assert r["max_err"] > r["tolerance"] > 0
        assert r["ms"] is None and r["speedup_vs_torch_nn"] is None and r["pct_of_floor"] is None
    for r in _rows(record, backend="nan"):
        assert r["status"] == "wrong" and "non-finite" in r["note"] and r["ms"] is None


def test_failures_do_not_stop_the_grid(record):
    for r in _rows(record, backend="raises"):
        assert r["status"] == "error" and "kernel exploded" in r["note"]
    for r in _rows(record, backend="cannot"):
        assert r["status"] == "skipped" and r["note"] == "needs a GPU"


def test_markdown_table_lists_every_row(record):
    rows = json.loads(record.read_text())["rows"]
    table = report.markdown_table(rows)
    assert table.splitlines()[0].startswith("| cell | mode |")
    assert len(table.splitlines()) == 2 + len(rows)
    assert "wrong: max rel err" in table


def _synthetic_record(path, device, reference_impl):
    """A record with steady ("ok") rows, so the plot tests do not depend on this machine's load."""
    rows = []
    for backend, speedup in (("torch.nn", 1.0), ("triton", 2.0), ("cupy", 0.5)):
        row = dict.fromkeys(report.ROW_KEYS)
        row.update(cell="lstm", mode="forward", dtype="bf16", batch=16, hidden=768, input_size=768,
                   seq_len=1024, backend=backend, status="ok", note="", ms=1.0 / speedup,
                   ms_q20=0.99 / speedup, ms_q80=1.01 / speedup, ms_torch_nn=1.0,
                   speedup_vs_torch_nn=speedup, reference_impl=reference_impl)
        rows.append(row)
    path.write_text(json.dumps({"device": device, "date": "2026-01-01T00:00:00+00:00", "rows": rows}))
    return path


def _png_title(path):
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.text.get("Title", "")


def test_plot_draws_a_png(tmp_path):
    rec = _synthetic_record(tmp_path / "a.json", "cpu: Some CPU", "torch.nn.LSTM (CPU, native kernels)")
    assert plot.main([str(rec), "--out", str(tmp_path / "plots")]) == 0
    pngs = list((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 1
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_title_names_the_device_and_the_baseline(tmp_path):
    cpu = _synthetic_record(tmp_path / "cpu.json", "cpu: Some CPU", "torch.nn.LSTM (CPU, native kernels)")
    gpu = _synthetic_record(tmp_path / "gpu.json", "NVIDIA H100 80GB HBM3", "torch.nn.LSTM (cuDNN 91002)")
    assert plot.main([str(cpu), str(gpu), "--out", str(tmp_path / "plots")]) == 0
    titles = {p.name: _png_title(p) for p in (tmp_path / "plots").glob("*.png")}
    assert len(titles) == 2, titles
    (cpu_title,) = [t for t in titles.values() if "cpu: Some CPU" in t]
    (gpu_title,) = [t for t in titles.values() if "NVIDIA H100 80GB HBM3" in t]
    assert "torch.nn" in cpu_title and "cudnn" not in cpu_title.lower()
    assert "cuDNN 91002" in gpu_title


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_plots_draw_only_committed_records_by_default(tmp_path, monkeypatch, capsys):
    """`make plots` must not draw a record that only lies around (another machine's, a local run)."""
    results = tmp_path / "repo" / "results"
    results.mkdir(parents=True)
    assert _git("init", "-q", cwd=tmp_path / "repo").returncode == 0
    _synthetic_record(results / "kept.json", "NVIDIA H100 80GB HBM3", "torch.nn.LSTM (cuDNN 91002)")
    _synthetic_record(results / "stray.json", "cpu: Stray CPU", "torch.nn.LSTM (CPU, native kernels)")
    assert _git("add", "results/kept.json", cwd=tmp_path / "repo").returncode == 0
    monkeypatch.setattr(plot, "RESULTS_DIR", results)
    assert plot.main(["--out", str(tmp_path / "plots")]) == 0
    titles = [_png_title(p) for p in (tmp_path / "plots").glob("*.png")]
    assert len(titles) == 1 and "NVIDIA H100" in titles[0], titles
    assert "stray.json" in capsys.readouterr().out  # says what it left out
    # named records are drawn whether committed or not
    assert plot.main([str(results / "stray.json"), "--out", str(tmp_path / "named")]) == 0
    assert len(list((tmp_path / "named").glob("*.png"))) == 1


def test_cpu_records_go_to_an_ignored_folder_by_default():
    assert bench.build_parser().parse_args([]).out is None  # resolved per device
    assert Path(bench.default_out_dir("cpu")) == report.LOCAL_RESULTS_DIR
    assert Path(bench.default_out_dir("cuda")) == report.RESULTS_DIR  # GPU records are kept
    if shutil.which("git") is None or _git("rev-parse", cwd=ROOT).returncode:
        pytest.skip("not a git checkout: .gitignore not checkable")
    local = report.LOCAL_RESULTS_DIR.relative_to(ROOT) / "20260101-000000_cpu-x.json"
    kept = report.RESULTS_DIR.relative_to(ROOT) / "20260101-000000_nvidia-h100.json"
    assert _git("check-ignore", "-q", str(local), cwd=ROOT).returncode == 0
    assert _git("check-ignore", "-q", str(kept), cwd=ROOT).returncode == 1


def test_cpu_labels_say_torch_nn_never_cudnn(record):
    data = json.loads(record.read_text())
    rows = data["rows"]
    assert {r["backend"] for r in rows if r["backend"].startswith("torch")} == {"torch.nn", "torch"}
    for r in rows:
        for key, value in r.items():
            assert "cudnn" not in key.lower(), key
            assert "cudnn" not in str(value).lower(), (key, value)
    table = report.markdown_table(rows)
    assert "cudnn" not in table.lower() and "torch.nn ms" in table.splitlines()[0]


def test_wide_spread_row_is_unstable_without_a_speedup(record):
    rows = _rows(record, backend="jittery")
    assert len(rows) == 4
    for r in rows:
        assert r["status"] == "unstable", r
        assert r["ms_q80"] > timing.SPREAD_LIMIT * r["ms_q20"] and r["ms"] is not None
        assert r["speedup_vs_torch_nn"] is None and r["pct_of_floor"] is None
        assert "q80/q20" in r["note"]
    assert timing.unstable(1.0, 1.01 * timing.SPREAD_LIMIT) and not timing.unstable(1.0, 0.99 * timing.SPREAD_LIMIT)


def test_big_interpreted_triton_case_is_refused_fast():
    """Without a GPU the Triton interpreter would take many minutes here: the row is skipped at once."""
    args = bench.build_parser().parse_args(
        ["--device", "cpu", "--cells", "gru", "--dtypes", "fp32", "--batches", "16", "--hiddens", "64",
         "--seq-len", "64", "--backends", "triton", "--modes", "forward", "--no-compile",
         "--warmup-ms", "1", "--rep-ms", "3", "--no-progress"])
    cfg = bench.resolve(args)
    cfg["no_progress"] = True
    start = time.perf_counter()
    rec = bench.run(cfg)
    assert time.perf_counter() - start < 60
    (row,) = [r for r in rec["rows"] if r["backend"] == "triton"]
    assert row["status"] == "skipped" and row["ms"] is None, row
    assert "T*B*H = 64*16*64 = 65536" in row["note"] and "GPU" in row["note"], row["note"]
    assert 64 * 16 * 64 > impls.INTERPRET_MAX_TBH >= 16 * 2 * 32  # the CPU smoke size still runs


def _fake_clock():
    now = [0.0]
    return now, (lambda: now[0])


def test_one_stall_of_the_machine_does_not_move_the_median(monkeypatch):
    """A call normally takes 1 ms; for the first 0.6 s the machine stalls and calls take 100 ms
    (torch.nn's LSTM on this busy CPU: 48-380 ms instead of 0.1-1.2 ms). The old timer took 5
    calls after a stalled estimate and reported the stall as the median."""
    now, clock = _fake_clock()

    def fn():
        now[0] += 0.100 if now[0] < 0.6 else 0.001

    monkeypatch.setattr(timing.time, "perf_counter", clock)
    med, q20, q80 = timing.cpu_bench(fn, warmup_ms=10, rep_ms=50)  # the CPU defaults
    assert med == pytest.approx(1.0) and q20 == pytest.approx(1.0)
    assert timing.unstable(q20, q80)  # what is left of the stall shows in the spread


def test_implementations_are_timed_interleaved():
    """A slow period of the machine in the middle of the timings hits both implementations."""
    now, clock = _fake_clock()
    slow_calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            slow = 0.04 <= now[0] < 0.07
            slow_calls[name] += slow
            now[0] += 0.003 if slow else 0.001
        return fn

    res = timing.cpu_bench_many({"a": make("a"), "b": make("b")}, warmup_ms=10, rep_ms=50, clock=clock)
    assert set(res) == {"a", "b"}
    assert slow_calls["a"] > 0 and slow_calls["b"] > 0, slow_calls
    for med, q20, q80 in res.values():
        assert med == pytest.approx(1.0) and q20 <= med <= q80


def test_examples_help_exits_without_training():
    res = subprocess.run([sys.executable, "-m", "examples", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage:") and "===" not in res.stdout
    from examples import EXAMPLES

    assert all(name in res.stdout for name in EXAMPLES)
    bad = subprocess.run([sys.executable, "-m", "examples", "no_such_example"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no_such_example" in bad.stderr and "adding_problem" in bad.stderr


def test_unavailable_backend_is_skipped_with_reason(tmp_path):
    def unavailable(case, ref):
        from rnn.backends import BackendUnavailable

        raise BackendUnavailable("backend 'cupy' was requested but cannot run: no CUDA")

    cfg = bench.resolve(bench.build_parser().parse_args(TINY + ["--backends", "torch", "--cells", "gru",
                                                                 "--modes", "forward"]))
    cfg["no_progress"] = True
    rec = bench.run(cfg, {"cupy-like": unavailable})
    (row,) = [r for r in rec["rows"] if r["backend"] == "cupy-like"]
    assert row["status"] == "skipped" and "no CUDA" in row["note"]


def test_parser_rejects_bad_values_and_accepts_aliases():
    parser = bench.build_parser()
    for bad in (["--dtypes", "fp8"], ["--cells", "lstm,xyz"], ["--batches", "0"], ["--backends", "cudnn9"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    args = parser.parse_args(["--dtypes", "bfloat16,float32", "--batches", "1,16"])
    assert args.dtypes == ["bf16", "fp32"] and args.batches == [1, 16]


def test_cpu_grid_options_without_rows_run_a_small_grid():
    cfg = bench.resolve(bench.build_parser().parse_args(["--device", "cpu", "--cells", "gru"]))
    assert cfg["rows"] is None and cfg["cells"] == ["gru"]
    assert cfg["batches"] == [2] and cfg["hiddens"] == [32] and cfg["seq_len"] == 16  # bench.CPU_GRID
    assert cfg["backends"] == ["auto", "torch"]  # no compile, no interpreted Triton by default on a CPU
    assert bench.cases(cfg) == [("gru", "fp32", 2, 32, 16)]
    cfg = bench.resolve(bench.build_parser().parse_args(["--device", "cpu", "--compile"]))
    assert "compile" in cfg["backends"]


CPU_TABLE = [("lstm", 1, 100, 64), ("lstm", 16, 100, 128), ("lstm", 64, 200, 256), ("lstm", 16, 1000, 128),
             ("gru", 1, 100, 64), ("gru", 16, 1000, 128)]


def test_cpu_default_is_the_issue_table():
    """`make bench` on a CPU: the six rows, fp32, auto and torch next to torch.nn, both modes."""
    cfg = bench.resolve(bench.build_parser().parse_args(["--device", "cpu"]))
    assert [(r["cell"], r["batch"], r["seq_len"], r["hidden"]) for r in cfg["rows"]] == CPU_TABLE
    assert cfg["dtypes"] == ["fp32"] and cfg["backends"] == ["auto", "torch"] and cfg["input_size"] is None
    assert cfg["modes"] == ["forward", "forward_backward"] and not cfg["quick"]
    assert cfg["cells"] is None and cfg["seq_len"] is None  # not a grid: the rows say what runs
    assert bench.cases(cfg) == [(c, "fp32", b, h, t) for c, b, t, h in CPU_TABLE]
    assert json.loads(json.dumps(cfg))["rows"] == cfg["rows"]  # the record keeps them as they are
    quick = bench.resolve(bench.build_parser().parse_args(["--device", "cpu", "--quick"]))
    assert quick["backends"] == ["auto", "torch"] and len(quick["rows"]) == 2
    assert all(r["batch"] * r["seq_len"] * r["hidden"] <= 1024 for r in quick["rows"])  # a smoke run


def test_gpu_grid_is_unchanged():
    cfg = dict(bench.GPU_DEFAULTS, rows=None)
    configs = bench.cases(cfg)
    assert len(configs) == 2 * 3 * 4 * 3 and {c[4] for c in configs} == {1024}
    assert configs[:2] == [("lstm", "bf16", 1, 256, 1024), ("lstm", "bf16", 1, 768, 1024)]
    assert "rows" not in bench.GPU_DEFAULTS and "rows" not in bench.GPU_QUICK


def test_row_parser():
    assert bench.parse_rows("lstm:1x100x64, GRU:16X1000x128") == [
        {"cell": "lstm", "batch": 1, "seq_len": 100, "hidden": 64},
        {"cell": "gru", "batch": 16, "seq_len": 1000, "hidden": 128}]
    assert bench.row_label(bench.parse_row(" lstm : 2 x 3 x 4 ")) == "lstm:2x3x4"
    for bad, says in (("", "comma-separated list of rows"), (",", "comma-separated list of rows"),
                      ("lstm", "CELL:BxTxH"), ("16x100x128", "CELL:BxTxH"), ("rnn:1x2x3", "unknown cell 'rnn'"),
                      ("lstm:1x2", "three sizes BxTxH"), ("lstm:1x2x3x4", "three sizes"), ("lstm:", "three sizes"),
                      ("lstm:0x2x3", "B must be a positive integer"), ("lstm:1x-2x3", "T must be"),
                      ("lstm:1x2xabc", "H must be"), ("lstm:1.5x2x3", "B must be"),
                      ("lstm:1x2x3,gru:1x1x1,lstm:1x2x3", "lstm:1x2x3 is given twice")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(says)):
            bench.parse_rows(bad)


def test_bad_rows_are_argparse_errors(capsys):
    parser = bench.build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--rows", "lstm:1x100"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --rows" in err and "three sizes BxTxH" in err
    with pytest.raises(SystemExit, match="--rows cannot be combined with --cells, --seq-len"):
        bench.resolve(parser.parse_args(["--device", "cpu", "--rows", "lstm:1x2x3", "--cells", "gru",
                                         "--seq-len", "4"]))


def test_rows_run_end_to_end_with_ratios(tmp_path, capsys):
    argv = ["--device", "cpu", "--rows", "lstm:1x4x8", "--warmup-ms", "1", "--rep-ms", "3", "--no-progress",
            "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert data["config"]["rows"] == [{"cell": "lstm", "batch": 1, "seq_len": 4, "hidden": 8}]
    assert data["config"]["backends"] == ["auto", "torch"] and data["config"]["argv"] == argv
    rows = data["rows"]
    assert [(r["mode"], r["backend"]) for r in rows] == [
        (m, b) for m in ("forward", "forward_backward") for b in ("torch.nn", "auto", "torch")]
    by = {(r["mode"], r["backend"]): r for r in rows}
    for r in rows:
        assert (r["cell"], r["batch"], r["seq_len"], r["hidden"], r["input_size"]) == ("lstm", 1, 4, 8, 8)
        assert {"ratio_vs_torch_nn", "ratio_unstable", "ms_torch_nn", "speedup_vs_torch_nn"} <= set(r)
        base = by[(r["mode"], "torch.nn")]
        if r["status"] in ("ok", "unstable") and base["status"] in ("ok", "unstable"):
            assert r["ratio_vs_torch_nn"] == pytest.approx(r["ms"] / base["ms"])
            assert r["ratio_unstable"] == ("unstable" in (r["status"], base["status"]))
            if r["speedup_vs_torch_nn"] is not None:
                assert r["speedup_vs_torch_nn"] == pytest.approx(1 / r["ratio_vs_torch_nn"])
        else:
            assert r["ratio_vs_torch_nn"] is None and r["ratio_unstable"] is None
    out = capsys.readouterr().out
    summary = out[out.index("ours / torch.nn (CPU"):]
    head = next(line for line in summary.splitlines() if line.startswith("| cell |"))
    for col in ("torch.nn ms (inference)", "auto / torch.nn (inference)", "torch / torch.nn (inference)",
                "torch.nn ms (training)", "auto / torch.nn (training)", "torch / torch.nn (training)"):
        assert f"| {col} |" in head
    assert "| lstm | fp32 | 1 | 4 | 8 |" in summary


def test_ratio_table_marks_unstable_and_untimed():
    def row(backend, mode, status, ms, ratio=None, unstable=None):
        r = dict.fromkeys(report.ROW_KEYS)
        r.update(cell="gru", mode=mode, dtype="fp32", batch=16, hidden=128, input_size=128, seq_len=1000,
                 backend=backend, status=status, ms=ms, ratio_vs_torch_nn=ratio, ratio_unstable=unstable)
        return r

    rows = [row("torch.nn", "forward", "unstable", 2.0, 1.0, True), row("auto", "forward", "ok", 1.0, 0.5, True),
            row("torch", "forward", "error", None),
            row("torch.nn", "forward_backward", "ok", 4.0, 1.0, False),
            row("auto", "forward_backward", "ok", 3.0, 0.75, False),
            row("torch", "forward_backward", "ok", 6.0, 1.5, False)]
    lines = report.ratio_table(rows).splitlines()
    assert lines[2] == ("| gru | fp32 | 16 | 1000 | 128 | 2.000 (unstable) | 0.50x (unstable) | error | 4.000 "
                        "| 0.75x | 1.50x |")
    assert lines[-1] == ("highest ours / torch.nn: auto 0.75x at gru:16x1000x128 fp32 training; "
                         "torch 1.50x at gru:16x1000x128 fp32 training")


def test_floor_model_by_hand():
    rates = floor.Rates(matmul_flops_per_s={"bf16": 1e12}, copy_bytes_per_s=1e9, barrier_us=None,
                        on_chip_bytes=10**9)
    B, H, T = 4, 8, 10
    est = floor.estimate("lstm", "forward", B, H, H, T, "bf16", rates)
    step_bytes = B * 4 * H * 2 + 3 * B * H * 2  # xg_t read, h write + exchange
    assert est["step_bytes"] == step_bytes and est["w_hh_on_chip"] and est["bound"] == "memory"
    expected_s = T * step_bytes / 1e9 + 2 * T * B * H * 4 * H / 1e12
    assert est["floor_ms"] == pytest.approx(expected_s * 1e3)
    # a slow barrier dominates; W_hh that does not fit on chip is re-read every step
    slow = floor.Rates({"bf16": 1e12}, 1e9, barrier_us=1e3, on_chip_bytes=16)
    est2 = floor.estimate("lstm", "forward", B, H, H, T, "bf16", slow)
    assert est2["bound"] == "barrier" and not est2["w_hh_on_chip"]
    assert est2["step_bytes"] == step_bytes + 4 * H * H * 2
    train = floor.estimate("gru", "forward_backward", B, H, H, T, "bf16", rates)
    assert train["floor_ms"] > floor.estimate("gru", "forward", B, H, H, T, "bf16", rates)["floor_ms"]
    assert floor.estimate("lstm", "forward", B, H, H, T, "fp16", rates)["floor_ms"] is None  # no rate


def test_cpu_timer_shape():
    calls = [0]

    def fn():
        calls[0] += 1
        sum(range(1000))

    med, q20, q80 = timing.cpu_bench(fn, warmup_ms=1, rep_ms=5)
    assert 0 < q20 <= med <= q80
    assert calls[0] >= timing.MIN_REPS + 1  # warm-up + at least MIN_REPS timed calls


def test_dockerfile_is_pinned_and_runs_the_benchmark():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert len(froms) == 1
    image = froms[0].split()[1]
    name, _, tag = image.rpartition(":")
    assert name == "pytorch/pytorch" and tag and tag != "latest"
    version = re.match(r"^(\d+)\.(\d+)\.(\d+)-cuda12\.\d+-cudnn9-devel$", tag)
    assert version, tag
    assert (int(version[1]), int(version[2])) >= (2, 5)
    # it installs the extras that exist in pyproject.toml
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    install = next(ln for ln in lines if "pip install" in ln)
    assert "cuda12" in install and "bench" in install and {"cuda12", "bench"} <= set(extras)
    # the command it runs exists and its arguments parse
    (cmd,) = [ln for ln in lines if ln.upper().startswith("CMD ")]
    argv = json.loads(cmd[4:])
    assert argv[:3] == ["python", "-m", "profiling"]
    assert (ROOT / "profiling" / "__main__.py").is_file()
    args = bench.build_parser().parse_args(argv[3:])
    assert args.out == "/results"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignore


def test_bidirectional_cases_time_both_directions_checked_against_torch_nn():
    """--bidirectional: torch.nn(bidirectional=True) and our drop-ins (both directions as one call),
    every row checked against the float64 oracle before it is timed; the one-direction baselines
    (compiled step loop) refuse with a reason, and no one-direction floor sits beside the rows."""
    cfg = bench.resolve(bench.build_parser().parse_args(TINY + ["--backends", "torch", "--compile",
                                                               "--bidirectional"]))
    assert cfg["bidirectional"] is True
    rec = bench.run(cfg)
    rows = {(r["cell"], r["mode"], r["backend"]): r for r in rec["rows"]}
    for cell in ("lstm", "gru"):
        for mode in ("forward", "forward_backward"):
            ours, ref = rows[(cell, mode, "torch")], rows[(cell, mode, "torch.nn")]
            assert ours["status"] in ("ok", "unstable") and ours["max_err"] < 1e-4, ours
            assert "bidirectional=True" in ref["reference_impl"] and ours["floor_ms"] is None
            assert rows[(cell, mode, "compile")]["status"] == "skipped"
            assert "one direction" in rows[(cell, mode, "compile")]["note"]
