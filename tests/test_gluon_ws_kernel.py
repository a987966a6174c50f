"""Kernel ``gluon_ws`` (kernels/gluon_ws_attention.py): the warp-specialised Hopper main pass behind kernel ``triton``'s
plan.

Without a GPU: the kernel compiles for sm_90 (Gluon and the wheel's ptxas need no GPU); the PTX must show the warp
specialisation (setmaxnreg lowering the producer's registers and raising the consumers'), the mbarrier pipeline
(try_wait, cp.async completing on an mbarrier with .noinc), the proxy fence before the wgmma reads of cp.async-written
tiles, asynchronous wgmma with one product left in flight, and ptxas must report no spills; for the one-program-per-
item kernel and the persistent one (its q_empty and item_full barriers, the atomic work-item counter of its dynamic
schedule or the strided loop of its static one), and with pingpong the turn barriers (bar.sync / bar.arrive
of 256 threads, ids Triton does not use, each right before / after a warpgroup's product issue). With an sm_90 GPU
(the tests shared with kernel ``gluon`` against the reference are in tests/test_hopper_kernels.py): the output
matches kernel ``gluon``'s; the persistent kernel (the default) must equal the one-program-per-item kernel bit for
bit with 1, 7 or SM-count programs under both schedules, and capture in a CUDA graph; the ping-pong must
equal the free-running warpgroups bit for bit; every scheduling option gives the same attention within tolerance.
"""
from __future__ import annotations

import re

import pytest
import torch

triton = pytest.importorskip("triton")
pytest.importorskip("triton.experimental.gluon", reason="this Triton has no Gluon")

from sparseattn.interfaces import BlockMask  # noqa: E402
from sparseattn.kernels.gluon_ws_attention import GluonWSBlockSparse  # noqa: E402
from sparseattn.registry import get  # noqa: E402
from block_cases import layout as _layout, needs_hopper, qkv as _qkv, random_case as _random_case  # noqa: E402
from block_cases import rel as _rel, sizes as _sizes, through as _through, check, check_hopper_ptx  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# compile checks (CPU)
# ----------------------------------------------------------------------------------------------------------------
# (D, block_n, dtype, q_rows, schedule): one program per work item, or the persistent kernel with its dynamic
# (atomic counter) or static (strided) schedule; "+named": the ping-pong through named barriers (pingpong=True)
VARIANTS = [(128, 128, "bf16", True, "one"), (128, 128, "fp16", False, "one"), (64, 128, "bf16", True, "one"),
            (128, 64, "bf16", False, "one"), (128, 128, "bf16", True, "dynamic"), (128, 128, "fp16", False, "dynamic"),
            (64, 128, "bf16", True, "dynamic"), (128, 64, "bf16", False, "dynamic"), (128, 128, "bf16", True, "static"),
            (128, 64, "bf16", False, "static"), (128, 128, "bf16", True, "dynamic+named"),
            (128, 64, "bf16", False, "dynamic+named"), (64, 128, "bf16", True, "static+named"),
            (128, 128, "bf16", True, "one+named")]

def _name(head_dim, block_n, dtype, q_rows, schedule) -> str:
    return f"{head_dim}_{block_n}_{dtype}_{int(q_rows)}_{schedule.replace('+', '_')}"


@pytest.fixture(scope="module")
def compiled(compile_sm90):
    return compile_sm90("sparseattn.kernels.gluon_ws_attention", {
        _name(*v): dict(head_dim=v[0], block_n=v[1], dtype=v[2], has_q_rows=v[3],
                        persistent=not v[4].startswith("one"), dynamic=v[4].startswith("dynamic"),
                        pingpong=v[4].endswith("+named")) for v in VARIANTS})


