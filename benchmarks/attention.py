"""SVG2 attention on one GPU: our Triton kernels against SDPA (cuDNN, flash) and FlexAttention, in one process.

    PYTHONPATH=$PWD python benchmarks/attention.py                 # everything (Wan 2.1 and HunyuanVideo 720p)
    PYTHONPATH=$PWD python benchmarks/attention.py --shapes wan --sections kernel,overhead --quick

Sections: ``check`` (correctness at realistic shapes against the PyTorch references), ``dense`` (SDPA cuDNN/flash),
``kernel`` (FlexAttention and ours at densities near 10/15/30%), ``sweep`` (our launch configurations),
``kmeans`` (flash k-means), ``overhead`` (SVG2's pieces at the Wan shape), ``whole`` (the full SVG2 call through
`Strategy`). Tables go to stdout; with ``--out DIR`` (default: $OUT when set) every number also goes to
DIR/results.json.

Data: per head, tokens are drawn around random prototypes with skewed popularity (a shared latent for q and k plus
noise), so k-means finds clusters of realistic, uneven sizes. Key blocks are chosen per query block by centroid score
(SVG2's estimate) until the chosen keys reach the target fraction of N, so the density is controlled.

Effective TFLOP/s = 4·D·(selected (query, key) pairs) / time; for dense attention all N² pairs. "waste" is the share
of computed tile pairs (row tiles × key tiles) that fall outside the selection; "key-side" counts only each row
tile's real query rows, so what it leaves is the padding of each key list's last tile (what packing the selected keys
into full tiles bounds), and the difference is the padding rows of each query block's last row tile.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import replace

import torch

SHAPES = {
    "wan": dict(name="Wan2.1-720p", B=1, H=40, N=75600, D=128, text=0, cq=300, ck=1000, grid=(21, 45, 80)),
    "hunyuan": dict(name="HunyuanVideo-720p", B=1, H=24, N=118800 + 256, D=128, text=256, cq=400, ck=1000,
                    grid=(33, 45, 80)),
}
TINY_SHAPES = {  # --tiny: a smoke test of every code path (CPU under TRITON_INTERPRET=1, or any GPU)
    "wan": dict(name="tiny-wan", B=1, H=2, N=600, D=64, text=0, cq=6, ck=20, grid=(3, 10, 20)),
    "hunyuan": dict(name="tiny-hunyuan", B=1, H=2, N=616, D=64, text=16, cq=8, ck=20, grid=(3, 10, 20)),
}
DENSITIES = (0.10, 0.15, 0.30)
RESULTS: dict = {}
DEVICE = "cuda"


def empty_cache():
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def log(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------------
def time_cuda(fn, reps: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    if DEVICE != "cuda":
        for _ in range(min(reps, 2)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def reps_for(ms_estimate: float, budget_ms: float = 1500.0, lo: int = 3, hi: int = 30) -> int:
    return int(max(lo, min(hi, budget_ms // max(ms_estimate, 1e-3))))


def timed(fn, budget_ms: float = 1500.0) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    first = (time.perf_counter() - t0) * 1e3
    return time_cuda(fn, reps=reps_for(first, budget_ms), warmup=1)


# ----------------------------------------------------------------------------------------------------------------
# data and layouts
# ----------------------------------------------------------------------------------------------------------------
def clustered_qkv(shape: dict, seed: int = 0, dtype=torch.bfloat16):
    """q, k, v [B, H, N, D] around per-head prototypes (skewed popularity); text tokens (if any) are plain noise."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    b, h, n, d, text = shape["B"], shape["H"], shape["N"], shape["D"], shape["text"]
    video = n - text
    protos = 1500
    q = torch.empty(b, h, n, d, dtype=dtype, device=DEVICE)
    k = torch.empty_like(q)
    v = torch.empty_like(q)
    for hi in range(h):
        centers = torch.randn(protos, d, generator=g, device=DEVICE)
        popularity = torch.exp(1.0 * torch.randn(protos, generator=g, device=DEVICE))
        labels = torch.multinomial(popularity, b * video, replacement=True, generator=g)
        latent = centers[labels].reshape(b, video, d)
        q[:, hi, :video] = (1.6 * latent + 0.6 * torch.randn(b, video, d, generator=g, device=DEVICE)).to(dtype)
        k[:, hi, :video] = (1.6 * latent + 0.6 * torch.randn(b, video, d, generator=g, device=DEVICE)).to(dtype)
        v[:, hi] = torch.randn(b, n, d, generator=g, device=DEVICE).to(dtype)
        if text:
            q[:, hi, video:] = torch.randn(b, text, d, generator=g, device=DEVICE).to(dtype)
            k[:, hi, video:] = torch.randn(b, text, d, generator=g, device=DEVICE).to(dtype)
    return q, k, v


