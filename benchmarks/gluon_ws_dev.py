"""Dev timing of the warp-specialised Hopper kernel ``gluon_ws`` against cuDNN, ``triton`` and ``gluon``, in one
process.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/gluon_ws_dev.py [--densities 0.15,0.1,0.3] [--no-dense]

At the Wan 2.1 720p shape (B1 H40 N75600 D128, bf16, data from benchmarks/attention.py): cuDNN SDPA dense, then each
kernel (``gluon_ws`` in its default configuration and with each of its two scheduling options flipped) on one block
holding every token (dense attention through the sparse path, no tile waste) and on a k-means layout at the given
densities. Times are medians of CUDA-event timings (attention.timed); effective TFLOP/s = 4·D·(selected pairs)/time,
and "vs cuDNN" is that over cuDNN's dense TFLOP/s. Each kernel's output is compared with kernel ``triton``'s
(‖out − ref‖/‖ref‖).
"""
from __future__ import annotations

import argparse

import torch

import attention as bench
from sparseattn.interfaces import BlockMask
from sparseattn.kernels.gluon_attention import GluonBlockSparse
from sparseattn.kernels.gluon_ws_attention import GluonWSBlockSparse
from sparseattn.kernels.triton_attention import TritonBlockSparse


def run_case(label, kernels, q, k, v, layout, mask, d, rows, cudnn_tf, budget_ms):
    """Time every kernel on one (layout, mask); append table rows; errors against the first kernel's output."""
    ref = None
    for name, kern in kernels:
        qp, kp, vp = kern.permute(q, k, v, layout)
        plan = kern.plan(layout, mask, qp)
        out = kern.unpermute(kern.run(plan, qp, kp, vp), layout)
        torch.cuda.synchronize()
        if ref is None:
            ref = out
        err = bench.rel_err(out, ref)
        finite = bool(torch.isfinite(out).all())
        ms = bench.timed(lambda kern=kern, plan=plan, qp=qp, kp=kp, vp=vp: kern.run(plan, qp, kp, vp), budget_ms)
        computed, useful = kern.computed_pairs(plan).tolist()
        tf = 4 * d * useful / ms / 1e9
        rows.append((f"{name} {label}", ms, tf, tf / cudnn_tf, 1 - useful / computed, err, finite))
        bench.log(f"  {name:22} {label:12} {ms:9.2f} ms {tf:6.0f} TFLOP/s {tf / cudnn_tf:5.2f}x cuDNN, "
                  f"err vs triton {err:.2e}, finite {finite}")
        del qp, kp, vp, plan, out
        kern._buffers.clear()
    return ref


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--densities", default="0.15,0.10,0.30")
    parser.add_argument("--no-dense", action="store_true", help="skip the one-block (dense) case")
    args = parser.parse_args()
    shape = bench.SHAPES["wan"]
    q, k, v = bench.clustered_qkv(shape)
    b, h, n, d = q.shape
    bench.log(f"{torch.cuda.get_device_name()}; Wan 2.1 720p B={b} H={h} N={n} D={d} bf16")
    dense = bench.dense_times(q, k, v)
    cudnn_ms = dense["cudnn"]
    cudnn_tf = 4 * d * b * h * n * n / cudnn_ms / 1e9
    rows = [(f"SDPA {name} dense", ms, 4 * d * b * h * n * n / ms / 1e9, cudnn_ms / ms, 0.0, 0.0, True)
            for name, ms in dense.items()]
    for r in rows:
        bench.log(f"  {r[0]:22} {r[1]:9.2f} ms {r[2]:6.0f} TFLOP/s")
    kernels = [("triton", TritonBlockSparse()), ("gluon", GluonBlockSparse()), ("gluon_ws", GluonWSBlockSparse()),
               ("gluon_ws +pingpong", GluonWSBlockSparse(pingpong=True)),
               ("gluon_ws late rescale", GluonWSBlockSparse(early_rescale=False))]

    if not args.no_dense:
        one = bench.fixed_block_layout(b, h, n, d, n)
        full = BlockMask(torch.ones(b, h, 1, 1, dtype=torch.bool, device="cuda"))
        run_case("one block", kernels, q, k, v, one, full, d, rows, cudnn_tf, 2500)

    from sparseattn.clustering.triton_kmeans import TritonKMeans

    layout, _ = bench.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
    for density in (float(x) for x in args.densities.split(",")):
        mask = bench.select_by_density(layout, density, shape["text"])
        run_case(f"k-means {density:.0%}", kernels, q, k, v, layout, mask, d, rows, cudnn_tf, 2000)

    bench.log(f"\n{'method':36} {'time ms':>9} {'eff TFLOP/s':>12} {'vs cuDNN':>9} {'waste':>6} {'err vs triton':>14}")
    for name, ms, tf, ratio, waste, err, finite in rows:
        bench.log(f"{name:36} {ms:9.2f} {tf:12.0f} {ratio:9.2f} {waste:6.1%} {err:14.2e}"
                  + ("" if finite else "  NOT FINITE"))


if __name__ == "__main__":
    main()
