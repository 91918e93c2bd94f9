"""Reading compiled GPU code without a GPU: ptxas resource lines, the SASS of a cubin, its loops,
and per-instruction classes with their bytes. Used by profiling.static.

Tools: ptxas / cuobjdump / nvdisasm, first from the Triton wheel (triton/backends/nvidia/bin),
else from PATH (a CUDA toolkit).

SASS loops: every backward branch (`BRA` to an address at or before itself) closes a loop
[target, branch]. Loops nest by interval containment. The *step loop* (the loop over time of a
persistent recurrence kernel) is the outermost loop that contains a block barrier (`BAR.SYNC` /
`BAR.RED`): the per-step barriers sit in it, the loops before it (loading W_hh, the initial
state) have none, and every other loop with a barrier (batch tiles, spin waits) is nested in
it. A kernel whose loops all lack a barrier has no step loop (reported as not found).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class ToolMissing(RuntimeError):
    """A CUDA binary tool (ptxas, cuobjdump, nvdisasm) is not installed."""


def tool(name: str) -> str:
    """Path of a CUDA binary tool: the copy shipped with Triton, else the one on PATH."""
    try:
        import triton

        bundled = Path(triton.__file__).resolve().parent / "backends" / "nvidia" / "bin" / name
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} not found: expected it in triton/backends/nvidia/bin or on PATH "
                          "(a CUDA toolkit)")
    return found


# ---------------------------------------------------------------------------------------------
# resource usage

_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)'")


def parse_ptxas_log(text: str) -> dict:
    """{entry name: {registers, stack_bytes, spill_store_bytes, spill_load_bytes}} from `ptxas -v`."""
    out, current = {}, None
    for line in text.splitlines():
        m = _PTXAS_ENTRY.search(line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = _PTXAS_FRAME.search(line)
        if m:
            current.update(stack_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)),
                           spill_load_bytes=int(m.group(3)))
        m = _PTXAS_REGS.search(line)
        if m:
            current["registers"] = int(m.group(1))
    return out


_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def res_usage(cubin: bytes) -> dict:
    """cuobjdump -res-usage of a one-kernel cubin: {registers, stack_bytes, static_shared_bytes,
    local_bytes}."""
    text = _run_on_cubin(["cuobjdump", "-res-usage"], cubin)
    m = _RES.search(text)
    if m is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no REG/STACK line:\n{text[-1000:]}")
    reg, stack, shared, local = (int(g) for g in m.groups())
    return {"registers": reg, "stack_bytes": stack, "static_shared_bytes": shared, "local_bytes": local}


def _run_on_cubin(cmd, cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        res = subprocess.run([tool(cmd[0]), *cmd[1:], str(path)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


# ---------------------------------------------------------------------------------------------
# SASS

@dataclass
class Instr:
    addr: int
    pred: str          # "" or e.g. "@!P0"
    op: str            # opcode with modifiers, e.g. "LDG.E.U16.CONSTANT"
    operands: str
    line: tuple = ()   # (file, line) of the source, innermost first, when line info is present
    target: int | None = None  # branch target address

    @property
    def base(self) -> str:
        return self.op.split(".", 1)[0]


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')


def disassemble(cubin: bytes) -> list[Instr]:
    """The SASS of a one-kernel cubin (nvdisasm, with line info when the cubin has it)."""
    text = _run_on_cubin(["nvdisasm", "-c", "-gi"], cubin)
    return parse_sass(text)


def parse_sass(text: str) -> list[Instr]:
    instrs, labels, pending, line = [], {}, [], ()
    for raw in text.splitlines():
        s = raw.strip()
        m = _LINE.search(s)
        if m:
            # several "//## File" lines precede an instruction: the first is the innermost
            # (inlined) location; a new group starts after an instruction
            if pending is None:
                pending = []
            pending.append((m.group(1), int(m.group(2))))
            continue
        m = _LABEL.match(s)
        if m:
            labels[m.group(1)] = None
            instrs.append(m.group(1))  # placeholder: resolved to the next instruction's address
            continue
        m = _INSTR.search(s)
        if not m:
            continue
        if pending:
            line = tuple(pending)
        pending = None
        ins = Instr(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4).strip(), line)
        instrs.append(ins)
    # resolve labels to the address of the instruction that follows them
    out, waiting = [], []
    for item in instrs:
        if isinstance(item, str):
            waiting.append(item)
            continue
        for name in waiting:
            labels[name] = item.addr
        waiting = []
        out.append(item)
    for ins in out:
        if ins.base in ("BRA", "BRX", "JMP", "CALL", "BSSY", "SSY", "PBK", "CAL"):
            t = re.search(r"\(?(\.L_x_\d+)\)?", ins.operands)
            if t and t.group(1) in labels:
                ins.target = labels[t.group(1)]
            else:
                h = re.search(r"0x([0-9a-f]+)", ins.operands)
                if h:
                    ins.target = int(h.group(1), 16)
    return out


def is_block_barrier(ins) -> bool:
    return ins.base == "BAR" and (".SYNC" in ins.op or ".RED" in ins.op or ins.op == "BAR")


_NO_FALLTHROUGH = ("EXIT", "RET", "BRX", "JMP", "KILL")


def natural_loops(instrs) -> list:
    """Natural loops of the SASS control-flow graph: [(head address, set of member addresses)],
    one per loop head (back edges to the same head merged). A back edge is a branch to an address
    at or before itself; its loop is the head plus every instruction that reaches the branch
    without passing the head. Unlike address intervals this keeps blocks that the compiler moved
    out of line (e.g. a barrier's slow path placed after the loop) inside their loop."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    preds = [[] for _ in instrs]
    for i, ins in enumerate(instrs):
        unconditional = ins.base == "BRA" and not ins.pred
        if i + 1 < len(instrs) and not unconditional and ins.base not in _NO_FALLTHROUGH:
            preds[i + 1].append(i)
        if ins.base == "BRA" and ins.target in index:
            preds[index[ins.target]].append(i)
    heads = {}
    for i, ins in enumerate(instrs):
        if ins.base == "BRA" and ins.target in index and ins.target <= ins.addr:
            heads.setdefault(index[ins.target], []).append(i)
    loops = []
    for h, tails in heads.items():
        member, stack = {h}, [t for t in tails if t != h]
        member.update(stack)
        while stack:
            n = stack.pop()
            for p in preds[n]:
                if p not in member:
                    member.add(p)
                    stack.append(p)
        loops.append((instrs[h].addr, {instrs[i].addr for i in member}))
    return loops


def step_loop(instrs, loops=None):
    """(head address, member addresses) of the step loop (see the module docstring), or None."""
    loops = natural_loops(instrs) if loops is None else loops
    bars = {ins.addr for ins in instrs if is_block_barrier(ins)}
    with_bar = [lp for lp in loops if lp[1] & bars]
    outer = [lp for lp in with_bar if not any(o is not lp and lp[1] < o[1] for o in with_bar)]
    if not outer:
        return None
    return max(outer, key=lambda lp: (len(lp[1] & bars), len(lp[1])))


def loop_instrs(instrs, loop):
    """The instructions of a loop from step_loop / natural_loops, in address order."""
    return [ins for ins in instrs if ins.addr in loop[1]]


# ---------------------------------------------------------------------------------------------
# instruction classes

_WIDTH = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "32": 4, "64": 8, "128": 16}


