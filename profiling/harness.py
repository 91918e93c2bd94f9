"""The one-shot GPU harness: what runs in the first minutes a GPU is lent (`make gpu-check`,
`bash profiling/gpu_session.sh [options] [OUT]`, `python -m profiling.harness [options] [OUT]`).

It runs from the repository root with nothing installed (PYTHONPATH) and no network, fits one
10-minute command (global budget, default 540 s; every step checks the time left), and survives
hung or crashing kernels: every risky case runs in a worker subprocess with its own timeout, a
case that hangs is recorded as `hang` (a crash as `crash`) with its configuration, the worker is
killed and a fresh one goes on with the remaining cases. Results are appended to OUT/results.jsonl
as they come (one JSON object a line, flushed), so a kill loses at most the case in flight.

Default mode, in order:
  1. env       nvidia-smi, versions, commit; a probe subprocess reports the device as torch sees it
  2. warm      compile caches filled in parallel (tiny T; kernels do not specialise on T)
  3. headline  B16 H768 T1024, lstm/gru x bf16/fp16 x forward/forward_backward: torch.nn (cuDNN)
               and every path of PATHS in the same process, each checked against the float64
               oracle first (profiling.bench's check), in us per step, with profiling.static's
               estimate beside it when that module exists; then one bidirectional layer (LSTM
               bf16: torch.nn bidirectional=True against both directions as one call), last
  4. barrier   grid-barrier latency vs number of programs (16 ... all SMs)
  5. tests     `pytest -m gpu -v --durations` per test file, each with a timeout (a hang names
               its test)
  6. ncu       Nsight Compute on the persistent kernels, if ncu is installed (short, bounded)
--grid: the full benchmark grid (lstm,gru x bf16,fp16,fp32 x B 1,16,64,256 x H 256,768,1024 x
T 1024 x both modes x torch.nn and every path but the torch backend), resumable: cases already in
OUT/results.jsonl or in a --resume file are skipped (and copied into OUT/results.jsonl), so
consecutive commands continue where the last one stopped. With the device tool, whose $OUT starts
empty: copy the results.jsonl that came back into the checkout where git does not ignore it
(untracked files travel, ignored ones do not), e.g. profiling/results/gpu-grid.jsonl, and run
`bash profiling/gpu_session.sh --grid --resume profiling/results/gpu-grid.jsonl` next time; the
summary says when the grid is complete.
--dry-run: the same steps on the CPU (CUDA hidden), torch backend, tiny shapes; GPU-only cases and
steps are recorded as skipped. tests/test_harness.py runs it. Without --dry-run on a machine with
no CUDA device, the harness notices (the probe) and runs as a dry run.
OUT: the positional argument, else $OUT (the device tool's folder), else
profiling/results/gpu-<date> (dry run: profiling/results/local/gpu-<date>-dry, git-ignored).

Files in OUT (never more than six, flat, plain names, so the device tool returns all of them):
  results.jsonl  every record, appended as it comes   summary.md  the human summary (headline table)
  record.json    case rows as a benchmark record (python -m profiling.plot reads it)
  harness.log    this log plus every worker's stderr   tests.log   pytest output   ncu.txt  ncu output
Compile caches (TRITON_CACHE_DIR, CUPY_CACHE_DIR) live outside OUT in --cache-dir (default
$FUSED_RNN_HARNESS_CACHE or <tmp>/fused-rnn-harness-cache), shared by every subprocess.

This module imports no torch at the top: the parent stays light and never touches the GPU; the
worker functions (after `--worker`) import torch and the profiling modules.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import gc
import importlib
import importlib.util
import itertools
import json
import math
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAULT_ENV = "FUSED_RNN_HARNESS_TEST_FAULT"  # test hook: "hang:PATTERN;crash:PATTERN" on case keys
CACHE_ENV = "FUSED_RNN_HARNESS_CACHE"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "fused-rnn-harness-cache"
FILES = dict(jsonl="results.jsonl", summary="summary.md", record="record.json", log="harness.log",
             tests="tests.log", ncu="ncu.txt")
DONE = ("ok", "unstable", "wrong", "skipped", "error", "hang", "crash")  # a case with one of these is not re-run
CUDA_BROKEN_EXIT = 3  # a worker exits with this when an error left the CUDA context unusable


# --- the kernel paths: one table --------------------------------------------------------------
@dataclass(frozen=True)
class KernelPath:
    """One way of running the recurrence. The worker builds `factory(**kwargs)` (with `env` set)
    and installs it under `backend` in rnn.backends' registry while the case runs; factory ""
    means the registry's own object. `static_kernel`: substrings of profiling.static's `kernel`
    names that belong to this path (to put its estimate beside the measurement)."""
    name: str
    backend: str
    factory: str = ""
    kwargs: tuple = ()
    env: tuple = ()
    gpu_only: bool = True
    compiles: bool = True  # has kernels to compile (what the warm step is for)
    grid: bool = True  # part of the --grid benchmark on a GPU
    static_kernel: tuple = ()
    about: str = ""


PATHS = (
    # "on": the backend raises rather than run per step, so this label is never wrong
    KernelPath("triton_persistent", "triton", "kernels.triton:TritonBackend",
               env=(("FUSED_RNN_TRITON_PERSISTENT", "on"),), static_kernel=("persist",),
               about="Triton, one launch for all T, W_hh on chip, grid barrier"),
    KernelPath("triton_per_step", "triton", "kernels.triton:TritonBackend", (("per_step", True),),
               env=(("FUSED_RNN_TRITON_PERSISTENT", "off"),), static_kernel=("step",),
               about="Triton, one fused launch per step, CUDA-graph replay"),
    # the CuPy paths pin the kernel family (FUSED_RNN_CUPY_KERNEL), so that on sm_90 "auto"'s
    # preference for the cluster kernel cannot turn cupy_mma / cupy_fma into something else;
    # static_kernel names the family too: "rnn_forward[" is never part of "rnn_cluster_forward["
    KernelPath("cupy_mma", "cupy", "kernels.cupy:CupyBackend",
               env=(("FUSED_RNN_CUPY_KERNEL", "grid"), ("FUSED_RNN_CUPY_MMA", "auto")),
               static_kernel=("rnn_forward[mma]", "rnn_backward[mma]", "rnn_forward[tf32 mma]",
                              "rnn_backward[tf32 mma]"),
               about="CUDA C cooperative grid-wide kernel, tensor-core (mma.sync) matvec"),
    KernelPath("cupy_fma", "cupy", "kernels.cupy:CupyBackend",
               env=(("FUSED_RNN_CUPY_KERNEL", "grid"), ("FUSED_RNN_CUPY_MMA", "off")),
               static_kernel=("rnn_forward[fma]", "rnn_backward[fma]"),
               about="CUDA C cooperative grid-wide kernel, FMA matvec"),
    KernelPath("cupy_cluster", "cupy", "kernels.cupy:CupyBackend",
               env=(("FUSED_RNN_CUPY_KERNEL", "cluster"), ("FUSED_RNN_CUPY_MMA", "auto")),
               static_kernel=("rnn_cluster_",),
               about="CUDA C thread-block cluster (sm_90): W_hh on 8-16 SMs, h pushed through distributed "
                     "shared memory, mbarrier waits instead of a grid barrier"),
    # what "auto" runs: the cluster kernel for the direction that fits, the grid-wide one otherwise
    KernelPath("cupy_auto", "cupy", "kernels.cupy:CupyBackend",
               env=(("FUSED_RNN_CUPY_KERNEL", "auto"), ("FUSED_RNN_CUPY_MMA", "auto")),
               static_kernel=("rnn_cluster_", "rnn_forward[", "rnn_backward["),
               about="CUDA C as \"auto\" picks it per direction: cluster kernel where it fits, else grid-wide"),
    # the chain's middle link (explicit backward in PyTorch ops), not a contender: headline only
    KernelPath("torch", "torch", gpu_only=False, compiles=False, grid=False,
               about="PyTorch ops per step (the reference backend)"),
)
REFERENCE = "torch.nn"  # the baseline, in the same process: cuDNN on a GPU (report.BASELINE)


def all_paths(registry_names=()):
    """PATHS plus a plain row for every backend registered in rnn.backends that PATHS does not
    cover, so a newly registered kernel is benchmarked without editing this file."""
    covered = {p.backend for p in PATHS}
    extra = tuple(KernelPath(n, n) for n in registry_names if n not in covered and n != "auto")
    return PATHS + extra


# --- shapes -----------------------------------------------------------------------------------
HEADLINE = dict(cells=["lstm", "gru"], dtypes=["bf16", "fp16"], batches=[16], hiddens=[768], seq_len=1024,
                bidirectional=[("lstm", "bf16")])  # (cell, dtype) timed as one bidirectional layer too
GRID = dict(cells=["lstm", "gru"], dtypes=["bf16", "fp16", "fp32"], batches=[1, 16, 64, 256],
            hiddens=[256, 768, 1024], seq_len=1024)
DRY_HEADLINE = dict(HEADLINE, batches=[2], hiddens=[16], seq_len=8)
DRY_GRID = dict(cells=["lstm", "gru"], dtypes=["fp32"], batches=[1, 2], hiddens=[8], seq_len=6)
MODES = ("forward", "forward_backward")
BARRIER_PROGRAMS = (16, 32, 64, 96, 132)
WARM_SEQ_LEN = 32  # warm-up length: a multiple of 16 like T=1024, so Triton specialises alike


def case_key(step, cell, dtype, batch, hidden, seq_len, mode, path, directions=1):
    both = "|bidirectional" if directions == 2 else ""
    return f"{step}|{cell}|{dtype}|B{batch}|H{hidden}|T{seq_len}|{mode}|{path}{both}"


def bench_cases(step, shapes, paths, modes=MODES):
    """Every case of a step, grouped by configuration (one oracle per configuration), the
    reference first in each (configuration, mode); the bidirectional configurations of
    shapes["bidirectional"] last."""
    configs = [(c, d, b, h, 1) for c, d, b, h in itertools.product(shapes["cells"], shapes["dtypes"],
                                                                   shapes["batches"], shapes["hiddens"])]
    configs += [(c, d, b, h, 2) for (c, d), b, h in itertools.product(shapes.get("bidirectional", ()),
                                                                      shapes["batches"], shapes["hiddens"])]
    out = []
    for cell, dtype, batch, hidden, directions in configs:
        for mode in modes:
            for path in (REFERENCE, *paths):
                out.append(dict(key=case_key(step, cell, dtype, batch, hidden, shapes["seq_len"], mode, path,
                                             directions),
                                step=step, cell=cell, dtype=dtype, batch=batch, hidden=hidden,
                                seq_len=shapes["seq_len"], mode=mode, path=path, directions=directions))
    return out


def _config(case):
    """What one oracle serves: (cell, dtype, batch, hidden, seq_len, directions)."""
    return (case["cell"], case["dtype"], case["batch"], case["hidden"], case["seq_len"], case.get("directions", 1))


def _group(case):
    return _config(case) + (case["mode"],)


# --- pytest output ------------------------------------------------------------------------------
_RESULT_WORDS = ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS")


def parse_pytest(text):
    """From `pytest -v --durations` output: the summary line and counts (counted from the -v lines
    when the run was cut off before its summary), failures, the slowest tests and, when the run
    was cut off, the test that was running (its node id was printed, its result never was)."""
    lines = text.splitlines()
    summary = next((ln.strip("= ").strip() for ln in reversed(lines)
                    if re.match(r"^=+ .* in [\d.]+s", ln.strip())), "")
    counts = {w.rstrip("s"): int(n) for n, w in
              re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", summary)}
    running, seen = None, {}
    for ln in lines:
        m = re.match(r"^(\S+\.py::\S+)", ln)
        if m:
            word = next((w for w in _RESULT_WORDS if f" {w}" in ln), None)
            running = None if word else m.group(1)
            if word:
                seen[word.lower()] = seen.get(word.lower(), 0) + 1
    failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    slowest = [ln.strip() for ln in lines if re.match(r"^\s*[\d.]+s (call|setup|teardown)\s", ln)][:10]
    return dict(summary=summary, counts=counts if summary else seen, running=running, failed=failed,
                slowest=slowest)


# --- profiling.static's estimates -----------------------------------------------------------------
def static_estimate(rows, path, cell, dtype, batch, hidden, mode, directions=1):
    """us per step estimated by profiling.static for this path: forward, or forward + backward
    for forward_backward; of the launch of both directions for a bidirectional case; None when no
    row matches."""
    if not path.static_kernel:
        return None

    def pick(direction):
        for r in rows:
            kernel = str(r.get("kernel", "")).lower()
            if (r.get("backend") == path.backend and r.get("cell") == cell and r.get("dtype") == dtype
                    and r.get("batch") == batch and r.get("hidden") == hidden and r.get("direction") == direction
                    and any(s in kernel for s in path.static_kernel)
                    and ("both directions" in kernel) == (directions == 2)
                    and r.get("us_per_step_est") is not None):
                return float(r["us_per_step_est"])
        return None

    fwd = pick("forward")
    if mode == "forward" or fwd is None:
        return fwd
    bwd = pick("backward")
    return None if bwd is None else fwd + bwd


def load_static_rows(paths):
    rows = []
    for p in paths:
        try:
            rows.extend(json.loads(Path(p).read_text()).get("rows", []))
        except (OSError, ValueError, AttributeError):
            continue
    return rows


# --- the parent: session, steps, summary ---------------------------------------------------------
def _now_stamp():
    return _dt.datetime.now().astimezone()


def _git(*args):
    try:
        res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return res.stdout.strip() if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _dist_version(*names):
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _run_text(cmd, timeout):
    """(returncode, output) of a short command; never raises."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return res.returncode, (res.stdout + res.stderr).strip()
    except FileNotFoundError:
        return None, f"{cmd[0]}: not found"
    except subprocess.TimeoutExpired:
        return None, f"{' '.join(cmd)}: no answer within {timeout} s"
    except OSError as exc:
        return None, f"{cmd[0]}: {exc}"


