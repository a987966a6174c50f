"""Quality of a generated video against a reference video: PSNR, SSIM and (optionally) LPIPS.

Videos are compared frame by frame at the same size. Accepted inputs: numpy arrays or tensors [T, H, W, C] (what
diffusers pipelines return with ``output_type="np"``), float in [0, 1] or uint8 in [0, 255]; a leading batch
dimension of 1 is dropped. Frames are converted to float64 in [0, 1] a few at a time on ``device`` (pass the GPU
for long videos: SSIM of a 129-frame 720p video takes minutes on a CPU), so the working memory is a few hundred MB,
not tens of GB.

- PSNR: 10·log10(1 / MSE), the MSE taken over every pixel of the whole video (not a mean of per-frame PSNRs).
- SSIM: Wang et al. (2004) with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, computed per frame and
  channel over the window positions that fit inside the frame (no padding), then averaged.
- LPIPS: the ``lpips`` package (AlexNet features) when it and its weights are available, else None with the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
FRAMES_PER_CHUNK = 4


def as_video(frames: Any, name: str = "video") -> Tensor:
    """Frames [T, H, W, C] (numpy or torch; float in [0, 1] or uint8) as a validated CPU tensor of the same dtype."""
    video = torch.from_numpy(np.asarray(frames)) if not isinstance(frames, Tensor) else frames.detach().cpu()
    if video.dim() == 5 and video.shape[0] == 1:
        video = video[0]
    if video.dim() != 4 or video.shape[-1] not in (1, 3):
        raise ValueError(
            f"{name} must have shape [frames, height, width, channels] with 1 or 3 channels, got {tuple(video.shape)}"
        )
    if video.is_floating_point():
        if not bool(torch.isfinite(video).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
        low, high = float(video.min()), float(video.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(f"{name} must be in [0, 1] (float) or uint8, got values in [{low:.4g}, {high:.4g}]")
    elif video.dtype != torch.uint8:
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got dtype {video.dtype}")
    return video


def _pair(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    x, y = as_video(a, "first video"), as_video(b, "second video")
    if x.shape != y.shape:
        raise ValueError(f"the videos must have the same frames, size and channels, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)} ([T, H, W, C])")
    return x, y


def _chunks(x: Tensor, y: Tensor, device: str | torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive frames of both videos as float64 [n, C, H, W] in [0, 1] on ``device``."""
    def unit(frames: Tensor) -> Tensor:
        frames = frames.to(device)
        frames = frames.double() / 255.0 if frames.dtype == torch.uint8 else frames.double()
        return frames.permute(0, 3, 1, 2)

    for start in range(0, x.shape[0], FRAMES_PER_CHUNK):
        yield unit(x[start:start + FRAMES_PER_CHUNK]), unit(y[start:start + FRAMES_PER_CHUNK])


def psnr(a: Any, b: Any, device: str | torch.device = "cpu") -> float:
    """Peak signal-to-noise ratio in dB over the whole video (peak 1.0); ``inf`` for identical videos."""
    x, y = _pair(a, b)
    squared_error = sum(float(((p - q) ** 2).sum()) for p, q in _chunks(x, y, device))
    mse = squared_error / x.numel()
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(a: Any, b: Any, device: str | torch.device = "cpu") -> float:
    """Mean structural similarity over frames, channels and window positions (see the module docstring)."""
    x, y = _pair(a, b)
    height, width = x.shape[1:3]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {height}×{width}")
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    line = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    line = line / line.sum()
    rows, columns = line.view(1, 1, -1, 1), line.view(1, 1, 1, -1)  # the 2-D Gaussian is separable
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    total, count = 0.0, 0
    for p, q in _chunks(x, y, device):
        p, q = p.reshape(-1, 1, height, width), q.reshape(-1, 1, height, width)  # one image per frame and channel

        def local_mean(t: Tensor) -> Tensor:
            return torch.nn.functional.conv2d(torch.nn.functional.conv2d(t, rows), columns)

        mu_p, mu_q = local_mean(p), local_mean(q)
        var_p = local_mean(p * p) - mu_p**2
        var_q = local_mean(q * q) - mu_q**2
        cov = local_mean(p * q) - mu_p * mu_q
        index = ((2 * mu_p * mu_q + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_q**2 + c1) * (var_p + var_q + c2))
        total += float(index.sum())
        count += index.numel()
    return total / count


def lpips(a: Any, b: Any, device: str | torch.device = "cpu") -> tuple[Optional[float], str]:
    """(mean LPIPS distance over frames, "") or (None, why it is unavailable).

    Needs the optional ``lpips`` package and its AlexNet weights (torchvision downloads them on first use; offline
    they must already be in the torch hub cache).
    """
    x, y = _pair(a, b)
    try:
        import lpips as lpips_package
    except ImportError:
        return None, "the optional 'lpips' package is not installed (pip install lpips)"
    try:
        model = lpips_package.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as exc:  # no network and no cached weights, among others
        return None, f"LPIPS weights are unavailable: {exc}"
    distances = []
    with torch.no_grad():
        for p, q in _chunks(x, y, device):  # LPIPS takes images in [-1, 1]
            distances += model(p.float() * 2 - 1, q.float() * 2 - 1).flatten().tolist()
    return float(np.mean(distances)), ""


@dataclass
class VideoComparison:
    """PSNR (dB), SSIM and LPIPS (None when unavailable, with ``lpips_note`` saying why) of one video against a
    reference."""

    psnr: float
    ssim: float
    lpips: Optional[float]
    lpips_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON)."""
        return {"psnr": self.psnr, "ssim": self.ssim, "lpips": self.lpips, "lpips_note": self.lpips_note}


def compare_videos(video: Any, reference: Any, use_lpips: bool = True,
                   device: str | torch.device = "cpu") -> VideoComparison:
    """PSNR, SSIM and (when ``use_lpips`` and available) LPIPS of ``video`` against ``reference``, on ``device``."""
    lpips_value, note = lpips(video, reference, device) if use_lpips else (None, "not requested")
    return VideoComparison(psnr(video, reference, device), ssim(video, reference, device), lpips_value, note)