def access_bytes(ins) -> int:
    """Bytes one thread moves with a load/store (LDG/STG/LDS/STS/LDL/STL/LD/ST): 4 by default."""
    for part in ins.op.split(".")[1:]:
        if part in _WIDTH:
            return _WIDTH[part]
    return 4


def ldsm_bytes(ins) -> int:
    """ldmatrix: each 8x8 matrix of 16-bit elements is 128 bytes of a warp, 4 per thread."""
    m = re.search(r"\.(?:M88|MT88)\.(\d)", ins.op)
    return 4 * int(m.group(1)) if m else 4


CLASSES = ("mma", "wgmma", "ldsm", "lds", "sts", "ldg", "stg", "ldl", "stl", "bar", "membar", "atomic",
           "shfl", "bulk", "syncs")
# bulk: asynchronous bulk copies (cp.async.bulk = UBLKCP; a thread's copy of a distributed-shared-
#   memory or global block, one per issuing thread: ptxas loops over the active lanes).
# syncs: mbarrier operations (mbarrier.* = SYNCS: init, arrive, expect-tx, try-wait); cluster
#   barriers (barrier.cluster = UCGABAR) count as "bar".


def classify(ins) -> str | None:
    """The class of one instruction for the per-step counts, or None (ALU, control, ...)."""
    b = ins.base
    if b in ("HMMA", "IMMA", "DMMA", "BMMA"):
        return "mma"
    if b in ("HGMMA", "IGMMA", "QGMMA", "BGMMA"):
        return "wgmma"
    if b == "LDSM":
        return "ldsm"
    if b in ("LDS", "LDSU"):
        return "lds"
    if b == "STS":
        return "sts"
    if b in ("LDG", "LD"):
        return "ldg"
    if b in ("STG", "ST"):
        return "stg"
    if b == "LDL":
        return "ldl"
    if b == "STL":
        return "stl"
    if b in ("BAR", "UCGABAR_ARV", "UCGABAR_WAIT"):
        return "bar"
    if b == "SYNCS":
        return "syncs"
    if b == "UBLKCP":
        return "bulk"
    if b in ("MEMBAR", "FENCE", "CCTL"):
        return "membar"
    if b in ("ATOM", "ATOMG", "ATOMS", "RED", "REDG", "REDUX"):
        return "atomic"
    if b == "SHFL":
        return "shfl"
    return None


