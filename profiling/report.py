"""Records: environment facts for every run, the JSON file, the markdown table, a progress bar."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
# Records meant to be kept (committed): where a GPU run writes by default.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# CPU smoke runs write here by default: ignored by git (.gitignore), never plotted unless named.
LOCAL_RESULTS_DIR = RESULTS_DIR / "local"
COMMIT_ENV = "FUSED_RNN_COMMIT"  # set by the Dockerfile, where there is no .git

# The baseline's row name. It is torch.nn on every device; which kernels torch.nn ran (cuDNN on
# a GPU, its native CPU kernels otherwise) is in each row's `reference_impl`.
BASELINE = "torch.nn"
ROW_KEYS = (
    "cell", "mode", "dtype", "batch", "hidden", "input_size", "seq_len", "backend", "status",
    "note", "ms", "ms_q20", "ms_q80", "ms_torch_nn", "speedup_vs_torch_nn", "ratio_vs_torch_nn",
    "ratio_unstable", "max_err", "tolerance", "peak_mem_bytes", "floor_ms", "pct_of_floor", "floor_bound",
    "reference_impl",
)
# ms_torch_nn and speedup_vs_torch_nn (= torch.nn's ms / ours) are given only when both timings
# are steady ("ok"). ratio_vs_torch_nn (= ours / torch.nn's ms, medians: below 1 is faster) is
# given whenever both were timed, "unstable" included; ratio_unstable then says whether either
# timing was unstable (q80/q20 > timing.SPREAD_LIMIT), i.e. whether the ratio is only indicative.
# ok: timed, speed-up reported; unstable: timed, but q80/q20 > timing.SPREAD_LIMIT, so no speed-up;
# wrong: failed the correctness check, not timed; skipped: cannot run this case (the note says
# why); error: raised (the note has the exception).
STATUSES = ("ok", "unstable", "wrong", "skipped", "error")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()}"


def git_commit() -> str:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(COMMIT_ENV, "").strip() or "unknown"


def _version(module):
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or its import fails without a GPU
        return None


def versions() -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cupy": _version("cupy"),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "flashrnn": _version("flashrnn"),
    }


def settings() -> dict:
    """What changes which kernels run and how, besides the arguments: the project's FUSED_RNN_*
    variables that are set (e.g. FUSED_RNN_FP32_MATMUL=ieee) and torch's tf32 switches."""
    out = {k: v for k, v in sorted(os.environ.items()) if k.startswith("FUSED_RNN_") and k != COMMIT_ENV}
    out["torch.backends.cuda.matmul.allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    out["torch.backends.cudnn.allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    return out


def environment(device) -> dict:
    return {
        "device": device_name(device),
        "versions": versions(),
        "settings": settings(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
    }


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:48] or "device"


def write_record(record: dict, out_dir) -> Path:
    """<out_dir>/<date>_<device>.json (a counter is appended rather than overwrite)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.fromisoformat(record["date"]).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}_{slug(record['device'])}"
    path, k = out_dir / f"{base}.json", 1
    while path.exists():
        path, k = out_dir / f"{base}_{k}.json", k + 1
    path.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    return path


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def baselines(rows) -> list:
    """What torch.nn ran in these rows, e.g. 'torch.nn.LSTM (cuDNN 90100)', each once."""
    return sorted({r["reference_impl"] for r in rows if r.get("reference_impl")})


def markdown_table(rows) -> str:
    head = ("cell", "mode", "dtype", "B", "H", "T", "backend", "ms [q20, q80]", f"{BASELINE} ms",
            f"speed-up vs {BASELINE}", "% of floor", "max err", "peak MiB", "status")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ms = f"{r['ms']:.3f} [{r['ms_q20']:.3f}, {r['ms_q80']:.3f}]" if r["ms"] is not None else ""
        status = r["status"] if not r.get("note") or r["status"] == "ok" else f"{r['status']}: {r['note']}"
        mem = None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20
        cells = (r["cell"], r["mode"], r["dtype"], r["batch"], r["hidden"], r["seq_len"], r["backend"],
                 ms, _fmt(r["ms_torch_nn"], ".3f"), _fmt(r["speedup_vs_torch_nn"], ".2f"),
                 _fmt(r["pct_of_floor"], ".0f"), _fmt(r["max_err"], ".2e"), _fmt(mem, ".1f"),
                 status.replace("|", "/"))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


MODE_LABELS = {"forward": "inference", "forward_backward": "training"}
UNSTABLE_MARK = "(unstable)"


def _ratio_cell(row):
    if row is None:
        return ""
    if row.get("ratio_vs_torch_nn") is None:
        return row["status"] if row["status"] != "ok" else ""
    text = f"{row['ratio_vs_torch_nn']:.2f}x"
    return f"{text} {UNSTABLE_MARK}" if row.get("ratio_unstable") else text


def _baseline_cell(row):
    if row is None:
        return ""
    if row["status"] not in ("ok", "unstable") or row["ms"] is None:
        return row["status"]
    return f"{row['ms']:.3f}" + (f" {UNSTABLE_MARK}" if row["status"] == "unstable" else "")


def ratio_table(rows) -> str:
    """The summary: one line per configuration (cell, dtype, B, T, H), and per mode torch.nn's
    median time per call and ours / torch.nn (our median over torch.nn's, from the same
    interleaved timing; below 1.0x is faster) for every other backend, marked "(unstable)" where
    timing.unstable says so for either timing; then a legend and the highest ratio per backend."""
    key = lambda r: (r["cell"], r["dtype"], r["batch"], r["seq_len"], r["hidden"], r["input_size"])  # noqa: E731
    configs, modes, backends, by = [], [], [], {}
    for r in rows:
        k = key(r)
        if k not in configs:
            configs.append(k)
        if r["mode"] not in modes:
            modes.append(r["mode"])
        if r["backend"] != BASELINE and r["backend"] not in backends:
            backends.append(r["backend"])
        by[(k, r["mode"], r["backend"])] = r
    head = ["cell", "dtype", "B", "T", "H"]
    for mode in modes:
        label = MODE_LABELS.get(mode, mode)
        head.append(f"{BASELINE} ms ({label})")
        head.extend(f"{b} / {BASELINE} ({label})" for b in backends)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    worst = {}
    for k in configs:
        cell, dtype, batch, seq_len, hidden, input_size = k
        cells = [cell, dtype, batch, seq_len, hidden if input_size == hidden else f"{hidden} (I={input_size})"]
        for mode in modes:
            cells.append(_baseline_cell(by.get((k, mode, BASELINE))))
            for b in backends:
                r = by.get((k, mode, b))
                cells.append(_ratio_cell(r))
                if r is not None and r.get("ratio_vs_torch_nn") is not None:
                    where = f"{cell}:{batch}x{seq_len}x{hidden} {dtype} {MODE_LABELS.get(mode, mode)}"
                    if b not in worst or r["ratio_vs_torch_nn"] > worst[b][0]:
                        worst[b] = (r["ratio_vs_torch_nn"], where, r.get("ratio_unstable"))
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines.append("")
    lines.append(f"{BASELINE} ms: median time per call. ours / {BASELINE}: our median time per call over "
                 f"{BASELINE}'s, timed interleaved in one process with the same weights and inputs "
                 "(below 1.00x: faster than torch.nn). inference: forward without grad; training: forward "
                 "plus gradients of the input and all weights.")
    lines.append(f"{UNSTABLE_MARK}: q80/q20 of this timing or of {BASELINE}'s is above timing.SPREAD_LIMIT: "
                 "the machine was too busy for a steady timing, the figure is only indicative.")
    if worst:
        lines.append(f"highest ours / {BASELINE}: " + "; ".join(
            f"{b} {v:.2f}x{' ' + UNSTABLE_MARK if unstable else ''} at {where}"
            for b, (v, where, unstable) in worst.items()))
    return "\n".join(lines)


class Progress:
    """tqdm when installed, else one rewritten line on stderr."""

    def __init__(self, total, enabled=True):
        self.total, self.done, self.enabled = total, 0, enabled
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, label):
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)
        else:
            print(f"\r[{self.done}/{self.total}] {label:<60}", end="", file=sys.stderr, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)
