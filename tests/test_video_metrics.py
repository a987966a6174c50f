"""PSNR / SSIM / LPIPS of videos against closed-form values and a brute-force SSIM."""
import math

import numpy as np
import pytest
import torch

from sparseattn import video_metrics
from sparseattn.video_metrics import compare_videos, psnr, ssim


def constant_video(value: float, frames: int = 2, size: int = 16) -> np.ndarray:
    return np.full((frames, size, size, 3), value, dtype=np.float64)


def brute_force_ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """SSIM by explicit loops over frames, channels and every window position inside the frame (float64)."""
    offsets = np.arange(window) - (window - 1) / 2
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    frames, height, width, channels = a.shape
    for t in range(frames):
        for c in range(channels):
            for y in range(height - window + 1):
                for x in range(width - window + 1):
                    pa = a[t, y : y + window, x : x + window, c].astype(np.float64)
                    pb = b[t, y : y + window, x : x + window, c].astype(np.float64)
                    mu_a, mu_b = (weights * pa).sum(), (weights * pb).sum()
                    var_a = (weights * (pa - mu_a) ** 2).sum()
                    var_b = (weights * (pb - mu_b) ** 2).sum()
                    cov = (weights * (pa - mu_a) * (pb - mu_b)).sum()
                    values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2))
                                  / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_psnr_known_values():
    assert psnr(constant_video(0.5), constant_video(0.6)) == pytest.approx(20.0, abs=1e-5)  # MSE 0.01
    assert psnr(constant_video(0.2), constant_video(0.2)) == math.inf
    # One frame of six (frames are processed a few at a time) differs by 0.1: MSE 0.01 / 6 → 10·log10(600).
    a, b = constant_video(0.3, frames=6), constant_video(0.3, frames=6)
    b[5] += 0.1
    assert psnr(a, b) == pytest.approx(10 * math.log10(600), abs=1e-9)


def test_uint8_and_float_inputs_agree():
    gen = np.random.default_rng(0)
    a = gen.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    b = gen.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    assert psnr(a, b) == pytest.approx(psnr(a / 255.0, torch.from_numpy(b / 255.0)), rel=1e-12)
    assert ssim(a[None], b) == pytest.approx(ssim(a / 255.0, b / 255.0), rel=1e-12)  # a leading batch of 1 is dropped


def test_ssim_closed_forms():
    assert ssim(constant_video(0.4), constant_video(0.4)) == pytest.approx(1.0, abs=1e-12)
    # Flat frames have no variance: SSIM = (2·μa·μb + C1) / (μa² + μb² + C1).
    c1 = 0.01**2
    assert ssim(constant_video(0.5), constant_video(0.6)) == pytest.approx((0.6 + c1) / (0.61 + c1), abs=1e-10)
    # A video against its negative: the structure term is -1 where there is texture.
    gen = np.random.default_rng(1)
    texture = gen.uniform(0.25, 0.75, size=(1, 16, 16, 1))
    assert ssim(texture, 1.0 - texture) < -0.5


def test_ssim_matches_brute_force():
    gen = np.random.default_rng(2)
    a = gen.uniform(0, 1, size=(5, 14, 13, 3))  # more frames than one chunk
    b = np.clip(a + gen.normal(0, 0.1, size=a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(brute_force_ssim(a, b), abs=1e-10)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="same frames, size and channels"):
        psnr(constant_video(0.5, frames=2), constant_video(0.5, frames=3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(constant_video(0.5), constant_video(1.5))
    with pytest.raises(ValueError, match="NaN"):
        psnr(constant_video(float("nan")), constant_video(0.5))
    with pytest.raises(ValueError, match="frames, height, width, channels"):
        ssim(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(constant_video(0.5, size=8), constant_video(0.5, size=8))


def test_lpips_is_optional():
    result = compare_videos(constant_video(0.5), constant_video(0.6))
    assert result.psnr == pytest.approx(20.0, abs=1e-5)
    try:
        import lpips  # noqa: F401
    except ImportError:
        assert result.lpips is None and "lpips" in result.lpips_note
        assert video_metrics.lpips(constant_video(0.5), constant_video(0.6))[0] is None
    else:
        assert result.lpips is None or result.lpips >= 0.0
    assert compare_videos(constant_video(0.5), constant_video(0.6), use_lpips=False).lpips_note == "not requested"
