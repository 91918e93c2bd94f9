"""GPU kernels for fused-rnn: Triton (`kernels.triton`) and CUDA C through CuPy (`kernels.cupy`).

Kernels never import `rnn`; they receive plain tensors and the cell description as arguments.
"""
import os
from typing import NamedTuple, Optional

import torch

POISON_ENV = "FUSED_RNN_DEBUG_POISON"


def new_empty(shape, dtype, device):
    """Allocate a kernel output. With FUSED_RNN_DEBUG_POISON=1 it is filled with NaN so that a
    test catches any element a kernel forgets to write."""
    if os.environ.get(POISON_ENV) == "1" and (dtype.is_floating_point if isinstance(dtype, torch.dtype) else True):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def env_choice(name, default, choices, expected=None) -> str:
    """The value of the switch `name` (stripped, lower case; unset or empty: `default`), which must
    be one of `choices`; else ValueError naming the variable, what it accepts (`expected`, by
    default "one of (...)") and what it got."""
    value = os.environ.get(name, default).strip().lower() or default
    if value not in choices:
        raise ValueError(f"{name} must be {expected or f'one of {tuple(choices)}'}, got {value!r}")
    return value


class Saved(NamedTuple):
    """What a backend's forward returns (the contract is documented in rnn.backends)."""

    out: torch.Tensor
    hT: torch.Tensor
    cT: Optional[torch.Tensor]
    gates: torch.Tensor
    extra: Optional[torch.Tensor]


def compute_dtype(dtype):
    """Gates and cell state are kept in fp32 for fp16 / bf16 / fp32 inputs, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32
