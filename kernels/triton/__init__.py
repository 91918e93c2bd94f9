"""Triton kernels for the fused recurrence (persistent and per-step forward / backward).

`TritonBackend` implements the backend interface of rnn.backends; `make_plan` is the pure
launch-configuration choice (grid, block sizes, persistent or per step)."""
from .backend import INTERPRET, Plan, Saved, TritonBackend, make_plan

__all__ = ["INTERPRET", "Plan", "Saved", "TritonBackend", "make_plan"]
