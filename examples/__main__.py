"""Run the examples in turn and print a summary: `python -m examples [NAME ...]` (make demo)."""
import argparse
import importlib
import time

from . import EXAMPLES


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m examples",
        description="Train the seed Keras tutorials' models (rnn.keras + torch.nn, plain PyTorch "
        "loops) on the CPU, print each one's metric and save its plot under examples/out/. "
        "Takes a few minutes for all of them.",
        epilog="examples: " + ", ".join(EXAMPLES) + ". Each also runs alone: python -m examples.NAME",
    )
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="examples to run, in the order given (default: all of them)")
    return p


def main(argv=None):
    parser = build_parser()
    names = parser.parse_args(argv).names or list(EXAMPLES)
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        parser.error(f"unknown example {', '.join(map(repr, unknown))}: expected some of {', '.join(EXAMPLES)}")
    from ._common import OUT_DIR  # imports torch: only once there is something to run

    start = time.perf_counter()
    summary = []
    for name in names:
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