def _check_named_barriers(ptx: str, named: bool) -> None:
    """The named-barrier ping-pong: warpgroup w waits on barrier 8 + w (bar.sync, 256 threads: its own and the other
    warpgroup's bar.arrive) right before issuing its products and arrives on the other's right after; Triton's own
    barriers (bar.sync id, 128 per partition; barrier.sync 1 around warp_specialize) use other ids."""
    own = {int(i) for i in re.findall(r"\bbar(?:rier)?\.(?:sync|arrive)\s+(\d+)(?:, (?:128|\d{1,2}))?;", ptx)}
    turns = re.findall(r"(@%p\d+ )?bar\.(sync|arrive) (\d+), 256;", ptx)
    if not named:
        assert not turns, turns
        return
    assert not own & {8, 9}, f"Triton uses the turn barriers' ids itself: {sorted(own)}"
    assert not any(pred for pred, _, _ in turns), "a predicated turn barrier: not every thread executes it"
    assert {(op, int(i)) for _, op, i in turns} == {("sync", 8), ("sync", 9), ("arrive", 8), ("arrive", 9)}, turns
    # one barrier instruction per inline-asm block (the block runs once per thread: one element per thread)
    for block in re.findall(r"// begin inline asm(.*?)// end inline asm", ptx, re.S):
        assert len(re.findall(r"\bbar\.(?:sync|arrive) \d+, 256;", block)) <= 1, block
    # order against the wgmma instructions: a wait comes right before a product issue (wgmma.fence) or at the end
    # (warpgroup 0 consumes warpgroup 1's last hand-over before the partitions join), an arrive right after the
    # issue (commit_group) and before the wait for the products
    found = re.findall(r"bar\.sync \d+, 256|bar\.arrive \d+, 256|wgmma\.fence|wgmma\.commit_group|wgmma\.wait_group|"
                       r"barrier\.sync\s+1;", ptx)
    events = [re.sub(r"\s+", " ", e) for e in found]
    for i, e in enumerate(events):
        if e.startswith("bar.sync"):
            assert events[i + 1] in ("wgmma.fence", "barrier.sync 1;"), events[i:i + 3]
        elif e.startswith("bar.arrive"):
            after = events[i + 1] if i + 1 < len(events) else None
            if i > 0 and events[i - 1] == "wgmma.commit_group":
                assert after == "wgmma.wait_group", events[i - 1:i + 2]
            else:  # warpgroup 1's first arrival (warpgroup 0 goes first), before any product
                assert events[i - 1].startswith("barrier.sync"), events[i - 1:i + 2]


