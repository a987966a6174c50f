"""The capture format (save/load round trip and validation), the synthetic generator and the default workload."""
import re

import pytest
import torch
from safetensors.torch import save_file

from sparseattn.workloads import Workload, default_workload, load_capture, save_capture, synthetic_video

METADATA = {"grid": "2,2,3", "text_tokens": "2", "layer": "7", "source": "test"}


def small(**params):
    return synthetic_video(frames=2, height=2, width=3, heads=2, head_dim=8, objects=2, **params)


def write(path, tensors=None, metadata=None):
    tensors = tensors if tensors is not None else {name: torch.randn(1, 2, 14, 8) for name in ("q", "k", "v")}
    save_file(tensors, str(path), metadata=metadata if metadata is not None else METADATA)
    return path


def test_capture_round_trip(tmp_path):
    workload = small(text_tokens=2, seed=3, dtype=torch.float16)
    workload.metadata["note"] = "kept"
    path = tmp_path / "layer7.safetensors"
    save_capture(path, workload)
    loaded = load_capture(path)
    assert loaded.name == "layer7"
    for name in ("q", "k", "v"):
        assert torch.equal(getattr(loaded, name), getattr(workload, name))
        assert getattr(loaded, name).dtype == torch.float16
    assert loaded.grid == (2, 2, 3) and loaded.text_tokens == 2
    assert loaded.metadata["grid"] == "2,2,3" and loaded.metadata["text_tokens"] == "2"
    assert loaded.metadata["layer"] == "synthetic" and loaded.metadata["note"] == "kept"
    assert loaded.metadata["source"].startswith("sparseattn.workloads.synthetic_video(seed=3")
    ctx = loaded.context()
    assert ctx.grid == (2, 2, 3) and ctx.text_tokens == 2 and len(ctx.cache) == 0


def test_hand_written_capture_loads(tmp_path):
    loaded = load_capture(write(tmp_path / "x.safetensors"))
    assert loaded.q.shape == (1, 2, 14, 8) and loaded.grid == (2, 2, 3) and loaded.metadata["layer"] == "7"


@pytest.mark.parametrize(
    "tensors, metadata, message",
    [
        ({"q": torch.randn(1, 2, 14, 8), "k": torch.randn(1, 2, 14, 8)}, None, "missing tensor(s) v"),
        (None, {"grid": "2,2,3", "text_tokens": "2"}, "missing metadata layer, source"),
        (None, {**METADATA, "grid": "2,2,2"}, "grid (2, 2, 2) has 8 video tokens, plus 2 text tokens = 10"),
        (None, {**METADATA, "text_tokens": "0"}, "grid (2, 2, 3) has 12 video tokens"),
        (None, {**METADATA, "grid": "2,7"}, "grid must have three entries"),
        (None, {**METADATA, "grid": "a,b,c"}, "grid must be 'T,H,W'"),
        (None, {**METADATA, "text_tokens": "two"}, "text_tokens an integer"),
        ({name: torch.randn(2, 14, 8) for name in "qkv"}, None, "4 dims"),
        ({name: torch.ones(1, 2, 14, 8, dtype=torch.int32) for name in "qkv"}, None, "dtype torch.int32"),
        ({"q": torch.full((1, 2, 14, 8), float("nan")), "k": torch.randn(1, 2, 14, 8), "v": torch.randn(1, 2, 14, 8)},
         None, "q contains NaN"),
    ],
)
def test_invalid_captures_name_the_file_and_the_problem(tmp_path, tensors, metadata, message):
    path = write(tmp_path / "bad.safetensors", tensors, metadata)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        load_capture(path)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not tensors")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable safetensors capture file")):
        load_capture(path)
    with pytest.raises(ValueError, match="workload file not found"):
        load_capture(tmp_path / "missing.safetensors")


def test_synthetic_video_is_deterministic_and_consistent():
    first, second = small(seed=5, text_tokens=3), small(seed=5, text_tokens=3)
    for name in ("q", "k", "v"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert not torch.equal(first.q, small(seed=6, text_tokens=3).q)
    assert first.q.shape == (1, 2, 2 * 2 * 3 + 3, 8) and first.grid == (2, 2, 3) and first.text_tokens == 3
    assert first.metadata["video_tokens"] == "12"
    batch = synthetic_video(frames=3, height=4, width=5, heads=3, head_dim=16, batch=2, dtype=torch.bfloat16)
    assert batch.q.shape == batch.k.shape == batch.v.shape == (2, 3, 60, 16)
    assert batch.q.dtype == torch.bfloat16 and batch.grid == (3, 4, 5) and batch.text_tokens == 0
    assert bool(torch.isfinite(batch.q.float()).all())


def test_workload_rejects_a_grid_that_does_not_fit():
    q = torch.randn(1, 1, 10, 4)
    with pytest.raises(ValueError, match="grid"):
        Workload("w", q, q, q, (2, 2, 2), text_tokens=1)


def test_default_workload_loads():
    workload = default_workload()
    b, h, n, d = workload.q.shape
    t, y, x = workload.grid
    assert n == t * y * x + workload.text_tokens
    assert workload.name == "default" and workload.metadata["source"]
    moved = workload.to("cpu", torch.float32)
    assert moved.q.dtype == torch.float32 and moved.grid == workload.grid
    torch.testing.assert_close(moved.q, workload.q.float())
