"""The Hopper k-means assignment (clustering/gluon_kmeans.py, ``TritonKMeans(assign_kernel="gluon")``).

Without a GPU: the kernel compiles for sm_90 (Gluon and the wheel's ptxas need no GPU). The PTX must hold asynchronous
wgmma and 16-byte cp.async copies, and ptxas must report neither spills nor serialised wgmma (C7514 / C7515: what
happens when accumulator registers are touched while a product runs, which would undo the overlap the kernel exists
for; C7511: the same for lack of registers), and the running minimum of a tile is folded while the next tile's product
runs, not before it is issued (the SASS order of the product loop). The persistent kernel (the default: ~2 programs
per multiprocessor loop over the work items) may keep a few bytes of per-item values in local memory, but none inside
the product loop. With an sm_90 GPU: labels, centroids and sizes against the Triton assignment and the float32
reference, for cluster counts that are not multiples of the tile, N not a multiple of 128, float16 and tol > 0,
persistent and not; the persistent kernel's labels and sizes equal the one-item-per-program kernel's exactly, also
inside a CUDA graph.
"""
from __future__ import annotations

import os
import re

import pytest
import torch

triton = pytest.importorskip("triton")
pytest.importorskip("triton.experimental.gluon", reason="this Triton has no Gluon")

from sparseattn.clustering.init import init_centroids  # noqa: E402
from sparseattn.clustering.torch_kmeans import TorchKMeans  # noqa: E402
from sparseattn.clustering.triton_kmeans import TritonKMeans  # noqa: E402
from sass_tools import innermost_loops, opcode  # noqa: E402


def _hopper() -> bool:
    return (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
            and torch.cuda.get_device_capability() == (9, 0))


needs_hopper = pytest.mark.skipif(not _hopper(), reason="needs a compute-capability-9.0 GPU, not the interpreter")

# (points per program, warps, register cap, dtype, accumulate, persistent: 0 one item per program, 1 persistent,
# points as the register operand, ‖c‖² staged in shared memory): the default launch for bf16, float16 and the
# assignment-only diagnostic, the one-item-per-program kernels, the points read from shared memory, two warpgroups
# capped at 128 registers, and ‖c‖² loaded from global memory (``TritonKMeans(_csq_smem=False)``, the default until
# the eighth session) for both dtypes, persistent and not
VARIANTS = [(128, 4, 0, "bf16", True, 1, 1, 1), (128, 4, 0, "fp16", True, 1, 1, 1), (128, 4, 0, "bf16", False, 1, 1, 1),
            (128, 4, 0, "bf16", True, 0, 1, 1), (128, 4, 0, "fp16", True, 0, 1, 1), (128, 4, 0, "bf16", True, 1, 0, 1),
            (128, 8, 128, "bf16", True, 0, 0, 1), (128, 8, 128, "bf16", True, 1, 0, 1),
            (128, 4, 0, "bf16", True, 1, 1, 0), (128, 4, 0, "fp16", True, 1, 1, 0), (128, 4, 0, "bf16", True, 0, 1, 0),
            (128, 4, 0, "fp16", True, 0, 1, 0)]
PARAMS = "block_p,warps,maxnreg,dtype,accumulate,persistent,a_regs,csq_smem"
# bytes of local memory the persistent kernel may use outside the product loop (H100 runs: a per-item value or two
# kept there costs nothing measurable); with two warpgroups capped at 128 registers it needs more (a diagnostic)
PERSISTENT_SPILL = {4: 16, 8: 128}


def _name(block_p, warps, maxnreg, dtype, accumulate, persistent, a_regs, csq_smem) -> str:
    return f"{block_p}_{warps}_{maxnreg}_{dtype}_{int(accumulate)}_{persistent}_{a_regs}_{csq_smem}"


@pytest.fixture(scope="module")
def compiled(compile_sm90):
    return compile_sm90("sparseattn.clustering.gluon_kmeans", {
        _name(*v): dict(block_p=v[0], num_warps=v[1], maxnreg=v[2], dtype=v[3], accumulate=v[4], persistent=v[5],
                        a_regs=bool(v[6]), csq_smem=bool(v[7]))
        for v in VARIANTS})