@pytest.mark.parametrize("head_dim,block_n,dtype,q_rows,schedule", VARIANTS)
def test_compiles_warp_specialised_without_spills(compiled, ptxas, head_dim, block_n, dtype, q_rows, schedule):
    folder, shared = compiled
    name = _name(head_dim, block_n, dtype, q_rows, schedule)
    ptx = (folder / f"{name}.ptx").read_text()
    # warp specialisation with register reallocation: the producer gives registers back, the consumers take them
    dec = [int(r) for r in re.findall(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+(\d+)", ptx)]
    inc = [int(r) for r in re.findall(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+(\d+)", ptx)]
    assert dec and inc, "no setmaxnreg: the kernel is not warp-specialised with register reallocation"
    assert min(dec) <= 64 and max(inc) >= 216, (dec, inc)
    # the mbarrier pipeline: cp.async arrivals without a pending-count increment, waits, and the proxy fence
    assert "cp.async.mbarrier.arrive.noinc.shared" in ptx
    assert len(re.findall(r"mbarrier\.try_wait\.parity", ptx)) >= 4
    assert "fence.proxy.async.shared::cta" in ptx
    waits = check_hopper_ptx(ptx, shared[name])
    inits = re.findall(r"mbarrier\.init\.shared(?:::cta)?\.b64 \[[^]]+\], (\d+);", ptx)
    _check_named_barriers(ptx, schedule.endswith("+named"))
    schedule = schedule.split("+")[0]
    if schedule == "one":
        assert sorted(inits) == sorted(["128"] * 4 + ["2"] * 3), inits  # q_full, full ×3, empty ×3
    else:
        # the persistent kernel: the Q hand-back barrier (q_empty, one arrival per consumer warpgroup) besides
        # q_full and the ring's full/empty barriers, and two item_full barriers (the dynamic schedule's hand-over)
        assert sorted(inits) == sorted(["128"] * 4 + ["2"] * 4 + ["1"] * 2), inits
    if schedule == "static":  # the work-item loop: program_id + k·num_programs
        assert "%nctaid.x" in ptx and "atom.global" not in ptx, "no num_programs: not a strided persistent loop"
    if schedule == "dynamic":  # work items claimed with an atomic increment, handed over through shared memory
        assert re.search(r"atom\.global\.[a-z_.]*add\.u32", ptx), "no atomic work-item counter"
    info = ptxas(folder / f"{name}.ptx")
    print(f"{name}: setmaxnreg dec {sorted(set(dec))} inc {sorted(set(inc))}, wgmma waits {sorted(set(waits))}, "
          f"shared {shared[name]} B, {info.registers} registers at launch, {info.spill_stores} bytes spilled")
    assert info.spill_stores == 0 and info.spill_loads == 0, info.report


@pytest.mark.parametrize("head_dim,block_n,dtype,q_rows,schedule",
                         [v for v in VARIANTS if v[:2] == (128, 128)])
def test_producer_gathers_a_row_with_8_lanes(compiled, ptxas, head_dim, block_n, dtype, q_rows, schedule):
    """The producer's tile loop (SASS): 32 16-byte copies a thread for a 128-row K and V tile, from 8 row addresses
    (8 key-index loads). With 16 lanes a row (before the seventh session) each thread loaded 16 indices and built 16
    row addresses: 416 instructions a tile against 260, and the kernel was 3-7% slower on an H100 (docstring)."""
    from sass_tools import innermost_loops, opcode

    folder, _ = compiled
    name = _name(head_dim, block_n, dtype, q_rows, schedule)
    ptxas(folder / f"{name}.ptx")  # writes the cubin
    loops = [[opcode(t) for t in loop] for loop in innermost_loops(folder / f"{name}.ptx.cubin", "LDGSTS")]
    tile = min(loops, key=len)  # the per-tile gather (the item loops around it hold Q's copies too)
    copies = sum(op.startswith("LDGSTS") for op in tile)
    indices = sum(op.startswith("LDG.") for op in tile)
    print(f"{name}: producer tile loop {len(tile)} instructions, {copies} cp.async, {indices} index loads")
    assert copies == 32 and indices == 8, (copies, indices)


def test_registered_and_reasons_off_hopper():
    assert get("kernel", "gluon_ws") is GluonWSBlockSparse
    with pytest.raises(ValueError):
        GluonWSBlockSparse(block_m=64)
    with pytest.raises(ValueError):
        GluonWSBlockSparse(pingpong="named")  # a bool now: the named barriers are the only hand-over
    q = torch.zeros(1, 1, 8, 128, dtype=torch.float32)
    reasons = GluonWSBlockSparse().why_unsupported(q, q, q)
    assert any("CUDA" in r for r in reasons) or any("interpreter" in r for r in reasons), reasons
    assert any("float32" in r for r in reasons), reasons
    q = torch.zeros(1, 1, 8, 96, dtype=torch.bfloat16)
    assert any("head dim 96" in r for r in GluonWSBlockSparse().why_unsupported(q, q, q))
    with pytest.raises(ValueError, match="_row_threads"):
        GluonWSBlockSparse(_row_threads=4)
    q = torch.zeros(1, 1, 8, 64, dtype=torch.bfloat16)
    assert any("_row_threads=16 needs head dim ≥ 128" in r
               for r in GluonWSBlockSparse(_row_threads=16).why_unsupported(q, q, q))
    assert not any("_row_threads" in r for r in GluonWSBlockSparse().why_unsupported(q, q, q))


# ----------------------------------------------------------------------------------------------------------------
# CUDA (sm_90): kernel gluon_ws's own options
# ----------------------------------------------------------------------------------------------------------------
def _check(q, k, v, layout, mask, dtype, case, **options):
    return check(GluonWSBlockSparse(**options), q, k, v, layout, mask, dtype, f"{case} {options or ''}")


@needs_hopper
def test_equals_kernel_gluon():
    """Same plan and tiles: the output matches kernel 'gluon' to rounding (bit for bit with early_rescale=False,
    which keeps that kernel's order of operations)."""
    from sparseattn.kernels.gluon_attention import GluonBlockSparse

    gen, (b, h, n, d), q_sizes, k_sizes, selected = _random_case("clusters, some empty, N % 128 ≠ 0")
    q, k, v = _qkv(gen, b, h, n, d, torch.bfloat16)
    layout = _layout(q_sizes, k_sizes, d)
    mask = BlockMask(selected.cuda())
    theirs = _through(GluonBlockSparse(), q, k, v, layout, mask)
    for persistent in (True, False):
        ours = _through(GluonWSBlockSparse(persistent=persistent), q, k, v, layout, mask)
        err = _rel(ours, theirs)
        print(f"gluon_ws (persistent {persistent}) vs gluon: {err:.2e}, bit-identical: {torch.equal(ours, theirs)}")
        assert err < 1e-2
        late = _through(GluonWSBlockSparse(early_rescale=False, persistent=persistent), q, k, v, layout, mask)
        print(f"gluon_ws (late rescale, persistent {persistent}) vs gluon: bit-identical: {torch.equal(late, theirs)}")
        assert torch.equal(late, theirs)


@needs_hopper
@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("programs", [1, 7, None])
@pytest.mark.parametrize("case", ["many work items (several per program)", "many tiny clusters",
                                  "token orders (fused permutation)", "clusters, some empty, N % 128 ≠ 0"])
def test_persistent_equals_one_program_per_item(case, programs, dynamic, monkeypatch):
    """The persistent main pass (one program running every work item, 7 programs, or one per SM; the K/V ring and
    the Q barriers run on across items, unused slots skipped; items claimed through an atomic counter or strided)
    equals one program per item bit for bit, and the reference to tolerance; with late rescale too."""
    import sparseattn.kernels.gluon_ws_attention as module

    if programs is not None:
        monkeypatch.setattr(module, "_sm_count", lambda device: programs)
    gen, (b, h, n, d), q_sizes, k_sizes, selected = _random_case(case)
    q, k, v = _qkv(gen, b, h, n, d, torch.bfloat16)
    layout = _layout(q_sizes, k_sizes, d, gen if "orders" in case else None)
    mask = BlockMask(selected.cuda())
    for early in (True, False):
        ours = _check(q, k, v, layout, mask, torch.bfloat16, f"{case}, {programs or 'SM count'} programs",
                      persistent=True, dynamic=dynamic, early_rescale=early)
        theirs = _through(GluonWSBlockSparse(persistent=False, early_rescale=early), q, k, v, layout, mask)
        print(f"  persistent vs one program per item (early_rescale {early}): bit-identical "
              f"{torch.equal(ours, theirs)}, {_rel(ours, theirs):.2e}")
        assert torch.equal(ours, theirs)


@needs_hopper
@pytest.mark.parametrize("persistent,dynamic,programs", [(True, True, 1), (True, True, 7), (True, True, None),
                                                         (True, False, 7), (True, False, None), (False, True, None)])
@pytest.mark.parametrize("case", ["many work items (several per program)", "clusters, some empty, N % 128 ≠ 0",
                                  "batch 2, long lists"])
def test_named_pingpong_equals_free_running(case, persistent, dynamic, programs, monkeypatch):
    """The ping-pong through named barriers (pingpong=True: the warpgroups' products in strict alternation, the
    turns running on across the persistent kernel's items, empty lists and partial tiles included) changes only
    when products are issued, not the arithmetic: the same output bit for bit."""
    import sparseattn.kernels.gluon_ws_attention as module

    if programs is not None:
        monkeypatch.setattr(module, "_sm_count", lambda device: programs)
    gen, (b, h, n, d), q_sizes, k_sizes, selected = _random_case(case)
    q, k, v = _qkv(gen, b, h, n, d, torch.bfloat16)
    layout = _layout(q_sizes, k_sizes, d)
    mask = BlockMask(selected.cuda())
    ours = _check(q, k, v, layout, mask, torch.bfloat16, f"{case}, {programs or 'SM count'} programs",
                  pingpong=True, persistent=persistent, dynamic=dynamic)
    theirs = _through(GluonWSBlockSparse(pingpong=False, persistent=persistent, dynamic=dynamic), q, k, v, layout,
                      mask)
    print(f"  named ping-pong vs free-running: bit-identical {torch.equal(ours, theirs)}")
    assert torch.equal(ours, theirs)


@needs_hopper
@pytest.mark.parametrize("dynamic", [True, False])
def test_persistent_captures_in_a_cuda_graph(dynamic):
    """No host synchronisation: the persistent call (its work-item counter zeroed in the graph) captures in a CUDA
    graph, and replays give the same output."""
    case = "many work items (several per program)"
    gen, (b, h, n, d), q_sizes, k_sizes, selected = _random_case(case)
    q, k, v = _qkv(gen, b, h, n, d, torch.bfloat16)
    kern = GluonWSBlockSparse(persistent=True, dynamic=dynamic)
    plan = kern.plan(_layout(q_sizes, k_sizes, d), BlockMask(selected.cuda()), q)
    eager = kern.run(plan, q, k, v).clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        kern.run(plan, q, k, v)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kern.run(plan, q, k, v)
    for _ in range(2):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)


@needs_hopper
@pytest.mark.parametrize("n", [129, 3001])
@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("pingpong,early_rescale", [(True, True), (True, False), (False, False), (False, True)])
def test_scheduling_options(n, pingpong, early_rescale, persistent):
    """The consumer warpgroups alternating their products (pingpong) or not, O rescaled under the score product
    (early_rescale) or after the P·V product, persistent or one program per item: the same attention."""
    gen = torch.Generator().manual_seed(n)
    q, k, v = _qkv(gen, 1, 2, n, 128, torch.bfloat16)
    q_sizes = torch.stack([_sizes(gen, n, 5, 0.2, one_token=True) for _ in range(2)]).reshape(1, 2, 5)
    selected = torch.rand(1, 2, 5, 5, generator=gen) < 0.6
    selected[..., 0, :] = True
    _check(q, k, v, _layout(q_sizes, q_sizes.clone(), 128), BlockMask(selected.cuda()), torch.bfloat16,
           f"n {n}", pingpong=pingpong, early_rescale=early_rescale, persistent=persistent)
