"""The benchmark CLI: `python -m profiling [options]` (`make bench`).

For every configuration (cell x dtype x batch x hidden, input size = hidden) and mode
("forward": inference, no grad; "forward_backward": forward plus gradients of the input and all
weights for random upstream gradients on every output, final states included) it runs, in one
process and with the same weights: the baseline torch.nn (row "torch.nn" on every device; each
row's `reference_impl` says what it ran: cuDNN on a GPU, torch's native kernels on a CPU), our
drop-ins per backend, a torch.compile'd step loop and FlashRNN when installed.

Each implementation is first checked against a float64 run of torch.nn (outputs, final states
and, when training, the input gradient): the max error relative to the largest reference value
must stay under max(TOLERANCE[dtype], 2 x torch.nn's own error). A case that fails is recorded
as "wrong" with its error and is never timed. Then the implementations that passed are timed
(profiling.timing: triton.testing.do_bench on CUDA; on a CPU a perf_counter timer with at least
timing.MIN_REPS calls each, all implementations of a case interleaved), with median and 20 / 80 %
quantiles, peak device memory, and the floor of profiling.floor. Statuses (report.STATUSES): ok;
unstable (timed, but q80/q20 > timing.SPREAD_LIMIT: too noisy for a speed-up, none is given);
wrong; skipped (cannot run this case; the note says why, e.g. a Triton case too big for the
interpreter on a CPU: impls.INTERPRET_MAX_TBH); error (raised; the note has the exception).

Which configurations run: a product grid (--cells x --dtypes x --batches x --hiddens, one
--seq-len), or a list of explicit rows, --rows CELL:BxTxH,... (e.g. lstm:1x100x64,gru:16x1000x128),
each run in every --dtypes; the record's config["rows"] lists them (None for a grid).

Defaults: on a GPU the full grid (lstm,gru x bf16,fp16,fp32 x B 1,16,64,256 x H 256,768,1024,
T 1024, backends torch,triton,cupy,compile,flashrnn); --quick: a few cases (bf16, B 16,64, H 768,
T 256, no compile). On a CPU the CPU table (CPU_TABLE: LSTM 1x100x64, 16x100x128, 64x200x256,
16x1000x128; GRU 1x100x64, 16x1000x128 as BxTxH; fp32; backends auto,torch; no compile), and
after the full table a summary: per row torch.nn's time per call and ours / torch.nn (our time
over torch.nn's) for each backend, inference and training; --quick: the same on two tiny rows
(a smoke run). A --cells / --batches / --hiddens / --seq-len on a CPU without --rows runs a grid
(unset ones from CPU_GRID: lstm,gru x B 2 x H 32 x T 16).

Where the record goes (--out overrides): a GPU run writes to profiling/results/, the records
meant to be committed; a CPU run (says nothing about GPU speed) writes to
profiling/results/local/, which git ignores and `make plots` does not draw unless named.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import sys
import traceback

import torch

from . import floor, impls, report, timing

OUR_BACKENDS = ("auto", "torch", "triton", "cupy")
BASELINES = ("compile", "flashrnn")
CELLS = ("lstm", "gru")
MODES = ("forward", "forward_backward")
# Max error relative to max |reference| against the float64 oracle. Loose on purpose: this
# catches wrong kernels (gate order, skipped steps, races), not precision regressions (the test
# suite does those); fp32 allows TF32 matmuls over T=1024 steps.
TOLERANCE = {"fp32": 1e-2, "fp16": 3e-2, "bf16": 1e-1}

GPU_DEFAULTS = dict(cells=["lstm", "gru"], dtypes=["bf16", "fp16", "fp32"], batches=[1, 16, 64, 256],
                    hiddens=[256, 768, 1024], seq_len=1024,
                    backends=["torch", "triton", "cupy", "compile", "flashrnn"])
GPU_QUICK = dict(GPU_DEFAULTS, dtypes=["bf16"], batches=[16, 64], hiddens=[768], seq_len=256)
# The CPU table: (cell, B, T, H) rows of the issue "a CPU speed test is not a timed unit test"
# (`make bench` on a CPU compares "auto" and "torch" with torch.nn). Input size = H.
CPU_TABLE = ("lstm:1x100x64", "lstm:16x100x128", "lstm:64x200x256", "lstm:16x1000x128",
             "gru:1x100x64", "gru:16x1000x128")
# The grid a CPU runs when asked for grid options without --rows (the former CPU smoke grid).
CPU_GRID = dict(cells=["lstm", "gru"], batches=[2], hiddens=[32], seq_len=16)
CPU_DEFAULTS = dict(rows=list(CPU_TABLE), dtypes=["fp32"], backends=["auto", "torch"])
CPU_QUICK = dict(CPU_DEFAULTS, rows=["lstm:2x8x32", "gru:2x8x32"])
GRID_OPTIONS = ("cells", "batches", "hiddens", "seq_len")


def _csv(kind, choices=None, alias=None):
    def parse(text):
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind}, got {text!r}")
        out = []
        for item in items:
            if kind == "integers":
                try:
                    value = int(item)
                except ValueError:
                    raise argparse.ArgumentTypeError(f"expected positive integers, got {item!r}") from None
                if value < 1:
                    raise argparse.ArgumentTypeError(f"expected positive integers, got {item!r}")
                out.append(value)
                continue
            item = alias.get(item, item) if alias else item
            if item not in choices:
                raise argparse.ArgumentTypeError(f"unknown {kind} {item!r}: expected one of {', '.join(choices)}")
            out.append(item)
        return out

    return parse


ROW_FORMAT = "CELL:BxTxH"


def parse_row(text) -> dict:
    """'lstm:16x100x128' -> {"cell": "lstm", "batch": 16, "seq_len": 100, "hidden": 128}."""
    item = text.strip().lower()
    cell, sep, sizes = item.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"expected a row {ROW_FORMAT} (cell, batch, time steps, hidden; e.g. lstm:16x100x128), got {text!r}")
    cell = cell.strip()
    if cell not in CELLS:
        raise argparse.ArgumentTypeError(f"row {text!r}: unknown cell {cell!r}: expected one of {', '.join(CELLS)}")
    parts = [p.strip() for p in sizes.split("x")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"row {text!r}: expected three sizes BxTxH after the cell (e.g. {cell}:16x100x128), got {sizes!r}")
    values = []
    for name, part in zip(("B", "T", "H"), parts):
        if not (part.isascii() and part.isdigit()) or int(part) < 1:
            raise argparse.ArgumentTypeError(f"row {text!r}: {name} must be a positive integer, got {part!r}")
        values.append(int(part))
    batch, seq_len, hidden = values
    return {"cell": cell, "batch": batch, "seq_len": seq_len, "hidden": hidden}


def parse_rows(text) -> list:
    """'lstm:1x100x64,gru:16x1000x128' -> [parse_row(...), ...]; argparse type of --rows."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of rows {ROW_FORMAT}, got {text!r}")
    rows = []
    for item in items:
        row = parse_row(item)
        if row in rows:
            raise argparse.ArgumentTypeError(f"row {row_label(row)} is given twice")
        rows.append(row)
    return rows


