"""Dev timing of the warp-specialised Hopper kernel ``gluon_ws`` (one program per work item, and persistent with its
dynamic and static schedules) against cuDNN and ``triton``, in one process.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/gluon_ws_dev.py [--densities 0.15,0.1,0.3] [--no-dense]
        [--set schedules|pingpong|tails-fuse|rowvec|tails|default] [--rounds 2] [--shape wan|hunyuan] [--launches]

At the Wan 2.1 720p shape (B1 H40 N75600 D128, bf16, data from benchmarks/attention.py; ``--shape hunyuan``: the
HunyuanVideo 720p shape with its text block): cuDNN SDPA dense, then each
kernel on one block holding every token (dense attention through the sparse path, no tile waste) and on a k-means
layout at the given densities. Each case times the kernels in ``--rounds`` interleaved rounds (A B C D, A B C D, …:
clock and thermal drift hit every kernel alike); times are medians of CUDA-event timings (attention.timed), the
table shows the best round. Effective TFLOP/s = 4·D·(selected pairs)/time, and "vs cuDNN" is that over cuDNN's dense
TFLOP/s. Each kernel's output is compared with kernel ``triton``'s (‖out − ref‖/‖ref‖) and, for the persistent
variants, with one-program-per-item ``gluon_ws``'s (bit for bit). ``--set pingpong``: the persistent kernel free-running
(``pingpong=False``) against its ping-pong through named barriers (``pingpong=True``, the default since
benchmarks/results/h100-2026-11-27-s4-gluonws-named-pingpong-run1/2.log, which ran this set when free-running was
the default), compared bit for bit with the former; ``--set schedules`` runs the kernel's defaults; ``--set
tails-fuse``: on k, v copied into the key order (``fuse_permutation="q"``, the default before the fifth session),
64-row tails against 32-row short tails as well (``short_tail_block_m=32``), and the default (k, v read through
their order, ``"qkv"``: no copies; the copy itself, ≈ 1 ms, is not in these times: see the whole-call section of
benchmarks/attention.py); ``--set rowvec``: the producer gathering a K/V row with 16 lanes (one 16-byte copy each, the
layout until the seventh session) against 8 lanes (two copies 128 bytes apart from one row address), bit for bit;
``--set tails``: the Triton tail launches' tiles, 64 × 64 (default: 188 registers, two programs an SM by shared
memory) against 64 × 32 (146 registers, three an SM) and 64 × 32 capped at 128 registers (four an SM); ``--set
default``: ``triton`` and ``gluon_ws`` as they come. ``--launches`` also times each kernel's main pass and its tail
launches alone (one round), which the profile of benchmarks/ncu_targets.py cannot (it flushes the caches).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

import attention as bench
from sparseattn.interfaces import BlockMask
from sparseattn.kernels.gluon_ws_attention import GluonWSBlockSparse
from sparseattn.kernels.triton_attention import TritonBlockSparse


class TailRegisterCap(GluonWSBlockSparse):
    """gluon_ws with its Triton tail launches capped at 128 registers a thread (ptxas ``maxnreg``): with 64 × 32 tail
    tiles four programs fit an SM instead of three (ptxas spills 5 registers)."""

    def _launch_options(self, d, main):
        options = super()._launch_options(d, main)
        return options if main else {**options, "maxnreg": 128}


def time_launches(label, prepared, budget_ms):
    """Each kernel's main pass and its tail launches timed alone (plans with the other passes emptied)."""
    for name, kern, plan, qp, kp, vp, *_ in prepared:
        main, *tails = plan.passes
        idle = replace(main, block=main.block[:0], row_tile=main.row_tile[:0])
        parts = {"main pass": replace(plan, passes=[main]), "tail launches": replace(plan, passes=[idle, *tails])}
        times = {part: bench.timed(lambda p=p, kern=kern, qp=qp, kp=kp, vp=vp: kern.run(p, qp, kp, vp), budget_ms)
                 for part, p in parts.items()}
        bench.log(f"  {name:28} {label:12} launches alone: " + ", ".join(f"{part} {ms:.2f} ms"
                                                                        for part, ms in times.items()))