def _kill_group(proc):
    """Kill the worker we started and everything it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


class Session:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget
        self.started = _now_stamp()
        self.id = self.started.strftime("%Y%m%d-%H%M%S")
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = Path(args.cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.records = []
        self.probe = {}
        self.procs = set()  # live children
        self.static_proc = None
        self.static_dir = None
        jsonl = self.out / FILES["jsonl"]
        self._load(jsonl, copy=False)
        for extra in args.resume or []:
            for p in sorted(Path(extra).glob("*.jsonl")) if Path(extra).is_dir() else [Path(extra)]:
                self._load(p, copy=True)
        self.log_file = open(self.out / FILES["log"], "a", buffering=1)

    # ---- records -------------------------------------------------------------------------
    def _load(self, path, copy):
        """Earlier records: those already in OUT/results.jsonl, and --resume files (copied into
        it so the file that comes back holds everything done so far)."""
        if not path.is_file():
            if copy:
                raise SystemExit(f"--resume {path}: no such file")
            return
        seen = {(r.get("key"), r.get("session")) for r in self.records}
        new = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                print(f"{path}:{n}: not JSON, ignored (a line cut off by a kill?)", file=sys.stderr)
                continue
            if copy and (rec.get("kind") != "case" or (rec.get("key"), rec.get("session")) in seen):
                continue
            new.append(rec)
        self.records.extend(new)
        if copy and new:
            with open(self.out / FILES["jsonl"], "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)

    def record(self, kind, **fields):
        rec = dict(kind=kind, session=self.id, t=round(self.elapsed(), 2), **fields)
        line = json.dumps(_clean(rec), default=str)
        with self.lock:
            with open(self.out / FILES["jsonl"], "a") as f:  # one write per line: a kill loses nothing
                f.write(line + "\n")
                f.flush()
            self.records.append(rec)
        return rec

    def done_keys(self):
        return {r["key"] for r in self.records if r.get("kind") == "case" and r.get("status") in DONE}

    # ---- time and output -------------------------------------------------------------------
    def elapsed(self):
        return time.monotonic() - self.t0

    def left(self):
        return self.deadline - time.monotonic()

    def say(self, text):
        line = f"[{self.elapsed():6.1f}s] {text}"
        with self.lock:
            print(line, flush=True)
            self.log_file.write(line + "\n")

    def log(self, text):
        with self.lock:
            self.log_file.write(text + "\n")

    def child_env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env["TRITON_CACHE_DIR"] = str(self.cache / "triton")
        env["CUPY_CACHE_DIR"] = str(self.cache / "cupy")
        env.pop("FUSED_RNN_BACKEND", None)  # every case names its backend
        if self.dry:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run is a CPU run, even on a GPU machine
            env["TRITON_INTERPRET"] = "1"
        return env

    def popen(self, cmd, **kw):
        """A child in its own process group (so it and its children can be killed together)
        but in our session (so whatever kills this command kills it too); tracked, so that an
        interrupted run kills it."""
        group = dict(process_group=0) if sys.version_info >= (3, 11) else dict(start_new_session=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.child_env(), **group, **kw)
        self.procs.add(proc)
        return proc

    # ---- the worker driver -----------------------------------------------------------------
    def _spawn(self, label, spec):
        spec_file = self.cache / f"spec-{self.id}-{os.getpid()}-{label}.json"
        spec_file.write_text(json.dumps(spec))
        proc = self.popen([sys.executable, "-m", "profiling.harness", "--worker", str(spec_file)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        events, tail = queue.Queue(), deque(maxlen=30)

        def read_events():
            for line in proc.stdout:
                try:
                    events.put(json.loads(line))
                except ValueError:
                    self.log(f"[{label}] (stdout) {line.rstrip()}")
            events.put(None)

        def read_stderr():
            for line in proc.stderr:
                tail.append(line.rstrip())
                self.log(f"[{label}] {line.rstrip()}")

        readers = [threading.Thread(target=fn, daemon=True) for fn in (read_events, read_stderr)]
        for t in readers:
            t.start()
        return proc, events, tail, spec_file, readers

    def drive(self, label, cases, make_spec, step_deadline, case_timeout, on_row, on_fault):
        """Run `cases` in worker subprocesses until done or out of time. A case with no result
        within case_timeout is a hang: the worker is killed, on_fault(case, "hang", note) records
        it, and a new worker takes the rest; a worker that dies inside a case: "crash". Returns
        the cases not run."""
        todo = list(cases)
        by_key = {c["key"]: c for c in todo}
        ready_timeout = self.args.ready_timeout
        while todo:
            if step_deadline - time.monotonic() < 2:
                break
            proc, events, tail, spec_file, readers = self._spawn(label, make_spec(todo))
            current, mark, ready, progress, outcome = None, time.monotonic(), False, False, "exit"
            while True:
                limit = mark + (case_timeout if ready else ready_timeout)
                wait = min(limit, step_deadline) - time.monotonic()
                try:
                    ev = events.get(timeout=max(wait, 0.0))
                except queue.Empty:
                    outcome = "budget" if limit > step_deadline else "hang"
                    _kill_group(proc)
                    break
                if ev is None:
                    break
                mark = time.monotonic()
                if ev.get("ev") == "ready":
                    ready = True
                elif ev.get("ev") == "start":
                    current = by_key.get(ev["key"])
                elif ev.get("ev") == "row":
                    case = by_key.get(ev["key"])
                    if case in todo:
                        todo.remove(case)
                    on_row(case, ev["row"], ev.get("wall_s"))
                    current, progress = None, True
            rc = proc.wait()
            self.procs.discard(proc)
            spec_file.unlink(missing_ok=True)
            readers[1].join(timeout=5)  # the last stderr lines, for the note
            tail_text = " | ".join(list(tail)[-6:])[-600:]
            if outcome == "budget":
                self.say(f"{label}: out of time{' during ' + current['key'] if current else ''}; worker stopped")
                break
            if outcome == "hang":
                if current is None:
                    what = "starting up" if not ready else "between cases"
                    self.say(f"{label}: worker hung {what} (no answer in {case_timeout if ready else ready_timeout:.0f} s); step abandoned")
                    self.record("step_error", step=label, note=f"worker hung {what}", stderr_tail=tail_text)
                    break
                note = (f"no result within {case_timeout:.0f} s: worker killed "
                        f"(last stderr: {tail_text[-300:] or 'none'})")
                on_fault(current, "hang", note)
                todo.remove(current)
                continue
            if current is not None:  # the worker died inside a case
                on_fault(current, "crash", f"worker exited with code {rc} during this case; stderr: {tail_text or 'none'}")
                todo.remove(current)
                continue
            if rc == CUDA_BROKEN_EXIT and progress:
                self.say(f"{label}: CUDA context unusable after an error; new worker for the rest")
                continue
            if todo:  # exited between cases without finishing: do not loop on it
                self.say(f"{label}: worker exited with code {rc} leaving {len(todo)} cases; step abandoned")
                self.record("step_error", step=label, note=f"worker exited with code {rc}", stderr_tail=tail_text)
                break
        return todo

    # ---- steps ----------------------------------------------------------------------------
    def step_deadline(self, cap, reserve_after):
        """A step may use `cap` seconds but must leave `reserve_after` for the steps after it
        (both scaled with the budget, so a small budget still reaches every step)."""
        scale = min(1.0, self.args.budget / 540.0)
        return min(time.monotonic() + cap * scale, self.deadline - reserve_after * scale - 3)

    def begin(self, step):
        self.say(f"== {step} ({self.left():.0f} s left)")
        return time.monotonic()

    def end(self, step, started, status="done", note=""):
        self.record("step", step=step, status=status, seconds=round(time.monotonic() - started, 1), note=note)
        self.write_summary()

    def step_env(self):
        started = self.begin("env")
        smi = shutil.which("nvidia-smi")
        rc, text = _run_text([smi or "nvidia-smi"], 20)
        _, query = _run_text([smi or "nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap,"
                              "clocks.sm,clocks.max.sm,power.limit,temperature.gpu,compute_mode,persistence_mode",
                              "--format=csv"], 20)
        ncu = self.ncu_path()
        env = dict(
            nvidia_smi=text, nvidia_smi_query=query,
            versions=dict(python=platform.python_version(), torch=_dist_version("torch"),
                          triton=_dist_version("triton"),
                          cupy=_dist_version("cupy-cuda13x", "cupy-cuda12x", "cupy"),
                          pytest=_dist_version("pytest"), numpy=_dist_version("numpy")),
            git_commit=_git("rev-parse", "HEAD") or os.environ.get("FUSED_RNN_COMMIT") or "unknown",
            git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
            ncu=(_run_text([ncu, "--version"], 20)[1].splitlines() or [""])[-1] if ncu else None,
            platform=platform.platform(), cpu_count=os.cpu_count(), cache_dir=str(self.cache),
            # the project's switches set for this run (each path pins its own on top)
            settings={k: v for k, v in sorted(os.environ.items()) if k.startswith("FUSED_RNN_")},
            paths={p.name: p.about for p in PATHS},
        )
        self.record("env", **env)
        # The device as torch sees it, in a subprocess: a CUDA initialisation that hangs or
        # crashes is recorded rather than taking the harness down.
        probe = {}

        def on_row(case, row, wall):
            probe.update(row)

        def on_fault(case, status, note):
            probe.update(status=status, note=note)

        case = dict(key="env|probe")
        self.drive("probe", [case], lambda todo: dict(kind="probe", cases=todo),
                   self.step_deadline(90, 400), self.args.ready_timeout, on_row, on_fault)
        self.probe.update(probe)
        self.record("device", **probe)
        if not self.dry and not probe.get("cuda"):
            # tiny shapes on the CPU rather than hours of T=1024 there
            self.dry = True
            self.record("note", note="no CUDA device: running as a dry run (--dry-run)")
            self.say("no CUDA device here: running as a dry run (tiny shapes, torch backend)")
        self.say(f"device: {probe.get('device', 'unknown')}; torch {probe.get('torch')}, triton "
                 f"{probe.get('triton')}, cupy {probe.get('cupy') or 'missing'}; commit {env['git_commit'][:12]}")
        self.end("env", started)

    def paths(self, step="headline"):
        paths = all_paths(self.probe.get("backends") or ())
        if step == "grid" and not self.dry:
            paths = tuple(p for p in paths if p.grid)
        if self.args.paths:
            unknown = set(self.args.paths) - {p.name for p in paths}
            if unknown:
                raise SystemExit(f"--paths: unknown {sorted(unknown)}: expected some of {[p.name for p in paths]}")
            paths = tuple(p for p in paths if p.name in self.args.paths)
        return paths

    def shapes(self, step):
        base = dict((DRY_HEADLINE if self.dry else HEADLINE) if step == "headline" else (DRY_GRID if self.dry else GRID))
        for k in ("cells", "dtypes", "batches", "hiddens"):
            if getattr(self.args, k):
                base[k] = getattr(self.args, k)
        if self.args.seq_len:
            base["seq_len"] = self.args.seq_len
        return base

    def bench_spec(self, todo, warm=False):
        recorded = {r["key"]: r for r in self.records if r.get("kind") == "case"}
        no_baseline = sorted({"|".join(map(str, _group(c))) for c in todo
                              if recorded.get(case_key(c["step"], *_config(c)[:5], c["mode"], REFERENCE,
                                                       _config(c)[5]), {}).get("status") in
                              ("hang", "crash", "error", "skipped", "wrong")})
        return dict(kind="bench", cases=todo, dry_run=self.dry, warm_seq_len=WARM_SEQ_LEN if warm else None,
                    warmup_ms=1.0 if self.dry else 25.0, rep_ms=5.0 if self.dry else 100.0,
                    paths=[asdict(p) for p in all_paths(self.probe.get("backends") or ())], no_baseline=no_baseline)

    def step_warm(self, cases, step_deadline):
        """Compile every kernel the cases need, in parallel workers, before anything is timed
        (compiles take seconds each; the caches on disk are shared). A case that hangs here is
        noted and timed last; its timing will tell."""
        started = self.begin("warm")
        compiling = {p.name for p in all_paths(self.probe.get("backends") or ()) if p.compiles and not (self.dry and p.gpu_only)}
        todo = [c for c in cases if c["path"] in compiling]
        if not todo or self.args.warm_jobs < 1:
            self.say("warm: nothing to compile" if not todo else "warm: disabled")
            self.end("warm", started, "skipped", "nothing to compile" if not todo else "--warm-jobs 0")
            return set()
        groups = sorted({_config(c) for c in todo})
        jobs = max(1, min(self.args.warm_jobs, len(groups)))
        shares = [[c for c in todo if groups.index(_config(c)) % jobs == j] for j in range(jobs)]
        hung, counts = set(), {"warmed": 0}

        def on_row(case, row, wall):
            counts["warmed"] += 1

        def on_fault(case, status, note):
            hung.add(case["key"])
            self.record("warm_fault", key=case["key"], status=status, note=note)

        threads = [threading.Thread(target=self.drive, args=(
            f"warm{j}", share, lambda t: self.bench_spec(t, warm=True), step_deadline,
            self.args.warm_timeout, on_row, on_fault)) for j, share in enumerate(shares) if share]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        note = f"{counts['warmed']} of {len(todo)} cases warmed in {jobs} workers at T={WARM_SEQ_LEN}"
        self.say(f"warm: {note}" + (f"; {len(hung)} hung or crashed (timed last)" if hung else ""))
        self.end("warm", started, "done", note)
        return hung

    def step_bench(self, step, cases, step_deadline, record_not_run):
        started = self.begin(step)
        paths = sorted({c["path"] for c in cases} - {REFERENCE})
        seq_len = cases[0]["seq_len"] if cases else 1

        def on_row(case, row, wall):
            rec = self.record("case", step=step, key=case["key"], path=case["path"], wall_s=wall, **row)
            us = f"{rec['us_per_step']:.2f} us/step" if rec.get("us_per_step") is not None else ""
            ref = (f" (torch.nn {rec['us_per_step_torch_nn']:.2f})"
                   if rec.get("us_per_step_torch_nn") and case["path"] != REFERENCE else "")
            note = f" - {rec['note']}" if rec.get("note") and rec["status"] != "ok" else ""
            self.say(f"{case['key']}: {rec['status']} {us}{ref}{note}"[:300])

        def config(case):  # the fields of a row that never ran far enough to fill them
            return dict(step=step, key=case["key"], path=case["path"], backend=case["path"],
                        directions=case.get("directions", 1),
                        **{k: case[k] for k in ("cell", "dtype", "batch", "hidden", "seq_len", "mode")})

        def on_fault(case, status, note):
            self.record("case", status=status, note=note, **config(case))
            self.say(f"{case['key']}: {status.upper()} - {note[:200]}")

        if not cases:
            self.say(f"{step}: nothing left to run")
            self.end(step, started, "done", "nothing left to run")
            return
        self.say(f"{step}: {len(cases)} cases, {REFERENCE} and paths {', '.join(paths)}; T={seq_len}")
        todo = self.drive(step, cases, self.bench_spec, step_deadline, self.args.case_timeout, on_row, on_fault)
        if todo and record_not_run:
            for case in todo:
                self.record("case", status="not_run", note="time budget spent", **config(case))
        self.end(step, started, "done" if not todo else "out of time", f"{len(todo)} cases not run" if todo else "")

    def step_barrier(self):
        started = self.begin("barrier")
        n_sm = self.probe.get("sm_count")
        if self.dry or not self.probe.get("cuda"):
            why = "dry run on a CPU" if self.dry else "no CUDA device"
            avail = self.probe.get("barrier_module")
            for n in BARRIER_PROGRAMS:
                self.record("barrier", n_programs=n, status="skipped", us_per_barrier=None,
                            note=f"{why}; kernels.triton.barrier {'importable' if avail else 'not available'}")
            self.end("barrier", started, "skipped", why)
            return
        programs = sorted({n for n in BARRIER_PROGRAMS if n <= n_sm} | {n_sm})
        cases = [dict(key=f"barrier|P{n}", n_programs=n) for n in programs]

        def on_row(case, row, wall):
            self.record("barrier", wall_s=wall, **row)
            us = row.get("us_per_barrier")
            self.say(f"barrier {row['n_programs']} programs: {row['status']} "
                     f"{'' if us is None else f'{us:.2f} us'} {row.get('note', '')}"[:200])

        def on_fault(case, status, note):
            self.record("barrier", n_programs=case["n_programs"], status=status, us_per_barrier=None, note=note)
            self.say(f"barrier {case['n_programs']} programs: {status.upper()}")

        self.drive("barrier", cases, lambda todo: dict(kind="barrier", cases=todo, n_iters=1000),
                   self.step_deadline(60, 140), self.args.case_timeout, on_row, on_fault)
        self.end("barrier", started)

    def step_tests(self):
        started = self.begin("tests")
        files = [p for p in sorted((ROOT / "tests").glob("test_*.py")) if "mark.gpu" in p.read_text()]
        step_deadline = self.step_deadline(300, 45)
        with open(self.out / FILES["tests"], "a", buffering=1) as log:
            for k, path in enumerate(files):
                rel = path.relative_to(ROOT).as_posix()
                # an equal share of what is left, so one slow or hung file cannot starve the rest
                share = (step_deadline - time.monotonic()) / (len(files) - k)
                timeout = min(self.args.test_timeout, share)
                if timeout < 5:
                    self.record("tests", file=rel, status="not_run", note="time budget spent")
                    self.say(f"tests {rel}: not run (time)")
                    continue
                cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "--durations=15", "-rfEs",
                       "-p", "no:cacheprovider", rel]
                log.write(f"\n===== {' '.join(cmd[1:])} (timeout {timeout:.0f} s) =====\n")
                t = time.monotonic()
                proc = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                lines = []

                def pump(proc=proc, lines=lines):
                    for line in proc.stdout:
                        lines.append(line)
                        log.write(line)

                reader = threading.Thread(target=pump, daemon=True)
                reader.start()
                try:
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    rc = None
                    _kill_group(proc)
                reader.join(timeout=10)
                parsed = parse_pytest("".join(lines))
                # timeout: killed at its time limit (a hang, or just slow: the log and the
                # durations say which); the test that was running is named
                status = ("timeout" if rc is None else "ok" if rc == 0 else "failed" if rc == 1
                          else "empty" if rc == 5 else "error")
                note = (f"killed after {timeout:.0f} s while running {parsed['running'] or 'no test (collecting?)'}"
                        f"{'; before that: ' + parsed['summary'] if parsed['summary'] else ''}"
                        if rc is None else parsed["summary"] or f"exit code {rc}")
                self.record("tests", file=rel, status=status, returncode=rc, seconds=round(time.monotonic() - t, 1),
                            note=note, hung_test=parsed["running"] if rc is None else None, **{
                                k: parsed[k] for k in ("counts", "failed", "slowest")})
                self.say(f"tests {rel}: {status} - {note}"[:300])
        self.end("tests", started)

    @staticmethod
    def ncu_path():
        found = shutil.which("ncu")
        if found:
            return found
        for cand in sorted(Path("/usr/local").glob("cuda*/bin/ncu")) + sorted(Path("/opt/nvidia").glob("nsight-compute*/ncu")):
            return str(cand)
        return None

    def step_ncu(self):
        started = self.begin("ncu")
        ncu = self.ncu_path()
        why = ("dry run on a CPU" if self.dry else "ncu is not installed" if not ncu
               else "no CUDA device" if not self.probe.get("cuda") else None)
        if why:
            self.record("ncu", status="skipped", note=why)
            self.end("ncu", started, "skipped", why)
            return
        timeout = min(self.args.ncu_timeout, self.deadline - time.monotonic() - 8)
        if timeout < 20:
            self.record("ncu", status="not_run", note="time budget spent")
            self.end("ncu", started, "skipped", "time budget spent")
            return
        target = dict(cells=["lstm", "gru"], dtype="bf16", batch=16, hidden=768, seq_len=1024,
                      paths=[asdict(p) for p in self.paths() if p.name in ("triton_persistent", "cupy_mma")])
        cmd = [ncu, "--target-processes", "all", "-k", "regex:forward_kernel|backward_kernel|rnn_forward|rnn_backward",
               "-c", "8", "--section", "SpeedOfLight", "--section", "LaunchStats", "--section", "Occupancy",
               "--section", "MemoryWorkloadAnalysis", "--section", "WarpStateStats", "--section", "SchedulerStats",
               sys.executable, "-m", "profiling.harness", "--ncu-target", json.dumps(target)]
        t = time.monotonic()
        with open(self.out / FILES["ncu"], "a") as f:
            f.write(f"===== {' '.join(cmd[:-1])} '<target>' (timeout {timeout:.0f} s) =====\n")
            f.flush()
            proc = self.popen(cmd, stdout=f, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
                _kill_group(proc)
        status = "hang" if rc is None else "ok" if rc == 0 else "error"
        note = f"killed after {timeout:.0f} s" if rc is None else f"exit code {rc}; report in {FILES['ncu']}"
        self.record("ncu", status=status, returncode=rc, seconds=round(time.monotonic() - t, 1), note=note)
        self.say(f"ncu: {status} - {note}")
        self.end("ncu", started, status)

    # ---- profiling.static, in the background -----------------------------------------------
    def start_static(self, shapes):
        if not (self.args.static if self.args.static is not None else not self.dry):
            why = "--no-static" if self.args.static is False else "dry run (--static runs it)"
            self.record("static", status="skipped", note=why)
            return
        if not (ROOT / "profiling" / "static.py").is_file():
            self.record("static", status="skipped", note="profiling.static is not available in this checkout")
            return
        self.static_dir = self.cache / f"static-{self.id}"
        self.static_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "profiling.static", "--cells", ",".join(shapes["cells"]),
               "--dtypes", ",".join(shapes["dtypes"]), "--batches", ",".join(map(str, shapes["batches"])),
               "--hiddens", ",".join(map(str, shapes["hiddens"])), "--out", str(self.static_dir)]
        log = open(self.out / FILES["log"], "a")
        log.write(f"[static] {' '.join(cmd)}\n")
        log.flush()
        # CPU-only work (compiles for sm_90): runs beside the GPU steps, collected at the end.
        self.static_proc = self.popen(cmd, stdout=log, stderr=log)
        self.static_started = time.monotonic()

    def collect_static(self, final):
        proc = self.static_proc
        if proc is None:
            return
        if final and proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, min(10.0, self.left())))
        if proc.poll() is None:
            if not final:
                return
            _kill_group(proc)
            self.record("static", status="timeout", note=f"profiling.static still running after "
                        f"{time.monotonic() - self.static_started:.0f} s: stopped")
        else:
            rows = load_static_rows(sorted(self.static_dir.glob("**/*.json")))
            status = "ok" if proc.returncode == 0 and rows else "error"
            self.record("static", status=status, returncode=proc.returncode, rows=rows,
                        note="" if status == "ok" else f"exit code {proc.returncode}, {len(rows)} rows (see {FILES['log']})")
        self.static_proc = None

    def static_rows(self):
        """Estimates: the committed whole-grid records, then this session's run (newer wins, as
        later rows come first in the search)."""
        rows = []
        for r in reversed(self.records):
            if r.get("kind") == "static" and r.get("rows"):
                rows.extend(r["rows"])
                break
        rows.extend(load_static_rows(sorted((ROOT / "profiling" / "results" / "static").glob("*.json"), reverse=True)))
        return rows

    # ---- summary and record ------------------------------------------------------------------
    def latest_cases(self, step=None):
        rows = {}
        for r in self.records:
            if r.get("kind") == "case" and (step is None or r.get("step") == step):
                rows[r["key"]] = r
        return list(rows.values())

    def write_summary(self):
        text = summary_markdown(self)
        tmp = self.out / (FILES["summary"] + ".tmp")
        tmp.write_text(text)
        tmp.replace(self.out / FILES["summary"])
        record = dict(device=self.probe.get("device", "unknown"), versions=self.probe.get("versions", {}),
                      git_commit=next((r.get("git_commit") for r in self.records if r.get("kind") == "env"), "unknown"),
                      date=self.started.isoformat(timespec="seconds"), platform=platform.platform(),
                      config=dict(harness=vars(self.args)), notes=[], rows=[_clean(r) for r in self.latest_cases()])
        tmp = self.out / (FILES["record"] + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
        tmp.replace(self.out / FILES["record"])


def _clean(obj):
    """JSON has no NaN / Infinity: such values become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _f(value, spec):
    return "" if value is None else format(value, spec)


