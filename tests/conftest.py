"""Shared test set-up: Triton's CPU interpreter when there is no GPU, and brute-force references used by several files.

``TRITON_INTERPRET`` must be set before anything imports triton; ``import torch`` does not import triton, so checking
for CUDA first is safe (tests/test_layout.py checks that claim).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests use small tensors: one intra-op thread avoids OpenMP hand-offs, which cost milliseconds per op when the
# cores are busy (measured 7x slower block-sparse attention on 2 loaded cores with 2 threads).
torch.set_num_threads(1)

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from sparseattn.interfaces import BlockMask, Layout  # noqa: E402

# --import-mode=importlib keeps test modules off sys.path; helper modules in this folder (block_cases.py,
# sass_tools.py) are imported by name, so the folder goes on it once here.
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def random_qkv(b: int, h: int, n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    """q, k, v [B, H, N, D] from a seeded CPU generator."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen).to(dtype) for _ in range(3))


def block_of_position(sizes: list[int]) -> list[int]:
    """Block index of every position of a permuted sequence, by walking the block sizes one token at a time."""
    blocks = []
    for block, size in enumerate(sizes):
        blocks += [block] * int(size)
    return blocks


def block_of_token(sizes: list[int], order: list[int] | None) -> list[int]:
    """Block index of every *original* token: token order[i] sits at permuted position i."""
    by_position = block_of_position(sizes)
    if order is None:
        return by_position
    result = [None] * len(by_position)
    for position, token in enumerate(order):
        result[token] = by_position[position]
    return result


def token_mask(layout: Layout, mask: BlockMask, bi: int, hi: int, permuted: bool = False) -> torch.Tensor:
    """[N, N] bool: query token i may attend key token j (original order, or permuted positions)."""
    q_sizes, k_sizes = layout.q_sizes[bi, hi].tolist(), layout.k_sizes[bi, hi].tolist()
    if permuted:
        q_block, k_block = block_of_position(q_sizes), block_of_position(k_sizes)
    else:
        q_order = None if layout.q_order is None else layout.q_order[bi, hi].tolist()
        kv_order = None if layout.kv_order is None else layout.kv_order[bi, hi].tolist()
        q_block, k_block = block_of_token(q_sizes, q_order), block_of_token(k_sizes, kv_order)
    selected = mask.selected[bi, hi].tolist()
    return torch.tensor([[selected[qb][kb] for kb in k_block] for qb in q_block], dtype=torch.bool)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Dense softmax attention in float64 over the allowed (query, key) pairs of one head; rows with none give 0."""
    scores = (q.double() @ k.double().T) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an all -inf row is NaN: no keys, no output
    return probs @ v.double()


def dense_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Exact softmax attention probabilities [N, N] of one head, in float64."""
    return torch.softmax((q.double() @ k.double().T) / math.sqrt(q.shape[-1]), dim=-1)