def row_label(row) -> str:
    """The --rows spelling of a row: 'lstm:16x100x128'."""
    return f"{row['cell']}:{row['batch']}x{row['seq_len']}x{row['hidden']}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m profiling",
        description="Time fused-rnn against torch.nn (cuDNN on a GPU), torch.compile and FlashRNN; "
        "write a JSON record and print a markdown table.",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    p.add_argument("--cells", type=_csv("cell", CELLS), help="comma list of lstm,gru")
    p.add_argument("--dtypes", type=_csv("dtype", tuple(impls.TORCH_DTYPES), impls.DTYPE_ALIASES),
                   help="comma list of bf16,fp16,fp32")
    p.add_argument("--batches", type=_csv("integers"), help="comma list of batch sizes")
    p.add_argument("--hiddens", type=_csv("integers"), help="comma list of hidden sizes")
    p.add_argument("--input-size", type=int, default=None, help="input features (default: = hidden)")
    p.add_argument("--seq-len", type=int, default=None, help="time steps T")
    p.add_argument("--rows", type=parse_rows, default=None,
                   help=f"comma list of explicit rows {ROW_FORMAT} (cell, batch, time steps, hidden; e.g. "
                   "lstm:1x100x64,gru:16x1000x128), each run in every --dtypes; instead of the grid "
                   "options --cells/--batches/--hiddens/--seq-len (default on a CPU: the CPU table)")
    p.add_argument("--backends", type=_csv("backend", OUR_BACKENDS + BASELINES),
                   help="comma list of our backends (auto,torch,triton,cupy) and baselines "
                   "(compile,flashrnn); torch.nn always runs as the reference")
    p.add_argument("--bidirectional", action="store_true",
                   help="one bidirectional layer per case (torch.nn bidirectional=True; our drop-ins run both "
                   "directions as one call, one launch on Triton or CuPy); times are of the two directions")
    p.add_argument("--modes", type=_csv("mode", MODES), default=list(MODES),
                   help="comma list of forward,forward_backward")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time the torch.compile'd step loop (default: on a GPU yes, on a CPU no)")
    p.add_argument("--quick", action="store_true",
                   help="a small run (GPU: a few cases; CPU: two tiny rows; see the module docstring)")
    p.add_argument("--warmup-ms", type=float, default=None, help="warm-up per timing (default 25 GPU, 10 CPU)")
    p.add_argument("--rep-ms", type=float, default=None, help="repeat budget per timing (default 100 GPU, 50 CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help=f"directory for the JSON record (default: on a GPU {_rel(report.RESULTS_DIR)}, "
                   f"kept; on a CPU {_rel(report.LOCAL_RESULTS_DIR)}, ignored by git)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _rel(path):
    return path.relative_to(report.REPO_ROOT).as_posix()


def default_out_dir(device) -> str:
    """Where a run on `device` writes its record when --out is not given (module docstring)."""
    kept = torch.device(device).type == "cuda"
    return str(report.RESULTS_DIR if kept else report.LOCAL_RESULTS_DIR)


def resolve(args) -> dict:
    """Fill the options left unset from the device's defaults; return the run's config."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    cuda = device.type == "cuda"
    defaults = (GPU_QUICK if args.quick else GPU_DEFAULTS) if cuda else (CPU_QUICK if args.quick else CPU_DEFAULTS)
    backends = list(args.backends or defaults["backends"])
    use_compile = args.compile if args.compile is not None else (cuda and not args.quick)
    if not use_compile and "compile" in backends:
        backends.remove("compile")
    if use_compile and "compile" not in backends:
        backends.append("compile")
    if not cuda and "triton" in backends and not torch.cuda.is_available():
        # Asked for explicitly on a CPU-only machine: run the kernels under the Triton
        # interpreter (slow; only sensible on tiny grids). Must be set before triton loads.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.seq_len is not None and args.seq_len < 1:
        raise SystemExit(f"--seq-len must be a positive integer, got {args.seq_len}")
    grid_given = [f"--{k.replace('_', '-')}" for k in GRID_OPTIONS if getattr(args, k) is not None]
    if args.rows is not None and grid_given:
        raise SystemExit(f"--rows cannot be combined with {', '.join(grid_given)}: a row sets its "
                         f"cell, B, T and H ({ROW_FORMAT})")
    if args.rows is not None or (not grid_given and "rows" in defaults):
        rows = args.rows or [parse_row(r) for r in defaults["rows"]]
        grid = dict.fromkeys(GRID_OPTIONS)  # not a grid: config["rows"] says what ran
    else:
        rows = None
        grid_defaults = defaults if "cells" in defaults else CPU_GRID
        grid = {k: getattr(args, k) or grid_defaults[k] for k in GRID_OPTIONS}
    return {
        "device": str(device),
        "rows": rows,
        "cells": grid["cells"],
        "dtypes": args.dtypes or defaults["dtypes"],
        "batches": grid["batches"],
        "hiddens": grid["hiddens"],
        "input_size": args.input_size,
        "seq_len": grid["seq_len"],
        "bidirectional": args.bidirectional,
        "backends": backends,
        "backends_explicit": args.backends is not None,
        "modes": args.modes,
        "warmup_ms": args.warmup_ms if args.warmup_ms is not None else (25.0 if cuda else 10.0),
        "rep_ms": args.rep_ms if args.rep_ms is not None else (100.0 if cuda else 50.0),
        "seed": args.seed,
        "quick": args.quick,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "timing": {"spread_limit": timing.SPREAD_LIMIT, "interleaved": not cuda,
                   "min_reps": None if cuda else timing.MIN_REPS},
        "argv": list(sys.argv[1:]),
    }


def _factories(cfg, notes, extra_impls):
    """Ordered {row backend name: factory(case, ref) -> Impl}; torch.nn first."""
    out = {report.BASELINE: lambda case, ref: impls.module_impl(ref, case.cell)}
    for name in cfg["backends"]:
        if name in OUR_BACKENDS:
            out[name] = impls.ours(name)
        elif name == "compile":
            out[name] = impls.compiled
        elif name == "flashrnn":
            why = impls.flashrnn_available()
            if why and not cfg["backends_explicit"]:
                notes.append(f"flashrnn not timed: {why}")  # optional baseline: a note, no rows
                continue
            out[name] = impls.flashrnn_impl
    out.update(extra_impls or {})
    return out


def _is_skip(exc):
    # BackendUnavailable comes from rnn.backends; matched by name so this module never needs rnn.
    return isinstance(exc, impls.Skip) or type(exc).__name__ == "BackendUnavailable"


def _is_oom(exc):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def _describe(exc):
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]


def _reference_name(case, x):
    name = f"torch.nn.{case.cell.upper()}" + ("(bidirectional=True)" if case.directions == 2 else "")
    if x.device.type != "cuda":
        return f"{name} (CPU, native kernels)"
    if torch.backends.cudnn.is_acceptable(x):
        return f"{name} (cuDNN {torch.backends.cudnn.version()})"
    return f"{name} (CUDA native kernels: cuDNN not used for {case.dtype})"


def _check(impl, inputs, expected, mode):
    """Max relative error of outputs (and, when training, the input gradient) vs the oracle."""
    outs_ref, dx_ref = expected
    if mode == "forward":
        with torch.no_grad():
            outs = impl.run(inputs.x, inputs.state)
        return max(impls.rel_err(a, e) for a, e in zip(outs, outs_ref, strict=True))
    x = inputs.x.detach().requires_grad_(True)
    outs = impl.run(x, inputs.state)
    errs = [impls.rel_err(a, e) for a, e in zip(outs, outs_ref, strict=True)]
    (dx,) = torch.autograd.grad(outs, [x], grad_outputs=inputs.grads)
    errs.append(impls.rel_err(dx, dx_ref))
    return max(errs)


def _timed_fn(impl, inputs, mode):
    """The timed region: everything it needs is built before."""
    if mode == "forward":
        def fn():
            with torch.no_grad():
                impl.run(inputs.x, inputs.state)
        return fn
    x = inputs.x.detach().requires_grad_(True)
    wrt = [x] + [p for p in impl.params if p.requires_grad]

    def fn():
        outs = impl.run(x, inputs.state)
        torch.autograd.grad(outs, wrt, grad_outputs=inputs.grads)
    return fn


def _timed_ms(row):
    """The row's median ms if it was timed (ok or unstable), else None."""
    return row["ms"] if row["status"] in ("ok", "unstable") and row["ms"] else None


def _empty_row(name, status="ok", note=""):
    return {"backend": name, "status": status, "note": note, "ms": None, "ms_q20": None,
            "ms_q80": None, "max_err": None, "tolerance": None, "peak_mem_bytes": None}


def _failed(row, exc, cfg):
    """Record an exception in the row: skipped (cannot run, out of memory) or error."""
    row.update(ms=None, ms_q20=None, ms_q80=None, peak_mem_bytes=None)
    if _is_skip(exc):
        row.update(status="skipped", note=str(exc))
    elif _is_oom(exc):
        row.update(status="skipped", note="out of memory")
    else:
        row.update(status="error", note=_describe(exc))
        if cfg.get("verbose_errors"):
            traceback.print_exception(exc)


def _check_one(name, factory, case, mode, ref, inputs, expected, baseline_err, cfg):
    """Build and check one implementation: (row, impl); impl is None unless it is to be timed.
    Never raises."""
    row = _empty_row(name)
    try:
        impl = factory(case, ref)
        row["note"] = impl.note
        err = _check(impl, inputs, expected, mode)
        tol = max(TOLERANCE[case.dtype], 2 * baseline_err if baseline_err is not None else 0.0)
        row["max_err"] = err if math.isfinite(err) else None
        row["tolerance"] = tol
        if err <= tol:
            return row, impl
        row["status"] = "wrong"
        row["note"] = ("non-finite output" if not math.isfinite(err)
                       else f"max rel err {err:.3g} > tolerance {tol:.3g}")
    except Exception as exc:  # a backend that fails must not stop the grid
        _failed(row, exc, cfg)
    return row, None


def _time_rows(rows, impls_to_time, case, mode, inputs, cfg):
    """Time the checked implementations together (interleaved on a CPU) and fill their rows."""
    fns = {name: _timed_fn(impl, inputs, mode) for name, impl in impls_to_time.items()}
    results = timing.bench_many(fns, case.device, cfg["warmup_ms"], cfg["rep_ms"])
    for name, result in results.items():
        row = rows[name]
        try:
            if isinstance(result, BaseException):
                raise result
            row["ms"], row["ms_q20"], row["ms_q80"] = result
            if timing.unstable(row["ms_q20"], row["ms_q80"]):
                spread = row["ms_q80"] / row["ms_q20"] if row["ms_q20"] > 0 else math.inf
                row["status"] = "unstable"
                note = (f"q80/q20 = {spread:.2f} > {timing.SPREAD_LIMIT} (timing.SPREAD_LIMIT): too noisy "
                        "for a speed-up; a busy machine?")
                row["note"] = f"{note}; {row['note']}" if row["note"] else note
            row["peak_mem_bytes"] = timing.peak_memory_bytes(fns[name], case.device)
        except Exception as exc:
            _failed(row, exc, cfg)


def cases(cfg) -> list:
    """The configurations a config runs, in order: (cell, dtype, batch, hidden, seq_len)."""
    if cfg.get("rows") is not None:
        return [(r["cell"], dtype, r["batch"], r["hidden"], r["seq_len"])
                for r in cfg["rows"] for dtype in cfg["dtypes"]]
    return [(cell, dtype, batch, hidden, cfg["seq_len"])
            for cell, dtype, batch, hidden in itertools.product(cfg["cells"], cfg["dtypes"], cfg["batches"],
                                                                cfg["hiddens"])]


def run(cfg, extra_impls=None) -> dict:
    """Run the grid described by `cfg` (see resolve); return the record (not yet written).

    extra_impls: {name: factory(case, ref_module) -> impls.Impl}, timed beside the others
    (the tests inject a deliberately wrong implementation through it)."""
    device = torch.device(cfg["device"])
    notes = []
    factories = _factories(cfg, notes, extra_impls)
    rates = floor.measure_rates(device, cfg["dtypes"], impls.TORCH_DTYPES)
    notes.extend(rates.notes)
    configs = cases(cfg)
    progress = Progress(len(configs) * len(cfg["modes"]) * len(factories), not cfg.get("no_progress"))
    need_grad = "forward_backward" in cfg["modes"]
    rows = []
    for index, (cell, dtype, batch, hidden, seq_len) in enumerate(configs):
        case = impls.Case(cell, dtype, batch, hidden, cfg["input_size"] or hidden, seq_len, str(device),
                          2 if cfg.get("bidirectional") else 1)
        base = {"cell": cell, "dtype": dtype, "batch": batch, "hidden": hidden,
                "input_size": case.input_size, "seq_len": case.seq_len, "directions": case.directions}
        seed = cfg["seed"] * 100003 + index
        ref = inputs = expected = None
        setup_error = None
        try:
            ref = impls.reference_module(case, seed)
            inputs = impls.make_inputs(case, seed)
            expected = impls.oracle(case, ref, inputs, need_grad)
            ref_name = _reference_name(case, inputs.x)
        except Exception as exc:
            setup_error = "skipped" if _is_oom(exc) else "error"
            setup_note = "out of memory" if _is_oom(exc) else f"reference failed: {_describe(exc)}"
            ref_name = None
        for mode in cfg["modes"]:
            est = floor.estimate(cell, mode, batch, hidden, case.input_size, case.seq_len, dtype, rates)
            if case.directions != 1:  # the floor model is of one direction
                est = dict(est, floor_ms=None, bound=None)
            mode_rows, to_time = {}, {}
            baseline_err = None
            for name, factory in factories.items():  # check all, then time the good ones together
                progress.update(f"{cell} {dtype} B{batch} T{seq_len} H{hidden} {mode} {name}")
                if setup_error:
                    row, impl = _empty_row(name, setup_error, setup_note), None
                else:
                    row, impl = _check_one(name, factory, case, mode, ref, inputs, expected, baseline_err, cfg)
                if name == report.BASELINE:
                    baseline_err = row["max_err"]
                if impl is not None:
                    to_time[name] = impl
                mode_rows[name] = row
            if to_time:
                _time_rows(mode_rows, to_time, case, mode, inputs, cfg)
            del to_time
            if device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
            baseline = mode_rows[report.BASELINE]
            ms_base = baseline["ms"] if baseline["status"] == "ok" else None
            timed_base = _timed_ms(baseline)
            for row in mode_rows.values():
                ms = row["ms"] if row["status"] == "ok" else None  # unstable: a time, no result
                timed = _timed_ms(row)
                ratio = timed / timed_base if timed and timed_base else None
                row.update(base, mode=mode, reference_impl=ref_name, ms_torch_nn=ms_base,
                           speedup_vs_torch_nn=ms_base / ms if ms and ms_base else None,
                           ratio_vs_torch_nn=ratio,
                           ratio_unstable=None if ratio is None else "unstable" in (row["status"], baseline["status"]),
                           floor_ms=est["floor_ms"], floor_bound=est["bound"],
                           pct_of_floor=100.0 * ms / est["floor_ms"] if ms and est["floor_ms"] else None)
                rows.append({k: row.get(k) for k in report.ROW_KEYS})
        del ref, inputs, expected
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    progress.close()
    record = report.environment(device)
    record.update(config=cfg, rates=rates.as_dict(), notes=notes, rows=rows)
    return record


Progress = report.Progress


def main(argv=None, extra_impls=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve(args)
    if argv is not None:
        cfg["argv"] = list(argv)
    cfg["no_progress"] = args.no_progress
    record = run(cfg, extra_impls)
    path = report.write_record(record, args.out or default_out_dir(cfg["device"]))
    print(report.markdown_table(record["rows"]))
    if torch.device(cfg["device"]).type == "cpu":
        print(f"\nours / {report.BASELINE} (CPU: {record['torch_threads']} torch threads)\n")
        print(report.ratio_table(record["rows"]))
        print()
    for name in report.baselines(record["rows"]):
        print(f"{report.BASELINE}: {name}")
    for note in record["notes"]:
        print(f"note: {note}")
    counts = {s: sum(r["status"] == s for r in record["rows"]) for s in report.STATUSES}
    print(f"\n{record['device']}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    print(f"record: {path}")
    return 0