def instr_bytes(ins, cls) -> int:
    if cls == "ldsm":
        return ldsm_bytes(ins)
    if cls in ("lds", "sts", "ldg", "stg", "ldl", "stl"):
        return access_bytes(ins)
    return 0


def count(instrs) -> Counter:
    """{class: count, class + "_bytes": bytes per thread} over `instrs`."""
    c = Counter()
    for ins in instrs:
        cls = classify(ins)
        if cls is None:
            continue
        c[cls] += 1
        nbytes = instr_bytes(ins, cls)
        if nbytes:
            c[cls + "_bytes"] += nbytes
    return c


# ---------------------------------------------------------------------------------------------
# PTX walk: dynamic per-step counts
#
# SASS alone cannot say how often an inner loop runs (trip counts are run-time sizes, and ptxas
# unrolls loops into main and remainder copies). So the per-step counts come from *executing the
# control flow of the PTX* for one thread: lane 0 of each warp of block 0, with the launch's real
# scalar arguments (sizes, null or non-null pointers). Integer arithmetic, predicates and branches
# are evaluated; every value loaded from memory (other than kernel parameters) and every float is
# unknown. A branch on an unknown predicate is not taken (so a spin-wait loop exits at once and
# the code guarded by a data-dependent condition counts as executed: an upper bound). Counting
# runs from the second to the third arrival at the head of the step loop (the PTX loop found by
# the same rule as in SASS): one steady-state step. PTX is what ptxas turns into SASS nearly one
# to one for the classes counted here (mma.sync -> HMMA, ldmatrix -> LDSM, ld.shared -> LDS, ...);
# spill traffic exists only in SASS and is taken from there.

@dataclass
class PtxInstr:
    guard: str | None    # "%p1" / "!%p1" or None
    op: str              # e.g. "ld.global.v4.b32"
    args: list           # operand strings
    line: int


@dataclass
class PtxKernel:
    name: str
    params: list         # parameter names, in order
    code: list           # PtxInstr and label strings
    labels: dict         # label -> index into code


_PTX_ENTRY = re.compile(r"\.entry\s+([\w$.]+)\s*\(([^)]*)\)", re.S)


def _split_args(text):
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_ptx(text: str, entry: str | None = None) -> PtxKernel:
    """The one .entry of `text` (or the one named `entry`)."""
    entries = list(_PTX_ENTRY.finditer(text))
    if entry is not None:
        entries = [m for m in entries if m.group(1) == entry]
    if len(entries) != 1:
        raise ValueError(f"expected one .entry{' named ' + entry if entry else ''} in the PTX, found {len(entries)}")
    m = entries[0]
    params = [p.split()[-1] for p in m.group(2).split(",") if p.strip()]
    # the body: from the first "{" after the parameter list to its matching "}"
    start = text.index("{", m.end())
    depth, end = 0, None
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                end = i
                break
    code, labels = [], {}
    for n, raw in enumerate(text[start + 1:end].splitlines()):
        s = raw.split("//", 1)[0].strip()
        while s:
            if s in ("{", "}") or s.startswith("."):
                break
            lm = re.match(r"^([$\w.]+):(?!:)\s*(.*)$", s)  # a label; not "op.shared::cta ..."
            if lm and not lm.group(1).startswith("%"):
                labels[lm.group(1)] = len(code)
                code.append(lm.group(1))
                s = lm.group(2)
                continue
            for stmt in s.split(";"):
                stmt = stmt.strip().strip("{}").strip()
                if not stmt or stmt.startswith("."):
                    continue
                guard = None
                gm = re.match(r"^@(!?%[\w]+)\s+(.*)$", stmt)
                if gm:
                    guard, stmt = gm.group(1), gm.group(2)
                parts = stmt.split(None, 1)
                code.append(PtxInstr(guard, parts[0], _split_args(parts[1]) if len(parts) > 1 else [], n))
            break
    return PtxKernel(m.group(1), params, code, labels)


