"""The one-shot GPU harness (profiling/harness.py, profiling/gpu_session.sh), run as a dry run on
the CPU: the same steps and files as on a GPU, so that it works the day a GPU is lent.

One dry run (module fixture) with the test hook FUSED_RNN_HARNESS_TEST_FAULT making one case hang
and one crash; the tests read its files. A grid run stopped after a few cases and continued with
--resume checks that recorded cases are skipped. Plus the pure parts: pytest-output parsing,
the kernel-path table, profiling.static's estimates beside the measurements.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiling import harness

ROOT = Path(__file__).resolve().parents[1]
HANG = "headline|gru|fp16|*|forward|torch"  # the torch path of one configuration sleeps forever
CRASH = "headline|lstm|bf16|*|forward_backward|torch"  # ... and one aborts its worker
CASE_TIMEOUT = 25  # seconds: well above a tiny CPU case on a busy machine, the cost of the hang


def _env(tmp):
    env = dict(os.environ)
    env.update({harness.CACHE_ENV: str(tmp / "cache"), "PYTHON": sys.executable,
                harness.FAULT_ENV: f"hang:{HANG};crash:{CRASH}"})
    env.pop("OUT", None)
    return env


def _records(out):
    lines = (out / harness.FILES["jsonl"]).read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line parses


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    out = tmp / "out"
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(ROOT / "profiling" / "gpu_session.sh"), "--dry-run",
                          "--case-timeout", str(CASE_TIMEOUT), str(out)],
                         cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    print(f"dry run: {wall:.0f} s wall")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, _records(out), res.stdout, wall


def test_dry_run_writes_its_files(dry_run):
    out, records, stdout, wall = dry_run
    names = sorted(p.name for p in out.iterdir())
    # what the device tool returns: at most 8 plain files, simple names, no folders
    assert all((out / n).is_file() for n in names), names
    assert len(names) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names), names
    for key in ("jsonl", "summary", "record", "log", "tests"):
        assert harness.FILES[key] in names, (key, names)
        assert (out / harness.FILES[key]).stat().st_size > 0, key
    kinds = {r["kind"] for r in records}
    assert {"session", "env", "device", "case", "barrier", "tests", "ncu", "step", "end"} <= kinds, kinds
    end = [r for r in records if r["kind"] == "end"][-1]
    assert end["status"] == "done" and end["seconds"] <= 150, end  # within the dry run's budget
    # the same steps as on a GPU, the GPU-only ones recorded as skipped
    steps = {r["step"]: r["status"] for r in records if r["kind"] == "step"}
    assert set(steps) == {"env", "warm", "headline", "barrier", "tests", "ncu"}, steps
    assert {r["status"] for r in records if r["kind"] in ("barrier", "ncu")} == {"skipped"}
    assert "# GPU session" in stdout and "## Headline" in stdout  # the summary ends the output


def test_headline_rows_checked_and_timed(dry_run):
    out, records, _, _ = dry_run
    cases = {r["key"]: r for r in records if r["kind"] == "case"}
    expected = harness.bench_cases("headline", harness.DRY_HEADLINE, [p.name for p in harness.PATHS])
    assert set(cases) == {c["key"] for c in expected}
    faults = {HANG.replace("*", "B2|H16|T8"), CRASH.replace("*", "B2|H16|T8")}
    for key, r in cases.items():
        if key in faults:
            continue
        if r["path"] in (harness.REFERENCE, "torch"):
            # checked against the float64 oracle (an error and its tolerance), then timed
            assert r["status"] in ("ok", "unstable"), r
            assert 0 <= r["max_err"] <= r["tolerance"], r
            assert r["us_per_step"] > 0 and r["ms"] > 0, r
        else:
            assert r["status"] == "skipped" and "needs a CUDA GPU" in r["note"], r
    ok = [r for r in cases.values() if r["path"] == "torch" and r["status"] == "ok" and r["us_per_step_torch_nn"]]
    for r in ok:
        assert r["speedup_vs_torch_nn"] == pytest.approx(r["us_per_step_torch_nn"] / r["us_per_step"], rel=1e-6)


def test_a_hang_is_recorded_and_the_harness_goes_on(dry_run):
    out, records, _, _ = dry_run
    cases = [r for r in records if r["kind"] == "case"]
    keys = [r["key"] for r in cases]
    hang_key, crash_key = HANG.replace("*", "B2|H16|T8"), CRASH.replace("*", "B2|H16|T8")
    hang = cases[keys.index(hang_key)]
    assert hang["status"] == "hang" and f"no result within {CASE_TIMEOUT} s" in hang["note"], hang
    assert (hang["cell"], hang["dtype"], hang["batch"], hang["hidden"], hang["mode"], hang["path"]) == \
        ("gru", "fp16", 2, 16, "forward", "torch")
    crash = cases[keys.index(crash_key)]
    assert crash["status"] == "crash" and "exited with code" in crash["note"], crash
    # every case after them was still run, in a new worker; no other case hung
    after = [r for r in cases[keys.index(hang_key) + 1:] if r["path"] in (harness.REFERENCE, "torch")]
    assert after and all(r["status"] in ("ok", "unstable") for r in after), after
    assert [r["key"] for r in cases if r["status"] in ("hang", "crash")] == [crash_key, hang_key]
    summary = (out / harness.FILES["summary"]).read_text()
    assert "HANG" in summary and hang_key in summary and "CRASH" in summary


def test_summary_and_record(dry_run):
    out, records, _, _ = dry_run
    summary = (out / harness.FILES["summary"]).read_text()
    header = next(line for line in summary.splitlines() if line.startswith("| cell | dtype | mode |"))
    assert [c.strip() for c in header.strip("|").split("|")][3:] == [harness.REFERENCE] + [p.name for p in harness.PATHS]
    table = [line for line in summary.splitlines() if re.match(r"\| (lstm|gru) \| (bf16|fp16) \|", line)]
    assert len(table) == 8, table  # 2 cells x 2 dtypes x 2 modes
    both = [line for line in summary.splitlines() if line.startswith("| lstm x2 (bidirectional) | bf16 |")]
    assert len(both) == 2, both  # one bidirectional layer, both modes
    # the record is a benchmark record: profiling.plot reads it
    from profiling import plot

    rows = plot.load_rows([out / harness.FILES["record"]])
    (device_rows,) = rows.values()
    assert len(device_rows) == len([r for r in records if r["kind"] == "case"])


def test_gpu_tests_step_ran_pytest_per_file(dry_run):
    out, records, _, _ = dry_run
    tests = {r["file"]: r for r in records if r["kind"] == "tests"}
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py")
             if "mark." + "gpu" in p.read_text()}
    assert set(tests) == files and files
    log = (out / harness.FILES["tests"]).read_text()
    for name, r in tests.items():
        # on a CPU every GPU test is skipped by conftest: pytest ran, collected and skipped them
        assert r["status"] == "ok" and r["counts"].get("skipped", 0) > 0, r
        assert f"-m gpu -v --durations=15 -rfEs -p no:cacheprovider {name}" in log


def test_grid_resumes_where_it_stopped(tmp_path):
    env = _env(tmp_path)
    env.pop(harness.FAULT_ENV)
    cmd = [sys.executable, "-m", "profiling.harness", "--dry-run", "--grid", "--paths", "torch,cupy_mma"]
    first, second = tmp_path / "first", tmp_path / "second"
    subprocess.run(cmd + ["--max-cases", "4", str(first)], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=600)
    done = [r for r in _records(first) if r["kind"] == "case"]
    assert len(done) == 4
    # the next command on another machine: a new OUT, the last results.jsonl carried over
    res = subprocess.run(cmd + ["--resume", str(first / harness.FILES["jsonl"]), str(second)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    cases = [r for r in _records(second) if r["kind"] == "case"]
    grid = harness.bench_cases("grid", harness.DRY_GRID, ["cupy_mma", "torch"])
    keys = [r["key"] for r in cases]
    assert sorted(keys) == sorted(c["key"] for c in grid)  # all of it, each case once
    first_session = done[0]["session"]
    assert {r["key"] for r in cases if r["session"] == first_session} == {r["key"] for r in done}
    assert "complete" in (second / harness.FILES["summary"]).read_text()


# --- the pure parts ----------------------------------------------------------------------------
def test_parse_pytest_names_the_test_that_hung():
    text = ("tests/test_x.py::test_a[1] PASSED                         [ 25%]\n"
            "tests/test_x.py::test_b SKIPPED (needs a CUDA GPU)        [ 50%]\n"
            "tests/test_x.py::test_c[bf16-768] ")
    parsed = harness.parse_pytest(text)
    assert parsed["running"] == "tests/test_x.py::test_c[bf16-768]"
    assert parsed["counts"] == {"passed": 1, "skipped": 1} and parsed["summary"] == ""
    done = harness.parse_pytest(
        "tests/test_x.py::test_a PASSED [ 50%]\ntests/test_x.py::test_c FAILED [100%]\n"
        "============ slowest 15 durations ============\n3.21s call     tests/test_x.py::test_a\n"
        "FAILED tests/test_x.py::test_c - AssertionError: boom\n"
        "===== 1 failed, 1 passed, 3 deselected in 4.12s =====\n")
    assert done["running"] is None and done["failed"] == ["tests/test_x.py::test_c"]
    assert done["counts"] == {"failed": 1, "passed": 1, "deselected": 3}
    assert done["slowest"] == ["3.21s call     tests/test_x.py::test_a"]


def test_path_table_covers_the_registry_and_takes_new_kernels():
    from profiling import report
    from rnn import backends

    assert harness.REFERENCE == report.BASELINE
    paths = harness.all_paths(backends.NAMES)
    assert paths[:len(harness.PATHS)] == harness.PATHS
    assert {n for n in backends.NAMES if n != "auto"} <= {p.backend for p in paths}  # every backend runs
    extra = harness.all_paths(list(backends.NAMES) + ["cluster"])
    assert extra[-1].name == "cluster" and extra[-1].backend == "cluster" and extra[-1].gpu_only
    grid_paths = [p.name for p in harness.PATHS if p.grid]
    assert grid_paths == ["triton_persistent", "triton_per_step", "cupy_mma", "cupy_fma", "cupy_cluster", "cupy_auto"]
    cases = harness.bench_cases("grid", harness.GRID, grid_paths)
    per_config = 1 + len(grid_paths)  # the reference, then every path
    assert len({c["key"] for c in cases}) == len(cases) == 2 * 3 * 4 * 3 * 2 * per_config
    assert all(cases[k]["path"] == harness.REFERENCE for k in range(0, len(cases), per_config))


def test_cupy_paths_pin_their_kernel_family():
    """On sm_90 "auto" prefers the cluster kernel: each CuPy path sets FUSED_RNN_CUPY_KERNEL so it
    runs what its name says, and the loader accepts the value."""
    import kernels.cupy as kc

    paths = {p.name: p for p in harness.PATHS}
    family = {n: dict(paths[n].env).get(kc.KERNEL_ENV) for n in ("cupy_mma", "cupy_fma", "cupy_cluster")}
    assert family == {"cupy_mma": "grid", "cupy_fma": "grid", "cupy_cluster": "cluster"}
    assert all(f in kc.FAMILIES for f in family.values())


def test_static_estimate_beside_the_path():
    rows = [dict(backend="triton", kernel="triton.forward_kernel[persistent]", cell="lstm", dtype="bf16",
                 batch=16, hidden=768, direction=d, us_per_step_est=e) for d, e in (("forward", 2.0), ("backward", 3.5))]
    rows.append(dict(rows[0], backend="cupy", kernel="cupy.rnn_forward[fma]", us_per_step_est=9.0))
    rows.append(dict(rows[0], backend="cupy", kernel="cupy.rnn_cluster_forward[mma]", us_per_step_est=4.0))
    rows.append(dict(rows[0], backend="cupy", kernel="cupy.rnn_forward[mma]", us_per_step_est=6.0))
    paths = {p.name: p for p in harness.PATHS}
    args = ("lstm", "bf16", 16, 768)
    assert harness.static_estimate(rows, paths["triton_persistent"], *args, "forward") == 2.0
    assert harness.static_estimate(rows, paths["triton_persistent"], *args, "forward_backward") == 5.5
    assert harness.static_estimate(rows, paths["triton_per_step"], *args, "forward") is None
    assert harness.static_estimate(rows, paths["cupy_fma"], *args, "forward") == 9.0
    # the cluster row (listed first) is not the grid-wide mma path's, and the other way round
    assert harness.static_estimate(rows, paths["cupy_mma"], *args, "forward") == 6.0
    assert harness.static_estimate(rows, paths["cupy_cluster"], *args, "forward") == 4.0
    assert harness.static_estimate(rows, paths["cupy_cluster"], *args, "forward_backward") is None
    assert harness.static_estimate(rows, paths["cupy_fma"], *args, "forward_backward") is None  # no backward row
    assert harness.static_estimate(rows, paths["torch"], *args, "forward") is None


def test_barrier_worker_records_every_program_count(monkeypatch):
    """The barrier step's worker needs a GPU to measure; its bookkeeping does not: a stand-in
    kernels.triton.barrier answers, one program count fails, every count gets its row."""
    import types

    def measure_barrier(n_programs, n_iters=1000, device="cuda"):
        if n_programs == 64:
            raise RuntimeError("the barrier probe with 64 programs timed out")
        return 0.5 + n_programs / 100

    fake = types.ModuleType("kernels.triton.barrier")
    fake.measure_barrier = measure_barrier
    monkeypatch.setitem(sys.modules, "kernels.triton.barrier", fake)
    monkeypatch.setattr(harness, "_cuda_broken", lambda device: False)
    events = []
    spec = dict(kind="barrier", n_iters=10, cases=[dict(key=f"barrier|P{n}", n_programs=n) for n in (16, 64, 132)])
    harness._worker_barrier(spec, lambda **ev: events.append(ev))
    assert [e["ev"] for e in events] == ["ready"] + ["start", "row"] * 3
    rows = {e["row"]["n_programs"]: e["row"] for e in events if e["ev"] == "row"}
    assert rows[16]["us_per_barrier"] == pytest.approx(0.66) and rows[16]["status"] == "ok"
    assert rows[132]["source"] == "kernels.triton.barrier.measure_barrier"
    assert rows[64]["status"] == "error" and "timed out" in rows[64]["note"] and rows[64]["us_per_barrier"] is None


def test_default_out_on_a_machine_without_a_gpu_is_git_ignored(monkeypatch):
    """`make gpu-check` on a CPU runs as a dry run, so its files must not land in profiling/results/
    where they would show up as untracked records of a GPU run."""
    monkeypatch.delenv("OUT", raising=False)
    monkeypatch.setattr(harness, "_nvidia_device_present", lambda: False)
    args = harness.resolve(harness.build_parser().parse_args([]))
    assert Path(args.out).parent.name == "local" and args.out.endswith("-dry")
    monkeypatch.setattr(harness, "_nvidia_device_present", lambda: True)
    args = harness.resolve(harness.build_parser().parse_args([]))
    assert Path(args.out).parent.name == "results" and "gpu-" in Path(args.out).name
    monkeypatch.undo()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every device hidden: no GPU for this run
    assert harness._nvidia_device_present() is False
