"""Flash k-means in Triton (clusterer ``triton``): batched Lloyd iterations without the N×C distance matrix.

One iteration is two launches (plus one before the first: the starting centroids' copies and ‖c‖²):
  * assign: a program owns ``block_points`` points of one group; it streams the group's centroids in tiles of
    ``block_centroids`` through the matrix units (fp32 accumulate; the operand copy holds −2c, so a distance is
    x·(−2c) + ‖x‖² + ‖c‖², one add) and keeps a running minimum per (point, column slot) across the tiles, reduced
    over the slots once at the end. Packed argmin (all precisions but ``ieee``): the tile number replaces the few low
    bits of the distance (a relative truncation ≤ 2^(bits−23), far below the bf16 operand rounding), so value and
    index are one float min; ``ieee`` keeps an exact compare-and-select with the first index winning a tie. It writes
    the labels and adds its points into per-cluster fp32 sums and counts with atomics (the centroid update as a
    scatter-reduction; nothing of size N×C ever exists);
  * update: means of the sums (added up over ``sum_copies`` copies; an empty cluster keeps its centroid), the
    rounded (×−2) operand copy the next assign reads, ‖c‖², sizes, the largest centroid shift (an atomic max, for
    ``tol``), and zeroes the sums for the next round. float16 inputs keep c itself in the operand copy (−2c could overflow) and subtract 2·x·c after the product.
All iterations are launched back to back with no host synchronisation, also when ``tol`` > 0: the stop test runs on
the device (every launch first reads the shifts of the earlier rounds and returns at once if one was below tol), so
a fit can be captured in a CUDA graph. Summation order of the atomics is not fixed, so centroids may differ from run
to run by float32 rounding.

``precision``: how x·c is computed. ``bf16`` (default) rounds x and the centroids to bfloat16 for the matrix units
(x from a bf16 model is exact; the centroid rounding is relative 2⁻⁹, so only near-ties can flip); ``tf32``; or
``ieee`` (exact float32, slowest; the test reference). For float16 inputs ``bf16`` uses float16 operands.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparseattn.interfaces import Clusterer, KMeansResult
from sparseattn.registry import register
from sparseattn.validation import check_kmeans_inputs

PRECISIONS = ("bf16", "tf32", "ieee")
ASSIGN_KERNELS = ("auto", "triton", "gluon")


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _converged(SHIFT, it, tol, MAX_IT: tl.constexpr):
    offs = tl.arange(0, MAX_IT)
    shifts = tl.load(SHIFT + offs, mask=offs < it, other=float("inf"))
    return tl.min(shifts, 0) < tol


@triton.jit
def _assign_kernel(
    X, CD, CSQ, LABELS, SUMS, COUNTS, SHIFT,
    it, tol, N, C, D, sxg, sxn,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, MAX_IT: tl.constexpr,
    USE_TOL: tl.constexpr, DOT_MODE: tl.constexpr,  # 0: low-precision operands, 1: tf32, 2: ieee fp32, 3: emulate 0
    LOW_FP16: tl.constexpr, ACCUMULATE: tl.constexpr = True,
    TILE_BITS: tl.constexpr = 0,  # > 0: packed argmin (tile number in the distance's low bits); 0: exact argmin
    ASM: tl.constexpr = False,  # packed argmin's and-or as one inline lop3 (not in the interpreter)
    FOLD: tl.constexpr = True,  # CD holds −2c: distances come straight out of the matrix units (modes 1–3 always)
    COPIES: tl.constexpr = 1,  # copies of the sums and counts; program p adds into copy p % COPIES
):
    pid = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    skip = False
    if USE_TOL:
        skip = _converged(SHIFT, it, tol, MAX_IT)
    if not skip:
        rows = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        cols = tl.arange(0, BLOCK_D)
        slots = tl.arange(0, BLOCK_C)
        rmask = rows < N
        dmask = cols < D
        x = tl.load(X + g * sxg + rows[:, None].to(tl.int64) * sxn + cols[None, :],
                    mask=rmask[:, None] & dmask[None, :], other=0.0)
        if DOT_MODE == 0:
            xd = x.to(CD.dtype.element_ty)
        elif DOT_MODE == 3:
            if LOW_FP16:
                xd = x.to(tl.float16).to(tl.float32)
            else:
                xd = x.to(tl.bfloat16).to(tl.float32)
        else:
            xd = x.to(tl.float32)
        xsq = tl.sum(xd.to(tl.float32) * xd.to(tl.float32), 1)  # of the rounded x the matrix units see
        if TILE_BITS > 0:
            far = 1.0e38  # finite: inf with tile bits set would be a NaN
        else:
            far = float("inf")
        # Running minimum per (point, column slot) across the centroid tiles: one min per distance, the row
        # reduction once at the end. Packed: the tile number replaces the TILE_BITS low bits of the distance (a
        # relative truncation ≤ 2^(TILE_BITS−23), far below bf16 operand rounding), so value and index are one min.
        best = tl.full([BLOCK_P, BLOCK_C], float("inf"), dtype=tl.float32)
        best_t = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.int32)
        c_base = CD + g * C * BLOCK_D
        n_tiles = tl.cdiv(C, BLOCK_C)
        for t in range(0, n_tiles):
            cen = t * BLOCK_C + slots
            cmask = cen < C
            c = tl.load(c_base + cen[:, None] * BLOCK_D + cols[None, :], mask=cmask[:, None], other=0.0)
            csq = tl.load(CSQ + g * C + cen, mask=cmask, other=far)
            base = xsq[:, None] + csq[None, :]
            if DOT_MODE == 0:
                if FOLD:  # CD holds −2c (exact): x·(−2c) + (‖x‖² + ‖c‖²), one add per distance
                    dist = tl.dot(xd, tl.trans(c)) + base
                else:
                    dist = base - 2.0 * tl.dot(xd, tl.trans(c))
            elif DOT_MODE == 1:
                dist = tl.dot(xd, tl.trans(c), acc=base, input_precision="tf32")
            else:
                dist = tl.dot(xd, tl.trans(c.to(tl.float32)), acc=base, input_precision="ieee")
            if TILE_BITS > 0:
                bits = dist.to(tl.int32, bitcast=True)
                if ASM:  # one LOP3 for the and-or (ptxas otherwise emits two: the mask is an immediate, t uniform)
                    packed = tl.inline_asm_elementwise(
                        "lop3.b32 $0, $1, $2, $3, 0xEA;", "=r,r,r,r",
                        [bits, tl.full([BLOCK_P, BLOCK_C], ~((1 << TILE_BITS) - 1), tl.int32),
                         tl.full([BLOCK_P, BLOCK_C], t, tl.int32)],
                        dtype=tl.int32, is_pure=True, pack=1).to(tl.float32, bitcast=True)
                else:
                    packed = ((bits & ~((1 << TILE_BITS) - 1)) | t).to(tl.float32, bitcast=True)
                best = tl.minimum(best, packed)
            else:
                better = dist < best  # strict: the first tile wins a tie
                best = tl.where(better, dist, best)
                best_t = tl.where(better, t, best_t)
        if TILE_BITS > 0:
            low, slot = tl.min(best, 1, return_indices=True)
            best_idx = (low.to(tl.int32, bitcast=True) & ((1 << TILE_BITS) - 1)) * BLOCK_C + slot.to(tl.int32)
            best_idx = tl.where(best_idx < C, best_idx, 0)  # a row of NaN or huge distances: cluster 0
        else:
            low = tl.min(best, 1)
            cand = tl.where(best == low[:, None], best_t * BLOCK_C + slots[None, :], 2147483647)
            best_idx = tl.min(cand, 1)  # the lowest index among the minima, as torch's argmin
            best_idx = tl.where(best_idx < C, best_idx, 0)  # a row of NaN distances: cluster 0
        tl.store(LABELS + g * N + rows, best_idx.to(tl.int64), mask=rmask)
        if ACCUMULATE:
            copy = (pid % COPIES) * tl.num_programs(1) * C  # the copy's offset in (group, cluster) rows
            _accumulate(X, SUMS + copy * D, COUNTS + copy, g, rows, cols, rmask, dmask, best_idx, C, D, sxg, sxn,
                        BLOCK_P)


@triton.jit
def _accumulate(X, SUMS, COUNTS, g, rows, cols, rmask, dmask, best_idx, C, D, sxg, sxn, BLOCK_P: tl.constexpr):
    """Add the tile's points into the fp32 sums of their clusters, and count them (the centroid update's scatter)."""
    lab = best_idx.to(tl.int64)
    # Reload the points (an L1/L2 hit) rather than keep them live in registers across the centroid loop.
    x = tl.load(X + g * sxg + rows[:, None].to(tl.int64) * sxn + cols[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)
    tl.atomic_add(SUMS + (g * C + lab)[:, None] * D + cols[None, :], x.to(tl.float32),
                  mask=rmask[:, None] & dmask[None, :], sem="relaxed")
    tl.atomic_add(COUNTS + g * C + lab, tl.full([BLOCK_P], 1, dtype=tl.int32), mask=rmask, sem="relaxed")


@triton.jit
def _publish(CD, CSQ, g, C, cen, cols, new, cd_mask, cmask, BLOCK_D: tl.constexpr, ROUND_LOW: tl.constexpr,
             LOW_FP16: tl.constexpr, FOLD: tl.constexpr):
    """What the next assignment reads of fp32 centroids ``new``: the operand copy (rounded to the low precision when
    ROUND_LOW, times −2 when FOLD: exact, a power of two) and ‖c‖² of the rounded values."""
    if ROUND_LOW:
        if LOW_FP16:
            rf = new.to(tl.float16).to(tl.float32)
        else:
            rf = new.to(tl.bfloat16).to(tl.float32)
    else:
        rf = new
    tl.store(CSQ + g * C + cen, tl.sum(rf * rf, 1), mask=cmask)
    if FOLD:
        rf = rf * -2.0
    tl.store(CD + (g * C + cen)[:, None] * BLOCK_D + cols[None, :], rf.to(CD.dtype.element_ty), mask=cd_mask)


@triton.jit
def _update_kernel(
    CENT, CD, CSQ, SUMS, COUNTS, SIZES, SHIFT,
    it, tol, C, D,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, MAX_IT: tl.constexpr, USE_TOL: tl.constexpr,
    ROUND_LOW: tl.constexpr, LOW_FP16: tl.constexpr, FOLD: tl.constexpr, COPIES: tl.constexpr = 1,
):
    pid = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    skip = False
    if USE_TOL:
        skip = _converged(SHIFT, it, tol, MAX_IT)
    if not skip:
        cen = pid * BLOCK_C + tl.arange(0, BLOCK_C)
        cols = tl.arange(0, BLOCK_D)
        cmask = cen < C
        mask = cmask[:, None] & (cols[None, :] < D)
        off = (g * C + cen)[:, None] * D + cols[None, :]
        copy_rows = tl.num_programs(1) * C  # (group, cluster) rows per copy of the sums
        sums = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32)
        counts = tl.zeros([BLOCK_C], dtype=tl.int32)
        for r in tl.static_range(COPIES):
            sums += tl.load(SUMS + r * copy_rows * D + off, mask=mask, other=0.0)
            counts += tl.load(COUNTS + r * copy_rows + g * C + cen, mask=cmask, other=0)
        old = tl.load(CENT + off, mask=mask, other=0.0)
        new = tl.where((counts > 0)[:, None], sums / tl.maximum(counts, 1).to(tl.float32)[:, None], old)
        tl.store(CENT + off, new, mask=mask)
        _publish(CD, CSQ, g, C, cen, cols, new, mask, cmask, BLOCK_D, ROUND_LOW, LOW_FP16, FOLD)
        tl.store(SIZES + g * C + cen, counts.to(tl.int64), mask=cmask)
        if USE_TOL:
            diff = new - old
            shift = tl.sqrt(tl.sum(diff * diff, 1))
            tl.atomic_max(SHIFT + it, tl.max(tl.where(cmask, shift, 0.0), 0))
        for r in tl.static_range(COPIES):
            tl.store(SUMS + r * copy_rows * D + off, tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32), mask=mask)
            tl.store(COUNTS + r * copy_rows + g * C + cen, tl.zeros([BLOCK_C], dtype=tl.int32), mask=cmask)


@triton.jit
def _prepare_kernel(
    SRC, CENT, CD, CSQ, C, D, ssg, ssc,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, ROUND_LOW: tl.constexpr, LOW_FP16: tl.constexpr,
    FOLD: tl.constexpr,
):
    """The starting centroids in one launch: the fp32 copy, the (rounded, zero-padded) operand copy, ‖c‖²."""
    pid = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    cen = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cols = tl.arange(0, BLOCK_D)
    cmask = cen < C
    mask = cmask[:, None] & (cols[None, :] < D)
    src = tl.load(SRC + g * ssg + cen[:, None].to(tl.int64) * ssc + cols[None, :], mask=mask, other=0.0)
    new = src.to(tl.float32)
    tl.store(CENT + (g * C + cen)[:, None] * D + cols[None, :], new, mask=mask)
    _publish(CD, CSQ, g, C, cen, cols, new, cmask[:, None], cmask, BLOCK_D, ROUND_LOW, LOW_FP16, FOLD)  # pads: 0


@register("clusterer", "triton")
@dataclass
class TritonKMeans(Clusterer):
    """Batched flash k-means on the GPU (Triton): tiled assignment with a running argmin, atomic centroid sums,
    several iterations per call with no host synchronisation. ``precision``: ``bf16`` | ``tf32`` | ``ieee`` (see the
    module docstring); ``block_points``/``block_centroids``/``num_warps``/``num_stages``: launch shape (0: tuned
    defaults); ``check_finite``: also reject NaN/Inf inputs (costs a host synchronisation). ``assign_kernel``: the
    assignment step's kernel: ``triton``; ``gluon`` (clustering/gluon_kmeans.py: the next centroid tile's product
    overlaps the argmin; needs an sm_90 GPU, ``precision="bf16"``, bf16 or float16 points and a power-of-two
    dimension ≤ 128; its ring depth is fixed, ``num_stages`` is the Triton kernel's); or ``auto``: gluon where it
    applies, else triton. ``sum_copies``: copies of the atomic centroid sums (program p adds into copy p mod
    copies; the update adds them up), which spreads same-address atomics when clusters are large; 0: 4 when the
    clusters average ≥ 128 points, else 1. Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``."""

    precision: str = "bf16"
    block_points: int = 0  # 0: by cluster count (tuned on H100, see benchmarks/NOTES.md)
    block_centroids: int = 0
    num_warps: int = 0
    num_stages: int = 4
    check_finite: bool = False
    assign_kernel: str = "auto"
    sum_copies: int = 0
    _accumulate: bool = field(default=True, repr=False)  # False: assignment only (a diagnostic for benchmarks)
    _argmin: str = field(default="auto", repr=False)  # auto | packed | exact (a diagnostic for benchmarks)
    _asm: bool = field(default=True, repr=False)  # False: the packed argmin's and-or without inline PTX (diagnostic)
    _fold: bool = field(default=True, repr=False)  # False: ‖c‖² − 2x·c after the product (a diagnostic)
    _maxnreg: int = field(default=0, repr=False)  # gluon: register cap per thread (0: none; a diagnostic)
    # gluon: False: one program per (point tile, group); True: persistent (~2 programs per SM loop over the work
    # items, the next item's copies overlap this one's labels and atomics; H100, Wan shape: 2-4% faster assignment)
    _persistent: bool = field(default=True, repr=False)
    # gluon: the points as the products' register operand (False: read from shared memory by every product, the
    # default until the sixth session; H100, Wan shape: 1-8% slower)
    _a_regs: bool = field(default=True, repr=False)
    # gluon: ‖c‖² copied into shared memory with each centroid tile (cp.async, a second 4-stage ring; False: 16 masked
    # global loads a thread per tile, the default until the eighth session; H100, Wan shape: 1,000 clusters 11% slower)
    _csq_smem: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        for name in ("block_points", "block_centroids"):
            value = getattr(self, name)
            if value != 0 and (value < 16 or value & (value - 1)):
                raise ValueError(f"{name} must be a power of two ≥ 16, got {value}")
        if self.num_warps not in (0, 1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be 0 (auto), 1, 2, 4, 8 or 16, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be ≥ 1, got {self.num_stages}")
        if self.sum_copies not in (0, 1, 2, 4, 8):
            raise ValueError(f"sum_copies must be 0 (auto), 1, 2, 4 or 8, got {self.sum_copies}")
        if not isinstance(self._csq_smem, bool):
            raise ValueError(f"_csq_smem must be True or False, got {self._csq_smem!r}")
        if self.assign_kernel not in ASSIGN_KERNELS:
            raise ValueError(f"assign_kernel must be one of {', '.join(ASSIGN_KERNELS)}, got {self.assign_kernel!r}")

    def why_unsupported(self, x: Tensor) -> list[str]:
        """Reasons this backend cannot cluster ``x`` here (empty list = supported)."""
        from sparseattn.kernels.triton_permute import mode_problem

        return mode_problem(x.is_cuda)

    def gluon_problems(self, x: Tensor) -> list[str]:
        """Reasons the Gluon assignment kernel cannot cluster ``x`` here (empty list: it can)."""
        reasons = []
        if interpreting() or not x.is_cuda:
            reasons.append("needs CUDA tensors outside the Triton interpreter")
        elif torch.cuda.get_device_capability(x.device) != (9, 0):
            cc = ".".join(map(str, torch.cuda.get_device_capability(x.device)))
            reasons.append(f"needs a compute-capability-9.0 GPU (Hopper wgmma), got {cc}")
        if self.precision != "bf16":
            reasons.append(f"needs precision='bf16', got '{self.precision}'")
        if x.dtype not in (torch.bfloat16, torch.float16):
            reasons.append(f"needs bfloat16 or float16 points, got {str(x.dtype).replace('torch.', '')}")
        d = x.shape[-1]
        if d not in (16, 32, 64, 128):
            reasons.append(f"needs a power-of-two dimension from 16 to 128, got {d}")
        if not reasons:
            try:
                from . import gluon_kmeans  # noqa: F401
            except ImportError as exc:  # a Triton without Gluon
                reasons.append(f"triton.experimental.gluon is not available ({exc})")
        return reasons

    def fit(self, x: Tensor, centroids: Tensor, iters: int, tol: float = 0.0) -> KMeansResult:
        # No finiteness check by default: it would synchronise with the host (Strategy checks q, k already).
        check_kmeans_inputs(x, centroids, iters, check_finite=self.check_finite)
        reasons = self.why_unsupported(x)
        if reasons:
            raise ValueError("clusterer 'triton': " + "; ".join(reasons))
        if centroids.device != x.device:
            raise ValueError(f"x is on {x.device} but the centroids are on {centroids.device}")
        if tol < 0:
            raise ValueError(f"tol must be ≥ 0, got {tol}")

        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            x = x.float()
        if x.stride(-1) != 1:
            x = x.contiguous()
        groups, n, d = x.shape
        c = centroids.shape[1]
        device = x.device
        interp = interpreting()
        block_d = max(16, triton.next_power_of_2(d))
        mode = {"bf16": 0, "tf32": 1, "ieee": 2}[self.precision]
        if mode == 1 and interp:
            mode = 2  # the interpreter has no tf32
        low = torch.float16 if x.dtype == torch.float16 else torch.bfloat16
        if mode == 0 and interp:
            mode, cd_dtype = 3, torch.float32  # emulate: operands rounded to bf16, dot in fp32
        else:
            cd_dtype = low if mode == 0 else torch.float32
        round_low = self.precision == "bf16"

        src = centroids.detach()
        if src.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            src = src.float()
        if src.stride(-1) != 1:
            src = src.contiguous()
        cent = torch.empty(groups, c, d, dtype=torch.float32, device=device)
        cd = torch.empty(groups, c, block_d, dtype=cd_dtype, device=device)
        csq = torch.empty(groups, c, dtype=torch.float32, device=device)
        labels = torch.empty(groups, n, dtype=torch.int64, device=device)
        sizes = torch.empty(groups, c, dtype=torch.int64, device=device)
        # sums, counts (sum_copies of each) and the shifts zeroed in one launch (the update kernel re-zeroes sums and
        # counts)
        n_iter = max(iters, 1)
        # H100, Wan shape (benchmarks/NOTES.md): with 300 clusters (252 points each on average) four copies of the
        # sums made an iteration 0.32 ms faster (same-address atomics from many programs serialise); with 1,000
        # (76 points each) the assignment was no faster and the update reads every copy, so one.
        copies = self.sum_copies or (4 if n >= 128 * c else 1)
        work = torch.zeros(copies * groups * c * (d + 1) + n_iter, dtype=torch.float32, device=device)
        sums = work[: copies * groups * c * d].view(copies, groups, c, d)
        counts = work[copies * groups * c * d: copies * groups * c * (d + 1)].view(torch.int32).view(copies, groups, c)
        shift = work[copies * groups * c * (d + 1):]
        use_tol = tol > 0
        max_it = triton.next_power_of_2(max(iters, 2))

        # H100, D=128, 300 and 1,000 clusters (benchmarks/NOTES.md): 128 points × 64 centroids, 4 warps, 4 stages
        # was fastest for both (~220 registers, two programs per multiprocessor); 64 × 128, 128 × 128 and 256 × 64
        # (8 warps) were slower.
        bp = self.block_points or 128
        bc = self.block_centroids or 64
        warps = self.num_warps or 4
        stages = self.num_stages
        if interp:
            warps, stages = 4, 1
        if interp:
            bp, bc = min(bp, 32), min(bc, 32)
        elif cd_dtype == torch.float32:  # fp32 centroid tiles: twice the shared memory per stage
            bc, stages = min(bc, 64), min(stages, 2)
        tiles = triton.cdiv(c, bc)
        tile_bits = max(1, (tiles - 1).bit_length())
        argmin = self._argmin
        if argmin == "auto":
            argmin = "exact" if mode == 2 or tile_bits > 8 else "packed"
        tile_bits = tile_bits if argmin == "packed" else 0
        # bf16: the operand copy holds −2c, so distances come straight out of the matrix units; float16 keeps c
        # (−2c could overflow); the fp32 modes always fold.
        fold = mode != 0 or (self._fold and low != torch.float16)
        upd_block = 32
        _prepare_kernel[(triton.cdiv(c, upd_block), groups)](
            src, cent, cd, csq, c, d, src.stride(0), src.stride(1),
            BLOCK_C=upd_block, BLOCK_D=block_d, ROUND_LOW=round_low, LOW_FP16=low == torch.float16, FOLD=fold,
            num_warps=4,
        )
        gluon_reasons = self.gluon_problems(x) if self.assign_kernel != "triton" else ["not requested"]
        if tile_bits == 0:  # the exact argmin (ieee, more than 256 centroid tiles, or asked for)
            gluon_reasons.append("implements the packed argmin only")
        elif not gluon_reasons:
            from .gluon_kmeans import MAX_INDEX_BITS, index_bits

            low_bits = index_bits(c, self.block_centroids or 64)  # the Gluon kernel's packed cluster index
            if low_bits > MAX_INDEX_BITS:
                gluon_reasons.append(f"packs cluster indices into {MAX_INDEX_BITS} low bits of each distance: at most "
                                     f"{1 << MAX_INDEX_BITS} clusters, got {c}")
        if self.assign_kernel == "gluon" and gluon_reasons:
            raise ValueError("assign_kernel 'gluon' cannot cluster this input: " + "; ".join(gluon_reasons))
        for it in range(iters):
            if not gluon_reasons:
                self._launch_gluon(x, cd, csq, labels, sums, counts, shift, it, tol, max_it, low_bits, fold)
            else:
                _assign_kernel[(triton.cdiv(n, bp), groups)](
                    x, cd, csq, labels, sums, counts, shift,
                    it, float(tol), n, c, d, x.stride(0), x.stride(1),
                    BLOCK_P=bp, BLOCK_C=bc, BLOCK_D=block_d, MAX_IT=max_it, USE_TOL=use_tol, DOT_MODE=mode,
                    LOW_FP16=low == torch.float16, ACCUMULATE=self._accumulate, TILE_BITS=tile_bits,
                    ASM=self._asm and not interp, FOLD=fold, COPIES=copies,
                    num_warps=warps, num_stages=stages,
                )
            if not self._accumulate:  # diagnostic: assignment only
                continue
            _update_kernel[(triton.cdiv(c, upd_block), groups)](
                cent, cd, csq, sums, counts, sizes, shift,
                it, float(tol), c, d,
                BLOCK_C=upd_block, BLOCK_D=block_d, MAX_IT=max_it, USE_TOL=use_tol, ROUND_LOW=round_low,
                LOW_FP16=low == torch.float16, FOLD=fold, COPIES=copies, num_warps=4,
            )
        return KMeansResult(labels=labels, centroids=cent, sizes=sizes)

    def _launch_gluon(self, x, cd, csq, labels, sums, counts, shift, it, tol, max_it, low_bits, fold) -> None:
        """One assignment with the Hopper kernel (clustering/gluon_kmeans.py)."""
        from .gluon_kmeans import STAGES, _gluon_assign_kernel

        groups, n, d = x.shape
        c = cd.shape[1]
        # H100 (benchmarks/NOTES.md, two runs): 128 points × 64 centroids with one warpgroup (two programs per
        # multiprocessor) was 4% faster than two warpgroups capped at 128 registers, and than 256-point tiles.
        warps = self.num_warps or 4
        bp = self.block_points or 128
        bc = self.block_centroids or 64
        if bp % (16 * warps):
            raise ValueError(f"assign_kernel 'gluon' needs block_points to be a multiple of 16·num_warps, got "
                             f"{bp} points for {warps} warps")
        options = {"maxnreg": self._maxnreg} if self._maxnreg else {}
        items = triton.cdiv(n, bp) * groups
        if self._persistent:
            # As many programs as fit on the GPU at once (shared memory: x, the ring of centroid tiles, ~1 KB of
            # layout-conversion scratch and 1 KB the hardware reserves per block; registers: up to 255 a thread)
            props = torch.cuda.get_device_properties(x.device)
            smem = (bp + int(STAGES) * bc) * d * x.element_size() + 2048
            if self._csq_smem:  # the ‖c‖² ring
                smem += int(STAGES) * bc * 4
            per_sm = min(getattr(props, "shared_memory_per_multiprocessor", 233472) // smem,
                         65536 // (32 * warps * (self._maxnreg or 256)))
            grid = (min(items, props.multi_processor_count * max(1, per_sm)),)
        else:
            grid = (triton.cdiv(n, bp), groups)
        _gluon_assign_kernel[grid](
            x, cd, csq, labels, sums, counts, shift,
            it, float(tol), n, c, groups, x.stride(0), x.stride(1),
            BLOCK_P=bp, BLOCK_C=bc, BLOCK_D=d, MAX_IT=max_it, USE_TOL=tol > 0, LOW_BITS=low_bits, FOLD=fold,
            ACCUMULATE=self._accumulate, COPIES=sums.shape[0], PERSISTENT=self._persistent, A_REGS=self._a_regs,
            CSQ_SMEM=self._csq_smem, num_warps=warps,
            **options,
        )
