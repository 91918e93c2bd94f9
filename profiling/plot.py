"""Plots from benchmark records: `python -m profiling.plot [record.json ...] [--out DIR]` (make plots).

One PNG per device: a grid of panels, one per (cell, mode); in each, the speed-up over torch.nn
(cuDNN on a GPU) of every backend that ran correctly ("ok" rows), per configuration
(dtype, batch, hidden, T), on a log axis with a line at 1. Rows that are wrong, skipped or
failed are left out (they have no time). Records default to every profiling/results/*.json.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from .report import RESULTS_DIR, slug

PLOTS_DIR = Path(__file__).resolve().parent / "plots"


def load_rows(paths):
    """{device: [rows]} from record files; a later record's row replaces an earlier identical
    configuration so re-runs do not double the bars."""
    by_device = defaultdict(dict)
    for path in sorted(paths, key=lambda p: Path(p).name):
        record = json.loads(Path(path).read_text())
        for row in record.get("rows", []):
            key = (row["cell"], row["mode"], row["dtype"], row["batch"], row["hidden"], row["seq_len"], row["backend"])
            by_device[record.get("device", "unknown")][key] = row
    return {device: list(rows.values()) for device, rows in by_device.items()}


def plot_device(device, rows, out_dir) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r.get("speedup_vs_cudnn") and r["backend"] != "cudnn"]
    if not ok:
        return None
    panels = sorted({(r["cell"], r["mode"]) for r in ok})
    cells = sorted({p[0] for p in panels})
    modes = sorted({p[1] for p in panels}, key=lambda m: (m != "forward", m))
    backends = sorted({r["backend"] for r in ok})
    colours = {b: plt.get_cmap("tab10")(k % 10) for k, b in enumerate(backends)}  # same in every panel
    dtype_order = {"bf16": 0, "fp16": 1, "fp32": 2}
    fig, axes = plt.subplots(len(cells), len(modes), squeeze=False,
                             figsize=(max(6.0, 0.45 * len(ok) / max(len(panels), 1) + 4) * len(modes), 4.2 * len(cells)))
    for i, cell in enumerate(cells):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            panel = [r for r in ok if r["cell"] == cell and r["mode"] == mode]
            configs = sorted({(r["dtype"], r["batch"], r["hidden"], r["seq_len"]) for r in panel},
                             key=lambda c: (dtype_order.get(c[0], 9), c[1], c[2], c[3]))
            index = {c: k for k, c in enumerate(configs)}
            width = 0.8 / max(len(backends), 1)
            for b, backend in enumerate(backends):
                pts = [r for r in panel if r["backend"] == backend]
                if not pts:
                    continue
                xs = [index[(r["dtype"], r["batch"], r["hidden"], r["seq_len"])] - 0.4 + (b + 0.5) * width for r in pts]
                # bars grow from 1 (parity) up or down: on a log axis a bar from 0 means nothing
                ys = [r["speedup_vs_cudnn"] for r in pts]
                ax.bar(xs, [y - 1.0 for y in ys], bottom=1.0, width=width, label=backend, color=colours[backend])
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
            if panel:
                ys = [r["speedup_vs_cudnn"] for r in panel]
                ax.set_ylim(min(min(ys), 1.0) / 1.5, max(max(ys), 1.0) * 1.5)
            ax.set_xticks(range(len(configs)))
            seq = sorted({c[3] for c in configs})
            ax.set_xticklabels([f"{d} B{b} H{h}" + (f" T{t}" if len(seq) > 1 else "") for d, b, h, t in configs],
                               rotation=70, fontsize=7)
            ax.set_title(f"{cell} {mode} (T={','.join(map(str, seq))})", fontsize=10)
            ax.set_ylabel("speed-up vs torch.nn (x)")
            ax.grid(axis="y", which="both", alpha=0.3)
            if panel:
                ax.legend(fontsize=7)
    fig.suptitle(f"fused-rnn speed-up over torch.nn: {device}", fontsize=11)
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"speedup_{slug(device)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser():
    p = argparse.ArgumentParser(prog="python -m profiling.plot", description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="*", help="record files (default: profiling/results/*.json)")
    p.add_argument("--out", default=str(PLOTS_DIR), help="directory for the PNG files")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    paths = [Path(p) for p in args.records] or sorted(RESULTS_DIR.glob("*.json"))
    if not paths:
        print(f"no records: run `python -m profiling` first (looked in {RESULTS_DIR})")
        return 1
    written = []
    for device, rows in load_rows(paths).items():
        path = plot_device(device, rows, args.out)
        if path is None:
            print(f"{device}: no correct timed rows to plot")
        else:
            written.append(path)
            print(f"wrote {path}")
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main())