def random_sizes(n: int, blocks: int, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Block sizes summing to n: ``random`` (empty blocks likely at small n), ``one`` (one block holds every token),
    ``singletons`` (as many 1-token blocks as fit, the rest in the last block)."""
    if mode == "random":
        return torch.bincount(torch.randint(blocks, (n,), generator=gen), minlength=blocks)
    sizes = torch.zeros(blocks, dtype=torch.long)
    if mode == "one":
        sizes[int(torch.randint(blocks, (1,), generator=gen))] = n
    elif mode == "singletons":
        ones = min(n, blocks - 1)
        sizes[:ones] = 1
        sizes[-1] = n - ones
    else:
        raise ValueError(mode)
    return sizes


def random_layout(b: int, h: int, n: int, mq: int, mk: int, mode: str, gen: torch.Generator, d: int = 4) -> Layout:
    """A layout with random token orders and block sizes of the given ``mode`` (see `random_sizes`)."""

    def side(blocks: int):
        sizes = torch.stack([random_sizes(n, blocks, mode, gen) for _ in range(b * h)]).reshape(b, h, blocks)
        order = torch.stack([torch.randperm(n, generator=gen) for _ in range(b * h)]).reshape(b, h, n)
        return order, sizes, torch.randn(b, h, blocks, d, generator=gen)

    q_order, q_sizes, q_centroids = side(mq)
    kv_order, k_sizes, k_centroids = side(mk)
    return Layout(q_order, kv_order, q_sizes, k_sizes, q_centroids, k_centroids)


def random_mask(b: int, h: int, mq: int, mk: int, gen: torch.Generator) -> BlockMask:
    """Random selections, with one query block selecting exactly one key block and one selecting all of them."""
    selected = torch.rand(b, h, mq, mk, generator=gen) < 0.5
    selected[:, :, 0] = False
    selected[:, :, 0, int(torch.randint(mk, (1,), generator=gen))] = True
    selected[:, :, -1] = True
    return BlockMask(selected)


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    """Brute-force references and random generators shared by the test files."""
    return SimpleNamespace(
        random_qkv=random_qkv,
        block_of_position=block_of_position,
        block_of_token=block_of_token,
        token_mask=token_mask,
        masked_attention=masked_attention,
        dense_probs=dense_probs,
        random_sizes=random_sizes,
        random_layout=random_layout,
        random_mask=random_mask,
    )


# ----------------------------------------------------------------------------------------------------------------
# Compiling Gluon kernels for sm_90 without a GPU (tests/test_gluon_*.py)
# ----------------------------------------------------------------------------------------------------------------
_COMPILE_SM90 = """
import importlib, json, sys
compile_sm90 = importlib.import_module(sys.argv[1]).compile_sm90
out = {}
for name, kwargs in json.loads(sys.argv[2]).items():
    c = compile_sm90(**kwargs)
    open(f"{sys.argv[3]}/{name}.ptx", "w").write(c.asm["ptx"])
    out[name] = c.metadata.shared
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def compile_sm90(tmp_path_factory):
    """``compile_sm90(module, {name: kwargs})`` → (folder, {name: shared bytes}): ``module.compile_sm90(**kwargs)``
    for each variant, PTX written to folder/NAME.ptx. In a fresh process: Gluon cannot compile under
    TRITON_INTERPRET=1 (set above on CPU machines), and a private cache makes it really compile."""

    def compile_variants(module: str, variants: dict) -> tuple:
        folder = tmp_path_factory.mktemp(module.rsplit(".", 1)[-1] + "_sm90")
        env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = str(folder / "cache")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        res = subprocess.run([sys.executable, "-c", _COMPILE_SM90, module, json.dumps(variants), str(folder)],
                             capture_output=True, text=True, env=env, cwd=root, timeout=900)
        assert res.returncode == 0, res.stderr[-4000:]
        return folder, json.loads(res.stdout.strip().splitlines()[-1])

    return compile_variants


@pytest.fixture(scope="session")
def ptxas():
    """``ptxas(ptx_path)`` → SimpleNamespace(report, registers, spill_stores, spill_loads) from the Triton wheel's
    ptxas -v for sm_90a (skips when the wheel has no ptxas); fails if ptxas rejects the PTX."""
    import triton

    binary = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")

    def run(path) -> SimpleNamespace:
        if not os.path.exists(binary):
            pytest.skip(f"no ptxas at {binary}")
        res = subprocess.run([binary, "-arch=sm_90a", "-v", str(path), "-o", str(path) + ".cubin"],
                             capture_output=True, text=True)
        report = res.stdout + res.stderr
        assert res.returncode == 0, report
        regs = re.search(r"Used (\d+) registers", report)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
        assert regs and spills, report
        return SimpleNamespace(report=report, registers=int(regs.group(1)), spill_stores=int(spills.group(1)),
                               spill_loads=int(spills.group(2)))

    return run
