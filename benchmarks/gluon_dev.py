"""Kernel ``gluon`` (Hopper main pass in Gluon) against kernel ``triton`` and cuDNN dense SDPA, in one process.

    PYTHONPATH=$PWD:$PWD/benchmarks python benchmarks/gluon_dev.py [--out DIR] [--skip-timing]

1. Correctness on 2 heads of the Wan shape (N 75,600, D 128): k-means layouts at 15% (bf16 and fp16) and the edge
   layouts of benchmarks/attention.py's check section (one block = all tokens; random blocks with empty and one-token
   blocks, one key block each or 20% + select-all rows; fixed 128-blocks), gluon and triton against the PyTorch
   reference. Stops with exit code 1 when gluon's ‖out − ref‖/‖ref‖ exceeds 1.5e-2 or it writes a non-finite value.
2. Timing at the Wan shape (B 1, H 40, bf16, k-means layouts as in benchmarks/attention.py): cuDNN dense, triton
   and gluon at densities 10/15/30% and one block holding every token; median of CUDA-event timings after warm-up.
   Effective TFLOP/s = 4·D·(selected pairs) / time; "vs cuDNN" is that over cuDNN's dense TFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import attention as A  # benchmarks/attention.py (PYTHONPATH=$PWD:$PWD/benchmarks)

TOL = 1.5e-2


def log(*args):
    print(*args, flush=True)


def check(results: dict) -> bool:
    from sparseattn.clustering.triton_kmeans import TritonKMeans
    from sparseattn.interfaces import BlockMask, Layout
    from sparseattn.kernels.gluon_attention import GluonBlockSparse
    from sparseattn.kernels.reference import TorchBlockSparse
    from sparseattn.kernels.triton_attention import TritonBlockSparse

    dev = A.DEVICE
    shape = dict(A.SHAPES["wan"], H=2)
    q, k, v = A.clustered_qkv(shape, seed=11)
    layout, _ = A.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=10)
    b, h, n, d = q.shape
    cases = []
    for dtype in (torch.bfloat16, torch.float16):
        qd, kd, vd = (t.to(dtype) for t in (q, k, v))
        mask = A.select_by_density(layout, 0.15, 0)
        cases.append((f"k-means 15% {str(dtype)[6:]}", layout, mask, qd, kd, vd))
    # edge layouts at realistic N (as in benchmarks/attention.py section_check)
    sizes_all = torch.zeros(b, h, 5, dtype=torch.long, device=dev)
    sizes_all[..., 2] = n
    cent = torch.zeros(b, h, 5, d, device=dev)
    cases.append(("one block = all tokens", Layout(None, None, sizes_all, sizes_all.clone(), cent, cent),
                  BlockMask(torch.ones(b, h, 5, 5, dtype=torch.bool, device=dev)), q, k, v))
    m = 700
    g = torch.Generator(device=dev).manual_seed(3)
    cuts = torch.sort(torch.randint(0, n + 1, (b, h, m - 1), device=dev, generator=g), dim=-1).values
    cuts[..., : m // 14] = cuts[..., :1]  # many empty blocks
    edges = torch.cat([torch.zeros(b, h, 1, dtype=torch.long, device=dev), cuts,
                       torch.full((b, h, 1), n, dtype=torch.long, device=dev)], -1)
    sizes = edges.diff(dim=-1)
    one_tok = m // 7
    delta = sizes[..., one_tok:one_tok + 1] - 1
    sizes[..., one_tok] = 1
    sizes.scatter_add_(-1, sizes.argmax(-1, keepdim=True), delta)
    cent = torch.zeros(b, h, m, d, device=dev)
    lay = Layout(None, None, sizes, sizes.clone(), cent, cent)
    one = torch.zeros(b, h, m, m, dtype=torch.bool, device=dev)
    one[..., torch.arange(m), torch.randint(0, m, (m,), device=dev, generator=g)] = True
    cases.append(("random blocks, one key block each", lay, BlockMask(one), q, k, v))
    rnd = torch.rand(b, h, m, m, device=dev, generator=g) < 0.2
    rnd[..., :5, :] = True
    rnd[..., 5:10, :] = False  # query blocks with an empty list
    cases.append(("random blocks incl. empty/1-token, 20%+all+none", lay, BlockMask(rnd), q, k, v))
    fixed = A.fixed_block_layout(b, h, n, d, 128)
    mf = fixed.q_sizes.shape[-1]
    cases.append(("fixed 128-blocks, 15%", fixed,
                  BlockMask(torch.rand(b, h, mf, mf, device=dev, generator=g) < 0.15), q, k, v))

    ok = True
    rows = []
    log(f"\n## Correctness, Wan N={n} D={d}, 2 heads: ‖out − ref‖/‖ref‖ against TorchBlockSparse (fp32 math)")
    log(f"{'case':50} {'gluon':>9} {'triton':>9} {'gluon-triton':>12} finite")
    def through(kernel, lay, mask, qq, kk, vv):  # permute, plan, run, unpermute: output in the original order
        qp, kp, vp = kernel.permute(qq, kk, vv, lay)
        return kernel.unpermute(kernel.run(kernel.plan(lay, mask, qp), qp, kp, vp), lay)

    for name, lay, mask, qq, kk, vv in cases:
        ref = through(TorchBlockSparse(), lay, mask, qq, kk, vv)
        out_t = through(TritonBlockSparse(), lay, mask, qq, kk, vv)
        out_g = through(GluonBlockSparse(), lay, mask, qq, kk, vv)
        torch.cuda.synchronize()
        e_g, e_t, e_gt = A.rel_err(out_g, ref), A.rel_err(out_t, ref), A.rel_err(out_g, out_t)
        fin = bool(torch.isfinite(out_g).all())
        rows.append(dict(case=name, gluon=e_g, triton=e_t, gluon_vs_triton=e_gt, finite=fin))
        log(f"{name:50} {e_g:9.2e} {e_t:9.2e} {e_gt:12.2e} {fin}")
        if not fin or not e_g <= TOL:
            ok = False
    results["check"] = rows
    del q, k, v, cases
    torch.cuda.empty_cache()
    return ok


def timing(results: dict) -> None:
    from sparseattn.clustering.triton_kmeans import TritonKMeans
    from sparseattn.interfaces import BlockMask
    from sparseattn.kernels.gluon_attention import GluonBlockSparse
    from sparseattn.kernels.triton_attention import TritonBlockSparse

    shape = A.SHAPES["wan"]
    q, k, v = A.clustered_qkv(shape)
    b, h, n, d = q.shape
    dense_pairs = b * h * n * n
    log(f"\n## Timing, {shape['name']}: B={b} H={h} N={n} D={d}, bf16, on {torch.cuda.get_device_name()}")
    rows = []
    dense = A.dense_times(q, k, v)
    ref_ms = dense.get("cudnn") or dense.get("flash")
    for name, ms in dense.items():
        rows.append((f"SDPA {name} (dense)", 1.0, ms, 4 * d * dense_pairs / ms / 1e9, None))
    t0 = time.perf_counter()
    layout, _ = A.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
    torch.cuda.synchronize()
    log(f"  k-means layout: {time.perf_counter() - t0:.1f} s")
    kern_t, kern_g = TritonBlockSparse(), GluonBlockSparse()
    qp, kp, vp = kern_t.permute(q, k, v, layout)
    cases = [(f"{dens:.0%}", layout, A.select_by_density(layout, dens, 0), qp, kp, vp) for dens in A.DENSITIES]
    one = A.fixed_block_layout(b, h, n, d, n)
    cases.append(("one block (dense)", one, BlockMask(torch.ones(b, h, 1, 1, dtype=torch.bool, device="cuda")),
                  q, k, v))
    for label, lay, mask, qq, kk, vv in cases:
        dens = float(mask.density(lay).mean())
        for name, kern in (("triton", kern_t), ("gluon", kern_g)):
            plan = kern.plan(lay, mask, qq)
            ms = A.timed(lambda: kern.run(plan, qq, kk, vv), 2500)
            computed, useful = kern.computed_pairs(plan).tolist()
            rows.append((f"{name} {label}", dens, ms, 4 * d * useful / ms / 1e9, 1 - useful / computed))
            log(f"  {name} {label}: {ms:.2f} ms")
    cudnn_tf = 4 * d * dense_pairs / ref_ms / 1e9
    log(f"\n{'method':28} {'density':>8} {'time ms':>9} {'eff TFLOP/s':>12} {'vs cuDNN':>9} {'waste':>6}")
    for name, dens, ms, tf, waste in rows:
        w = "" if waste is None else f"{waste:6.1%}"
        log(f"{name:28} {dens:8.1%} {ms:9.2f} {tf:12.0f} {tf / cudnn_tf:9.2f} {w:>6}")
    results["timing"] = [dict(method=r[0], density=r[1], ms=r[2], tflops=r[3], vs_cudnn=r[3] / cudnn_tf, waste=r[4])
                         for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        log("needs a compute-capability-9.0 GPU")
        return 2
    import triton

    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
    log(f"{results}")
    ok = check(results)
    if not ok:
        log("FAIL: gluon is wrong; no timing")
    elif not args.skip_timing:
        timing(results)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gluon_dev.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