def _ptx_successors(kernel: PtxKernel) -> list:
    """Control-flow successors of each entry of kernel.code (labels fall through)."""
    code, n = kernel.code, len(kernel.code)
    succ = [[] for _ in code]
    for i, ins in enumerate(code):
        falls = i + 1 < n
        if not isinstance(ins, str):
            base = ins.op.split(".")[0]
            if base == "bra":
                target = kernel.labels.get(ins.args[0])
                if target is not None:
                    succ[i].append(target)
                falls = falls and ins.guard is not None
            elif base in ("ret", "exit", "trap"):
                falls = falls and ins.guard is not None
        if falls:
            succ[i].append(i + 1)
    return succ


def ptx_step_loop(kernel: PtxKernel):
    """(head index, last member index) of the outermost natural loop of the PTX control-flow graph
    that contains a block barrier (the most barriers if several), or None. A natural loop, found by
    dominators, not an index interval: the compiler may rotate a loop so that its head sits after
    code that belongs to it (Triton 3.6 placed the code after the grid barrier above the head)."""
    succ = _ptx_successors(kernel)
    n = len(succ)
    preds = [[] for _ in range(n)]
    for i, ss in enumerate(succ):
        for j in ss:
            preds[j].append(i)
    # reachable nodes in reverse post-order, then the iterative dominator sets (bit masks)
    order, seen, stack = [], {0}, [(0, iter(succ[0]))] if n else []
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            stack.pop()
            order.append(node)
        elif nxt not in seen:
            seen.add(nxt)
            stack.append((nxt, iter(succ[nxt])))
    order.reverse()
    everything = (1 << n) - 1
    dom = {i: everything for i in order}
    if order:
        dom[0] = 1
    changed = True
    while changed:
        changed = False
        for i in order[1:]:
            d = everything
            for p in preds[i]:
                if p in dom:
                    d &= dom[p]
            d |= 1 << i
            if d != dom[i]:
                dom[i], changed = d, True
    loops = {}
    for i in order:
        for h in succ[i]:
            if dom[i] >> h & 1:  # i -> h is a back edge: h dominates i
                member, work = loops.setdefault(h, {h}), [i]
                while work:
                    x = work.pop()
                    if x not in member:
                        member.add(x)
                        work.extend(preds[x])
    bars = {i for i, ins in enumerate(kernel.code) if isinstance(ins, PtxInstr) and _ptx_class(ins) == "bar"}
    with_bar = [(h, m) for h, m in loops.items() if m & bars]
    outer = [lp for lp in with_bar if not any(o is not lp and lp[1] < o[1] for o in with_bar)]
    if not outer:
        return None
    head, member = max(outer, key=lambda lp: (len(lp[1] & bars), len(lp[1])))
    return head, max(member)


_TYPE_BITS = {"8": 8, "16": 16, "32": 32, "64": 64}


def _type_of(op):
    """The last type modifier of an opcode: ('s'|'u'|'b'|'f'|'pred', bits)."""
    for part in reversed(op.split(".")[1:]):
        if part == "pred":
            return "pred", 1
        m = re.fullmatch(r"([subf]|bf)(8|16|32|64)(x2)?", part)
        if m:
            return m.group(1), int(m.group(2))
    return None, 0


def _ptx_bytes(ins):
    kind, bits = _type_of(ins.op)
    vec = 1
    m = re.search(r"\.v(\d)", ins.op)
    if m:
        vec = int(m.group(1))
    return vec * max(bits, 8) // 8