@pytest.mark.parametrize(PARAMS, VARIANTS)
def test_compiles_for_sm90_without_spills_or_serialised_wgmma(compiled, ptxas, block_p, warps, maxnreg, dtype,
                                                              accumulate, persistent, a_regs, csq_smem):
    folder, shared = compiled
    name = _name(block_p, warps, maxnreg, dtype, accumulate, persistent, a_regs, csq_smem)
    ptx = (folder / f"{name}.ptx").read_text()
    assert "wgmma.mma_async" in ptx
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 0x10", ptx), "no 16-byte cp.async"
    assert bool(re.search(r"\b(?:red|atom)\.", ptx)) == accumulate  # the centroid sums
    assert shared[name] <= 232448 // 2, shared[name]  # two programs per multiprocessor
    info = ptxas(folder / f"{name}.ptx")
    print(f"{name}: shared {shared[name]} B, {info.registers} registers, {info.spill_stores} bytes spilled")
    for code in ("C7511", "C7514", "C7515"):  # wgmma serialised by ptxas (C7511: for lack of registers)
        assert code not in info.report, info.report
    if persistent:
        assert info.spill_stores <= PERSISTENT_SPILL[warps], info.report
        local = [t for loop in innermost_loops(folder / f"{name}.ptx.cubin", "HGMMA") for t in loop
                 if opcode(t).startswith(("LDL", "STL"))]
        assert not local, local
    else:
        assert info.spill_stores == 0 and info.spill_loads == 0, info.report
    if maxnreg:
        assert info.registers <= maxnreg
    loops = innermost_loops(folder / f"{name}.ptx.cubin", "HGMMA")
    ops = [opcode(t) for loop in loops for t in loop if not t.startswith("@!PT")]  # not the never-run LDS RZ
    global_loads = sum(op.startswith("LDG.") for op in ops)  # ‖c‖² (LDGSTS, LDGDEPBAR: the cp.async copies)
    shared_loads = sum(op.startswith("LDS") for op in ops)
    print(f"{name}: product loop {len(ops)} instructions, {global_loads} LDG, {shared_loads} LDS")
    if csq_smem:  # ‖c‖² of the next tile: 8 LDS.64 (two adjacent columns each) and no global load
        assert global_loads == 0, global_loads
        assert sum(op.startswith("LDS.64") for op in ops) == 8, ops


@pytest.mark.parametrize("csq_smem", [0, 1])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_persistent_product_loop_no_longer_than_one_item_per_program(compiled, ptxas, dtype, csq_smem):
    """The item loop must not crowd the product loop: when per-item index offsets were hoisted out of it (no
    ``_opaque_zero``), the product loop grew from 453 to 485 instructions and ran 15% slower on an H100."""
    folder, _ = compiled
    lengths = {}
    for persistent in (0, 1):
        name = _name(128, 4, 0, dtype, True, persistent, 1, csq_smem)
        ptxas(folder / f"{name}.ptx")  # writes the cubin
        lengths[persistent] = max(len(loop) for loop in innermost_loops(folder / f"{name}.ptx.cubin", "HGMMA"))
    print(f"{dtype}: product loop {lengths[1]} instructions persistent, {lengths[0]} one item per program")
    assert lengths[1] <= lengths[0], lengths


@pytest.mark.parametrize(PARAMS, [v for v in VARIANTS if v[1] == 4])
def test_products_issued_before_the_fold(compiled, ptxas, block_p, warps, maxnreg, dtype, accumulate,
                                         persistent, a_regs, csq_smem):
    """The point of the kernel: the next tile's product runs while the previous one is folded. With a running
    minimum per (point, column slot) (64 more registers a thread, the kernel until the seventh session) ptxas had
    no registers to hold the previous product while the next one ran, and scheduled 57 of a tile's 64 FMNMX (114 of
    its 128 pack-and-min instructions) before issuing the next product (SASS of the sm_90a build; on an H100 the
    wgmma wait then held 20% of the loop's stall samples, Nsight Compute). Now at most a few may come first."""
    folder, _ = compiled
    name = _name(block_p, warps, maxnreg, dtype, accumulate, persistent, a_regs, csq_smem)
    ptxas(folder / f"{name}.ptx")  # writes the cubin
    for loop in innermost_loops(folder / f"{name}.ptx.cubin", "HGMMA"):
        ops = [opcode(t) for t in loop]
        first = next(i for i, op in enumerate(ops) if op.startswith("HGMMA"))
        last = max(i for i, op in enumerate(ops) if op.startswith("HGMMA"))
        before = sum(op.startswith("FMNMX") for op in ops[:first])
        # informational: with CSQ_SMEM ptxas interleaves the fold with the product's HGMMAs (all 64 FMNMX before the
        # last of them), where the default issues all but the fold's last LOP3s first
        print(f"{name}: {before} of {sum(op.startswith('FMNMX') for op in ops)} FMNMX before the first HGMMA, "
              f"{sum(op.startswith('FMNMX') for op in ops[:last])} before the last")
        assert before <= 8, before


