"""Flash k-means variants side by side at the Wan 2.1 720p shape (40 groups × 75,600 × 128, bf16).

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/kmeans_dev.py [--quick]

Times one warm ``fit`` iteration (median of CUDA events) of the previous kernel (embedded below, as committed before
this work) and of the current ``clustering/triton_kmeans.py`` under several launch shapes and argmin/fold options,
for 300 and 1,000 clusters, and checks labels against the float32 reference after one iteration.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time

import torch

OLD_SOURCE = r"""\"\"\"Flash k-means in Triton (clusterer ``triton``): batched Lloyd iterations without the N×C distance matrix.

One iteration is two launches:
  * assign: a program owns ``block_points`` points of one group; it streams the group's centroids in tiles of
    ``block_centroids`` through the matrix units (‖c‖² − 2·x·c, fp32 accumulate) keeping a running (min, argmin)
    per point, writes the labels, and adds its points into per-cluster fp32 sums and counts with atomics
    (the centroid update as a scatter-reduction; nothing of size N×C ever exists);
  * update: means of the sums (an empty cluster keeps its centroid), the rounded copy the next assign reads,
    ‖c‖², sizes, the largest centroid shift (an atomic max, for ``tol``), and zeroes the sums for the next round.
All iterations are launched back to back with no host synchronisation, also when ``tol`` > 0: the stop test runs on
the device (every launch first reads the shifts of the earlier rounds and returns at once if one was below tol), so
a fit can be captured in a CUDA graph. Summation order of the atomics is not fixed, so centroids may differ from run
to run by float32 rounding.

``precision``: how x·c is computed. ``bf16`` (default) rounds x and the centroids to bfloat16 for the matrix units
(x from a bf16 model is exact; the centroid rounding is relative 2⁻⁹, so only near-ties can flip); ``tf32``; or
``ieee`` (exact float32, slowest; the test reference). For float16 inputs ``bf16`` uses float16 operands.
\"\"\"
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


def interpreting() -> bool:
    \"\"\"Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``).\"\"\"
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
):
    pid = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    skip = False
    if USE_TOL:
        skip = _converged(SHIFT, it, tol, MAX_IT)
    if not skip:
        rows = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        cols = tl.arange(0, BLOCK_D)
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
        best = tl.full([BLOCK_P], float("inf"), dtype=tl.float32)
        best_idx = tl.zeros([BLOCK_P], dtype=tl.int32)
        c_base = CD + g * C * BLOCK_D
        for c0 in range(0, C, BLOCK_C):
            cen = c0 + tl.arange(0, BLOCK_C)
            cmask = cen < C
            c = tl.load(c_base + cen[:, None] * BLOCK_D + cols[None, :], mask=cmask[:, None], other=0.0)
            if DOT_MODE == 0:
                dots = tl.dot(xd, tl.trans(c))
            elif DOT_MODE == 1:
                dots = tl.dot(xd, tl.trans(c), input_precision="tf32")
            else:
                dots = tl.dot(xd, tl.trans(c.to(tl.float32)), input_precision="ieee")
            csq = tl.load(CSQ + g * C + cen, mask=cmask, other=float("inf"))
            dist = csq[None, :] - 2.0 * dots
            tile_min, tile_arg = tl.min(dist, 1, return_indices=True)
            better = tile_min < best
            best = tl.where(better, tile_min, best)
            best_idx = tl.where(better, tile_arg.to(tl.int32) + c0, best_idx)
        tl.store(LABELS + g * N + rows, best_idx.to(tl.int64), mask=rmask)
        if ACCUMULATE:
            _accumulate(X, SUMS, COUNTS, g, rows, cols, rmask, dmask, best_idx, C, D, sxg, sxn, BLOCK_P)