def kmeans_layout(q, k, shape, clusterer, iters_cold=30):
    """Video tokens clustered (q: cq clusters, k: ck clusters) with `clusterer`; returns (Layout, warm centroids)."""
    from sparseattn.clustering import init_centroids
    from sparseattn.interfaces import Layout
    from sparseattn.strategy import append_text_layout

    b, h, n, d = q.shape
    video = n - shape["text"]
    out = {}
    for name, x, c in (("q", q, shape["cq"]), ("k", k, shape["ck"])):
        pts = x[:, :, :video].reshape(b * h, video, d)
        init = init_centroids(pts[:, :: max(1, video // 20000)].float(), c, "random", seed=1)
        res = clusterer.fit(pts, init, iters_cold)
        order = torch.argsort(res.labels, dim=-1, stable=True).reshape(b, h, video)
        out[name] = (order, res.sizes.reshape(b, h, c), res.centroids.reshape(b, h, c, d), res.centroids)
    layout = Layout(out["q"][0], out["k"][0], out["q"][1], out["k"][1], out["q"][2], out["k"][2])
    if shape["text"]:
        layout = append_text_layout(layout, q, k, shape["text"])
    return layout, (out["q"][3], out["k"][3])


def select_by_density(layout, density: float, text: int):
    """Per query block, key blocks by descending centroid score until their tokens reach density·N (≥ 1 block)."""
    from sparseattn.identifiers import CentroidIdentifier
    from sparseattn.interfaces import BlockMask

    scores = CentroidIdentifier().score(None, None, layout)  # uses the centroids and sizes only
    k_sizes = layout.k_sizes.to(torch.float32)
    n = float(layout.k_sizes[0, 0].sum())
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    sizes_sorted = k_sizes.unsqueeze(-2).expand_as(scores).gather(-1, order)
    before = sizes_sorted.cumsum(-1) - sizes_sorted
    keep = before < density * n
    keep[..., 0] = True
    selected = torch.zeros_like(keep).scatter_(-1, order, keep)
    if text:  # the text block attends everything and is attended by everything
        selected[..., -1, :] = True
        selected[..., :, -1] = True
    return BlockMask(selected)


def fixed_block_layout(b, h, n, d, block, device=None):
    from sparseattn.interfaces import Layout

    device = device or DEVICE
    m = -(-n // block)
    sizes = torch.full((b, h, m), block, dtype=torch.long, device=device)
    sizes[..., -1] = n - block * (m - 1)
    zeros = torch.zeros(b, h, m, d, device=device)
    return Layout(None, None, sizes, sizes.clone(), zeros, zeros.clone())


# ----------------------------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------------------------
def section_ceilings():
    a = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    bm = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    ms = time_cuda(lambda: a @ bm, reps=10)
    mm = 2 * 8192**3 / ms / 1e9
    x = torch.empty(1 << 30, dtype=torch.uint8, device=DEVICE).random_()
    y = torch.empty_like(x)
    ms_c = time_cuda(lambda: y.copy_(x), reps=10)
    tbps = 2 * x.numel() / ms_c / 1e9  # bytes read + written per ms / 1e9 = TB/s
    RESULTS["ceilings"] = {"matmul_tflops": mm, "copy_TBps": tbps}
    log(f"ceilings: bf16 8192^3 matmul {mm:.0f} TFLOP/s; device copy {tbps:.2f} TB/s (read+write)")
    del a, bm, x, y


def rel_err(out, ref):
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def kernel_variants():
    """(label, kernel) of every way we run the sparse kernel: the default, the other permutation modes, Gluon."""
    from sparseattn.kernels.triton_attention import TritonBlockSparse

    variants = [("triton", TritonBlockSparse())]
    try:
        from sparseattn.kernels.gluon_attention import GluonBlockSparse
        from sparseattn.kernels.gluon_ws_attention import GluonWSBlockSparse

        probe = (torch.empty(1, 1, 128, 128, dtype=torch.bfloat16, device=DEVICE),) * 3
        for label, kernel in (("gluon_ws", GluonWSBlockSparse()), ("gluon", GluonBlockSparse())):
            if DEVICE == "cuda" and not kernel.why_unsupported(*probe):
                variants.append((label, kernel))
        if len(variants) > 1:  # gluon_ws reads k, v through their order by default (fuse_permutation qkv)
            variants += [("gluon_ws, fuse q", GluonWSBlockSparse(fuse_permutation="q")),
                         ("gluon_ws, 32-row tails", GluonWSBlockSparse(short_tail_block_m=32))]
    except ImportError:
        pass
    variants += [("triton, fuse none", TritonBlockSparse(fuse_permutation="none")),
                 ("triton, fuse qkv", TritonBlockSparse(fuse_permutation="qkv"))]
    return variants


def section_check(shape_keys):
    """Our kernel against the PyTorch block-sparse reference on a few heads at realistic sizes."""
    from sparseattn.clustering.triton_kmeans import TritonKMeans
    from sparseattn.interfaces import BlockMask, Layout
    from sparseattn.kernels.reference import TorchBlockSparse
    from sparseattn.kernels.triton_attention import TritonBlockSparse
    from sparseattn.interfaces import gather_tokens, scatter_tokens

    rows = []
    for key in shape_keys:
        shape = dict(SHAPES[key])
        heads = 2
        shape["H"] = heads
        q, k, v = clustered_qkv(shape, seed=11)
        layout, _ = kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=10)
        for dtype in (torch.bfloat16, torch.float16):
            qd, kd, vd = (t.to(dtype) for t in (q, k, v))
            mask = select_by_density(layout, 0.15, shape["text"])
            qg, kg, vg = (gather_tokens(t, o) for t, o in ((qd, layout.q_order), (kd, layout.kv_order),
                                                           (vd, layout.kv_order)))
            ref_p = TorchBlockSparse().run(TorchBlockSparse().plan(layout, mask, qg), qg, kg, vg)
            ref = scatter_tokens(ref_p, layout.q_order)  # the reference in the original order
            for label, kern in kernel_variants():
                qp, kp, vp = kern.permute(qd, kd, vd, layout)
                out = kern.unpermute(kern.run(kern.plan(layout, mask, qp), qp, kp, vp), layout)
                ok_perm = torch.equal(kp, kg) and torch.equal(vp, vg) if kp is not kd else True
                rows.append((key, str(dtype).replace("torch.", ""), f"k-means 15%, {label}", rel_err(out, ref),
                             ok_perm, True, bool(torch.isfinite(out).all())))
            kern = TritonBlockSparse(fuse_permutation="none")
            qp, kp, vp = kern.permute(qd, kd, vd, layout)
            ok_perm = torch.equal(qp, qg) and torch.equal(kp, kg) and torch.equal(vp, vg)
            out_p = kern.run(kern.plan(layout, mask, qp), qp, kp, vp)
            ok_unperm = torch.equal(kern.unpermute(out_p, layout), scatter_tokens(out_p, layout.q_order))
            rows.append((key, str(dtype).replace("torch.", ""), "permute / unpermute kernels exact", 0.0, ok_perm,
                         ok_unperm, True))
        # edge cases at realistic N: one block with every token; single-token and empty blocks; select all / one
        b, h, n, d = q.shape
        edge_layouts = []
        sizes_all = torch.zeros(b, h, 5, dtype=torch.long, device=DEVICE)
        sizes_all[..., 2] = n
        cent = torch.zeros(b, h, 5, d, device=DEVICE)
        edge_layouts.append(("one block = all tokens", Layout(None, None, sizes_all, sizes_all.clone(), cent, cent),
                             torch.ones(b, h, 5, 5, dtype=torch.bool, device=DEVICE)))
        m = 700 if n > 5000 else 40
        g = torch.Generator(device=DEVICE).manual_seed(3)
        cuts = torch.sort(torch.randint(0, n + 1, (b, h, m - 1), device=DEVICE, generator=g), dim=-1).values
        cuts[..., : m // 14] = cuts[..., :1]  # many empty blocks
        edges = torch.cat([torch.zeros(b, h, 1, dtype=torch.long, device=DEVICE), cuts,
                           torch.full((b, h, 1), n, dtype=torch.long, device=DEVICE)], -1)
        sizes = edges.diff(dim=-1)
        one_tok = m // 7  # becomes a one-token block; the largest block absorbs the rest
        delta = sizes[..., one_tok:one_tok + 1] - 1
        sizes[..., one_tok] = 1
        sizes.scatter_add_(-1, sizes.argmax(-1, keepdim=True), delta)
        cent = torch.zeros(b, h, m, d, device=DEVICE)
        lay = Layout(None, None, sizes, sizes.clone(), cent, cent)
        one = torch.zeros(b, h, m, m, dtype=torch.bool, device=DEVICE)
        one[..., torch.arange(m), torch.randint(0, m, (m,), device=DEVICE, generator=g)] = True
        edge_layouts.append(("random blocks, one key block each", lay, one))
        rnd = torch.rand(b, h, m, m, device=DEVICE, generator=g) < 0.2
        rnd[..., :5, :] = True  # some query blocks select every key block
        edge_layouts.append(("random blocks incl. empty/1-token, 20%+all", lay, rnd))
        fixed = fixed_block_layout(b, h, n, d, 128)
        mf = fixed.q_sizes.shape[-1]
        edge_layouts.append(("fixed 128-blocks (identity order), 15%", fixed,
                             torch.rand(b, h, mf, mf, device=DEVICE, generator=g) < 0.15))
        for name, lay, sel in edge_layouts:
            mask = BlockMask(sel)
            ref = TorchBlockSparse().run(TorchBlockSparse().plan(lay, mask, q), q, k, v)
            for label, kern in kernel_variants()[:2]:
                out = kern.run(kern.plan(lay, mask, q), q, k, v)
                rows.append((key, "bfloat16", f"{name}, {label}", rel_err(out, ref), True, True,
                             bool(torch.isfinite(out).all())))
        del q, k, v
        empty_cache()
    log("\n## Correctness at realistic N (2 heads), ours vs kernels/reference.py TorchBlockSparse (fp32 math)")
    log(f"{'shape':8} {'dtype':9} {'case':44} {'rel err':>9} perm unperm finite")
    for r in rows:
        log(f"{r[0]:8} {r[1]:9} {r[2]:44} {r[3]:9.2e} {str(r[4]):5} {str(r[5]):6} {r[6]}")
    RESULTS["check"] = [list(map(str, r)) for r in rows]


def dense_times(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    if DEVICE != "cuda":
        out["math (cpu)"] = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        return out
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                out[name] = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 2500)
        except Exception as exc:  # a backend may be unavailable
            log(f"  SDPA {name}: unavailable ({type(exc).__name__}: {str(exc)[:200]})")
    return out


def flex_time(q, k, v, density: float, flex):
    from torch.nn.attention.flex_attention import BlockMask

    b, h, n, d = q.shape
    nb = -(-n // 128)
    count = max(1, round(density * nb))
    g = torch.Generator(device=DEVICE).manual_seed(5)
    idx = torch.rand(b, h, nb, nb, device=DEVICE, generator=g).argsort(-1).to(torch.int32)
    idx[..., :count] = idx[..., :count].sort(-1).values
    num = torch.full((b, h, nb), count, dtype=torch.int32, device=DEVICE)
    zero = torch.zeros_like(num)
    mask = BlockMask.from_kv_blocks(zero, idx, num, idx, BLOCK_SIZE=128, seq_lengths=(n, n))
    ms = timed(lambda: flex(q, k, v, block_mask=mask), 2000)
    # selected pairs, exactly: the last block on each side has only n − 128·(nb − 1) tokens
    last = n - (nb - 1) * 128
    rows_per_block = torch.full((nb,), 128.0, device=DEVICE)
    rows_per_block[-1] = last
    has_last = (idx[..., :count] == nb - 1).any(-1).to(torch.float64)  # [b, h, nb]
    keys = count * 128.0 - (128.0 - last) * has_last
    pairs = float((keys * rows_per_block.to(torch.float64)).sum())
    return ms, pairs / (b * h * n * n), pairs


def section_dense_and_kernel(shape_keys, quick=False, sweep=False):
    from sparseattn.clustering.triton_kmeans import TritonKMeans

    flex = None
    try:
        if DEVICE != "cuda":
            raise RuntimeError("FlexAttention is timed on CUDA only")
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
    except Exception as exc:
        log(f"FlexAttention unavailable: {exc}")
    for key in shape_keys:
        shape = SHAPES[key]
        res = RESULTS.setdefault(key, {})
        q, k, v = clustered_qkv(shape)
        b, h, n, d = q.shape
        dense_pairs = b * h * n * n
        log(f"\n## {shape['name']}: B={b} H={h} N={n} D={d}, bf16; q clusters {shape['cq']}, k clusters {shape['ck']}")
        dense = dense_times(q, k, v)
        res["dense_ms"] = dense
        ref_ms = dense.get("cudnn") or dense.get("flash") or next(iter(dense.values()), None)
        rows = []
        for name, ms in dense.items():
            rows.append((f"SDPA {name} (dense)", 1.0, ms, 4 * d * dense_pairs / ms / 1e9, None, None))
        t0 = time.perf_counter()
        layout, _ = kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
        sync()
        log(f"  k-means layout (20 iterations from random points, q and k): {time.perf_counter() - t0:.1f} s")
        qs = layout.q_sizes.float()
        log(f"  query block sizes: mean {qs.mean():.0f}, median {qs.median():.0f}, max {qs.max():.0f}, "
            f"empty {(qs == 0).float().mean():.1%}; key block sizes: mean {layout.k_sizes.float().mean():.0f}, "
            f"max {layout.k_sizes.max()}, empty {(layout.k_sizes == 0).float().mean():.1%}")
        variants = kernel_variants()
        inputs = {label: kern.permute(q, k, v, layout) for label, kern in variants}
        for density in DENSITIES:
            if flex is not None:
                try:
                    ms, dens, pairs = flex_time(q, k, v, density, flex)
                    rows.append((f"FlexAttention 128-blocks {density:.0%}", dens, ms, 4 * d * pairs / ms / 1e9, None,
                                 None))
                except Exception as exc:
                    log(f"  FlexAttention {density}: failed ({type(exc).__name__}: {str(exc)[:300]})")
            mask = select_by_density(layout, density, shape["text"])
            dens = float(mask.density(layout).mean())
            for label, kern in variants:
                qp, kp, vp = inputs[label]
                plan_ms = timed(lambda: kern.plan(layout, mask, qp), 500)
                plan = kern.plan(layout, mask, qp)  # (a plan is valid until the next plan() of the same kernel)
                ms = timed(lambda: kern.run(plan, qp, kp, vp), 2000)
                computed, useful = kern.computed_pairs(plan).tolist()
                waste = 1 - useful / computed
                key_waste = 1 - useful / kern.computed_pairs(plan, real_rows=True)[0].item()
                rows.append((f"ours ({label}) {density:.0%}", dens, ms, 4 * d * useful / ms / 1e9, waste, key_waste))
                res.setdefault("ours", []).append(dict(kernel=label, target=density, density=dens, ms=ms,
                                                       plan_ms=plan_ms, useful_pairs=useful, computed_pairs=computed))
                log(f"  ours ({label}) @ {density:.0%}: plan {plan_ms:.2f} ms, run {ms:.2f} ms, tile waste {waste:.2%} "
                    f"(key tiles alone {key_waste:.2%})")
                kern._buffers.clear()
        del inputs
        # our kernel on one block holding every token: its dense efficiency, free of any waste
        from sparseattn.interfaces import BlockMask

        one = fixed_block_layout(b, h, n, d, n)
        for label, kern in variants[:3]:
            plan = kern.plan(one, BlockMask(torch.ones(b, h, 1, 1, dtype=torch.bool, device=DEVICE)), q)
            ms = timed(lambda: kern.run(plan, q, k, v), 2500)
            rows.append((f"ours ({label}), dense (one block)", 1.0, ms, 4 * d * dense_pairs / ms / 1e9, 0.0, 0.0))
            kern._buffers.clear()
        kern = variants[0][1]
        qp, kp, vp = kern.permute(q, k, v, layout)
        if sweep and key == "wan":
            section_sweep(key, layout, qp, kp, vp, shape)
        res["table"] = [dict(method=r[0], density=r[1], ms=r[2], tflops=r[3], waste=r[4], key_waste=r[5]) for r in rows]
        log(f"\n{'method':40} {'density':>8} {'time ms':>9} {'eff TFLOP/s':>12} {'vs cuDNN':>9} {'waste':>6} "
            f"{'key-side':>8}")
        cudnn_tf = 4 * d * dense_pairs / ref_ms / 1e9 if ref_ms else float("nan")
        for name, dens, ms, tf, waste, key_waste in rows:
            w = "" if waste is None else f"{waste:6.1%} {key_waste:8.2%}"
            log(f"{name:40} {dens:8.1%} {ms:9.2f} {tf:12.0f} {tf / cudnn_tf:9.3f} {w}")
        del q, k, v, qp, kp, vp, layout
        kern._buffers.clear()
        empty_cache()


def section_sweep(key, layout, qp, kp, vp, shape):
    from sparseattn.kernels.triton_attention import TritonBlockSparse

    d = qp.shape[-1]
    mask = select_by_density(layout, 0.15, shape["text"])
    configs = [
        dict(),  # the defaults
        dict(tail_block_m=0),
        dict(num_stages=3),
        dict(tail_block_n=128),
        dict(block_n=64, num_stages=2),
        dict(block_n=64, num_stages=3),
        dict(block_m=64, block_n=64, num_warps=4, num_stages=3),
        dict(block_m=64, block_n=128, num_warps=4, num_stages=2),
    ]
    log(f"\n  config sweep at 15% ({key}): options → ms, eff TFLOP/s, waste")
    out = []
    for cfg in configs:
        try:
            kern = TritonBlockSparse(**cfg)
            plan = kern.plan(layout, mask, qp)
            ms = timed(lambda: kern.run(plan, qp, kp, vp), 1500)
            computed, useful = kern.computed_pairs(plan).tolist()
            tf = 4 * d * useful / ms / 1e9
            out.append(dict(cfg=cfg, ms=ms, tflops=tf, waste=1 - useful / computed))
            log(f"    {str(cfg):60} → {ms:8.2f} ms {tf:6.0f} TFLOP/s waste {1 - useful / computed:5.1%}")
            kern._buffers.clear()
        except Exception as exc:
            log(f"    {cfg}: failed {type(exc).__name__}: {str(exc)[:200]}")
    RESULTS.setdefault(key, {})["sweep"] = out


def section_kmeans(quick=False):
    """Flash k-means at the Wan shape: one warm iteration for q (300) and k (1000) clusters; configs; vs torch."""
    from sparseattn.clustering import TorchKMeans
    from sparseattn.clustering.triton_kmeans import TritonKMeans

    shape = SHAPES["wan"]
    q, k, _ = clustered_qkv(shape)
    b, h, n, d = q.shape
    res = RESULTS.setdefault("kmeans", {})
    log(f"\n## Flash k-means, Wan shape: G={b * h} groups × N={n} × D={d}")
    _, (cq, ck) = kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
    rows = []
    for name, x, c in (("q (300)", q, cq), ("k (1000)", k, ck)):
        pts = x.reshape(b * h, n, d)
        for label, km, inp in (("bf16, bf16 in (default: assign_kernel auto)", TritonKMeans(), pts),
                               ("bf16, bf16 in, assign_kernel triton", TritonKMeans(assign_kernel="triton"), pts),
                               ("bf16, fp32 in (triton assign)", TritonKMeans(), pts.float()),
                               ("tf32, fp32 in (triton assign)", TritonKMeans(precision="tf32"), pts.float())):
            one = timed(lambda: km.fit(inp, c, 1), 800)
            two = timed(lambda: km.fit(inp, c, 2), 800)
            rows.append((name, label, one, two))
        if not quick:
            # (assign kernel, points, centroids, warps, stages (triton) or register cap (gluon, -1: default))
            configs = [("triton", 128, 64, 4, 4), ("triton", 128, 64, 4, 3), ("gluon", 128, 64, 4, 0),
                       ("gluon", 128, 64, 8, 128), ("gluon", 128, 64, 8, 0), ("gluon", 256, 64, 8, 0)]
            for kern, bp, bc, w, extra in configs:
                opts = dict(assign_kernel=kern, block_points=bp, block_centroids=bc, num_warps=w)
                if kern == "triton":
                    opts.update(num_stages=extra)
                else:
                    opts.update(_maxnreg=extra)
                try:
                    km = TritonKMeans(**opts)
                    one = timed(lambda: km.fit(pts, c, 1), 600)
                    km0 = TritonKMeans(**opts, _accumulate=False)
                    assign = timed(lambda: km0.fit(pts, c, 1), 600)
                    tag = f"s{extra}" if kern == "triton" else f"maxnreg {extra}"
                    rows.append((name, f"{kern} {bp}/{bc}/w{w}/{tag} (2nd col: assignment only)", one, assign))
                except Exception as exc:
                    log(f"  cfg {opts} failed: {str(exc)[:300]}")
        # One more iteration in a fit costs (fit(3) − fit(1)) / 2: the fit's set-up (zeroed sums, the starting
        # centroids' operand copy) and the host's launch of the first kernels are paid once per fit, not per iteration.
        for copies in (1, 2, 4, 8):  # copies of the atomic sums: fewer programs adding into the same address
            km = TritonKMeans(sum_copies=copies)
            one, three = timed(lambda: km.fit(pts, c, 1), 800), timed(lambda: km.fit(pts, c, 3), 800)
            rows.append((name, f"sum_copies {copies}: one more iteration ((3 it − 1 it) / 2; 2nd: 1-it fit)",
                         (three - one) / 2, one))
        if DEVICE == "cuda":
            from torch.profiler import ProfilerActivity, profile

            km = TritonKMeans()  # the default (sum_copies auto), not the last row's copies
            km.fit(pts, c, 3)  # compiled before the profile
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                km.fit(pts, c, 3)
                torch.cuda.synchronize()
            log(f"  kernels of one 3-iteration fit with the default clusterer, {name}:\n"
                + prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=50))
        torch_ms = timed(lambda: TorchKMeans().fit(pts.float(), c, 1), 500)
        rows.append((name, "torch reference (fp32)", torch_ms, float("nan")))
        # agreement with the fp32 reference after one iteration from the same centroids
        ref = TorchKMeans().fit(pts[:4].float(), c[:4], 1)
        for label, km in (("bf16 (auto)", TritonKMeans()), ("bf16 triton", TritonKMeans(assign_kernel="triton")),
                          ("ieee", TritonKMeans(precision="ieee"))):
            got = km.fit(pts[:4], c[:4], 1)
            agree = float((got.labels == ref.labels).float().mean())
            cerr = float((got.centroids - ref.centroids).norm() / ref.centroids.norm())
            rows.append((name, f"agreement {label} vs torch: labels {agree:.4%}, centroid rel err {cerr:.1e}",
                         float("nan"), float("nan")))
    log(f"{'clusters':10} {'variant':60} {'1 iter ms':>10} {'2 iter ms':>10}")
    for r in rows:
        log(f"{r[0]:10} {r[1]:60} {r[2]:10.3f} {r[3]:10.3f}")
    res["rows"] = [list(map(str, r)) for r in rows]
    del q, k
    empty_cache()


def section_overhead():
    """SVG2's pieces at the Wan shape, warm, each timed alone; compared with cuDNN dense attention."""
    from sparseattn.budgets import FixedDensity, TopP
    from sparseattn.clustering.triton_kmeans import TritonKMeans
    from sparseattn.identifiers import CentroidIdentifier
    from sparseattn.interfaces import Layout
    from sparseattn.kernels.reference import AutoKernel
    from sparseattn.kernels.triton_attention import TritonBlockSparse

    shape = SHAPES["wan"]
    q, k, v = clustered_qkv(shape)
    b, h, n, d = q.shape
    dense = dense_times(q, k, v)
    cudnn = dense.get("cudnn") or dense.get("flash") or next(iter(dense.values()))
    km = TritonKMeans()
    layout, (cq, ck) = kmeans_layout(q, k, shape, km, iters_cold=20)
    qx, kx = q.reshape(b * h, n, d), k.reshape(b * h, n, d)
    kern = AutoKernel().choose(q, k, v)  # the kernel the default pipeline runs (gluon_ws on Hopper)
    if not isinstance(kern, TritonBlockSparse):
        kern = TritonBlockSparse()  # on CPU, auto picks the torch reference; time the Triton path (interpreted)
    fuse = kern.fuse_permutation
    ident = CentroidIdentifier()
    budget = TopP(p=0.9, min_ratio=0.1)
    rows = []

    def kmeans_both():
        rq = km.fit(qx, cq, 2, tol=1e-4)
        rk = km.fit(kx, ck, 2, tol=1e-4)
        return rq, rk

    rows.append(("k-means q+k, 2 warm iterations (auto assign, tol on device)", timed(kmeans_both)))
    rq, rk = kmeans_both()
    rows.append(("  of which q only", timed(lambda: km.fit(qx, cq, 2, tol=1e-4))))
    rows.append(("  of which k only", timed(lambda: km.fit(kx, ck, 2, tol=1e-4))))

    def orders():  # as the kmeans permuter does it: int16 keys (2 radix passes)
        return (torch.argsort(rq.labels.to(torch.int16), dim=-1, stable=True),
                torch.argsort(rk.labels.to(torch.int16), dim=-1, stable=True))

    rows.append(("token orders (stable argsort of int16 labels, q and k)", timed(orders)))
    qo, ko = orders()
    lay = Layout(qo.reshape(b, h, n), ko.reshape(b, h, n), rq.sizes.reshape(b, h, -1), rk.sizes.reshape(b, h, -1),
                 rq.centroids.reshape(b, h, -1, d), rk.centroids.reshape(b, h, -1, d))
    rows.append(("scoring (centroid softmax, fp32)", timed(lambda: ident.score(q, k, lay))))
    scores = ident.score(q, k, lay)
    rows.append(("selection (top-p 0.9, min_ratio 0.1; auto: triton, no sort)", timed(lambda: budget.select(scores,
                                                                                                       lay))))
    mask = budget.select(scores, lay)
    density = float(mask.density(lay).mean())
    permute_label = {"q": "permute k, v (one launch; q is read through its order)",
                     "qkv": f"permute (none: {kern.name} reads q, k, v through their orders)",
                     "none": "permute q, k, v (one launch)"}[fuse]
    rows.append((permute_label, timed(lambda: kern.permute(q, k, v, lay))))
    qp, kp, vp = kern.permute(q, k, v, lay)
    plan = kern.plan(lay, mask, qp)
    out = kern.run(plan, qp, kp, vp)
    rows.append(("un-permute output" + (" (none: rows are written in place)" if fuse != "none" else ""),
                 timed(lambda: kern.unpermute(out, lay))))
    overhead = sum(ms for name, ms in rows if not name.startswith("  "))
    plan_ms = timed(lambda: kern.plan(lay, mask, qp))
    if DEVICE == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            kern.plan(lay, mask, qp)
            torch.cuda.synchronize()
        log("  kernels of one plan:\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=12,
                                                                   max_name_column_width=50))
    plan = kern.plan(lay, mask, qp)
    attn = timed(lambda: kern.run(plan, qp, kp, vp))
    copies = TritonBlockSparse(fuse_permutation="none")
    kv_copy = replace(kern, fuse_permutation="q")  # the same kernel on k, v copied into the key order
    qk, kk, vk = kv_copy.permute(q, k, v, lay)
    kv_plan = kv_copy.plan(lay, mask, qk)
    kv_attn = timed(lambda: kv_copy.run(kv_plan, qk, kk, vk))
    km_triton = TritonKMeans(assign_kernel="triton")
    sorted_top_p = TopP(p=0.9, min_ratio=0.1, backend="torch")
    by_sort = sorted_top_p.select(scores, lay).selected
    # rows keeping a different number of blocks (tied blocks may be swapped: the sort leaves their order open)
    differ = int((by_sort.sum(-1) != mask.selected.sum(-1)).sum())
    by_radix, by_argsort = FixedDensity(0.15), FixedDensity(0.15, backend="torch")
    same = torch.equal(by_radix.select(scores, lay).selected, by_argsort.select(scores, lay).selected)
    comparison = [
        ("  selection, fixed density 0.15 (auto: Triton radix select)", timed(lambda: by_radix.select(scores, lay))),
        (f"  selection, fixed density 0.15, torch argsort (same mask: {same})",
         timed(lambda: by_argsort.select(scores, lay))),
        (f"  selection with torch's sort ({differ} of {by_sort[..., 0].numel()} rows keep another count)",
         timed(lambda: sorted_top_p.select(scores, lay))),
        ("  k-means q+k with the Triton assignment", timed(lambda: (km_triton.fit(qx, cq, 2, tol=1e-4),
                                                                    km_triton.fit(kx, ck, 2, tol=1e-4)))),
        ("  permute k, v into the key order (fuse_permutation q, one launch)",
         timed(lambda: kv_copy.permute(q, k, v, lay))),
        (f"  {kern.name} kernel on those copies (this mask; above: {attn:.3f} ms)", kv_attn),
        ("  permute q, k, v (fuse_permutation none)", timed(lambda: copies.permute(q, k, v, lay))),
        ("  un-permute output (fuse_permutation none)", timed(lambda: copies.unpermute(out, lay))),
    ]
    log(f"\n## SVG2 overhead at the Wan shape (top-p 0.9 / min 0.1 gives density {density:.1%}); "
        f"cuDNN dense {cudnn:.1f} ms")
    log(f"{'piece':58} {'ms':>8} {'% of cuDNN dense':>17}")
    for name, ms in rows:
        log(f"{name:58} {ms:8.3f} {100 * ms / cudnn:16.2f}%")
    log(f"{'total overhead (the pieces above)':58} {overhead:8.3f} {100 * overhead / cudnn:16.2f}%")
    log(f"{'plan (key lists + work items)':58} {plan_ms:8.3f} {100 * plan_ms / cudnn:16.2f}%")
    log(f"{'total overhead + plan':58} {overhead + plan_ms:8.3f} {100 * (overhead + plan_ms) / cudnn:16.2f}%")
    log(f"{'sparse attention kernel (' + kern.name + ', fuse ' + fuse + ', this mask)':58} {attn:8.3f} "
        f"{100 * attn / cudnn:16.2f}%")
    log("for comparison (not counted above):")
    for name, ms in comparison:
        log(f"{name:58} {ms:8.3f} {100 * ms / cudnn:16.2f}%")
    rows += comparison + [("plan (key lists + work items)", plan_ms)]
    RESULTS["overhead"] = dict(rows=rows, total_ms=overhead, cudnn_ms=cudnn, density=density, attn_ms=attn)
    del q, k, v, qp, kp, vp, qk, kk, vk
    kern._buffers.clear()
    kv_copy._buffers.clear()
    empty_cache()


def graph_replay(strategy, q, k, v, ctx, cudnn, ref):
    """One warm call captured in a CUDA graph and replayed: the same GPU work without Python's launch overhead (the
    call has no host synchronisation, so it captures). Returns (density, ms, speedup, rel err) or None on failure.
    Replays reuse the captured addresses: the centroid cache the graph reads is the one present at capture."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs recommends
            for _ in range(2):
                strategy(q, k, v, ctx)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = strategy(q, k, v, ctx)
        graph.replay()
        sync()
        ms = timed(graph.replay, 3000)
        density = float(strategy.plan(q, k, ctx).density.mean())
        return density, ms, cudnn / ms, rel_err(out, ref)
    except Exception as exc:  # report, keep the rest of the benchmark
        log(f"  CUDA graph capture failed: {type(exc).__name__}: {str(exc)[:400]}")
        return None


def section_whole(budgets=("density",)):
    """The whole SVG2 call through Strategy (warm centroids), at the Wan shape, vs cuDNN dense.

    k-means runs with tol 0, so both warm iterations always run, as they do when the input changes from call to
    call: the same input called again and again converges, and with tol 1e-4 its second iteration would stop early
    (the device-side test), which made the call look faster than a denoising step's."""
    from sparseattn import AttentionContext, load_strategy
    import sparseattn.clustering.triton_kmeans  # noqa: F401  (registers clusterer 'triton')

    shape = SHAPES["wan"]
    q, k, v = clustered_qkv(shape)
    b, h, n, d = q.shape
    dense = dense_times(q, k, v)
    cudnn = dense.get("cudnn") or dense.get("flash") or next(iter(dense.values()))
    rows = []
    specs = {
        "density": {"name": "density", "density": 0.15},
        "top_p": {"name": "top_p", "p": 0.9, "min_ratio": 0.1},
    }
    # kernel auto (gluon_ws on Hopper) for every budget; for the first, also the Triton kernel, the permuted-copies
    # pipeline and, on Hopper, gluon_ws on k, v copied into the key order (fuse q) and with 32-row short tails
    runs = [(bname, specs[bname], "auto", None) for bname in budgets]
    variants = [("triton", "triton"), ({"name": "triton", "fuse_permutation": "none"}, "triton, copies")]
    if DEVICE == "cuda" and torch.cuda.get_device_capability()[0] == 9:
        variants += [({"name": "gluon_ws", "fuse_permutation": "q"}, "gluon_ws, fuse q"),
                     ({"name": "gluon_ws", "short_tail_block_m": 32}, "gluon_ws, 32-row tails")]
    first = budgets[0]
    runs[1:1] = [(first, specs[first], kernel, label) for kernel, label in variants]
    if first == "density":  # the budget's torch backend (argsort) instead of the Triton radix select
        runs.insert(1 + len(variants), (first, {**specs[first], "backend": "torch"}, "auto", "torch sort"))
    for bname, spec, kernel, label in runs:
        strategy = load_strategy(
            "svg2",
            permuter={"name": "kmeans", "q_clusters": shape["cq"], "k_clusters": shape["ck"], "iters_first": 20,
                      "iters_warm": 2, "tol": 0.0, "clusterer": "triton"},
            budget=spec, kernel=kernel,
        )
        label = f"{bname} ({strategy.kernel.choose(q, k, v).name})" if label is None else f"{bname}, {label}"
        strategy.check_inputs = False  # validation reads q, k, v and syncs; not part of the attention path
        ctx = AttentionContext(layer=5, num_layers=40, step=30, num_steps=50, grid=shape["grid"])
        out = strategy(q, k, v, ctx)  # cold: fills the centroid cache
        plan = strategy.plan(q, k, ctx)
        density = float(plan.density.mean())
        ms = timed(lambda: strategy(q, k, v, ctx), 3000)
        kern = strategy.kernel.choose(q, k, v) if kernel == "auto" else strategy.kernel
        qp, kp, vp = kern.permute(q, k, v, plan.layout)
        kplan = kern.plan(plan.layout, plan.mask, qp)
        attn_ms = timed(lambda: kern.run(kplan, qp, kp, vp), 1500)
        del qp, kp, vp, kplan
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        err = rel_err(out, ref)
        rows.append((label, density, ms, cudnn / ms, err, attn_ms))
        if DEVICE == "cuda" and (bname, spec, kernel) == runs[0][:3]:
            graph = graph_replay(strategy, q, k, v, ctx, cudnn, ref)
            if graph is not None:
                rows.append((f"{label}, CUDA graph", *graph, attn_ms))
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                strategy(q, k, v, ctx)
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60)
            log(f"\n  profile of one warm call (budget {bname}, density {density:.1%}):\n{table}")
            RESULTS["whole_profile"] = table
    log(f"\n## Whole SVG2 call (Strategy: k-means 2 warm iterations, centroid scores, budget, kernel as labelled, "
        f"un-permute), Wan shape; cuDNN dense {cudnn:.1f} ms")
    log(f"{'budget (kernel)':34} {'density':>8} {'ms':>9} {'speedup vs cuDNN':>17} {'rel err vs dense':>17} "
        f"{'kernel ms':>10} {'rest ms':>8} {'rest % cuDNN':>12}")
    for r in rows:
        log(f"{r[0]:34} {r[1]:8.1%} {r[2]:9.2f} {r[3]:16.2f}× {r[4]:17.3f} {r[5]:10.2f} {r[2] - r[5]:8.2f} "
            f"{100 * (r[2] - r[5]) / cudnn:11.2f}%")
    RESULTS["whole"] = dict(rows=rows, cudnn_ms=cudnn)
    del q, k, v
    empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="wan,hunyuan")
    parser.add_argument("--sections", default="check,dense,kernel,kmeans,overhead,whole")
    parser.add_argument("--sweep", action="store_true", help="also time several launch configurations")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke test of every code path")
    parser.add_argument("--budgets", default="density,top_p")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    sections = set(args.sections.split(","))
    global DEVICE, SHAPES
    if args.tiny:
        SHAPES = TINY_SHAPES
    if not torch.cuda.is_available():
        DEVICE = "cpu"
    import triton

    name = torch.cuda.get_device_properties(0).name if DEVICE == "cuda" else "cpu (TRITON_INTERPRET)"
    sms = torch.cuda.get_device_properties(0).multi_processor_count if DEVICE == "cuda" else 0
    header = dict(device=name, sms=sms, torch=torch.__version__,
                  triton=triton.__version__, cuda=torch.version.cuda, date=datetime.datetime.now().isoformat(),
                  command=" ".join(sys.argv))
    RESULTS["header"] = header
    log(json.dumps(header))
    steps = [("ceilings", section_ceilings, ())] if DEVICE == "cuda" else []
    if "check" in sections:
        steps.append(("check", section_check, (shapes,)))
    if "dense" in sections or "kernel" in sections:
        steps.append(("kernel", section_dense_and_kernel, (shapes, args.quick, args.sweep)))
    if "kmeans" in sections:
        steps.append(("kmeans", section_kmeans, (args.quick,)))
    if "overhead" in sections:
        steps.append(("overhead", section_overhead, ()))
    if "whole" in sections:
        steps.append(("whole", section_whole, (tuple(args.budgets.split(",")),)))
    for name, fn, fargs in steps:
        t0 = time.perf_counter()
        try:
            fn(*fargs)
        except Exception:
            log(f"section {name} failed:\n{traceback.format_exc()}")
        log(f"[{name}: {time.perf_counter() - t0:.1f} s]")
        empty_cache()
        if args.out:  # after every section, so a run cut short still leaves its numbers
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "results.json"), "w") as handle:
                json.dump(RESULTS, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
