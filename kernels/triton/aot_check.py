"""Compile the recurrence kernels ahead of time for a GPU target, without a GPU.

    python -m kernels.triton.aot_check lstm:1:bf16:768:persistent gru:0:fp16:512:per_step ...

Each spec is kind:reset_after(0/1):io dtype(fp32|fp16|bf16|fp64):hidden:persistent|per_step.
Prints one JSON line per kernel: {"spec", "kernel", "persistent", "shared" (bytes),
"grid_barrier" (the release-add / acquire-load pair is in the PTX)}. CI uses it
on CPU-only machines to prove the compiled (non-interpreted) path type-checks and fits in shared
memory; it must run with TRITON_INTERPRET unset (interpreted kernels cannot be compiled).
"""
from __future__ import annotations

import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import recurrence as R
from .backend import fp32_precision, gates_padded, make_plan, plan_constexprs

_IO_POINTERS = {"xg_ptr", "w_ptr", "h0_ptr", "out_ptr", "dout_ptr", "xchg_ptr"}
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}


def _signature(fn, consts, io, cdt):
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "mask_ptr":
            sig[name] = "*i8"
        elif name == "sync_ptr":
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (io if name in _IO_POINTERS else cdt)
        else:
            sig[name] = "i32"
    return sig


def compile_spec(text, arch=90, n_sm=132, batch=64):
    kind, ra, io, hidden, mode = text.split(":")
    ra, hidden, per_step = ra == "1", int(hidden), mode == "per_step"
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    cdt = "fp64" if io == "fp64" else "fp32"
    results = []
    for name, fn in (("forward", R.forward_kernel), ("backward", R.backward_kernel)):
        plan = make_plan(hidden, batch, G, _BYTES[io], n_sm, False, per_step, direction=name)
        consts = dict(KIND=R.KIND_CODES[kind], NG=G, ACT=0, RACT=2, RESET_AFTER=ra, REVERSE=True,
                      HAS_MASK=True, HAS_RMASK=True, TWO_PHASE=kind == "gru" and not ra,
                      PHASE=1 if per_step else 0, SYNC=plan.persistent and plan.grid != (1, 1),
                      PREC=fp32_precision(False) if io == "fp32" else "ieee", **plan_constexprs(plan, name))
        if name == "forward":
            consts.update(HAS_BIAS=True, NGP=gates_padded(G))
        kernel = triton.compile(ASTSource(fn, _signature(fn, consts, io, cdt), constexprs=consts),
                                target=GPUTarget("cuda", arch, 32),
                                options=plan.compile_options)
        ptx = kernel.asm["ptx"]
        results.append({"spec": text, "kernel": name, "persistent": plan.persistent,
                        "shared": kernel.metadata.shared,
                        "grid_barrier": ".gpu.release" in ptx and ".gpu.acquire" in ptx})
    return results


def main(argv):
    for text in argv:
        for row in compile_spec(text):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
