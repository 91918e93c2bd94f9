#!/usr/bin/env bash
# The one-shot GPU harness (`make gpu-check`): what to run the first minutes a GPU is lent.
#
#   bash profiling/gpu_session.sh [OUT]                 env, headline vs cuDNN, grid barrier, GPU tests,
#                                                       ncu: all within 540 s (one 10-minute command)
#   bash profiling/gpu_session.sh --grid OUT [--resume PREVIOUS.jsonl]
#                                                       the full benchmark grid, continued where the
#                                                       last command stopped (about three commands)
#   bash profiling/gpu_session.sh --dry-run OUT         the same on a CPU (torch backend, tiny shapes)
#
# OUT defaults to $OUT when set (the device tool's folder), else profiling/results/gpu-<date>.
# Files: results.jsonl (every record, appended as it comes), summary.md, record.json,
# harness.log, tests.log, ncu.txt. `--help` lists the options; profiling/harness.py documents it.
# Runs from the repository root with nothing installed (PYTHONPATH) and no network.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
command -v "$py" >/dev/null 2>&1 || py=python
exec "$py" -m profiling.harness "$@"