def run_case(label, kernels, q, k, v, layout, mask, d, rows, cudnn_tf, budget_ms, rounds, launches=False):
    """Time every kernel on one (layout, mask) in interleaved rounds; append table rows; errors against the first
    kernel's output, bit-identity against the second's (one program per item)."""
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
        same = "" if out is ref or out is base else f", bit-identical to gluon_ws: {torch.equal(out, base)}"
        err = bench.rel_err(out, ref)
        finite = bool(torch.isfinite(out).all())
        computed, useful = kern.computed_pairs(plan).tolist()
        prepared.append((name, kern, plan, qp, kp, vp, err, finite, same, useful, computed))
        del out
    times = {name: [] for name, *_ in prepared}
    for _ in range(rounds):
        for name, kern, plan, qp, kp, vp, *_ in prepared:
            times[name].append(bench.timed(lambda kern=kern, plan=plan, qp=qp, kp=kp, vp=vp: kern.run(plan, qp, kp, vp),
                                           budget_ms))
    if launches:
        time_launches(label, prepared, budget_ms)
    for name, kern, plan, qp, kp, vp, err, finite, same, useful, computed in prepared:
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
    parser.add_argument("--shape", default="wan", choices=sorted(bench.SHAPES))
    parser.add_argument("--launches", action="store_true",
                        help="also time each kernel's main pass and tail launches alone (one round)")
    parser.add_argument("--set", default="schedules",
                        choices=["schedules", "pingpong", "tails-fuse", "rowvec", "tails", "default"],
                        help="schedules: one program per item, persistent dynamic / static; pingpong: persistent "
                             "free-running against the named-barrier ping-pong")
    args = parser.parse_args()
    shape = bench.SHAPES[args.shape]
    q, k, v = bench.clustered_qkv(shape)
    b, h, n, d = q.shape
    bench.log(f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs; "
              f"{args.shape} B={b} H={h} N={n} D={d} bf16")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = bench.timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 2500)
    cudnn_tf = 4 * d * b * h * n * n / cudnn_ms / 1e9
    rows = [("SDPA cudnn dense", cudnn_ms, cudnn_tf, 1.0, 0.0, 0.0, True)]
    bench.log(f"  SDPA cudnn dense {cudnn_ms:9.2f} ms {cudnn_tf:6.0f} TFLOP/s")
    if args.set == "pingpong":
        kernels = [("triton", TritonBlockSparse()), ("gluon_ws persistent", GluonWSBlockSparse(pingpong=False)),
                   ("gluon_ws persistent named pp", GluonWSBlockSparse(pingpong=True))]
    elif args.set == "tails-fuse":
        kernels = [("triton", TritonBlockSparse()), ("gluon_ws fuse q", GluonWSBlockSparse(fuse_permutation="q")),
                   ("gluon_ws fuse q, 32-row tails", GluonWSBlockSparse(fuse_permutation="q", short_tail_block_m=32)),
                   ("gluon_ws (fuse qkv)", GluonWSBlockSparse())]
    elif args.set == "rowvec":
        kernels = [("triton", TritonBlockSparse()), ("gluon_ws 16 lanes a row", GluonWSBlockSparse(_row_threads=16)),
                   ("gluon_ws 8 lanes a row", GluonWSBlockSparse())]
    elif args.set == "tails":
        kernels = [("triton", TritonBlockSparse()), ("gluon_ws tails 64x64", GluonWSBlockSparse()),
                   ("gluon_ws tails 64x32", GluonWSBlockSparse(tail_block_n=32)),
                   ("gluon_ws tails 64x32 maxnreg 128", TailRegisterCap(tail_block_n=32))]
    elif args.set == "default":
        kernels = [("triton", TritonBlockSparse()), ("gluon_ws", GluonWSBlockSparse())]
    else:
        kernels = [("triton", TritonBlockSparse()), ("gluon_ws one per item", GluonWSBlockSparse(persistent=False)),
                   ("gluon_ws persistent dynamic", GluonWSBlockSparse(persistent=True, dynamic=True)),
                   ("gluon_ws persistent static", GluonWSBlockSparse(persistent=True, dynamic=False))]

    if not args.no_dense:
        one = bench.fixed_block_layout(b, h, n, d, n)
        full = BlockMask(torch.ones(b, h, 1, 1, dtype=torch.bool, device="cuda"))
        run_case("one block", kernels, q, k, v, one, full, d, rows, cudnn_tf, 2000, args.rounds, args.launches)

    from sparseattn.clustering.triton_kmeans import TritonKMeans

    layout, _ = bench.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
    for density in (float(x) for x in args.densities.split(",")):
        mask = bench.select_by_density(layout, density, shape["text"])
        run_case(f"k-means {density:.0%}", kernels, q, k, v, layout, mask, d, rows, cudnn_tf, 1500, args.rounds,
                 args.launches)

    bench.log(f"\n{'method':44} {'time ms':>9} {'eff TFLOP/s':>12} {'vs cuDNN':>9} {'waste':>6} {'err vs triton':>14}")
    for name, ms, tf, ratio, waste, err, finite in rows:
        bench.log(f"{name:44} {ms:9.2f} {tf:12.0f} {ratio:9.3f} {waste:6.1%} {err:14.2e}"
                  + ("" if finite else "  NOT FINITE"))


if __name__ == "__main__":
    main()
