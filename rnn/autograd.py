"""The backward of the recurrence operator, for every cell family and backend.

Forward (rnn.ops.recurrence): the input projection for all T steps as ONE GEMM (x @ W_ih^T + b_ih,
cuBLAS on a GPU), then the backend's recurrence (the only sequential part). Backward: the backend's
reverse-time recurrence (the operator rnn.ops.recurrence_backward) gives the gate gradients dxg
(T, B, G*H); everything else is a handful of large GEMMs over all steps at once, in plain torch ops
(a compiler sees and schedules them):

    dW_hh = sum_t drec_t^T  h_{t-1}     db_hh = sum_t drec_t
    dW_ih = dxg^T x                      db_ih = sum dxg          dx = dxg W_ih

drec equals dxg except GRU reset_after=True's n block (r * dxg_n); per-gate recurrent dropout
masks and GRU reset_after=False's (r*h) operand make the dW_hh GEMM one per gate.

Higher derivatives: the backends' backward is first-order only. When autograd asks for a graph of
the backward itself (`create_graph=True`: gradient penalties, Hessian-vector products, and every
torch.func.grad / vjp), the backward instead recomputes the layer with differentiable torch ops
(`unrolled`) and differentiates that, so second and higher derivatives are exact on every
backend, only slower.

`recurrence` is the entry point: the registered operator (what torch.compile and torch.export
see), or under torch.func transforms the same layer in plain torch ops.
"""
import torch

from . import ops
from .cells import CellSpec
from .recurrence_torch import previous_states, unrolled

# Positions of the tensor arguments of rnn.ops.recurrence; the six after them are not tensors.
_X, _W_IH, _W_HH, _B_IH, _B_HH, _H0, _C0 = range(7)
_N_TENSORS = 10
_N_ARGS = 16


def differentiable(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask, spec, reverse):
    """The whole layer (input projection + recurrence) in differentiable torch ops (both
    directions stacked where ops.both says so)."""
    if ops.both(w_hh):
        od = ops.of_direction
        o = [differentiable(x, w_ih[d], w_hh[d], od(b_ih, d), od(b_hh, d), h0[d], od(c0, d), mask, od(in_mask, d),
                            od(rec_mask, d), spec, bool(d)) for d in (0, 1)]
        return tuple(None if a is None else torch.stack((a, b)) for a, b in zip(*o))
    xg = ops.project(x, w_ih, b_ih, in_mask, spec.n_gates, w_hh.shape[1])
    return unrolled(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse)


def setup_context(ctx, inputs, output):
    (x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask,
     kind, activation, recurrent_activation, reset_after, reverse, backend) = inputs
    out, _, _, gates, extra = output
    ctx.spec = CellSpec(kind, activation, recurrent_activation, reset_after)
    ctx.reverse, ctx.backend = reverse, backend
    ctx.has = (b_ih is not None, b_hh is not None)
    ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask, out, gates, extra)
    ctx.mark_non_differentiable(gates, extra)


def _backward_with_graph(ctx, grad_outputs):
    """Backward for create_graph=True: differentiate a differentiable recomputation."""
    (x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask) = ctx.saved_tensors[:_N_TENSORS]
    inputs = (x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    wanted = [k for k, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[k]]
    grads = [None] * _N_ARGS
    if not wanted:
        return tuple(grads)
    if ctx.spec.kind != "lstm":
        grad_outputs = grad_outputs[:2]  # cT is an empty placeholder
    with torch.enable_grad():
        outs = differentiable(*inputs, mask, in_mask, rec_mask, ctx.spec, ctx.reverse)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o is not None and g is not None]
        found = torch.autograd.grad([o for o, _ in pairs], [inputs[k] for k in wanted],
                                    [g for _, g in pairs], create_graph=True, allow_unused=True)
    for k, g in zip(wanted, found):
        grads[k] = g if g is not None else torch.zeros_like(inputs[k])
    return tuple(grads)


def backward(ctx, dout, dhT, dcT, _dgates=None, _dextra=None):
    if torch.is_grad_enabled():  # create_graph=True: the backward must itself be differentiable
        return _backward_with_graph(ctx, (dout, dhT, dcT))
    (x, w_ih, w_hh, _, b_hh, h0, c0, mask, in_mask, rec_mask, out, gates, extra) = ctx.saved_tensors
    spec, reverse = ctx.spec, ctx.reverse
    if dout is None:
        dout = torch.zeros_like(out)
    if dhT is None:
        dhT = torch.zeros_like(h0)
    if dcT is None:
        dcT = torch.zeros_like(c0) if spec.kind == "lstm" else h0.new_empty((0,))
    dxg, dh0, dc0 = torch.ops.fused_rnn.recurrence_backward(
        w_hh, b_hh, h0, c0, mask, rec_mask, out, gates, extra, dout, dhT, dcT,
        *ops.spec_args(spec), reverse, ctx.backend)
    grads = [None] * _N_ARGS
    need = ctx.needs_input_grad
    if ops.both(w_hh):  # the GEMMs per direction; x feeds both, so its gradients add up
        od = ops.of_direction
        per = [_layer_grads(spec, bool(d), need, ctx.has, x, w_ih[d], w_hh[d], h0[d], mask, od(in_mask, d),
                            od(rec_mask, d), out[d], gates[d], dxg[d]) for d in (0, 1)]
        for k in (_W_IH, _W_HH, _B_IH, _B_HH):
            if per[0][k] is not None:
                grads[k] = torch.stack((per[0][k], per[1][k]))
        if per[0][_X] is not None:
            grads[_X] = per[0][_X] + per[1][_X]
    else:
        grads[:5] = _layer_grads(spec, reverse, need, ctx.has, x, w_ih, w_hh, h0, mask, in_mask, rec_mask, out,
                                 gates, dxg)
    if need[_H0]:
        grads[_H0] = dh0
    if spec.kind == "lstm" and need[_C0]:
        grads[_C0] = dc0
    return tuple(grads)