_MARKS = dict(wrong="WRONG", error="ERROR", hang="HANG", crash="CRASH", skipped="-", not_run="not run")


def headline_table(rows, paths, static_rows):
    """One line per (cell, dtype, mode), one column per path: us per step with the speed-up over
    torch.nn and profiling.static's estimate; what is not a time is a mark, explained below."""
    order = [REFERENCE] + [p for p in paths if any(r.get("path") == p for r in rows)]
    c0 = rows[0]
    out = [f"## Headline: B{c0.get('batch')} H{c0.get('hidden')} T{c0.get('seq_len')}, us per step",
           "", "Median time over T; (x: speed-up over torch.nn); every time passed the float64-oracle check first; "
           "~: timed but too noisy for a speed-up; est: profiling.static's per-step estimate of the recurrence "
           "kernels alone (compiled for sm_90, not measured; forward_backward: forward + backward kernels, "
           "no GEMMs).", "",
           "| cell | dtype | mode | " + " | ".join(order) + " |", "|---|---|---|" + "---|" * len(order)]
    lines, notes = {}, {}
    for r in rows:
        cell = r.get("cell") + (" x2 (bidirectional)" if r.get("directions") == 2 else "")
        line = lines.setdefault((cell, r.get("dtype"), r.get("mode")), {})
        status, us = r.get("status"), r.get("us_per_step")
        text = _MARKS.get(status, "?") if us is None or status not in ("ok", "unstable") else f"{us:.2f}"
        if status == "unstable":
            text += " ~"
        if r.get("speedup_vs_torch_nn") and r.get("path") != REFERENCE:
            text += f" ({r['speedup_vs_torch_nn']:.2f}x)"
        path = paths.get(r.get("path"))
        est = static_estimate(static_rows, path, r.get("cell"), r.get("dtype"), r.get("batch"), r.get("hidden"),
                              r.get("mode"), r.get("directions", 1)) if path else None
        if est is not None:
            text += f" est {est:.2f}"
        line[r.get("path")] = text
        if status not in ("ok", "unstable"):
            notes.setdefault((status, str(r.get("note", ""))[:240]), []).append(
                f"{cell} {r.get('dtype')} {r.get('mode')} {r.get('path')}")
    for (cell, dtype, mode), line in lines.items():
        out.append(f"| {cell} | {dtype} | {mode} | " + " | ".join(line.get(p, "") for p in order) + " |")
    out.append("")
    for (status, note), where in notes.items():
        which = ", ".join(where) if len(where) <= 3 else f"{len(where)} cases"
        out.append(f"- {_MARKS.get(status, status)} {status} ({which}): {note}".replace("|", "/"))
    return out + [""]


