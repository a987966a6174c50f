"""Variable-block sparse attention forward in Triton (kernel ``triton``), on permuted q, k, v.

Layout: per (batch, head), query blocks and key blocks are contiguous ranges of the permuted sequence with arbitrary
sizes (0 … N). The mask selects, per query block, any subset of key blocks. Fixed-size blocks in the natural order
(q_order / kv_order None) are the same case.

Plan (on the GPU, no host synchronisation, no O(N²) tensor):
  * Key lists. For query block i the selected keys are the concatenation of the selected key blocks' token ranges.
    One program per (query block, head) writes them token by token (int32 indices into the permuted keys): it
    compacts the indices of its selected key blocks, then writes their ranges a group of blocks at a time, so the
    work is proportional to the selected keys (a scan of every (query block, key token) pair cost 0.96 ms at the
    Wan shape). Keys are then packed into full tiles of ``block_n`` whatever the block sizes, so only the last key
    tile of each list is partial.
  * The flat buffer is sized from the upper bound B·H·Mq·N (every pair selected), allocated once and cached in the
    kernel object, and list i of head h starts at (h·Mq + i)·N, so no scan over the lengths is needed; a plan is
    valid until the next plan() of the same object (running a stale plan raises). When that bound exceeds
    ``max_index_bytes`` the plan sizes it exactly instead (lengths first, their cumulative sum as offsets), reading
    one number back from the GPU (a host synchronisation).
  * Row tiles. Each query block is cut into ``block_m``-row tiles; a remainder of at most ``tail_block_m`` rows gets
    a ``tail_block_m``-row tile in a second launch instead, and (optionally) one of at most ``short_tail_block_m``
    rows a tile of that height in a third, which cuts the rows wasted on partial tiles (Wan 2.1 k-means layouts at
    15%: 20.7% of computed pairs with 128-row tiles only, 11.6% with 64-row tails, 9.0% with 32-row ones as well;
    the third launch made the whole kernel 2–4.6% slower on an H100, so it is off by default). Work items
    (block, row tile) are laid out head-major with a fixed number of slots per head (Mq + ⌈N/block_m⌉ bounds the
    tile count, so the grid size is known without a sync), sorted by list length within a head, longest first;
    unused slots exit at once.
Fused permutation (``fuse_permutation``): by default each program reads its query rows and writes its output rows
through q_order, so q is never copied into the permuted order and the output needs no scatter (a row tile is read
and written once, so the scattered rows cost nothing measurable); k and v are gathered into the key order, so key
tiles are contiguous memory. With "qkv" the list entries are the keys' original positions instead (no copy of k,
v either, but every key row is a scattered 256-byte read).
Run: one program per work item streams its block's key list in tiles of ``block_n`` rows gathered by index (each
row is a contiguous D-vector, loaded asynchronously through the software pipeline), online softmax in fp32 with
exp2 and the scale folded into one FMA per score.

A query block whose selected key blocks are all empty outputs zeros (as the reference kernel does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparseattn.interfaces import BlockMask, Layout, SparseKernel
from sparseattn.registry import register

from .triton_permute import gather_qkv, interpreting, mode_problem, scatter_rows

LOG2E = 1.4426950408889634
FUSE_MODES = ("q", "qkv", "none")


# ----------------------------------------------------------------------------------------------------------------
# Plan kernel: write every query block's selected key tokens into its list
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _fill_lists_kernel(
    SEL, K_SIZES, K_OFF, KV_IDS, SCRATCH, LENS, LIST_OFF, LIST, N, MQ, MK,
    BLOCK_K: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr, FILL: tl.constexpr,
    HAS_KV_IDS: tl.constexpr,
):
    """Program (query block i, head): the list length of block i and (FILL) its list: the token ranges of the
    selected key blocks, concatenated in key-block order. The selected blocks are first compacted (their indices
    written to this program's row of SCRATCH in order), then written GROUP blocks × BLOCK_T tokens at a time, so the
    work is proportional to the selected keys, not to Mq·N. An entry is the permuted key position, or with KV_IDS
    the original position of that token."""
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    j = tl.arange(0, BLOCK_K)
    jm = j < MK
    sel = tl.load(SEL + (bh * MQ + i) * MK + j, mask=jm, other=0)
    ks = tl.load(K_SIZES + bh * MK + j, mask=jm, other=0)
    taken = (sel != 0) & (ks > 0)
    width = tl.where(taken, ks, 0)
    tl.store(LENS + bh * MQ + i, tl.sum(width, 0))
    if FILL:
        rank = tl.cumsum(taken.to(tl.int32), 0) - 1
        count = tl.sum(taken.to(tl.int32), 0)
        row = SCRATCH + (bh * MQ + i) * MK
        tl.store(row + rank, j, mask=taken)
        tl.debug_barrier()  # the compacted indices, written by other threads of this program, are read below
        dst = LIST + tl.load(LIST_OFF + bh * MQ + i)
        t = tl.arange(0, BLOCK_T)
        r = tl.arange(0, GROUP)
        start = 0
        for r0 in range(0, count, GROUP):
            live = r0 + r < count
            blk = tl.load(row + r0 + r, mask=live, other=0)
            w = tl.load(K_SIZES + bh * MK + blk, mask=live, other=0)
            koff = tl.load(K_OFF + bh * (MK + 1) + blk, mask=live, other=0)
            pos = start + tl.cumsum(w, 0) - w  # list position of each block's first token
            for t0 in range(0, tl.max(w, 0), BLOCK_T):
                tok = t0 + t[None, :]
                ok = tok < w[:, None]
                key = koff[:, None] + tok
                if HAS_KV_IDS:
                    entry = tl.load(KV_IDS + bh * N + key, mask=ok, other=0)
                else:
                    entry = key
                tl.store(dst + pos[:, None] + tok, entry, mask=ok)
            start += tl.sum(w, 0)


# ----------------------------------------------------------------------------------------------------------------
# Attention kernel
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _qk(q, K, k_head, skn, LIST, pos0, L, offs_d,
        BLOCK_N: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr):
    """Scores q·kᵀ of one key tile (list positions pos0 … pos0 + BLOCK_N) and the tile's key rows."""
    offs_n = pos0 + tl.arange(0, BLOCK_N)
    if MASKED:
        idx = tl.load(LIST + offs_n, mask=offs_n < L, other=0)
    else:
        idx = tl.load(LIST + offs_n)
    rows = idx[:, None].to(tl.int64)
    k = tl.load(K + k_head + rows * skn + offs_d[None, :])
    if UPCAST:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return s, rows


@triton.jit
def _softmax_pv(s, rows, V, v_head, svn, pos0, L, m_i, l_i, acc, qk_scale, offs_d,
                BLOCK_N: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr):
    """Online-softmax update with one tile of scores and the matching values."""
    if MASKED:
        s = tl.where((pos0 + tl.arange(0, BLOCK_N) < L)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # running max, in the scaled (log2) domain
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])  # one FMA per score
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    v = tl.load(V + v_head + rows * svn + offs_d[None, :])
    if UPCAST:
        acc += tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        acc += tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _sparse_attn_fwd_kernel(
    Q, K, V, O, Q_ROWS,
    Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R,
    qk_scale, N, H, MQ, SLOTS,
    sqb, sqh, skb, skh, svb, svh, sob, soh,
    sqn: tl.constexpr, skn: tl.constexpr, svn: tl.constexpr, son: tl.constexpr,  # row strides: see run()
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr,
    HAS_Q_ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    blk = tl.load(WORK_I + pid)
    if blk >= 0:
        r = tl.load(WORK_R + pid)
        bh = (pid // SLOTS).to(tl.int64)
        b = bh // H
        h = bh % H
        q_start = tl.load(Q_OFF + bh * (MQ + 1) + blk) + r * BLOCK_M
        q_end = tl.load(Q_OFF + bh * (MQ + 1) + blk + 1)
        L = tl.load(LENS + bh * MQ + blk)
        lst = LIST + tl.load(LIST_OFF + bh * MQ + blk)

        offs_m = q_start + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        mrow = offs_m < q_end
        if HAS_Q_ROWS:  # the plan reads q and writes the output through the query order: no permuted copies
            q_rows = tl.load(Q_ROWS + bh * N + offs_m, mask=mrow, other=0).to(tl.int64)
        else:
            q_rows = offs_m.to(tl.int64)
        q = tl.load(Q + b * sqb + h * sqh + q_rows[:, None] * sqn + offs_d[None, :], mask=mrow[:, None], other=0.0)
        k_head = b * skb + h * skh
        v_head = b * svb + h * svh

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        n_full = L // BLOCK_N
        for t in range(0, n_full):
            s, rows = _qk(q, K, k_head, skn, lst, t * BLOCK_N, L, offs_d, BLOCK_N, False, UPCAST)
            m_i, l_i, acc = _softmax_pv(s, rows, V, v_head, svn, t * BLOCK_N, L, m_i, l_i, acc, qk_scale,
                                        offs_d, BLOCK_N, False, UPCAST)
        if n_full * BLOCK_N < L:
            s, rows = _qk(q, K, k_head, skn, lst, n_full * BLOCK_N, L, offs_d, BLOCK_N, True, UPCAST)
            m_i, l_i, acc = _softmax_pv(s, rows, V, v_head, svn, n_full * BLOCK_N, L, m_i, l_i, acc, qk_scale,
                                        offs_d, BLOCK_N, True, UPCAST)
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_safe[:, None]
        o_ptr = O + b * sob + h * soh + q_rows[:, None] * son + offs_d[None, :]
        tl.store(o_ptr, out.to(O.dtype.element_ty), mask=mrow[:, None])


# ----------------------------------------------------------------------------------------------------------------
# The SparseKernel
# ----------------------------------------------------------------------------------------------------------------
def _order_ids(order: Optional[Tensor], bh: int, n: int) -> Optional[Tensor]:
    """A layout order [B, H, N] as contiguous int32 [BH, N] (None: the natural order)."""
    return None if order is None else order.reshape(bh, n).to(torch.int32).contiguous()


@dataclass
class WorkList:
    """Work items of one launch: (query block, row tile) per slot, head-major with ``slots`` slots per head."""

    block: Tensor  # [BH * slots] int32, query block (-1: unused slot)
    row_tile: Tensor  # [BH * slots] int32, row tile within the block, in units of block_m
    slots: int
    block_m: int
    block_n: int


@dataclass
class TritonPlan:
    """Everything `run` needs; all tensors live on the device of q."""

    q_off: Tensor  # [BH, Mq + 1] int32
    lens: Tensor  # [BH, Mq] int32, keys per query block
    list_off: Tensor  # [BH, Mq] int64, start of each list in `lists`
    lists: Tensor  # flat int32 key indices
    passes: list  # WorkList per launch: full-height row tiles, then (optionally) tail tiles, tallest first
    shape: tuple  # (B, H, N, D)
    num_q_blocks: int
    generation: int  # which fill of the kernel's shared index buffer this plan's lists live in
    q_rows: Optional[Tensor] = None  # [BH * N] int32 original row of each permuted query (fused permutation)


@register("kernel", "triton")
@dataclass
class TritonBlockSparse(SparseKernel):
    """Variable-block sparse attention (forward) in Triton: token-packed key tiles, bf16/fp16, head dim 64 or 128.

    ``block_m``/``block_n``: query rows / keys per tile. A query block's rows are cut into ``block_m`` tiles; a
    remainder of at most ``tail_block_m`` rows goes to a second launch with ``tail_block_m`` × ``tail_block_n``
    tiles (0, or a value ≥ block_m, disables it), and one of at most ``short_tail_block_m`` rows to a third with
    ``short_tail_block_m`` × ``tail_block_n`` tiles (0, the default, or a value ≥ tail_block_m, disables it): fewer
    computed pairs wasted on padding rows, but measured 2–4.6% slower in all (docs/performance.md).
    ``num_warps``/``num_stages``: launch options of the main pass (``None``: defaults tuned on H100, see
    benchmarks/NOTES.md). ``max_index_bytes``: largest key-index buffer
    sized from the sync-free upper bound B·H·Mq·N·4 bytes (beyond it the plan sizes the buffer exactly, which
    synchronises with the host). A plan is valid until the next ``plan()`` of the same object.
    ``fuse_permutation``: which permutation the kernel does itself by reading through the layout's orders instead of
    permuted copies. ``"q"`` (default): it reads query rows and writes output rows through q_order (no q copy, no
    output scatter), and `permute` gathers k, v into the key order in one launch, so key tiles stay contiguous in
    memory; ``"qkv"``: k, v are read through kv_order too (no copies at all, but rows scattered over memory, which
    is slower when they miss L2: see docs/performance.md); ``"none"``: `permute` gathers q, k, v in one launch and
    `unpermute` scatters the output.
    Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1`` (there float32 inputs are accepted too).
    """

    block_m: int = 128
    block_n: int = 128
    tail_block_m: int = 64
    tail_block_n: int = 64
    short_tail_block_m: int = 0
    num_warps: Optional[int] = None
    num_stages: Optional[int] = None
    max_index_bytes: int = 6 << 30
    fuse_permutation: str = "q"
    _buffers: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.fuse_permutation not in FUSE_MODES:
            raise ValueError(
                f"fuse_permutation must be one of {', '.join(FUSE_MODES)}, got {self.fuse_permutation!r}"
            )
        for name in ("block_m", "block_n", "tail_block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two ≥ 16, got {value}")
        for name in ("tail_block_m", "short_tail_block_m"):
            t = getattr(self, name)
            if t != 0 and (t < 16 or t & (t - 1)):
                raise ValueError(f"{name} must be 0 (off) or a power of two ≥ 16, got {t}")
        if self.num_warps is not None and self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps}")
        if self.num_stages is not None and self.num_stages < 1:
            raise ValueError(f"num_stages must be ≥ 1, got {self.num_stages}")
        if self.max_index_bytes < 0:
            raise ValueError(f"max_index_bytes must be ≥ 0, got {self.max_index_bytes}")

    # -- support -------------------------------------------------------------------------------------------------
    def why_unsupported(self, q: Tensor, k: Tensor, v: Tensor) -> list[str]:
        reasons = []
        interp = interpreting()
        tensors = (q, k, v)
        if not all(isinstance(t, Tensor) for t in tensors):
            return ["q, k, v must be tensors"]
        reasons += mode_problem(q.is_cuda)
        allowed = (torch.float16, torch.bfloat16) + ((torch.float32,) if interp else ())
        if q.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            reasons.append(f"dtype {str(q.dtype).replace('torch.', '')} is not supported (supported: {names})")
        if q.dim() != 4:
            reasons.append(f"expects [B, H, N, D] tensors, got {q.dim()} dims")
        elif q.shape[-1] not in (64, 128):
            reasons.append(f"head dim {q.shape[-1]} is not supported (supported: 64, 128)")
        if any(t.shape != q.shape or t.dtype != q.dtype or t.device != q.device for t in (k, v)):
            reasons.append("q, k, v must share shape, dtype and device")
        return reasons

    # -- permutation ---------------------------------------------------------------------------------------------
    def permute(self, q: Tensor, k: Tensor, v: Tensor, layout: Layout) -> tuple[Tensor, Tensor, Tensor]:
        gather_q = self.fuse_permutation == "none" and layout.q_order is not None
        gather_kv = self.fuse_permutation != "qkv" and layout.kv_order is not None
        if not (gather_q or gather_kv):
            return q, k, v
        qp, kp, vp = gather_qkv(q if gather_q else None, k if gather_kv else None, v if gather_kv else None,
                                layout.q_order, layout.kv_order)  # one launch
        return (qp if gather_q else q), (kp if gather_kv else k), (vp if gather_kv else v)

    def unpermute(self, out: Tensor, layout: Layout) -> Tensor:
        return scatter_rows(out, layout.q_order) if self.fuse_permutation == "none" else out

    # -- plan ----------------------------------------------------------------------------------------------------
    def _index_buffer(self, capacity: int, device: torch.device) -> tuple[Tensor, int]:
        """The cached key-index buffer (grown when too small) and the new generation number of its contents."""
        key = ("lists", str(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < capacity:
            self._buffers.pop(key, None)
            buf = torch.empty(max(capacity, 1), dtype=torch.int32, device=device)
            self._buffers[key] = buf
        generation = self._buffers.get(("generation", str(device)), 0) + 1
        self._buffers[("generation", str(device))] = generation
        return buf, generation

    def plan(self, layout: Layout, mask: BlockMask, q: Tensor) -> TritonPlan:
        """Key lists and work items, for `run` on `permute`'s q, k, v (see ``fuse_permutation``)."""
        b, h, n, d = q.shape
        device = q.device
        bh = b * h
        q_sizes = layout.q_sizes.reshape(bh, -1)
        k_sizes = layout.k_sizes.reshape(bh, -1)
        mq, mk = q_sizes.shape[1], k_sizes.shape[1]
        selected = mask.selected
        if tuple(selected.shape) != (b, h, mq, mk):
            raise ValueError(f"mask must have shape {(b, h, mq, mk)}, got {tuple(selected.shape)}")
        if q_sizes.device != device or k_sizes.device != device or selected.device != device:
            raise ValueError("layout, mask and q must be on one device")
        if n >= 2**30:
            raise ValueError(f"sequence length {n} is too long for int32 key indices")
        int32 = torch.int32
        q_sizes = q_sizes.to(int32)
        k_sizes = k_sizes.to(int32)
        zero = torch.zeros(bh, 1, dtype=int32, device=device)
        q_off = torch.cat([zero, q_sizes.cumsum(-1, dtype=int32)], dim=-1)
        k_off = torch.cat([zero, k_sizes.cumsum(-1, dtype=int32)], dim=-1)

        # Key lists: the lengths and the lists in one pass over the mask (two when the buffer is sized exactly). Each
        # list gets a fixed slot of N entries when the upper bound B·H·Mq·N fits max_index_bytes, so the offsets need
        # no scan over the lengths.
        sel = selected.reshape(bh, mq, mk).contiguous()
        sel = sel.view(torch.uint8) if sel.dtype == torch.bool else (sel != 0).to(torch.uint8)
        lens = torch.empty(bh, mq, dtype=int32, device=device)
        kv_ids = q_rows = None
        if self.fuse_permutation != "none":
            q_rows = _order_ids(layout.q_order, bh, n)
        if self.fuse_permutation == "qkv":
            kv_ids = _order_ids(layout.kv_order, bh, n)
        k_sizes = k_sizes.contiguous()
        scratch = torch.empty(bh, mq, mk, dtype=int32, device=device)  # compacted selected key blocks

        def fill(list_off: Tensor, lists: Tensor, write: bool) -> None:
            _fill_lists_kernel[(mq, bh)](
                sel, k_sizes, k_off, kv_ids if kv_ids is not None else k_sizes, scratch, lens, list_off, lists,
                n, mq, mk, BLOCK_K=triton.next_power_of_2(mk), GROUP=8, BLOCK_T=128 if not interpreting() else 16,
                FILL=write, HAS_KV_IDS=kv_ids is not None, num_warps=4,
            )

        bound = bh * mq * n
        if bound * 4 <= self.max_index_bytes:
            lists, generation = self._index_buffer(bound, device)
            list_off = torch.arange(0, bound, n, dtype=torch.int64, device=device).reshape(bh, mq)
        else:  # exact size: lengths first, then one number read back from the device (a host synchronisation)
            fill(lens, lens, False)
            list_off = torch.zeros(bh * mq, dtype=torch.int64, device=device)
            list_off[1:] = lens.reshape(-1)[:-1].to(torch.int64).cumsum(0)
            list_off = list_off.reshape(bh, mq)
            lists, generation = self._index_buffer(int(lens.sum(dtype=torch.int64).item()), device)
        fill(list_off, lists, True)

        # Work items: (query block, row tile), head-major, longest list first within a head. A block's remainder
        # after its full block_m tiles goes to the shortest tail tile height that holds it.
        bm = self.block_m
        tails = []
        for height in (self.tail_block_m, self.short_tail_block_m):
            if not 0 < height < (tails[-1] if tails else bm):
                break
            tails.append(height)
        full, rest = q_sizes // bm, q_sizes % bm
        main_tiles = full + (rest > (tails[0] if tails else 0)).to(int32)
        passes = [self._work_list(main_tiles, lens, mq + triton.cdiv(n, bm), bm, self.block_n, 0)]
        for index, height in enumerate(tails):
            lower = tails[index + 1] if index + 1 < len(tails) else 0
            # at most one tail tile per block, starting after the block's full tiles
            tiles = ((rest > lower) & (rest <= height)).to(int32)
            passes.append(self._work_list(tiles, lens, mq, height, self.tail_block_n, full * (bm // height)))
        return TritonPlan(q_off=q_off, lens=lens, list_off=list_off, lists=lists, passes=passes,
                          shape=(b, h, n, d), num_q_blocks=mq, generation=generation, q_rows=q_rows)

    @staticmethod
    def _work_list(tiles: Tensor, lens: Tensor, slots: int, bm: int, bn: int, first_row_tile) -> WorkList:
        """Flatten per-block tile counts [BH, Mq] into ``slots`` work items per head, longest key list first."""
        bh, mq = tiles.shape
        int32 = torch.int32
        tiles_incl = tiles.cumsum(-1, dtype=int32)
        t = torch.arange(slots, dtype=int32, device=tiles.device).expand(bh, slots).contiguous()
        blk = torch.searchsorted(tiles_incl, t, right=True)  # block holding tile t (Mq: unused slot)
        valid = blk < mq
        blk_c = blk.clamp(max=mq - 1)
        row_tile = t - (tiles_incl.gather(1, blk_c) - tiles.gather(1, blk_c))
        if not isinstance(first_row_tile, int):
            row_tile = row_tile + first_row_tile.gather(1, blk_c)
        cost = torch.where(valid, lens.gather(1, blk_c), torch.full_like(row_tile, -1))
        order = torch.argsort(cost, dim=-1, descending=True)
        block = torch.where(valid, blk.to(int32), torch.full_like(row_tile, -1)).gather(1, order)
        return WorkList(block.reshape(-1).contiguous(), row_tile.to(int32).gather(1, order).reshape(-1).contiguous(),
                        slots, bm, bn)

    # -- run -----------------------------------------------------------------------------------------------------
    def _launch_options(self, d: int, main: bool) -> dict:
        if main:
            options = dict(num_warps=self.num_warps or (8 if self.block_m >= 128 else 4),
                           num_stages=self.num_stages or 3)
        else:
            options = dict(num_warps=4, num_stages=2 if d > 64 and self.tail_block_n >= 128 else 3)
        if interpreting():
            options["num_stages"] = 1
        return options

    def run(self, plan: TritonPlan, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        reasons = self.why_unsupported(q, k, v)
        if reasons:
            raise ValueError("kernel 'triton' cannot run these inputs: " + "; ".join(reasons))
        if tuple(q.shape) != plan.shape:
            raise ValueError(f"plan was made for shape {plan.shape}, got q of shape {tuple(q.shape)}")
        if self._buffers.get(("generation", str(q.device))) != plan.generation:
            raise ValueError(
                "this plan is stale: a later plan() of the same kernel object reused its key-index buffer; "
                "plan again before running (or use one kernel object per live plan)"
            )
        b, h, n, d = q.shape
        # Any strides with contiguous rows (e.g. [B, N, H, D] transposed to [B, H, N, D]) are read in place. Row
        # strides are compile-time constants (one specialisation per layout, e.g. D or H·D): with a run-time row
        # stride the per-tile 64-bit address arithmetic made the kernel 6.5% slower on an H100 (benchmarks/NOTES.md).
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out = torch.empty(b, h, n, d, dtype=q.dtype, device=q.device)
        q_rows = plan.q_rows
        for index, work in enumerate(plan.passes):
            _sparse_attn_fwd_kernel[(work.block.numel(),)](
                q, k, v, out, q_rows if q_rows is not None else work.block,
                plan.q_off, plan.lens, plan.list_off, plan.lists, work.block, work.row_tile,
                LOG2E / math.sqrt(d), n, h, plan.num_q_blocks, work.slots,
                *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *out.stride()[:2],
                sqn=q.stride(2), skn=k.stride(2), svn=v.stride(2), son=out.stride(2),
                BLOCK_M=work.block_m, BLOCK_N=work.block_n, HEAD_DIM=d,
                UPCAST=interpreting() or q.dtype == torch.float32, HAS_Q_ROWS=q_rows is not None,
                **self._launch_options(d, index == 0),
            )
        return out

    def computed_pairs(self, plan: TritonPlan, real_rows: bool = False) -> Tensor:
        """(computed, useful) (query, key) pairs of the kernel's tiles, as a float64 tensor of 2 (for waste reports).

        ``real_rows``: count only each row tile's real query rows, so the waste left is the key side's alone (the
        padding of each list's last key tile; the rest is the padding rows of each query block's last row tile).
        Reads the plan back from the device (a synchronisation): for reports, not for the attention path."""
        q_sizes = (plan.q_off[:, 1:] - plan.q_off[:, :-1]).to(torch.float64)
        lens = plan.lens.to(torch.float64)
        computed = torch.zeros((), dtype=torch.float64, device=lens.device)
        for work in plan.passes:
            valid = work.block >= 0
            bh_index = torch.arange(work.block.numel(), device=lens.device) // work.slots
            blk = work.block.clamp_min(0).long()
            keys = lens[bh_index, blk]
            rows = work.block_m
            if real_rows:  # a tile's rows that fall inside its query block
                rows = (q_sizes[bh_index, blk] - work.row_tile.to(torch.float64) * work.block_m).clamp(0, work.block_m)
            computed += (valid * rows * torch.ceil(keys / work.block_n) * work.block_n).sum()
        useful = (q_sizes * lens).sum()
        return torch.stack([computed, useful])