def test_options_and_reasons_off_hopper():
    with pytest.raises(ValueError, match="assign_kernel"):
        TritonKMeans(assign_kernel="cuda")
    with pytest.raises(ValueError, match="_csq_smem"):
        TritonKMeans(_csq_smem=1)
    x = torch.zeros(1, 64, 96, dtype=torch.float32)
    reasons = TritonKMeans(precision="ieee").gluon_problems(x)
    assert any("CUDA" in r for r in reasons), reasons
    assert any("precision" in r for r in reasons), reasons
    assert any("float32" in r for r in reasons), reasons
    assert any("power-of-two dimension" in r for r in reasons), reasons
    with pytest.raises(ValueError, match="assign_kernel 'gluon' cannot cluster|needs CUDA"):
        TritonKMeans(assign_kernel="gluon").fit(x.to(torch.bfloat16), x[:, :4].clone(), 1)


# ----------------------------------------------------------------------------------------------------------------
# CUDA (sm_90)
# ----------------------------------------------------------------------------------------------------------------
@needs_hopper
@pytest.mark.parametrize("csq_smem", [False, True])
@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("n,clusters,dtype", [(30000, 500, torch.bfloat16), (20037, 1000, torch.bfloat16),
                                              (5001, 37, torch.float16), (300, 300, torch.bfloat16)])
def test_cuda_gluon_assignment_matches_triton_and_torch(n, clusters, dtype, persistent, csq_smem):
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(3, n, 128, device="cuda", generator=gen)
    init = init_centroids(x, clusters, seed=4)
    ref = TorchKMeans().fit(x, init, 1)
    xl = x.to(dtype)
    tri = TritonKMeans(assign_kernel="triton").fit(xl, init, 1)
    glu = TritonKMeans(assign_kernel="gluon", _persistent=persistent, _csq_smem=csq_smem).fit(xl, init, 1)
    same = float((glu.labels == tri.labels).float().mean())
    vs_ref = float((glu.labels == ref.labels).float().mean())
    err = float((glu.centroids - ref.centroids).norm() / ref.centroids.norm())
    print(f"n {n} clusters {clusters} {dtype}: labels equal to triton {same:.5f}, to fp32 {vs_ref:.5f}, "
          f"centroid rel. err {err:.2e}")
    # the two kernels see the same rounded operands; only near-ties (packing, summation order) may differ
    assert same > 0.999
    assert vs_ref > 0.95
    assert err < 0.1
    assert int(glu.sizes.sum()) == 3 * n
    assert torch.equal(glu.sizes, torch.bincount((glu.labels + clusters * torch.arange(3, device="cuda")[:, None])
                                                 .reshape(-1), minlength=3 * clusters).reshape(3, clusters))


