"""Pictures of what the agent looks at: saliency grids, eval videos with the mask blended in, mask IoU.

Everything here works on the newest frame of a stacked observation (`[..., 3*k, H, W]`, oldest first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw

GRID_ROWS = ("observation", "attribution", "mask", "masked", "predicted")
LABEL_WIDTH = 72  # pixels of row labels on the left of a grid
MASK_COLOUR = np.array([255, 40, 40], dtype=np.float32)


def newest_frame(stacked: torch.Tensor) -> torch.Tensor:
    """`[N, 3k, H, W]` → `[N, 3, H, W]`, the last frame of the stack."""
    return stacked[:, -3:]


def _to_rgb_uint8(images: torch.Tensor) -> np.ndarray:
    """`[N, 3, H, W]` (uint8 or float in [0, 255]) → `[N, H, W, 3]` uint8."""
    return images.detach().float().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _grey(maps: torch.Tensor) -> np.ndarray:
    """`[N, H, W]` in [0, 1] → `[N, H, W, 3]` uint8."""
    grey = (maps.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return np.repeat(grey[..., None], 3, axis=-1)


def normalised_attribution(attribution: torch.Tensor) -> torch.Tensor:
    """|guided backprop| of the newest frame, max over colour, scaled to [0, 1] per sample."""
    magnitude = newest_frame(attribution).abs().amax(dim=1)
    peak = magnitude.flatten(1).amax(dim=1).clamp_min(1e-12)
    return magnitude / peak[:, None, None]


def saliency_grid(
    obs: torch.Tensor,
    attribution: torch.Tensor,
    mask: torch.Tensor,
    masked_obs: torch.Tensor,
    predicted: torch.Tensor | None = None,
    column_labels: Sequence[str] | None = None,
) -> np.ndarray:
    """One image: a column per observation, rows observation | attribution | mask | masked | predicted.

    Args:
        obs: stacked observations `[N, 3k, H, W]` in [0, 255].
        attribution: guided-backprop attribution, same shape.
        mask: binary saliency mask at ρ, same shape.
        masked_obs: the observation with non-salient pixels greyed out, same shape.
        predicted: the attribution predictor's probabilities, same shape (row left black if None).
        column_labels: a caption per column (e.g. the test mode).

    Returns:
        uint8 `[5 * H + header, LABEL_WIDTH + N * W, 3]`.
    """
    n, _, height, width = obs.shape
    rows = [
        _to_rgb_uint8(newest_frame(obs)),
        _grey(normalised_attribution(attribution)),
        _grey(newest_frame(mask).float().amax(dim=1)),
        _to_rgb_uint8(newest_frame(masked_obs)),
        _grey(newest_frame(predicted).float().mean(dim=1))
        if predicted is not None
        else np.zeros((n, height, width, 3), np.uint8),
    ]
    header = 12 if column_labels else 0
    canvas = np.zeros((header + len(rows) * height, LABEL_WIDTH + n * width, 3), np.uint8)
    for r, row in enumerate(rows):
        top = header + r * height
        canvas[top : top + height, LABEL_WIDTH:] = row.transpose(1, 0, 2, 3).reshape(height, n * width, 3)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for r, name in enumerate(GRID_ROWS):
        draw.text((2, header + r * height + height // 2 - 5), name, fill=(255, 255, 255))
    for c, label in enumerate(column_labels or []):
        draw.text((LABEL_WIDTH + c * width + 2, 0), label[: max(1, width // 6)], fill=(255, 255, 255))
    return np.asarray(picture)


def mask_iou(mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two binary masks, per sample (`[N, ...]` → `[N]`); 1 when both empty."""
    a, b = mask_a.bool().flatten(1), mask_b.bool().flatten(1)
    intersection = (a & b).sum(dim=1).float()
    union = (a | b).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def blend_mask(frames: np.ndarray, masks: np.ndarray, strength: float = 0.5) -> np.ndarray:
    """Tint salient pixels: frames `[T, H, W, 3]` uint8, masks `[T, H, W]` bool."""
    alpha = masks[..., None].astype(np.float32) * strength
    return (frames * (1 - alpha) + MASK_COLOUR * alpha).round().astype(np.uint8)


def write_video(frames: np.ndarray, path: str | Path, fps: int = 30, scale: int = 2) -> Path:
    """Encode `[T, H, W, 3]` uint8 frames as an H.264 mp4 with PyAV (nearest-neighbour upscaled)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
    height, width = frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            padded = np.zeros((height, width, 3), np.uint8)
            padded[: frame.shape[0], : frame.shape[1]] = frame
            container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
        container.mux(stream.encode())
    return path


def read_video(path: str | Path) -> np.ndarray:
    """Decode an mp4 into `[T, H, W, 3]` uint8 (used by tests and notebooks)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