def _ptx_class(ins):
    op = ins.op
    base = op.split(".")[0]
    if base == "mma":
        return "mma"
    if base.startswith("wgmma"):
        return "wgmma" if ".mma_async" in op else None
    if base == "ldmatrix":
        return "ldsm"
    if base == "stmatrix":
        return "sts"
    if base in ("ld", "ldu"):
        if ".param" in op:
            return None
        if ".shared" in op:
            return "lds"
        if ".local" in op:
            return "ldl"
        return "ldg"
    if base == "st":
        if ".shared" in op:
            return "sts"
        if ".local" in op:
            return "stl"
        return "stg"
    if base in ("bar", "barrier") and ".warp" not in op:
        return "bar"
    if base == "mbarrier":
        return "syncs"
    if base == "cp" and ".async.bulk" in op and ".prefetch" not in op:
        return "bulk"
    if base == "cp" and re.match(r"cp\.async\.c[ag]\.shared", op):
        return "cpasync"
    if base in ("membar", "fence"):
        return "membar"
    if base in ("atom", "red"):
        return "atomic"
    if base == "shfl":
        return "shfl"
    if base == "fma" and op.endswith(".f32"):
        return "ffma"
    return None


def _ptx_instr_bytes(ins, cls):
    if cls == "wgmma":  # not bytes: this warp's quarter of the warpgroup's m64nNk16 work, in FLOPs
        return wgmma_flops(ins.op) // 4
    if cls in ("ldsm", "sts") and ins.op.split(".")[0] in ("ldmatrix", "stmatrix"):
        m = re.search(r"\.x(\d)", ins.op)
        return 4 * int(m.group(1)) if m else 4
    if cls in ("lds", "sts", "ldg", "stg", "ldl", "stl"):
        return _ptx_bytes(ins)
    return 0


def wgmma_flops(op) -> int:
    """FLOPs of one wgmma.mma_async (a warpgroup's m64nNkK), counted at K = 16 whatever the input
    type: an instruction of tf32 (K = 8) takes a tensor core as long as one of bf16 (K = 16)."""
    m = re.search(r"\.m(\d+)n(\d+)k(\d+)", op)
    if not m:
        raise WalkError(f"wgmma without a shape: {op}")
    return 2 * int(m.group(1)) * int(m.group(2)) * 16


class WalkError(RuntimeError):
    pass