@needs_hopper
@pytest.mark.parametrize("copies", [1, 4])
@pytest.mark.parametrize("n,clusters,groups", [(75600, 300, 6), (20037, 1000, 3), (129, 64, 2)])
def test_cuda_persistent_equals_one_item_per_program(n, clusters, groups, copies):
    """The same packed argmin: identical labels and sizes; sums differ by float32 summation order only. More work
    items than programs (the stride loop), fewer (129 points × 2 groups: 4 items), and the copies of the sums. The
    points as the register operand (the default) or read from shared memory: the same products; ‖c‖² from shared (the
    default) or global memory (``_csq_smem=False``, persistent and not): the same distances."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(groups, n, 128, device="cuda", generator=gen)
    init = init_centroids(x, clusters, seed=8)
    xb = x.bfloat16()
    one = TritonKMeans(assign_kernel="gluon", _persistent=False, sum_copies=copies).fit(xb, init, 1)
    per = TritonKMeans(assign_kernel="gluon", _persistent=True, sum_copies=copies).fit(xb, init, 1)
    smem = TritonKMeans(assign_kernel="gluon", _a_regs=False, sum_copies=copies).fit(xb, init, 1)
    csq_global = TritonKMeans(assign_kernel="gluon", _csq_smem=False, sum_copies=copies).fit(xb, init, 1)
    csq_global_one = TritonKMeans(assign_kernel="gluon", _csq_smem=False, _persistent=False,
                                  sum_copies=copies).fit(xb, init, 1)
    for other in (one, smem, csq_global, csq_global_one):
        assert torch.equal(other.labels, per.labels)
        assert torch.equal(other.sizes, per.sizes)
        torch.testing.assert_close(per.centroids, other.centroids, rtol=1e-5, atol=1e-5)


@needs_hopper
def test_cuda_more_clusters_than_the_packed_index_holds():
    """Past 2^12 clusters the index would truncate distances by more than 2^-11: gluon refuses and says why, auto
    falls back to the Triton kernel."""
    gen = torch.Generator(device="cuda").manual_seed(11)
    x = torch.randn(1, 6000, 64, device="cuda", generator=gen).bfloat16()
    init = init_centroids(x.float(), 4100, seed=12)
    with pytest.raises(ValueError, match="at most 4096 clusters, got 4100"):
        TritonKMeans(assign_kernel="gluon").fit(x, init, 1)
    auto = TritonKMeans().fit(x, init, 1)
    tri = TritonKMeans(assign_kernel="triton").fit(x, init, 1)
    assert torch.equal(auto.labels, tri.labels)


@needs_hopper
def test_cuda_persistent_fit_captures_in_a_cuda_graph():
    """No host synchronisation: a 3-iteration fit with tol (the device-side stop test) replays from a CUDA graph."""
    gen = torch.Generator(device="cuda").manual_seed(9)
    x = torch.randn(4, 10000, 128, device="cuda", generator=gen).bfloat16()
    init = init_centroids(x.float(), 200, seed=10)
    km = TritonKMeans(assign_kernel="gluon")
    ref = km.fit(x, init, 3, tol=1e-6)
    km.fit(x, init, 3, tol=1e-6)  # compiled and warm before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = km.fit(x, init, 3, tol=1e-6)
    graph.replay()
    torch.cuda.synchronize()
    assert float((got.labels == ref.labels).float().mean()) > 0.999
    assert int(got.sizes.sum()) == 4 * 10000


@needs_hopper
@pytest.mark.parametrize("persistent", [False, True])
def test_cuda_gluon_iterations_and_tol(persistent):
    gen = torch.Generator(device="cuda").manual_seed(5)
    protos = 4 * torch.randn(2, 50, 64, device="cuda", generator=gen)
    labels = torch.randint(0, 50, (2, 4000), device="cuda", generator=gen)
    x = (protos.gather(1, labels[..., None].expand(-1, -1, 64)) + 0.1 * torch.randn(2, 4000, 64, device="cuda",
                                                                                      generator=gen))
    init = init_centroids(x, 50, seed=6)
    xb = x.bfloat16()
    a = TritonKMeans(assign_kernel="triton").fit(xb, init, 20, tol=1e-4)
    b = TritonKMeans(assign_kernel="gluon", _persistent=persistent).fit(xb, init, 20, tol=1e-4)

    def inertia(r):  # the k-means objective of a result: both kernels must reach the same quality
        return float((xb.float() - r.centroids.gather(1, r.labels[..., None].expand(-1, -1, 64))).square().sum())

    agree = float((a.labels == b.labels).float().mean())
    print(f"20 iterations with tol: labels equal {agree:.5f}, inertia {inertia(a):.6g} vs {inertia(b):.6g}")
    # atomics add in no fixed order, so after 20 iterations a few points on split boundaries may differ
    assert agree > 0.99
    assert abs(inertia(a) - inertia(b)) <= 1e-3 * inertia(a)
    # the labels are the nearest of the returned centroids (up to bf16 near-ties)
    nearest = torch.cdist(xb.float(), b.centroids).argmin(-1)
    assert float((nearest == b.labels).float().mean()) > 0.99