@triton.jit
def _accumulate(X, SUMS, COUNTS, g, rows, cols, rmask, dmask, best_idx, C, D, sxg, sxn, BLOCK_P: tl.constexpr):
    \"\"\"Add the tile's points into the fp32 sums of their clusters, and count them (the centroid update's scatter).\"\"\"
    lab = best_idx.to(tl.int64)
    # Reload the points (an L1/L2 hit) rather than keep them live in registers across the centroid loop.
    x = tl.load(X + g * sxg + rows[:, None].to(tl.int64) * sxn + cols[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)
    tl.atomic_add(SUMS + (g * C + lab)[:, None] * D + cols[None, :], x.to(tl.float32),
                  mask=rmask[:, None] & dmask[None, :], sem="relaxed")
    tl.atomic_add(COUNTS + g * C + lab, tl.full([BLOCK_P], 1, dtype=tl.int32), mask=rmask, sem="relaxed")


@triton.jit
def _update_kernel(
    CENT, CD, CSQ, SUMS, COUNTS, SIZES, SHIFT,
    it, tol, C, D,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, MAX_IT: tl.constexpr, USE_TOL: tl.constexpr,
    ROUND_LOW: tl.constexpr, LOW_FP16: tl.constexpr,
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
        sums = tl.load(SUMS + off, mask=mask, other=0.0)
        counts = tl.load(COUNTS + g * C + cen, mask=cmask, other=0)
        old = tl.load(CENT + off, mask=mask, other=0.0)
        new = tl.where((counts > 0)[:, None], sums / tl.maximum(counts, 1).to(tl.float32)[:, None], old)
        tl.store(CENT + off, new, mask=mask)
        if ROUND_LOW:
            if LOW_FP16:
                rf = new.to(tl.float16).to(tl.float32)
            else:
                rf = new.to(tl.bfloat16).to(tl.float32)
            tl.store(CD + (g * C + cen)[:, None] * BLOCK_D + cols[None, :], rf.to(CD.dtype.element_ty), mask=mask)
        else:
            tl.store(CD + (g * C + cen)[:, None] * BLOCK_D + cols[None, :], new.to(CD.dtype.element_ty), mask=mask)
            rf = new
        tl.store(CSQ + g * C + cen, tl.sum(rf * rf, 1), mask=cmask)
        tl.store(SIZES + g * C + cen, counts.to(tl.int64), mask=cmask)
        if USE_TOL:
            diff = new - old
            shift = tl.sqrt(tl.sum(diff * diff, 1))
            tl.atomic_max(SHIFT + it, tl.max(tl.where(cmask, shift, 0.0), 0))
        tl.store(SUMS + off, tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32), mask=mask)
        tl.store(COUNTS + g * C + cen, tl.zeros([BLOCK_C], dtype=tl.int32), mask=cmask)



@dataclass
class TritonKMeans(Clusterer):
    \"\"\"Batched flash k-means on the GPU (Triton): tiled assignment with a running argmin, atomic centroid sums,
    several iterations per call with no host synchronisation. ``precision``: ``bf16`` | ``tf32`` | ``ieee`` (see the
    module docstring); ``block_points``/``block_centroids``/``num_warps``/``num_stages``: launch shape (0: tuned
    defaults); ``check_finite``: also reject NaN/Inf inputs (costs a host synchronisation). Runs on CUDA tensors, or
    on CPU tensors under ``TRITON_INTERPRET=1``.\"\"\"

    precision: str = "bf16"
    block_points: int = 0  # 0: by cluster count (tuned on H100, see benchmarks/NOTES.md)
    block_centroids: int = 0
    num_warps: int = 0
    num_stages: int = 3
    check_finite: bool = False
    _accumulate: bool = field(default=True, repr=False)  # False: assignment only (a diagnostic for benchmarks)

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

    def why_unsupported(self, x: Tensor) -> list[str]:
        \"\"\"Reasons this backend cannot cluster ``x`` here (empty list = supported).\"\"\"
        from sparseattn.kernels.triton_permute import mode_problem

        return mode_problem(x.is_cuda)

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

        cent = centroids.detach().to(torch.float32).contiguous().clone()
        cd = torch.zeros(groups, c, block_d, dtype=cd_dtype, device=device)
        if round_low:
            rounded = cent.to(low).to(torch.float32)
        else:
            rounded = cent
        cd[:, :, :d] = rounded.to(cd_dtype)
        csq = (rounded * rounded).sum(-1).contiguous()
        labels = torch.empty(groups, n, dtype=torch.int64, device=device)
        sums = torch.zeros(groups, c, d, dtype=torch.float32, device=device)
        counts = torch.zeros(groups, c, dtype=torch.int32, device=device)
        sizes = torch.empty(groups, c, dtype=torch.int64, device=device)
        use_tol = tol > 0
        shift = torch.zeros(max(iters, 1), dtype=torch.float32, device=device)
        max_it = triton.next_power_of_2(max(iters, 2))

        # H100, D=128: few clusters → 128 points × 64 centroids, 8 warps; many → 64 × 128, 4 warps (two programs
        # per multiprocessor, so one's argmin overlaps the other's matrix products).
        small = c <= 512
        bp = self.block_points or (128 if small else 64)
        bc = self.block_centroids or (64 if small else 128)
        warps = self.num_warps or (8 if bp >= 128 else 4)
        stages = self.num_stages
        if interp:
            warps, stages = 4, 1
        if interp:
            bp, bc = min(bp, 32), min(bc, 32)
        elif cd_dtype == torch.float32:  # fp32 centroid tiles: twice the shared memory per stage
            bc, stages = min(bc, 64), min(stages, 2)
        upd_block = 32
        for it in range(iters):
            _assign_kernel[(triton.cdiv(n, bp), groups)](
                x, cd, csq, labels, sums, counts, shift,
                it, float(tol), n, c, d, x.stride(0), x.stride(1),
                BLOCK_P=bp, BLOCK_C=bc, BLOCK_D=block_d, MAX_IT=max_it, USE_TOL=use_tol, DOT_MODE=mode,
                LOW_FP16=low == torch.float16, ACCUMULATE=self._accumulate, num_warps=warps, num_stages=stages,
            )
            if not self._accumulate:  # diagnostic: assignment only
                continue
            _update_kernel[(triton.cdiv(c, upd_block), groups)](
                cent, cd, csq, sums, counts, sizes, shift,
                it, float(tol), c, d,
                BLOCK_C=upd_block, BLOCK_D=block_d, MAX_IT=max_it, USE_TOL=use_tol, ROUND_LOW=round_low,
                LOW_FP16=low == torch.float16,
                num_warps=4,
            )
        return KMeansResult(labels=labels, centroids=cent, sizes=sizes)
"""

T0 = time.time()
BUDGET_S = float(os.environ.get("KM_BUDGET_S", "250"))
OUT = os.environ.get("OUT", tempfile.gettempdir())
LOG = open(os.path.join(OUT, "kmeans_dev_log.txt"), "a")


def log(msg=""):
    print(msg, flush=True)
    LOG.write(msg + "\n")
    LOG.flush()


def load_old():
    path = os.path.join(tempfile.mkdtemp(), "kmeans_old.py")
    with open(path, "w") as f:
        f.write(OLD_SOURCE.replace('\\"\\"\\"', '"""'))
    spec = importlib.util.spec_from_file_location("kmeans_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kmeans_old"] = mod
    spec.loader.exec_module(mod)
    return mod.TritonKMeans


SMOKE = not torch.cuda.is_available()  # CPU smoke test of this script under TRITON_INTERPRET=1 (tiny sizes)
DEV = "cpu" if SMOKE else "cuda"


def clustered(groups, n, d, seed, dtype=torch.bfloat16):
    """Points around 1,500 prototypes per group with skewed popularity (as benchmarks/attention.py clustered_qkv)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.empty(groups, n, d, dtype=dtype, device=DEV)
    for h in range(groups):
        centers = torch.randn(1500, d, generator=g, device=DEV)
        pop = torch.exp(torch.randn(1500, generator=g, device=DEV))
        lab = torch.multinomial(pop, n, replacement=True, generator=g)
        x[h] = (1.6 * centers[lab] + 0.6 * torch.randn(n, d, generator=g, device=DEV)).to(dtype)
    return x


def sync():
    if not SMOKE:
        torch.cuda.synchronize()


def time_ms(fn, reps=30):
    if SMOKE:
        t = time.time()
        fn()
        return (time.time() - t) * 1e3, (time.time() - t) * 1e3
    fn()
    sync()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2], ts[0]


def main():
    from sparseattn.clustering import TorchKMeans, init_centroids
    from sparseattn.clustering.triton_kmeans import TritonKMeans

    quick = "--quick" in sys.argv
    Old = load_old()
    log(f"device {'cpu (smoke)' if SMOKE else torch.cuda.get_device_name()}  torch {torch.__version__}")
    G, N, D = (2, 200, 32) if SMOKE else (40, 75600, 128)
    q = clustered(G, N, D, seed=0)
    k = clustered(G, N, D, seed=1)
    new_cfgs = [  # (label, kwargs); run 2 (run 1's full sweep: see the report)
        ("new 128/64 w4 s4 packed (default)", {}),
        ("new 128/64 w4 s4 exact argmin", dict(_argmin="exact")),
        ("new 128/64 w4 s4 packed, no fold", dict(_fold=False)),
        ("new 128/64 w4 s3 packed", dict(num_stages=3)),
        ("new 64/128 w4 s4 packed", dict(block_points=64, block_centroids=128, num_warps=4)),
        ("new 256/64 w8 s4 packed", dict(block_points=256, block_centroids=64, num_warps=8)),
        ("new 128/64 w4 s4 packed, no inline lop3", dict(_asm=False)),
        ("new 128/64 w4 s4 packed (default, again)", {}),
    ]
    if quick:
        new_cfgs = new_cfgs[:3]
    rows = []
    for name, x, c in (("k", k, 70 if SMOKE else 1000), ("q", q, 20 if SMOKE else 300)):
        init = init_centroids(x[:, ::(1 if SMOKE else 4)].float(), c, "random", seed=1)
        cent = TritonKMeans().fit(x, init, 10).centroids  # warm centroids, as the SVG2 cache holds them
        sync()
        variants = [("old default", Old(), True), ("old default, assign only", Old(_accumulate=False), False)]
        variants += [(lab, TritonKMeans(**kw), True) for lab, kw in new_cfgs]
        variants += [("new default, assign only", TritonKMeans(_accumulate=False), False)]
        variants += [("old default (again)", Old(), True)]
        for lab, km, full in variants:
            if time.time() - T0 > BUDGET_S:
                log(f"  (time budget reached: skipped {name} {lab})")
                continue
            try:
                t_c = time.time()
                km.fit(x, cent, 1)
                sync()
                compile_s = time.time() - t_c
                one, best = time_ms(lambda: km.fit(x, cent, 1))
                two = float("nan")
                if full and (lab.startswith("old default") or "(default)" in lab):
                    two, _ = time_ms(lambda: km.fit(x, cent, 2, tol=1e-4))
                rows.append((name, c, lab, one, best, two))
                log(f"  {name} C={c:5d} {lab:40} 1 iter {one:7.3f} ms (min {best:.3f})  2 iter tol {two:7.3f}"
                    f"  [first call {compile_s:.1f} s]")
            except Exception as exc:  # a shape that does not compile or fit: report, go on
                log(f"  {name} C={c} {lab}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
        # agreement with the float32 reference after one iteration from the same centroids (4 groups)
        ref = TorchKMeans().fit(x[:4].float(), cent[:4], 1)
        checks = [("old bf16", Old()), ("old ieee", Old(precision="ieee"))]
        checks += [(lab, TritonKMeans(**kw)) for lab, kw in new_cfgs[:3]]
        checks += [("new ieee", TritonKMeans(precision="ieee")), ("new fp16 in", TritonKMeans())]
        for lab, km in checks:
            if time.time() - T0 > BUDGET_S + 20:
                break
            xi = x[:4].to(torch.float16) if "fp16" in lab else x[:4]
            got = km.fit(xi, cent[:4], 1)
            agree = float((got.labels == ref.labels).float().mean())
            cerr = float((got.centroids - ref.centroids).norm() / ref.centroids.norm())
            sizes_ok = bool(torch.equal(got.sizes.sum(-1), torch.full((4,), N, device=DEV)))
            log(f"  agreement {name} C={c} {lab:40} labels {agree:.5%}  centroid rel err {cerr:.1e}  sizes ok {sizes_ok}")
        # tol > 0 with a huge tol: the second iteration must do nothing (device-side stop)
        km = TritonKMeans()
        a, b = km.fit(x[:2], cent[:2], 1), km.fit(x[:2], cent[:2], 5, tol=1e9)
        log(f"  tol stop {name}: labels equal {bool(torch.equal(a.labels, b.labels))}, "
            f"centroids equal {bool(torch.equal(a.centroids, b.centroids))}")
    log("\n| clusters | variant | ms / 1 iter (median) | min | 2 iters, tol 1e-4 |")
    log("| --- | --- | --- | --- | --- |")
    for name, c, lab, one, best, two in rows:
        log(f"| {name} {c} | {lab} | {one:.3f} | {best:.3f} | {two:.3f} |")
    log(f"total {time.time() - T0:.0f} s")


if __name__ == "__main__":
    main()