def _to_signed(v, bits):
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def walk(kernel: PtxKernel, args: list, *, tid=0, ntid=128, ctaid=(0, 0, 0), nctaid=(1, 1, 1), cluster=1,
         window=(1, 2), max_instructions=20_000_000) -> tuple:
    """Execute the control flow of `kernel` for thread `tid` of block `ctaid`.

    args: one value per kernel parameter: an int (sizes; pointers as any non-zero int, 0 for a
    null pointer). cluster: CTAs per thread-block cluster along x (the block's rank in it is
    ctaid.x % cluster). Returns (counts over the window, counts of the whole run, steps seen): the
    window is [arrival window[0], arrival window[1]) at the step-loop head (arrivals counted
    from 0), i.e. one step by default; without a step loop the window is empty.

    An mbarrier try-wait / test-wait is taken to find its phase complete at the first poll: the
    walk counts the instructions of a wait whose data has arrived; how long the data takes to
    arrive is the latency model's business (profiling.static.ESTIMATE_MODEL)."""
    if len(args) != len(kernel.params):
        raise WalkError(f"{kernel.name}: {len(kernel.params)} parameters, {len(args)} values given")
    params = dict(zip(kernel.params, args))
    special = {"%tid.x": tid, "%tid.y": 0, "%tid.z": 0, "%ntid.x": ntid, "%ntid.y": 1, "%ntid.z": 1,
               "%ctaid.x": ctaid[0], "%ctaid.y": ctaid[1], "%ctaid.z": ctaid[2],
               "%nctaid.x": nctaid[0], "%nctaid.y": nctaid[1], "%nctaid.z": nctaid[2],
               "%laneid": tid % 32, "%warpid": tid // 32,
               "%cluster_ctarank": ctaid[0] % cluster, "%cluster_nctarank": cluster,
               "%cluster_ctaid.x": ctaid[0] % cluster, "%cluster_ctaid.y": 0, "%cluster_ctaid.z": 0,
               "%cluster_nctaid.x": cluster, "%cluster_nctaid.y": 1, "%cluster_nctaid.z": 1,
               "%clusterid.x": ctaid[0] // cluster, "%clusterid.y": ctaid[1], "%clusterid.z": ctaid[2],
               "%nclusterid.x": -(-nctaid[0] // cluster), "%nclusterid.y": nctaid[1], "%nclusterid.z": nctaid[2]}
    regs = {}
    rounds = _LoadRounds()
    loop = ptx_step_loop(kernel)
    head = loop[0] if loop else None
    arrivals = -1
    window_counts, total = Counter(), Counter()

    def val(a):
        a = a.strip()
        if a.startswith("%"):
            if a in special:
                return special[a]
            return regs.get(a)
        if a in regs:  # a register declared inside an inline-asm block ({ .reg .pred p; ... })
            return regs[a]
        if a in params:
            return params[a]
        try:
            if re.fullmatch(r"-?0[xX][0-9a-fA-F]+", a):
                return int(a, 16)
            if re.fullmatch(r"-?\d+", a):
                return int(a)
        except ValueError:
            pass
        return None  # float literals (0f...), symbols

    def dsts(a):
        a = a.strip()
        if a.startswith("{"):
            return [x.strip() for x in a.strip("{}").split(",")]
        return [x.strip() for x in a.split("|")]

    def setv(name, v, bits=64):
        if name not in special and (name.startswith("%") or re.fullmatch(r"[A-Za-z_]\w*", name)):
            regs[name] = None if v is None else (v & ((1 << bits) - 1) if bits > 1 else bool(v))

    code, labels = kernel.code, kernel.labels
    pc, executed = 0, 0
    while pc < len(code):
        ins = code[pc]
        in_window = head is not None and window[0] <= arrivals < window[1]
        if isinstance(ins, str) or (ins.op.startswith("bra") and ins.guard is not None):
            # a basic block ends (a label, or a branch that may be taken)
            if rounds.boundary():
                total["ldg_rounds"] += 1
                window_counts["ldg_rounds"] += in_window
        if isinstance(ins, str):
            if pc == head:
                arrivals += 1
            pc += 1
            continue
        executed += 1
        if executed > max_instructions:
            raise WalkError(f"{kernel.name}: more than {max_instructions} instructions executed "
                            "(a loop whose bound is not known?)")
        if ins.guard is not None:
            g = regs.get(ins.guard.lstrip("!"))
            if g is None:  # unknown: not taken (see above), unless falling through traps
                active = ins.op.split(".")[0] != "bra" or _traps(code, pc + 1)
            else:
                active = bool(g) != ins.guard.startswith("!")
            if not active:
                pc += 1
                continue
        op = ins.op
        base = op.split(".")[0]
        cls = _ptx_class(ins)
        if rounds.see(ins, base, cls):
            total["ldg_rounds"] += 1
            window_counts["ldg_rounds"] += in_window
        if cls is not None:
            nbytes = _ptx_instr_bytes(ins, cls)
            if cls in ("bulk", "cpasync"):  # cp.async[.bulk] [dst], [src], size, ...: the size operand
                size = val(ins.args[2]) if len(ins.args) > 2 else None
                nbytes = size if isinstance(size, int) else 0
            # cp.async (non-bulk): a global load that writes shared memory, counted as both
            for c in (("ldg", "sts") if cls == "cpasync" else (cls,)):
                total[c] += 1
                if nbytes:
                    total[c + "_bytes"] += nbytes
                if in_window:
                    window_counts[c] += 1
                    if nbytes:
                        window_counts[c + "_bytes"] += nbytes
        if base == "bra":
            target = labels.get(ins.args[0])
            if target is None:
                raise WalkError(f"{kernel.name}: branch to unknown label {ins.args[0]}")
            if head is not None and arrivals >= window[1]:
                break
            pc = target
            continue
        if base in ("ret", "exit", "trap"):
            break
        if head is not None and arrivals >= window[1]:
            break
        _execute(op, base, ins.args, val, dsts, setv)
        pc += 1
    # a round still in flight where the walk stopped is waited for in the next step: the window
    # counted the same wait of the previous step's loads
    return window_counts, total, arrivals


_PTX_REG = re.compile(r"%[A-Za-z_]\w*")
# opcodes whose first operand is read, not written
_NO_DEST = ("st", "red", "bar", "barrier", "bra", "prefetch", "cp", "fence", "membar", "mbarrier", "trap")


def is_sync_op(ins, base) -> bool:
    """A grid barrier's arrival or poll (atomics, acquire / volatile loads) or a wait for a cluster
    exchange: the latency model prices these as the sync term, not as load rounds."""
    if base in ("atom", "red"):
        return True
    if base in ("ld", "ldu") and (".acquire" in ins.op or ".volatile" in ins.op):
        return True
    return base == "mbarrier" and ("try_wait" in ins.op or "test_wait" in ins.op)


_CP_ASYNC = "<cp.async>"  # _LoadRounds.pending: cp.async copies in flight (they write no register)


class _LoadRounds:
    """Dependent rounds of global loads of one thread: one L2 latency per round. A round opens at a
    data load (not a sync op). Its values may flow through register arithmetic; an instruction that
    needs them otherwise (a memory access, an MMA, any instruction of a class _ptx_class names but
    an FFMA) makes the thread wait for the round, as late as ptxas can put the wait: at the end of
    the basic block (a label or a branch), at a block barrier or fence, or at a load whose address
    depends on the round. Independent loads before that point join the round: within a basic
    block ptxas issues them ahead of the wait (nvcc's PTX of an unrolled copy loop alternates load
    and shared store; its SASS issues the loads first). A round still in flight when the thread
    reaches a sync op (see is_sync_op) completes during that wait and costs nothing more: how
    data loaded before a grid barrier (the next step's inputs) leaves the critical path.
    cp.async copies (Triton's software pipelining of a loop's loads) join rounds like loads; their
    wait is cp.async.wait_group / wait_all. A wait_group that lets the newest groups stay in flight
    still ends the round (an upper bound: in a pipelined loop the older group may have arrived)."""

    def __init__(self):
        self.pending = set()  # registers holding a load's result or a value computed from one
        self.waiting = False  # an instruction needs the round: it ends at the next boundary

    def boundary(self) -> bool:
        """The end of a basic block, or an instruction ptxas cannot move a wait past. True when a
        round ends here (something in it waited for the round)."""
        closed = self.waiting
        if closed:
            self.pending.clear()
            self.waiting = False
        return closed

    def see(self, ins, base, cls) -> bool:
        """Account one executed instruction; True when a round ends at it."""
        if is_sync_op(ins, base):
            self.pending.clear()  # in flight during the wait: arrived, at no further cost
            self.waiting = False
            return False
        closed = False
        dests = [] if base in _NO_DEST or not ins.args else _PTX_REG.findall(ins.args[0])
        reads = {r for a in (ins.args if base in _NO_DEST else ins.args[1:]) for r in _PTX_REG.findall(a)}
        if ins.guard is not None:
            reads.add(ins.guard.lstrip("!"))
        if cls in ("ldg", "cpasync"):
            if reads & self.pending:  # its address depends on the round: wait first
                self.waiting = True
                closed = self.boundary()
            self.pending.update(dests if cls == "ldg" else (_CP_ASYNC,))
            return closed
        if base == "cp" and ".async.wait" in ins.op and _CP_ASYNC in self.pending:
            self.waiting = True
            return self.boundary()
        if base in ("bar", "barrier", "membar", "fence", "bra", "ret", "exit"):
            closed = self.boundary()
        if reads & self.pending:
            self.pending.update(dests)  # a value computed from the round
            if not (cls is None or cls == "ffma"):
                self.waiting = True
                if base in ("bra", "ret", "exit"):
                    closed = self.boundary() or closed
        return closed


def _traps(code, pc):
    """Whether the code from pc on reaches `trap` before any other instruction (a failed check)."""
    while pc < len(code) and isinstance(code[pc], str):
        pc += 1
    return pc < len(code) and code[pc].op == "trap"


def _execute(op, base, args, val, dsts, setv):
    """Integer / predicate semantics of one PTX instruction; anything else makes its
    destinations unknown."""
    kind, bits = _type_of(op)
    if not args:
        return
    d = args[0]
    ints = kind in ("s", "u", "b")
    signed = kind == "s"

    def iv(a):
        v = val(a)
        if v is None or not isinstance(v, (int, bool)):
            return None
        v = int(v)
        if not bits:
            return v
        # operands are bit patterns of the instruction's width: an immediate -1431655765 of a
        # mul.wide.u32 (division by a magic number) is 0xaaaaaaab
        return _to_signed(v, bits) if signed else v & ((1 << bits) - 1)

    if base == "mbarrier" and (".try_wait" in op or ".test_wait" in op):
        setv(d, True, 1)  # the phase is complete (see walk)
        return
    if base == "ld" and ".param" in op:
        m = re.match(r"\[\s*([\w$.]+)\s*(?:\+\s*(\d+))?\s*\]", args[1])
        v = val(m.group(1)) if m and not m.group(2) else None
        for x in dsts(d):
            setv(x, v, bits or 64)
        return
    if base in ("mov", "cvta") and len(args) == 2 and not args[0].startswith("{") and not args[1].startswith("{"):
        v = val(args[1])
        setv(d, v if isinstance(v, (int, bool)) else None, bits or 64)
        return
    if base == "cvt" and len(args) == 2:
        parts = op.split(".")
        types = [p for p in parts[1:] if re.fullmatch(r"([subf]|bf)(8|16|32|64)", p)]
        if len(types) == 2 and types[0][0] in "sub" and types[1][0] in "sub":
            dbits, sbits = int(re.sub(r"\D", "", types[0])), int(re.sub(r"\D", "", types[1]))
            v = val(args[1])
            if v is not None:
                v = int(v) & ((1 << sbits) - 1)
                if types[1][0] == "s":
                    v = _to_signed(v, sbits)
            setv(d, v, dbits)
            return
        setv(d, None)
        return
    if base == "setp":
        cmp = op.split(".")[1]
        a, b = iv(args[1]), iv(args[2])
        r = None
        if ints and a is not None and b is not None:
            if kind in ("u", "b"):
                a &= (1 << bits) - 1
                b &= (1 << bits) - 1
            r = {"eq": a == b, "ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b,
                 "lo": a < b, "ls": a <= b, "hi": a > b, "hs": a >= b}.get(cmp)
        names = dsts(d)
        if len(args) > 3 and r is not None:  # setp.cmp.and/or p, a, b, q
            q = val(args[3].lstrip("!"))
            q = None if q is None else (bool(q) != args[3].startswith("!"))
            comb = ".and." in op and "and" or ".or." in op and "or" or ".xor." in op and "xor" or None
            if comb and q is not None:
                r = {"and": r and q, "or": r or q, "xor": r != q}[comb]
            elif comb:
                r = None
        setv(names[0], r, 1)
        if len(names) > 1:
            setv(names[1], None if r is None else not r, 1)
        return
    if kind == "pred" and base in ("and", "or", "xor", "not", "mov"):
        vs = [val(a.lstrip("!")) for a in args[1:]]
        vs = [None if v is None else (bool(v) != a.startswith("!")) for v, a in zip(vs, args[1:])]
        if any(v is None for v in vs):
            setv(d, None, 1)
        elif base == "not":
            setv(d, not vs[0], 1)
        elif base == "mov":
            setv(d, vs[0], 1)
        else:
            setv(d, {"and": vs[0] and vs[1], "or": vs[0] or vs[1], "xor": vs[0] != vs[1]}[base], 1)
        return
    if base == "selp" and len(args) == 4:
        p = val(args[3].lstrip("!"))
        if p is None or not ints:
            setv(d, None)
        else:
            p = bool(p) != args[3].startswith("!")
            setv(d, val(args[1] if p else args[2]), bits)
        return
    if not ints or d.startswith("{"):
        for x in dsts(d):
            setv(x, None)
        return
    vs = [iv(a) for a in args[1:]]
    if any(v is None for v in vs) or not vs:
        setv(d, None)
        return
    mask = (1 << bits) - 1
    r = None
    if base == "add":
        r = vs[0] + vs[1]
    elif base == "sub":
        r = vs[0] - vs[1]
    elif base in ("mul", "mad"):
        p = vs[0] * vs[1]
        if ".hi" in op:
            p >>= bits
        elif ".wide" in op:
            bits *= 2
        r = p + (vs[2] if base == "mad" else 0)
        if ".wide" in op and base == "mad":
            r = vs[0] * vs[1] + val(args[3]) if val(args[3]) is not None else None
    elif base == "div" and vs[1] != 0:
        q = abs(vs[0]) // abs(vs[1])
        r = q if (vs[0] >= 0) == (vs[1] >= 0) else -q
    elif base == "rem" and vs[1] != 0:
        q = abs(vs[0]) % abs(vs[1])
        r = q if vs[0] >= 0 else -q
    elif base == "min":
        r = min(vs)
    elif base == "max":
        r = max(vs)
    elif base == "and":
        r = vs[0] & vs[1]
    elif base == "or":
        r = vs[0] | vs[1]
    elif base == "xor":
        r = vs[0] ^ vs[1]
    elif base == "not":
        r = ~vs[0]
    elif base == "neg":
        r = -vs[0]
    elif base == "abs":
        r = abs(vs[0])
    elif base == "shl":
        r = vs[0] << min(vs[1], 64)
    elif base == "shr":
        r = (vs[0] >> min(vs[1], 64)) if signed else ((vs[0] & mask) >> min(vs[1], 64))
    setv(d, r, bits)
