"""Plots from benchmark records: `python -m profiling.plot [record.json ...] [--out DIR]` (make plots).

One PNG per device: a grid of panels, one per (cell, mode); in each, the speed-up over torch.nn
of every backend that ran correctly with a steady timing ("ok" rows), per configuration
(dtype, batch, hidden, T), on a log axis with a line at 1. Rows that are unstable, wrong,
skipped or failed are left out (no speed-up). The title names the device and what torch.nn ran
there (cuDNN on a GPU, its native kernels on a CPU); the same line is the PNG's "Title" text.

Records: the ones named, else the committed ones in profiling/results/ (`git ls-files`): a record
that was never committed (another machine's, a local run's) is not drawn unless named. Without
git (an exported tree) every profiling/results/*.json is drawn, with a note.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

from .report import BASELINE, RESULTS_DIR, baselines, slug

PLOTS_DIR = Path(__file__).resolve().parent / "plots"


def load_rows(paths):
    """{device: [rows]} from record files; a later record's row replaces an earlier identical
    configuration so re-runs do not double the bars."""
    by_device = defaultdict(dict)
    for path in sorted(paths, key=lambda p: Path(p).name):
        record = json.loads(Path(path).read_text())
        for row in record.get("rows", []):
            key = (row["cell"], row["mode"], row["dtype"], row["batch"], row["hidden"], row["seq_len"], row["backend"],
                   row.get("directions", 1))
            by_device[record.get("device", "unknown")][key] = row
    return {device: list(rows.values()) for device, rows in by_device.items()}


def committed_records(results_dir=RESULTS_DIR):
    """(the committed *.json records directly in results_dir, a note or None).

    The note names the records left out because git does not track them, or says that git could
    not be asked (then every record there is returned)."""
    results_dir = Path(results_dir)
    found = sorted(results_dir.glob("*.json"))
    if not found:
        return [], None
    try:
        res = subprocess.run(["git", "ls-files", "-z", "--", "*.json"], cwd=results_dir,
                             capture_output=True, text=True, timeout=30)
        failure = None if res.returncode == 0 else (res.stderr.strip() or f"exit {res.returncode}").splitlines()[0]
    except (OSError, subprocess.SubprocessError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    if failure:
        return found, f"cannot ask git which records are committed ({failure}): drawing all of {results_dir}"
    tracked = {(results_dir / name).resolve() for name in res.stdout.split("\0") if name}
    kept = [p for p in found if p.resolve() in tracked]
    left = [p.name for p in found if p.resolve() not in tracked]
    note = (f"not drawn, not committed (name them to draw them): {', '.join(left)}" if left else None)
    return kept, note


def title(device, rows) -> str:
    """The plot's title: the device and what torch.nn ran on it."""
    ran = "; ".join(baselines(rows)) or BASELINE
    return f"fused-rnn speed-up over {BASELINE} on {device}\n(baseline: {ran})"


def plot_device(device, rows, out_dir) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r.get("speedup_vs_torch_nn") and r["backend"] != BASELINE]
    if not ok:
        return None
    def layer(r):  # a bidirectional layer's rows get panels of their own
        return r["cell"] + (" bidirectional" if r.get("directions", 1) == 2 else "")

    panels = sorted({(layer(r), r["mode"]) for r in ok})
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
            panel = [r for r in ok if layer(r) == cell and r["mode"] == mode]
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
                ys = [r["speedup_vs_torch_nn"] for r in pts]
                ax.bar(xs, [y - 1.0 for y in ys], bottom=1.0, width=width, label=backend, color=colours[backend])
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
            if panel:
                ys = [r["speedup_vs_torch_nn"] for r in panel]
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
    text = title(device, rows)
    fig.suptitle(text, fontsize=11)
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"speedup_{slug(device)}.png"
    fig.savefig(path, dpi=110, metadata={"Title": text.replace("\n", " ")})
    plt.close(fig)
    return path


def build_parser():
    p = argparse.ArgumentParser(prog="python -m profiling.plot", description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="*",
                   help="record files (default: the committed profiling/results/*.json)")
    p.add_argument("--out", default=str(PLOTS_DIR), help="directory for the PNG files")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    paths = [Path(p) for p in args.records]
    if not paths:
        paths, note = committed_records(RESULTS_DIR)
        if note:
            print(f"note: {note}")
    if not paths:
        print(f"no committed records in {RESULTS_DIR}: name record files to plot them "
              "(a CPU run writes to profiling/results/local/)")
        return 1
    written = []
    for device, rows in load_rows(paths).items():
        path = plot_device(device, rows, args.out)
        if path is None:
            ours = Counter(r["status"] for r in rows if r["backend"] != BASELINE)
            counts = ", ".join(f"{n} {s}" for s, n in sorted(ours.items())) or "none"
            print(f"{device}: nothing to plot: a speed-up needs status ok here and in its {BASELINE} "
                  f"row (rows other than {BASELINE}: {counts})")
        else:
            written.append(path)
            print(f"wrote {path}")
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main())