def summary_markdown(s: Session) -> str:
    env = next((r for r in reversed(s.records) if r.get("kind") == "env"), {})
    dev = s.probe
    mode = ("dry run (CPU, torch backend, tiny shapes)" if s.dry else "") + (" grid" if s.args.grid else "")
    out = [f"# GPU session: {dev.get('device', 'unknown device')}", "",
           f"{s.started.isoformat(timespec='seconds')}, commit {str(env.get('git_commit', '?'))[:12]}"
           f"{' (dirty)' if env.get('git_dirty') else ''}; torch {dev.get('torch')}, CUDA {dev.get('cuda_version')}, "
           f"cuDNN {dev.get('cudnn')}, triton {dev.get('triton')}, cupy {dev.get('cupy') or 'missing'}; "
           f"mode: {mode.strip() or 'default'}; {s.elapsed():.0f} s of a {s.args.budget:.0f} s budget.", ""]
    paths = {p.name: p for p in all_paths(dev.get("backends") or ())}
    static_rows = s.static_rows()
    head = s.latest_cases("headline")
    if head:
        out += headline_table(head, paths, static_rows)
    grid = s.latest_cases("grid")
    if s.args.grid or grid:
        total = len(bench_cases("grid", s.shapes("grid"), [p.name for p in s.paths("grid")]))
        done = [r for r in grid if r.get("status") in DONE]
        counts = {st: sum(r.get("status") == st for r in done) for st in DONE}
        out += ["## Grid", "", f"{len(done)} of {total} cases recorded ("
                + ", ".join(f"{n} {st}" for st, n in counts.items() if n) + ")"
                + ("; the next `--grid` command with `--resume` continues." if len(done) < total else "; complete."), "",
                "| cell | dtype | B | H | mode | torch.nn us/step | best path | us/step | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
        groups = {}
        for r in done:
            groups.setdefault((r["cell"], r["dtype"], r["batch"], r["hidden"], r["mode"]), []).append(r)
        for g, rows in groups.items():
            ref = next((r for r in rows if r.get("path") == REFERENCE), {})
            ours = [r for r in rows if r.get("path") != REFERENCE and r.get("status") == "ok" and r.get("us_per_step")]
            best = min(ours, key=lambda r: r["us_per_step"]) if ours else {}
            out.append("| " + " | ".join(str(x) for x in (*g, _f(ref.get("us_per_step"), ".2f"), best.get("path", ""),
                                                        _f(best.get("us_per_step"), ".2f"),
                                                        _f(best.get("speedup_vs_torch_nn"), ".2f"))) + " |")
        out.append("")
    barrier = [r for r in s.records if r.get("kind") == "barrier" and r.get("session") == s.id]
    if barrier:
        out += ["## Grid barrier", "", "| programs | us per barrier | status | source / note |", "|---|---|---|---|"]
        for r in barrier:
            out.append(f"| {r.get('n_programs')} | {_f(r.get('us_per_barrier'), '.2f')} | {r.get('status')} | "
                       f"{(r.get('source') or '') + (' ' if r.get('source') else '') + str(r.get('note') or '')} |")
        out.append("")
    tests = [r for r in s.records if r.get("kind") == "tests" and r.get("session") == s.id]
    if tests:
        out += ["## GPU tests (`pytest -m gpu -v` per file)", "", "| file | status | s | result |", "|---|---|---|---|"]
        for r in tests:
            detail = r.get("note", "") + (f"; failed: {', '.join(r['failed'][:5])}" if r.get("failed") else "")
            out.append(f"| {r['file']} | {r['status']} | {_f(r.get('seconds'), '.0f')} | {detail.replace('|', '/')[:300]} |")
        out.append("")
    other = [r for r in s.records if r.get("kind") in ("ncu", "static") and r.get("session") == s.id]
    if other:
        out += ["## Other steps", ""] + [f"- {r['kind']}: {r.get('status')} {r.get('note', '')}".rstrip() for r in other] + [""]
    faults = [r for r in s.records if r.get("session") == s.id and r.get("status") in ("hang", "crash")
              or r.get("kind") in ("step_error", "warm_fault") and r.get("session") == s.id]
    if faults:
        out += ["## Hangs, crashes, abandoned steps", ""]
        out += [f"- {r.get('key') or r.get('file') or r.get('step') or r.get('kind')}: {r.get('status', r.get('kind'))}"
                f" - {str(r.get('note', ''))[:300]}" for r in faults] + [""]
    steps = [r for r in s.records if r.get("kind") == "step" and r.get("session") == s.id]
    out += ["## Steps", "", ", ".join(f"{r['step']} {r['status']} {r['seconds']:.0f} s" for r in steps), "",
            f"Files: {', '.join(sorted(p.name for p in s.out.iterdir() if p.is_file() and not p.name.endswith('.tmp')))}", ""]
    return "\n".join(out)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_session(args) -> int:
    s = Session(args)
    s.record("session", mode="grid" if args.grid else "default", dry_run=s.dry, budget_s=args.budget,
             out=str(s.out), argv=sys.argv[1:], date=s.started.isoformat(timespec="seconds"))
    s.say(f"fused-rnn GPU harness: {'dry run, ' if s.dry else ''}{'grid' if args.grid else 'default'} mode, "
          f"budget {args.budget:.0f} s, OUT {s.out}")
    # a SIGTERM (an outer `timeout`) ends the run like Ctrl-C: children killed, summary written
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        s.step_env()
        step = "grid" if args.grid else "headline"
        if step == "headline":
            s.start_static(s.shapes(step))
        cases = [c for c in bench_cases(step, s.shapes(step), [p.name for p in s.paths(step)])
                 if c["key"] not in s.done_keys()][:args.max_cases]
        warm_until = (min(s.deadline - 30, time.monotonic() + 0.35 * max(s.left(), 0)) if args.grid
                      else s.step_deadline(150, 320))
        hung = s.step_warm(cases, warm_until)
        cases.sort(key=lambda c: c["key"] in hung)  # stable: what hung in the warm-up goes last
        s.step_bench(step, cases, s.deadline - 8 if args.grid else s.step_deadline(330, 170),
                     record_not_run=not args.grid)
        if not args.grid:
            s.collect_static(final=False)
            for name, skip in (("barrier", args.no_barrier), ("tests", args.no_tests), ("ncu", args.no_ncu)):
                if skip:
                    s.record("step", step=name, status="skipped", seconds=0, note=f"--no-{name}")
                    continue
                getattr(s, f"step_{name}")()
            s.collect_static(final=True)
    except KeyboardInterrupt:
        s.say("interrupted")
        s.record("end", status="interrupted", seconds=round(s.elapsed(), 1))
        s.write_summary()
        return 130
    finally:
        for proc in list(s.procs):
            if proc.poll() is None:
                _kill_group(proc)
    s.record("end", status="done", seconds=round(s.elapsed(), 1))
    s.write_summary()
    s.say(f"done in {s.elapsed():.0f} s; files in {s.out}")
    print("\n" + (s.out / FILES["summary"]).read_text())
    return 0


# --- the worker side (imports torch) --------------------------------------------------------------
def _fault_hook(key):
    """The test hook: FUSED_RNN_HARNESS_TEST_FAULT="hang:PATTERN;crash:PATTERN" makes a case whose
    key matches (fnmatch) sleep forever or abort, as a hung or crashing kernel would."""
    for item in os.environ.get(FAULT_ENV, "").split(";"):
        what, _, pattern = item.partition(":")
        if pattern and fnmatch.fnmatchcase(key, pattern):
            if what == "hang":
                while True:
                    time.sleep(60)
            if what == "crash":
                os.abort()


@contextlib.contextmanager
def _env(pairs):
    old = {k: os.environ.get(k) for k, _ in pairs}
    os.environ.update(dict(pairs))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tuples(value):
    """JSON lists back into the tuples of KernelPath."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class _Paths:
    """The worker's backend objects, one per path, installed in rnn.backends' registry while a
    case of that path runs (the registry has no public override; its cache is the one place
    `backend="triton"` etc. are resolved)."""

    def __init__(self, rows):
        self.paths = {r["name"]: KernelPath(**{k: _tuples(v) for k, v in r.items()}) for r in rows}
        self.objects = {}

    def get(self, name):
        path = self.paths[name]
        if not path.factory:
            return path, None
        if name not in self.objects:
            try:
                module, attr = path.factory.split(":")
                with _env(path.env):
                    self.objects[name] = getattr(importlib.import_module(module), attr)(**dict(path.kwargs))
            except Exception as exc:  # a missing optional package: the case is skipped, with why
                self.objects[name] = exc
        return path, self.objects[name]

    @contextlib.contextmanager
    def installed(self, name):
        from rnn import backends

        path, obj = self.get(name)
        if obj is None:
            yield
            return
        missing = object()
        old = backends._cache.get(path.backend, missing)
        backends._cache[path.backend] = obj
        try:
            with _env(path.env):
                yield
        finally:
            if old is missing:
                backends._cache.pop(path.backend, None)
            else:
                backends._cache[path.backend] = old


def _nvidia_device_present():
    """Whether this machine shows an NVIDIA GPU, without importing torch (the parent never does):
    the driver's device files, unless CUDA_VISIBLE_DEVICES hides every device."""
    import glob

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def _skip_reason(paths, name, case, dry):
    """Why this path cannot or need not run this case, or None. Also a note about how it runs."""
    import torch

    path, obj = paths.get(name)
    if path.gpu_only and dry:
        return "dry run on a CPU: this path needs a CUDA GPU", ""
    if path.gpu_only and torch.device(case.device).type != "cuda":
        return "needs a CUDA GPU", ""
    if isinstance(obj, Exception):
        return f"{path.factory} is not available: {type(obj).__name__}: {obj}", ""
    note = ""
    try:  # the launch each path would make; a path that would duplicate another is skipped
        from rnn import cells

        spec = cells.lstm() if case.cell == "lstm" else cells.gru()
        if path.backend == "triton":
            from kernels.triton import INTERPRET, make_plan

            mm = case.torch_dtype
            n_sm = torch.cuda.get_device_properties(case.device).multi_processor_count
            plan = make_plan(case.hidden, case.batch, spec.n_gates, torch.finfo(mm).bits // 8, n_sm, INTERPRET,
                             name != "triton_persistent")
            note = (f"plan: {'persistent' if plan.persistent else 'per-step'}, grid {plan.grid}, "
                    f"BLOCK_H {plan.block_h}, BLOCK_B {plan.block_b}, {plan.num_warps} warps")
            if name == "triton_persistent" and not plan.persistent:
                return f"the plan for this shape is per-step (see triton_per_step): {note}", ""
        if name == "cupy_mma":
            how = obj.describe(case.device, spec, case.hidden, case.batch, case.torch_dtype)
            if "mma" not in how:
                return f"the tensor-core path does not apply here (see cupy_fma): {how}", ""
        if name == "cupy_cluster":  # both directions must fit one cluster (an explicit family never falls back)
            why = obj.unavailable_reason(case.device, spec, case.hidden, case.batch, case.torch_dtype)
            if why:
                return f"the cluster kernels do not run this case (see cupy_mma): {why}", ""
            note = obj.describe(case.device, spec, case.hidden, case.batch, case.torch_dtype)
    except Exception as exc:  # the description is a nicety; the case itself will tell
        note = f"(launch description failed: {type(exc).__name__}: {exc})"
    return None, note


def _cuda_broken(device):
    import torch

    if torch.device(device).type != "cuda":
        return False
    try:
        torch.cuda.synchronize(device)
        return float(torch.ones(1, device=device).add_(1).item()) != 2.0
    except Exception:
        return True


def _device_info():
    import torch

    info = dict(python=platform.python_version(), torch=torch.__version__, cuda_version=torch.version.cuda,
                cuda=torch.cuda.is_available(),
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), sm_count=p.multi_processor_count,
                    compute_capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    l2_bytes=getattr(p, "L2_cache_size", None),
                    smem_per_block_optin=getattr(p, "shared_memory_per_block_optin", None))
    else:
        info.update(device=f"cpu: {platform.processor() or platform.machine()}", sm_count=None)
    return info


