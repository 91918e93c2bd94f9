# fused-rnn: `make test` installs everything it needs and runs the suite; `make demo` runs the
# Keras-tutorial examples (PyTorch and Keras 3 versions); `make bench` runs the benchmark grid (GPU)
# or the CPU table (backends auto and torch next to torch.nn, with the ratio ours / torch.nn).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := .make-deps

.PHONY: deps test demo bench plots gpu-check clean

# On a CPU-only machine `torch==2.13.0` is the local CPU build; an unpinned torch would pull
# several GB of CUDA wheels, so torch is installed pinned first and only if it is missing.
$(STAMP): pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[test,triton,bench,examples]"
	touch $(STAMP)

deps: $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest -q --durations=15

# The tutorials twice: as PyTorch models (rnn.keras layers), then as Keras 3 scripts accelerated by
# rnn.keras3.install().
demo: $(STAMP)
	$(PYTHON) -m examples
	$(PYTHON) -m examples.keras3

# The record goes to profiling/results/ on a GPU (to be committed), to the git-ignored
# profiling/results/local/ on a CPU (a smoke run says nothing about GPU speed).
bench: $(STAMP)
	$(PYTHON) -m profiling
	$(PYTHON) -m profiling.keras3_bench

# Draws the committed records of profiling/results/ (others: python -m profiling.plot FILE...).
plots: $(STAMP)
	$(PYTHON) -m profiling.plot

# The one-shot GPU harness (profiling/gpu_session.sh, profiling/harness.py), no install needed:
# env, headline vs cuDNN, grid barrier, GPU tests, ncu, all within 540 s. Files go to $(OUT)
# when set (the device tool's folder), else profiling/results/gpu-<date>/. GPU_ARGS adds options:
# `make gpu-check GPU_ARGS=--grid` (the resumable full grid), `GPU_ARGS=--dry-run` (on a CPU).
gpu-check:
	PYTHON=$(PYTHON) bash profiling/gpu_session.sh $(GPU_ARGS) $(OUT)

clean:
	rm -rf $(STAMP) build *.egg-info .pytest_cache
