"""The one autograd Function for every cell family.

Forward: the input projection for all T steps as ONE GEMM (x @ W_ih^T + b_ih, cuBLAS on a GPU),
then the backend's recurrence (the only sequential part). Backward: the backend's reverse-time
recurrence gives the gate gradients dxg (T, B, G*H); everything else is a handful of large GEMMs
over all steps at once:

    dW_hh = sum_t drec_t^T  h_{t-1}     db_hh = sum_t drec_t
    dW_ih = dxg^T x                      db_ih = sum dxg          dx = dxg W_ih

drec equals dxg except GRU reset_after=True's n block (r * dxg_n); per-gate recurrent dropout
masks and GRU reset_after=False's (r*h) operand make the dW_hh GEMM one per gate.

Higher derivatives: the backends' backward is first-order only. When autograd asks for a graph of
the backward itself (`create_graph=True`: gradient penalties, Hessian-vector products), the
backward instead recomputes the layer with differentiable torch ops (`unrolled`) and
differentiates that, so second and higher derivatives are exact on every backend, only slower.
"""
from __future__ import annotations

import torch

from .backends import Saved
from .recurrence_torch import previous_states, unrolled


def _project(x, w_ih, b_ih, in_mask, G, H):
    """xg (T, B, G*H) = (x * in_mask) @ W_ih^T + b_ih, with per-gate input masks if given."""
    if in_mask is None or in_mask.dim() == 2:
        xm = x if in_mask is None else x * in_mask
        xg = xm.reshape(-1, x.shape[-1]) @ w_ih.t()
        if b_ih is not None:
            xg = xg + b_ih
        return xg.view(x.shape[0], x.shape[1], G * H)
    parts = [(x * in_mask[g]) @ w_ih[g * H:(g + 1) * H].t() for g in range(G)]
    xg = torch.cat(parts, -1)
    return xg if b_ih is None else xg + b_ih


def differentiable(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask, spec, reverse):
    """The whole layer (input projection + recurrence) in differentiable torch ops."""
    xg = _project(x, w_ih, b_ih, in_mask, spec.n_gates, w_hh.shape[1])
    return unrolled(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse)


def _backward_with_graph(ctx, grad_outputs):
    """Backward for create_graph=True: differentiate a differentiable recomputation."""
    (x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask) = ctx.saved_tensors[:10]
    inputs = (x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    wanted = [k for k, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[k]]
    grads = [None] * 13
    if not wanted:
        return tuple(grads)
    with torch.enable_grad():
        outs = differentiable(*inputs, mask, in_mask, rec_mask, ctx.spec, ctx.reverse)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o is not None and g is not None]
        found = torch.autograd.grad([o for o, _ in pairs], [inputs[k] for k in wanted],
                                    [g for _, g in pairs], create_graph=True, allow_unused=True)
    for k, g in zip(wanted, found):
        grads[k] = g if g is not None else torch.zeros_like(inputs[k])
    return tuple(grads)


class RecurrentFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask, spec, reverse, backend):
        G, H = spec.n_gates, w_hh.shape[1]
        xg = _project(x, w_ih, b_ih, in_mask, G, H)
        saved = backend.forward(spec, xg, w_hh, b_hh, h0, c0, mask, rec_mask, reverse)
        ctx.spec, ctx.reverse, ctx.backend = spec, reverse, backend
        ctx.has = (b_ih is not None, b_hh is not None)
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, in_mask, rec_mask,
                              saved.out, saved.gates, saved.extra)
        ctx.mark_non_differentiable(*(t for t in (mask, in_mask, rec_mask) if t is not None))
        if spec.kind == "lstm":
            return saved.out, saved.hT, saved.cT
        return saved.out, saved.hT

    @staticmethod
    def backward(ctx, dout, dhT, dcT=None):
        if torch.is_grad_enabled():  # create_graph=True: the backward must itself be differentiable
            return _backward_with_graph(ctx, (dout, dhT, dcT))
        (x, w_ih, w_hh, _, b_hh, h0, c0, mask, in_mask, rec_mask, out, gates, extra) = ctx.saved_tensors
        spec, reverse, backend = ctx.spec, ctx.reverse, ctx.backend
        G, H = spec.n_gates, w_hh.shape[1]
        T, B = out.shape[:2]
        saved = Saved(out, None, None, gates, extra)
        dxg, dh0, dc0 = backend.backward(spec, w_hh, b_hh, h0, c0, mask, rec_mask, reverse,
                                         saved, dout, dhT, dcT)
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

        grads = [None] * 13
        need = ctx.needs_input_grad
        if need[2] or need[4]:
            hp = previous_states(out, h0, reverse)  # (T, B, H) the h each step read
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
            grads[2] = dw_hh
            if ctx.has[1]:
                grads[4] = drec.sum((0, 1))
        xs = x if keep is None else torch.where(keep, x, 0.0)
        if need[1]:
            if in_mask is None or in_mask.dim() == 2:
                xm = xs if in_mask is None else xs * in_mask
                grads[1] = dxg.reshape(-1, G * H).t() @ xm.reshape(-1, x.shape[-1])
            else:
                grads[1] = torch.cat([dxg[..., g * H:(g + 1) * H].reshape(-1, H).t()
                                      @ (xs * in_mask[g]).reshape(-1, x.shape[-1]) for g in range(G)], 0)
        if ctx.has[0] and need[3]:
            grads[3] = dxg.sum((0, 1))
        if need[0]:
            if in_mask is None:
                grads[0] = (dxg.reshape(-1, G * H) @ w_ih).view(T, B, -1)
            elif in_mask.dim() == 2:
                grads[0] = (dxg.reshape(-1, G * H) @ w_ih).view(T, B, -1) * in_mask
            else:
                grads[0] = sum((dxg[..., g * H:(g + 1) * H] @ w_ih[g * H:(g + 1) * H]) * in_mask[g]
                               for g in range(G))
        if need[5]:
            grads[5] = dh0.to(h0.dtype)
        if spec.kind == "lstm" and need[6]:
            grads[6] = dc0.to(c0.dtype)
        return tuple(grads)
