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
    "note", "ms", "ms_q20", "ms_q80", "ms_torch_nn", "speedup_vs_torch_nn", "max_err", "tolerance",
    "peak_mem_bytes", "floor_ms", "pct_of_floor", "floor_bound", "reference_impl",
)
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


def environment(device) -> dict:
    return {
        "device": device_name(device),
        "versions": versions(),
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