def _worker_probe(spec, emit):
    info = _device_info()
    emit(ev="ready", info=info)
    emit(ev="start", key="env|probe")
    for mod in ("triton", "cupy", "numpy"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except Exception as exc:  # not installed, or cannot load here
            info[mod] = None
            info[f"{mod}_problem"] = f"{type(exc).__name__}: {exc}"[:300]
    info["versions"] = {k: info.get(k) for k in ("python", "torch", "triton", "cupy", "cuda_version", "cudnn")}
    try:
        from rnn import backends

        info["backends"] = [n for n in backends.NAMES if n != "auto"]
        info["backends_available"] = backends.available()
    except Exception as exc:
        info["backends_problem"] = f"{type(exc).__name__}: {exc}"[:300]
    for name, mod in (("barrier_module", "kernels.triton.barrier"), ("static_module", "profiling.static")):
        try:
            info[name] = importlib.util.find_spec(mod) is not None
        except Exception:
            info[name] = False
    emit(ev="row", key="env|probe", row=info)


def _worker_bench(spec, emit):
    import torch

    from profiling import bench, impls

    device = "cuda" if torch.cuda.is_available() else "cpu"
    emit(ev="ready", info=_device_info())
    paths = _Paths(spec["paths"])
    cfg = dict(warmup_ms=spec["warmup_ms"], rep_ms=spec["rep_ms"])
    warm_t = spec.get("warm_seq_len")
    no_baseline = set(spec.get("no_baseline", ()))

    def run_one(name, factory, case, mode, ref, inputs, expected, baseline_err):
        """bench's correctness check against the oracle, then its timing when the check passed."""
        row, impl = bench._check_one(name, factory, case, mode, ref, inputs, expected, baseline_err, cfg)
        if impl is not None:
            bench._time_rows({name: row}, {name: impl}, case, mode, inputs, cfg)
        del impl
        if device == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
        return row

    def reference(case, mode, ref, inputs, expected):
        return run_one(REFERENCE, lambda k, r: impls.module_impl(r, k.cell), case, mode, ref, inputs, expected, None)

    for config, group in itertools.groupby(spec["cases"], key=_config):
        cell, dtype, batch, hidden, seq_len, directions = config
        T = min(seq_len, warm_t) if warm_t else seq_len
        case = impls.Case(cell, dtype, batch, hidden, hidden, T, device, directions)
        seed = zlib.crc32("|".join(map(str, config)).encode()) % 100003  # same inputs in every run
        group = list(group)
        ref = inputs = expected = None
        setup = None  # None: not yet; "" done; else the error
        for mode, mode_cases in itertools.groupby(group, key=lambda c: c["mode"]):
            baseline = None  # (max_err, ms) of the reference in this process
            for c in mode_cases:
                t = time.monotonic()
                emit(ev="start", key=c["key"])
                _fault_hook(c["key"])
                if setup is None:  # inside the first case: a hang or crash here is that case's
                    try:
                        ref = impls.reference_module(case, seed)
                        inputs = impls.make_inputs(case, seed)
                        need_grad = any(k["mode"] == "forward_backward" for k in group)
                        expected = None if warm_t else impls.oracle(case, ref, inputs, need_grad)
                        ref_name, setup = bench._reference_name(case, inputs.x), ""
                    except Exception as exc:
                        setup = bench._describe(exc)
                if setup:
                    row = dict(status="error", note=f"reference failed: {setup}")
                elif warm_t:
                    row = _warm_one(paths, c["path"], case, mode, ref, inputs, spec["dry_run"])
                elif c["path"] == REFERENCE:
                    row = reference(case, mode, ref, inputs, expected)
                else:
                    # torch.nn runs first in this process even when its row is already recorded:
                    # its error sets the tolerance, its time is the comparison
                    if baseline is None and "|".join(map(str, config + (mode,))) not in no_baseline:
                        base = reference(case, mode, ref, inputs, expected)
                        baseline = (base["max_err"], base["ms"] if base["status"] == "ok" else None)
                    skip, note = _skip_reason(paths, c["path"], case, spec["dry_run"])
                    if skip:
                        row = dict(status="skipped", note=skip)
                    else:
                        with paths.installed(c["path"]):
                            row = run_one(c["path"], impls.ours(paths.paths[c["path"]].backend), case, mode,
                                          ref, inputs, expected, (baseline or (None,))[0])
                        if note:
                            row["note"] = f"{row['note']}; {note}" if row.get("note") else note
                if c["path"] == REFERENCE and not warm_t and not setup:
                    baseline = (row.get("max_err"), row.get("ms") if row.get("status") == "ok" else None)
                ms, ms_ref = row.get("ms"), (baseline or (None, None))[1]
                ok = row.get("status") == "ok"  # "unstable": a time, but too noisy for a speed-up
                row.update(backend=c["path"], cell=cell, dtype=dtype, batch=batch, hidden=hidden, input_size=hidden,
                           seq_len=T, mode=mode, directions=directions, reference_impl=None if setup or warm_t else ref_name,
                           ms_torch_nn=ms_ref, speedup_vs_torch_nn=ms_ref / ms if ok and ms and ms_ref else None,
                           us_per_step=1e3 * ms / T if ms else None,
                           us_per_step_torch_nn=1e3 * ms_ref / T if ms_ref else None)
                emit(ev="row", key=c["key"], row=row, wall_s=round(time.monotonic() - t, 2))
                if row.get("status") in ("error", "warm_error") and _cuda_broken(device):
                    sys.exit(CUDA_BROKEN_EXIT)
        del ref, inputs, expected
        if device == "cuda":
            torch.cuda.empty_cache()


def _warm_one(paths, name, case, mode, ref, inputs, dry):
    """One untimed call (forward, or forward and backward) of a path: compiles its kernels."""
    import torch

    from profiling import impls

    skip, _ = _skip_reason(paths, name, case, dry)
    if skip:
        return dict(status="skipped", note=skip)
    path, _ = paths.get(name)
    try:
        with paths.installed(name):
            impl = impls.ours(path.backend)(case, ref)
            x = inputs.x.detach().requires_grad_(mode == "forward_backward")
            with torch.set_grad_enabled(mode == "forward_backward"):
                outs = impl.run(x, inputs.state)
                if mode == "forward_backward":
                    torch.autograd.grad(outs, [x], grad_outputs=inputs.grads)
            if torch.device(case.device).type == "cuda":
                torch.cuda.synchronize()
        return dict(status="warmed")
    except Exception as exc:
        return dict(status="warm_error", note=f"{type(exc).__name__}: {exc}"[:300])


def _worker_barrier(spec, emit):
    import torch

    emit(ev="ready", info=_device_info())
    try:
        from kernels.triton.barrier import measure_barrier

        source, problem = "kernels.triton.barrier.measure_barrier", None
    except Exception as exc:
        measure_barrier, source = None, "profiling.floor.barrier_latency_us"
        problem = f"kernels.triton.barrier not available ({type(exc).__name__}: {exc})"[:200]
    for c in spec["cases"]:
        emit(ev="start", key=c["key"])
        _fault_hook(c["key"])
        t = time.monotonic()
        n = c["n_programs"]
        row = dict(n_programs=n, source=source, note=problem or "")
        try:
            if measure_barrier is not None:
                us = measure_barrier(n, n_iters=spec.get("n_iters", 1000), device="cuda")
            else:
                from profiling import floor

                us = floor.barrier_latency_us(torch.device("cuda"), n)
                if us is None:
                    row["note"] += "; spin cap reached (programs not co-resident?)"
            row.update(status="ok" if us is not None else "error", us_per_barrier=us)
        except Exception as exc:
            row.update(status="error", us_per_barrier=None, note=f"{row['note']} {type(exc).__name__}: {exc}".strip()[:300])
        emit(ev="row", key=c["key"], row=row, wall_s=round(time.monotonic() - t, 2))
        if row["status"] == "error" and _cuda_broken("cuda"):
            sys.exit(CUDA_BROKEN_EXIT)


def ncu_target(target):
    """What ncu profiles: each persistent path once forward and once forward + backward."""
    import torch

    from profiling import impls

    paths = _Paths(target["paths"])
    for cell in target["cells"]:
        case = impls.Case(cell, target["dtype"], target["batch"], target["hidden"], target["hidden"],
                          target["seq_len"], "cuda")
        ref = impls.reference_module(case, 0)
        inputs = impls.make_inputs(case, 0)
        for name in paths.paths:
            skip, note = _skip_reason(paths, name, case, False)
            print(f"ncu target: {cell} {name}: {skip or note or 'runs'}", flush=True)
            if not skip:
                for mode in MODES:
                    row = _warm_one(paths, name, case, mode, ref, inputs, False)
                    print(f"  {mode}: {row}", flush=True)
        torch.cuda.synchronize()


def _exit_with_parent():
    """A worker never outlives the harness (a killed harness must not leave kernels running)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def worker_main(spec_file):
    _exit_with_parent()
    spec = json.loads(Path(spec_file).read_text())
    # Events go to the original stdout; anything else printed (libraries, compilers, even C code)
    # goes to stderr, which the parent copies into harness.log.
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(**ev):
        events.write(json.dumps(_clean(ev), default=str) + "\n")
        events.flush()

    {"probe": _worker_probe, "bench": _worker_bench, "barrier": _worker_barrier}[spec["kind"]](spec, emit)
    return 0


# --- command line -----------------------------------------------------------------------------
def _csv(kind):
    def parse(text):
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind}, got {text!r}")
        if kind == "integers":
            try:
                values = [int(t) for t in items]
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}") from None
            if min(values) < 1:
                raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
            return values
        return items

    return parse


def build_parser():
    p = argparse.ArgumentParser(
        prog="bash profiling/gpu_session.sh",
        description="One-shot GPU harness: env, headline vs cuDNN, grid barrier, GPU tests, ncu, within a "
        "time budget; or --grid: the resumable full benchmark grid. See profiling/harness.py.")
    p.add_argument("out", nargs="?", help="output folder (default: $OUT if set, else profiling/results/gpu-<date>)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU: torch backend, tiny shapes, GPU steps skipped")
    p.add_argument("--grid", action="store_true", help="run (or continue) the full benchmark grid instead")
    p.add_argument("--resume", action="append", metavar="JSONL",
                   help="earlier results.jsonl (or a folder of them): its cases are skipped and copied into OUT")
    p.add_argument("--budget", type=float, help="seconds for everything (default 540; dry run 150)")
    p.add_argument("--case-timeout", type=float, help="seconds without a result before a case is a hang "
                   "(default 90; dry run 60)")
    p.add_argument("--warm-timeout", type=float, help="the same during the compile warm-up (default 120; dry run 60)")
    p.add_argument("--ready-timeout", type=float, help="seconds a worker may take to start (default 150; dry run 90)")
    p.add_argument("--test-timeout", type=float, default=240.0, help="seconds per GPU test file (default 240)")
    p.add_argument("--ncu-timeout", type=float, default=90.0, help="seconds for ncu (default 90)")
    p.add_argument("--warm-jobs", type=int, help="parallel compile warm-up workers (0: none; default: "
                   "half the CPUs, at most 8; dry run 1)")
    p.add_argument("--max-cases", type=int, help="run at most this many benchmark cases this time")
    p.add_argument("--cache-dir", default=os.environ.get(CACHE_ENV) or str(DEFAULT_CACHE),
                   help=f"compile caches (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    p.add_argument("--paths", type=_csv("paths"), help="only these paths (names of the PATHS table)")
    p.add_argument("--cells", type=_csv("cells"))
    p.add_argument("--dtypes", type=_csv("dtypes"))
    p.add_argument("--batches", type=_csv("integers"))
    p.add_argument("--hiddens", type=_csv("integers"))
    p.add_argument("--seq-len", type=int)
    p.add_argument("--static", action=argparse.BooleanOptionalAction, default=None,
                   help="run profiling.static for the headline shapes in the background (default: yes, "
                   "except in a dry run: it is CPU-heavy and has its own test)")
    for step in ("barrier", "tests", "ncu"):
        p.add_argument(f"--no-{step}", action="store_true", help=f"skip the {step} step")
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    p.add_argument("--ncu-target", metavar="JSON", help=argparse.SUPPRESS)
    return p


def resolve(args):
    dry = args.dry_run
    defaults = dict(budget=150.0 if dry else 540.0, case_timeout=60.0 if dry else 90.0,
                    warm_jobs=1 if dry else max(1, min(8, (os.cpu_count() or 2) // 2)),
                    warm_timeout=60.0 if dry else 120.0, ready_timeout=90.0 if dry else 150.0)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.budget <= 10:
        raise SystemExit(f"--budget must be more than 10 seconds, got {args.budget}")
    for name in ("max_cases", "warm_jobs"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.seq_len is not None and args.seq_len < 1:
        raise SystemExit(f"--seq-len must be >= 1, got {args.seq_len}")
    if args.out is None:  # a dry run's files go where git ignores them, with the CPU benchmark's
        stamp = _now_stamp().strftime("%Y%m%d-%H%M%S")
        local = dry or not _nvidia_device_present()  # a CPU machine will run it as a dry run
        args.out = os.environ.get("OUT") or str(ROOT / "profiling" / "results" /
                                                (f"local/gpu-{stamp}-dry" if local else f"gpu-{stamp}"))
    bad = [c for c in (args.cells or []) if c not in ("lstm", "gru")] + \
          [d for d in (args.dtypes or []) if d not in ("bf16", "fp16", "fp32")]
    if bad:
        raise SystemExit(f"unknown cells/dtypes {bad}: expected lstm,gru and bf16,fp16,fp32")
    return args


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.ncu_target:
        ncu_target(json.loads(args.ncu_target))
        return 0
    return run_session(resolve(args))


if __name__ == "__main__":
    raise SystemExit(main())
