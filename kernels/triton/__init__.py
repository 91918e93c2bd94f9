"""Triton kernels for the fused recurrence (persistent and per-step forward / backward).

`TritonBackend` implements the backend interface of rnn.backends; `make_plan` is the pure
launch-configuration choice (grid, block sizes, persistent or per step), `backward_shared_bytes` (backward)
its shared-memory estimate and `blocks_per_sm` / `check_resident` the co-residency rules applied to
a compiled kernel before a persistent launch. `barrier` holds the bounded grid barrier and
`measure_barrier`, the barrier-latency probe."""
from .backend import (INTERPRET, SM90, BarrierTimeoutError, DeviceLimits, NotResidentError, Plan, Saved,
                      TritonBackend, blocks_per_sm, check_resident, make_plan, backward_shared_bytes)
from .barrier import measure_barrier

__all__ = ["INTERPRET", "SM90", "BarrierTimeoutError", "DeviceLimits", "NotResidentError", "Plan", "Saved",
           "TritonBackend", "blocks_per_sm", "check_resident", "make_plan", "measure_barrier",
           "backward_shared_bytes"]
