"""Every tutorial runs end to end (``--quick`` sizes) and prints what its text promises."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tutorial(script: str, *args: str) -> str:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # set by conftest for the kernel tests; tutorials run as a user would
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tutorials", script), "--quick", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_01_compose_yaml(tmp_path):
    out = run_tutorial("01_compose_yaml.py", "--out", str(tmp_path))
    for name in ("svg2-laptop", "svg2-topk", "svg2-numba", "blocks-topk", "dense"):
        assert f"\n{name} " in out, name
    assert "unknown parameter(s) fractoin for budget 'top_k'" in out
    assert sorted(os.listdir(tmp_path)) == ["svg2-laptop.yaml", "svg2-numba.yaml", "svg2-topk.yaml",
                                            "video.safetensors"]


def test_02_new_identifier():
    out = run_tutorial("02_new_identifier.py")
    registered = next(line for line in out.splitlines() if line.startswith("registered identifiers:"))
    assert "sampled" in registered.split(":")[1].replace(",", " ").split()
    assert "\nsvg2-laptop " in out and "\nsvg2-sampled " in out
    assert "sampled estimate: mean |estimate − exact|" in out


def test_03_inspect_tensorboard(tmp_path):
    logdir, png = tmp_path / "logs", tmp_path / "png"
    out = run_tutorial("03_inspect_tensorboard.py", "--logdir", str(logdir), "--png", str(png))
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(logdir))
    assert "step 0: 1.0000" in out  # the dense warm-up step
    images = sorted(os.listdir(png))
    assert "attention_layer1_head0_permuted_step4.png" in images
    assert "clusters_layer1_head0_q_step4.png" in images


def test_04_diffusers_video(tmp_path):
    if importlib.util.find_spec("diffusers") is None:
        pytest.skip("needs the diffusers extra")
    out = run_tutorial("04_diffusers_video.py", "--out", str(tmp_path))
    assert "latent token grid (3, 8, 8)" in out
    assert "layer 1 step 2:" in out
    assert "sparseattn generate --model" in out
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "logs" / "python"))
    assert (tmp_path / "tiny-wan" / "model_index.json").is_file()
