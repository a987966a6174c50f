"""Nsight Compute targets (run s9 3): gluon_ws (default, Wan 15%: main pass + tail launch) and the persistent
three-warpgroup kernel (5 stages, 160 / 32 registers), each launched once inside a profiler range:

    X=benchmarks/experiments/three_warpgroups; export PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/$X
    ncu --clock-control none --profile-from-start off --set full --import-source no -o prof python3 $X/ncu_ws3.py
"""
import torch
import attention as bench
from sparseattn.clustering.triton_kmeans import TritonKMeans
from sparseattn.kernels.gluon_ws_attention import GluonWSBlockSparse
from ws3_bench import GluonWS3P

shape = bench.SHAPES["wan"]
q, k, v = bench.clustered_qkv(shape)
layout, _ = bench.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
mask = bench.select_by_density(layout, 0.15, shape["text"])
targets = []
for name, kern in (("gluon_ws 15%", GluonWSBlockSparse()),
                   ("ws3 persistent 15% (5 stages, 160/32)", GluonWS3P(stages=5, consumer_regs=160, producer_regs=32))):
    qp, kp, vp = kern.permute(q, k, v, layout)
    plan = kern.plan(layout, mask, qp)
    targets.append((name, lambda kern=kern, plan=plan, qp=qp, kp=kp, vp=vp: kern.run(plan, qp, kp, vp)))
for name, fn in targets:
    print(f"{name}: {bench.timed(fn, 600):.2f} ms (CUDA events, outside the profiler)", flush=True)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
for i, (name, fn) in enumerate(targets):
    print(f"profiled target {i}: {name}", flush=True)
    fn()
    torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
