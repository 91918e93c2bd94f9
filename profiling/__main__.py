"""`python -m profiling`: run the benchmark grid (see profiling.bench)."""
from profiling.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
