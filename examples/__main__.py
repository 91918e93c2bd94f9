"""Run every example in turn and print a summary: `python -m examples`."""
import importlib
import time

from . import EXAMPLES
from ._common import OUT_DIR


def main():
    start = time.perf_counter()
    summary = []
    for name in EXAMPLES:
        print(f"\n=== examples.{name} ===", flush=True)
        t0 = time.perf_counter()
        result = importlib.import_module(f"examples.{name}").main()
        summary.append((name, time.perf_counter() - t0, result))
    print("\n=== summary ===")
    for name, seconds, result in summary:
        print(f"{name:22s} {seconds:6.1f} s  {result}")
    print(f"total {time.perf_counter() - start:.1f} s; plots in {OUT_DIR}/")


if __name__ == "__main__":
    main()
