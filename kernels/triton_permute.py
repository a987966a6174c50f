"""Fused token permutation in Triton: one launch gathers q, k, v into the layout's order; one launch scatters back.

``gather_qkv(q, k, v, q_order, kv_order)`` returns contiguous [B, H, N, D] tensors with
``q_p[b, h, i] = q[b, h, q_order[b, h, i]]`` and ``k_p, v_p`` likewise by ``kv_order`` (an order of ``None`` is the
natural order). ``scatter_rows(out, q_order)`` is the inverse for the attention output. Inputs may be strided views
(e.g. a [B, N, H, D] tensor transposed to [B, H, N, D]) as long as the last dimension is contiguous.

Each program moves ``BLOCK_ROWS`` rows of all three tensors, so a row is read once and written once: the launch is
bound by memory bandwidth (2 × 3 × B·H·N·D·itemsize bytes for the gather).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_ROWS = 32


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreter_active() -> bool:
    """Whether Triton itself runs in interpreter mode: decided when triton is imported, from TRITON_INTERPRET."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def mode_problem(on_cuda: bool) -> list[str]:
    """Reasons the current Triton mode cannot run tensors on this device (empty list: it can)."""
    if on_cuda:
        if interpreting() or interpreter_active():
            return ["Triton runs in interpreter mode (TRITON_INTERPRET=1), which needs CPU tensors"]
        return []
    if not interpreting():
        return ["needs CUDA tensors (or TRITON_INTERPRET=1, set before importing triton, for CPU tensors)"]
    if not interpreter_active():
        return ["TRITON_INTERPRET=1 was set after triton was imported; set it before the first import of triton"]
    return []


@triton.jit
def _gather_qkv_kernel(
    Q, K, V, QP, KP, VP, QO, KO,
    H, N, D,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
    HAS_QO: tl.constexpr, HAS_KO: tl.constexpr, DO_Q: tl.constexpr, DO_K: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < N
    mask = rmask[:, None] & (cols[None, :] < D)
    out_off = bh * N * D + rows[:, None].to(tl.int64) * D + cols[None, :]
    if DO_Q:
        if HAS_QO:
            src = tl.load(QO + bh * N + rows, mask=rmask, other=0).to(tl.int64)
        else:
            src = rows.to(tl.int64)
        x = tl.load(Q + b * sqb + h * sqh + src[:, None] * sqn + cols[None, :], mask=mask)
        tl.store(QP + out_off, x, mask=mask)
    if DO_K:
        if HAS_KO:
            src = tl.load(KO + bh * N + rows, mask=rmask, other=0).to(tl.int64)
        else:
            src = rows.to(tl.int64)
        x = tl.load(K + b * skb + h * skh + src[:, None] * skn + cols[None, :], mask=mask)
        tl.store(KP + out_off, x, mask=mask)
        x = tl.load(V + b * svb + h * svh + src[:, None] * svn + cols[None, :], mask=mask)
        tl.store(VP + out_off, x, mask=mask)


@triton.jit
def _scatter_rows_kernel(
    X, Y, ORDER, N, D,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < N
    mask = rmask[:, None] & (cols[None, :] < D)
    dst = tl.load(ORDER + bh * N + rows, mask=rmask, other=0).to(tl.int64)
    x = tl.load(X + bh * N * D + rows[:, None].to(tl.int64) * D + cols[None, :], mask=mask)
    tl.store(Y + bh * N * D + dst[:, None] * D + cols[None, :], x, mask=mask)


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_order(order: Optional[Tensor], b: int, h: int, n: int, device) -> Optional[Tensor]:
    if order is None:
        return None
    if tuple(order.shape) != (b, h, n):
        raise ValueError(f"token order must have shape {(b, h, n)}, got {tuple(order.shape)}")
    if order.device != device:
        raise ValueError(f"token order is on {order.device} but the tensors are on {device}")
    return order.contiguous()


def gather_qkv(
    q: Optional[Tensor], k: Optional[Tensor], v: Optional[Tensor], q_order: Optional[Tensor],
    kv_order: Optional[Tensor],
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """q by ``q_order``, k and v by ``kv_order``, in one launch; outputs are new contiguous tensors.

    Either ``q`` or both ``k`` and ``v`` may be None (that part is skipped and returned as None). Orders are
    int64 or int32 [B, H, N] permutations.
    """
    do_q, do_k = q is not None, k is not None
    if do_k and v is None:
        raise ValueError("k and v must both be given (or both be None)")
    if not (do_q or do_k):
        raise ValueError("nothing to gather: q and k are both None")
    ref = q if do_q else k
    b, h, n, d = ref.shape
    if any(t is not None and t.shape != ref.shape for t in (q, k, v)):
        raise ValueError("q, k and v must have one shape")
    q, k, v = (None if t is None else _last_dim_contiguous(t) for t in (q, k, v))
    qp = torch.empty((b, h, n, d), dtype=q.dtype, device=q.device) if do_q else None
    kp, vp = (torch.empty((b, h, n, d), dtype=t.dtype, device=t.device) for t in (k, v)) if do_k else (None, None)
    q_order = _check_order(q_order, b, h, n, ref.device)
    kv_order = _check_order(kv_order, b, h, n, ref.device)
    dummy = next(t for t in (q_order, kv_order, ref) if t is not None)  # stands in for an absent pointer
    src_q, dst_q = (q, qp) if do_q else (ref, ref)
    src_k, src_v, dst_k, dst_v = (k, v, kp, vp) if do_k else (ref, ref, ref, ref)
    grid = (triton.cdiv(n, BLOCK_ROWS), b * h)
    _gather_qkv_kernel[grid](
        src_q, src_k, src_v, dst_q, dst_k, dst_v,
        q_order if q_order is not None else dummy,
        kv_order if kv_order is not None else dummy,
        h, n, d,
        *src_q.stride()[:3], *src_k.stride()[:3], *src_v.stride()[:3],
        HAS_QO=q_order is not None, HAS_KO=kv_order is not None, DO_Q=do_q, DO_K=do_k,
        BLOCK_ROWS=BLOCK_ROWS, BLOCK_D=triton.next_power_of_2(d),
        num_warps=4,
    )
    return qp, kp, vp


def scatter_rows(x: Tensor, order: Optional[Tensor]) -> Tensor:
    """Inverse of the gather: ``y[b, h, order[b, h, i]] = x[b, h, i]`` (a new contiguous tensor)."""
    if order is None:
        return x
    b, h, n, d = x.shape
    x = x.contiguous()
    order = _check_order(order, b, h, n, x.device)
    y = torch.empty_like(x)
    grid = (triton.cdiv(n, BLOCK_ROWS), b * h)
    _scatter_rows_kernel[grid](x, y, order, n, d, BLOCK_ROWS=BLOCK_ROWS, BLOCK_D=triton.next_power_of_2(d), num_warps=4)
    return y
