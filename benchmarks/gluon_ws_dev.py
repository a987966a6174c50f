"""Dev timing of the warp-specialised Hopper kernel ``gluon_ws`` (its variants: one program per work item, persistent
with its dynamic and static schedules, tail tiles in a Triton launch or inside the persistent kernel) against cuDNN
and ``triton``, in one process.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/gluon_ws_dev.py [--densities 0.15,0.1,0.3] [--no-dense]
        [--set schedules|tails] [--rounds 2]

``--set schedules``: triton, one per item, persistent dynamic, persistent static (the persistent-kernel study);
``--set tails`` (default): persistent dynamic with the Triton tail launch, and with the tail tiles inside the
persistent kernel (warpgroup 0 alone; tail items after every head's items, or merged by list length among a head's),
and the two parts of the default alone (the persistent pass without tails, the Triton tail launch); kernel
``triton`` only as the reference (not timed). The split-KV design (both warpgroups on a tail's key tiles, merged
through shared memory) was measured with this script and removed (kernels/gluon_ws_attention.py's docstring).

At the Wan 2.1 720p shape (B1 H40 N75600 D128, bf16, data from benchmarks/attention.py): cuDNN SDPA dense, then each
kernel on one block holding every token (dense attention through the sparse path, no tile waste) and on a k-means
layout at the given densities. Each case times the kernels in ``--rounds`` interleaved rounds (A B C D, A B C D, …:
clock and thermal drift hit every kernel alike); times are medians of CUDA-event timings (attention.timed), the
table shows the best round. Effective TFLOP/s = 4·D·(selected pairs)/time, and "vs cuDNN" is that over cuDNN's dense
TFLOP/s. Each kernel's output is compared with kernel ``triton``'s (‖out − ref‖/‖ref‖) and with the second
kernel's (bit for bit; with ``--set tails`` that is the Triton-tail persistent kernel, so only tail rows may differ).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

import attention as bench
from sparseattn.interfaces import BlockMask
from sparseattn.kernels.gluon_ws_attention import GluonWSBlockSparse
from sparseattn.kernels.triton_attention import TritonBlockSparse


class MainPassOnly(GluonWSBlockSparse):
    """The persistent pass alone, without the tail tiles (their rows stay unwritten: err vs triton is not small)."""

    def run(self, plan, q, k, v):
        return super().run(replace(plan, passes=plan.passes[:1]), q, k, v)


class TailPassOnly(TritonBlockSparse):
    """Kernel ``triton``'s tail launch alone (the other rows stay unwritten)."""

    def run(self, plan, q, k, v):
        main = plan.passes[0]
        idle = replace(main, block=main.block[:0], row_tile=main.row_tile[:0])
        return super().run(replace(plan, passes=[idle, *plan.passes[1:]]), q, k, v)


