"""SASS of compiled kernels, for the CPU tests that check what ptxas made of them (Gluon kernels compiled for sm_90a
without a GPU): the innermost loops around an instruction, and an instruction's opcode."""
from __future__ import annotations

import os
import re
import subprocess

import pytest


def opcode(instruction: str) -> str:
    """The opcode of one SASS instruction (its predicate, ``@P0`` or ``@!UP1``, skipped)."""
    words = instruction.split()
    return words[1] if words[0].startswith("@") else words[0]


def innermost_loops(cubin, marker: str) -> list:
    """The SASS of each innermost loop holding an instruction whose opcode starts with ``marker`` (``HGMMA``,
    ``LDGSTS``, …), by cuobjdump beside the Triton wheel's ptxas: a list of instruction lists (skips the test when
    there is no cuobjdump)."""
    import triton

    binary = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(binary):
        pytest.skip(f"no cuobjdump at {binary}")
    sass = subprocess.run([binary, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    code = [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = [(int(b.group(1), 16), addr) for addr, text in code
             if (b := re.search(r"\bBRA\s+(?:`\()?0x([0-9a-f]+)", text)) and int(b.group(1), 16) <= addr]
    marked = [addr for addr, text in code if opcode(text).startswith(marker)]

    def holds(lo, hi):
        return any(lo <= a <= hi for a in marked)

    inner = [(lo, hi) for lo, hi in loops if holds(lo, hi)
             and not any(lo <= a and b <= hi and (a, b) != (lo, hi) and holds(a, b) for a, b in loops)]
    assert inner, f"no loop around {marker}"
    return [[text for addr, text in code if lo <= addr <= hi] for lo, hi in inner]
