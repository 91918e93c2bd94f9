"""Run every Keras 3 example in turn and print a summary: `python -m examples.keras3`."""
import importlib
import time

from . import EXAMPLES
from .._common import OUT_DIR


def main():
    start = time.perf_counter()
    summary = []
    for name in EXAMPLES:
        print(f"\n=== examples.keras3.{name} ===", flush=True)
        t0 = time.perf_counter()
        result = importlib.import_module(f"examples.keras3.{name}").main()
        summary.append((name, time.perf_counter() - t0, result))
    print("\n=== summary (Keras 3, torch backend, rnn.keras3 installed) ===")
    for name, seconds, result in summary:
        print(f"{name:22s} {seconds:6.1f} s  {result}")
    print(f"total {time.perf_counter() - start:.1f} s; plots in {OUT_DIR}/")
    # Every example that ran must have run fused, and only fused.
    failed = [name for name, _, result in summary
              if "skipped" not in result and (result["fallbacks"] or not result["fused_calls"])]
    if failed:
        raise SystemExit(f"these examples did not run (only) fused: {failed}")


if __name__ == "__main__":
    main()