def run_case(label, kernels, q, k, v, layout, mask, d, rows, cudnn_tf, budget_ms, rounds, untimed=()):
    """Time every kernel on one (layout, mask) in interleaved rounds; append table rows; errors against the first
    kernel's output, bit-identity against the second's (the rows that differ are counted). Kernels named in
    ``untimed`` are only checked."""
    ref = base = None
    prepared = []
    for name, kern in kernels:
        qp, kp, vp = kern.permute(q, k, v, layout)
        plan = kern.plan(layout, mask, qp)
        out = kern.unpermute(kern.run(plan, qp, kp, vp), layout)
        torch.cuda.synchronize()
        if ref is None:
            ref = out
        elif base is None:
            base = out
        if out is ref or out is base:
            same = ""
        else:
            rows_diff = int((out != base).flatten(-1).any(-1).sum()) if out.dim() == 4 else -1
            same = f", bit-identical to {kernels[1][0]}: {torch.equal(out, base)} ({rows_diff} rows differ)"
        err = bench.rel_err(out, ref)
        finite = bool(torch.isfinite(out).all())
        computed, useful = kern.computed_pairs(plan).tolist()
        prepared.append((name, kern, plan, qp, kp, vp, err, finite, same, useful, computed))
        del out
    times = {name: [] for name, *_ in prepared}
    for _ in range(rounds):
        for name, kern, plan, qp, kp, vp, *_ in prepared:
            if name in untimed:
                continue
            times[name].append(bench.timed(lambda kern=kern, plan=plan, qp=qp, kp=kp, vp=vp: kern.run(plan, qp, kp, vp),
                                           budget_ms))
    for name, kern, plan, qp, kp, vp, err, finite, same, useful, computed in prepared:
        if name in untimed:
            continue
        ms = min(times[name])
        tf = 4 * d * useful / ms / 1e9
        rows.append((f"{name} {label}", ms, tf, tf / cudnn_tf, 1 - useful / computed, err, finite))
        bench.log(f"  {name:28} {label:12} {ms:9.2f} ms (rounds {', '.join(f'{t:.2f}' for t in times[name])}) "
                  f"{tf:6.0f} TFLOP/s {tf / cudnn_tf:5.3f}x cuDNN, err vs triton {err:.2e}, finite {finite}{same}")
    for _, kern, *_ in prepared:
        kern._buffers.clear()
    del prepared, ref, base


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--densities", default="0.15,0.10,0.30")
    parser.add_argument("--no-dense", action="store_true", help="skip the one-block (dense) case")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", default="tails", choices=["tails", "schedules"])
    args = parser.parse_args()
    shape = bench.SHAPES["wan"]
    q, k, v = bench.clustered_qkv(shape)
    b, h, n, d = q.shape
    bench.log(f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs; "
              f"Wan 2.1 720p B={b} H={h} N={n} D={d} bf16")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = bench.timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 2500)
    cudnn_tf = 4 * d * b * h * n * n / cudnn_ms / 1e9
    rows = [("SDPA cudnn dense", cudnn_ms, cudnn_tf, 1.0, 0.0, 0.0, True)]
    bench.log(f"  SDPA cudnn dense {cudnn_ms:9.2f} ms {cudnn_tf:6.0f} TFLOP/s")
    untimed = ()
    if args.set == "schedules":
        kernels = [("triton", TritonBlockSparse()), ("gluon_ws one per item", GluonWSBlockSparse(persistent=False)),
                   ("gluon_ws persistent dynamic", GluonWSBlockSparse(persistent=True, dynamic=True, tails="triton")),
                   ("gluon_ws persistent static", GluonWSBlockSparse(persistent=True, dynamic=False, tails="triton"))]
        dense_kernels = kernels
    else:
        untimed = ("triton",)
        kernels = [("triton", TritonBlockSparse()),
                   ("ws tails=triton", GluonWSBlockSparse(tails="triton")),
                   ("ws tails=wg0 end", GluonWSBlockSparse(tails="wg0", tail_order="end")),
                   ("ws tails=wg0 merged", GluonWSBlockSparse(tails="wg0", tail_order="merged")),
                   ("ws main pass only", MainPassOnly(tails="triton")),
                   ("triton tail pass only", TailPassOnly())]
        dense_kernels = kernels[:3]

    if not args.no_dense:
        one = bench.fixed_block_layout(b, h, n, d, n)
        full = BlockMask(torch.ones(b, h, 1, 1, dtype=torch.bool, device="cuda"))
        run_case("one block", dense_kernels, q, k, v, one, full, d, rows, cudnn_tf, 2000, args.rounds, untimed)

    from sparseattn.clustering.triton_kmeans import TritonKMeans

    layout, _ = bench.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
    for density in (float(x) for x in args.densities.split(",")):
        mask = bench.select_by_density(layout, density, shape["text"])
        run_case(f"k-means {density:.0%}", kernels, q, k, v, layout, mask, d, rows, cudnn_tf, 1500, args.rounds,
                 untimed)

    bench.log(f"\n{'method':44} {'time ms':>9} {'eff TFLOP/s':>12} {'vs cuDNN':>9} {'waste':>6} {'err vs triton':>14}")
    for name, ms, tf, ratio, waste, err, finite in rows:
        bench.log(f"{name:44} {ms:9.2f} {tf:12.0f} {ratio:9.3f} {waste:6.1%} {err:14.2e}"
                  + ("" if finite else "  NOT FINITE"))


if __name__ == "__main__":
    main()
