# fused-rnn: `make test` installs everything it needs and runs the suite; `make demo` runs the
# Keras-tutorial examples; `make bench` runs the benchmark grid (GPU) or a smoke grid (CPU).
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
	$(PYTHON) -m pytest -q

demo: $(STAMP)
	$(PYTHON) -m examples

# The record goes to profiling/results/ on a GPU (to be committed), to the git-ignored
# profiling/results/local/ on a CPU (a smoke run says nothing about GPU speed).
bench: $(STAMP)
	$(PYTHON) -m profiling

# Draws the committed records of profiling/results/ (others: python -m profiling.plot FILE...).
plots: $(STAMP)
	$(PYTHON) -m profiling.plot

# On a GPU machine: GPU tests + quick grids (tensor-core and FMA CuPy paths) into profiling/results
gpu-check:
	PYTHON=$(PYTHON) bash profiling/gpu_session.sh

clean:
	rm -rf $(STAMP) build *.egg-info .pytest_cache
