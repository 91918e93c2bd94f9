"""The benchmark suite on a CPU: the CLI end to end on a tiny grid, the correctness gate that
keeps wrong implementations out of the timings, the plot script, the floor model, the timer,
and a static check of the Dockerfile."""
import copy
import json
import re
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


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    extra = {"exact": _exact_copy, "perturbed": _perturbed, "nan": _nan_output,
             "raises": _raises, "cannot": _cannot}
    assert bench.main(TINY + ["--backends", "torch", "--out", str(out)], extra_impls=extra) == 0
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def _rows(path, **match):
    rows = json.loads(path.read_text())["rows"]
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_cli_writes_a_complete_record(record, capsys):
    data = json.loads(record.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    for key in ("device", "versions", "git_commit", "date", "config", "rows", "rates"):
        assert key in data, key
    assert data["device"].startswith("cpu: ")
    assert {"torch", "triton", "cupy", "cuda"} <= set(data["versions"])
    assert data["versions"]["torch"] == torch.__version__
    assert re.match(r"^\d{4}-\d\d-\d\dT", data["date"])
    assert data["config"]["seq_len"] == 5 and data["config"]["backends"] == ["torch"]
    rows = data["rows"]
    # 2 cells x 2 modes x (cudnn, torch, 5 injected)
    assert len(rows) == 2 * 2 * 7
    for r in rows:
        assert set(report.ROW_KEYS) <= set(r), set(report.ROW_KEYS) - set(r)
        assert r["status"] in report.STATUSES
        assert r["mode"] in ("forward", "forward_backward")
        assert (r["batch"], r["hidden"], r["seq_len"], r["dtype"]) == (3, 7, 5, "fp32")
        assert r["reference_impl"].startswith("torch.nn.")
        assert r["peak_mem_bytes"] is None  # CPU
    for r in _rows(record, backend="cudnn"):
        assert r["status"] == "ok", r
        assert r["max_err"] < 1e-5 and r["speedup_vs_cudnn"] == pytest.approx(1.0)
        assert r["ms_q20"] <= r["ms"] <= r["ms_q80"] and r["ms"] > 0
        assert r["floor_ms"] > 0 and r["pct_of_floor"] > 0
    for r in _rows(record, backend="torch"):  # our drop-in must match torch.nn
        assert r["status"] in ("ok", "skipped"), r


def test_exact_copy_passes_the_check(record):
    rows = _rows(record, backend="exact")
    assert rows and all(r["status"] == "ok" and r["ms"] > 0 for r in rows)
    for r in rows:
        assert r["speedup_vs_cudnn"] == pytest.approx(r["ms_cudnn"] / r["ms"])


def test_wrong_implementation_is_reported_wrong_and_not_timed(record):
    rows = _rows(record, backend="perturbed")
    assert len(rows) == 4
    for r in rows:
        assert r["status"] == "wrong", r
        assert r["max_err"] > r["tolerance"] > 0
        assert r["ms"] is None and r["speedup_vs_cudnn"] is None and r["pct_of_floor"] is None
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


def test_plot_draws_a_png(record, tmp_path):
    assert plot.main([str(record), "--out", str(tmp_path)]) == 0
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_cpu_defaults_are_a_small_smoke_grid():
    cfg = bench.resolve(bench.build_parser().parse_args(["--device", "cpu"]))
    assert cfg["backends"] == ["torch"]  # no compile, no interpreted Triton by default on a CPU
    assert cfg["dtypes"] == ["fp32"] and cfg["seq_len"] <= 16 and max(cfg["hiddens"]) <= 64
    cfg = bench.resolve(bench.build_parser().parse_args(["--device", "cpu", "--compile"]))
    assert "compile" in cfg["backends"]


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
    med, q20, q80 = timing.cpu_bench(lambda: sum(range(1000)), warmup_ms=1, rep_ms=5)
    assert 0 < q20 <= med <= q80


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


def test_gpu_session_script_runs_on_cpu(tmp_path):
    """profiling/gpu_session.sh is what a GPU session runs in one call; on a CPU it still writes
    every file (GPU tests skipped, smoke grids), so a broken script shows up here, not there."""
    import subprocess

    from kernels import cupy as kc

    root = Path(__file__).resolve().parents[1]
    script = (root / "profiling" / "gpu_session.sh").read_text()
    assert f"{kc.MMA_ENV}=off" in script
    res = subprocess.run(["bash", str(root / "profiling" / "gpu_session.sh"), str(tmp_path)], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "bench: exit 0" in res.stdout and "bench (cupy FMA path): exit 0" in res.stdout, res.stdout[-2000:]
    for name in ("gpu-env.txt", "gpu-tests.txt", "bench-quick.md", "fma/bench-quick-fma.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(list(tmp_path.glob("*.json"))) == 1 and len(list((tmp_path / "fma").glob("*.json"))) == 1