def _layer_grads(spec, reverse, need, has, x, w_ih, w_hh, h0, mask, in_mask, rec_mask, out, gates, dxg):
    """[dx, dW_ih, dW_hh, db_ih, db_hh] of one direction from its gate gradients dxg (None where
    not needed): large GEMMs over all steps at once."""
    G, H = spec.n_gates, w_hh.shape[1]
    dt = x.dtype
    # Gate values at masked steps may be garbage (even NaN from padded input): zero them so a
    # 0 * NaN in the weight GEMMs cannot leak one sequence's padding into shared gradients.
    keep = None if mask is None else mask.unsqueeze(-1)
    if keep is not None and spec.kind == "gru":
        gates = torch.where(keep, gates, 0.0)
    drec = dxg
    if spec.kind == "gru" and spec.reset_after:
        drec = torch.cat([dxg[..., :2 * H], dxg[..., 2 * H:] * gates[..., :H]], -1)
    drec = drec.to(dt)
    dxg = dxg.to(dt)

    grads = [None] * 5
    if need[_W_HH] or need[_B_HH]:
        hp = previous_states(out, h0, reverse)[:out.shape[0]]  # (T, B, H) the h each step read (T=0 too)
        if rec_mask is None and not (spec.kind == "gru" and not spec.reset_after):
            dw_hh = drec.reshape(-1, G * H).t() @ hp.reshape(-1, H)
        else:
            blocks = []
            for g in range(G):
                a = hp if rec_mask is None else hp * rec_mask[g]
                if spec.kind == "gru" and not spec.reset_after and g == 2:
                    a = a * gates[..., :H].to(dt)  # (r * h * m_n) feeds W_n
                blocks.append(drec[..., g * H:(g + 1) * H].reshape(-1, H).t() @ a.reshape(-1, H))
            dw_hh = torch.cat(blocks, 0)
        grads[_W_HH] = dw_hh
        if has[1]:
            grads[_B_HH] = drec.sum((0, 1))
    xs = x if keep is None else torch.where(keep, x, 0.0)
    if need[_W_IH]:
        if in_mask is None or in_mask.dim() == 2:
            xm = xs if in_mask is None else xs * in_mask
            grads[_W_IH] = dxg.reshape(-1, G * H).t() @ xm.reshape(-1, x.shape[-1])
        else:
            grads[_W_IH] = torch.cat([dxg[..., g * H:(g + 1) * H].reshape(-1, H).t()
                                      @ (xs * in_mask[g]).reshape(-1, x.shape[-1]) for g in range(G)], 0)
    if has[0] and need[_B_IH]:
        grads[_B_IH] = dxg.sum((0, 1))
    if need[_X]:
        if in_mask is None:
            grads[_X] = (dxg.reshape(-1, G * H) @ w_ih).view(x.shape)
        elif in_mask.dim() == 2:
            grads[_X] = (dxg.reshape(-1, G * H) @ w_ih).view(x.shape) * in_mask
        else:
            grads[_X] = sum((dxg[..., g * H:(g + 1) * H] @ w_ih[g * H:(g + 1) * H]) * in_mask[g]
                            for g in range(G))
    return grads


ops.recurrence.register_autograd(backward, setup_context=setup_context)


def recurrence(*args):
    """rnn.ops.recurrence with autograd: (out, hT, cT, gates, extra); see rnn.ops.

    Under torch.func transforms (grad, vjp, jacrev, jvp, vmap, ...) the layer runs as plain torch
    ops instead (`differentiable`), which every transform and any nesting of them supports:
    torch.library's register_autograd does not support torch.func.grad / vjp, and a backward that
    recomputes with torch.autograd.grad (the create_graph path above, which torch.func always asks
    for) breaks when vjp's function is called after the transform has returned."""
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask = args[:_N_TENSORS]
        kind, activation, recurrent_activation, reset_after, reverse, _ = args[_N_TENSORS:]
        spec = CellSpec(kind, activation, recurrent_activation, reset_after)
        out, hT, cT = differentiable(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask, spec, reverse)
        return out, hT, cT, None, None
    return torch.ops.fused_rnn.recurrence(*args)
