"""Image augmentations of the learners: DrQ random shift and SVEA/SGQN natural-image overlay.

Both act on stacked frames `[B, C, H, W]`, C = 3 × frames, pixel values in [0, 255].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def random_shift(x: Tensor, pad: int = 4, shifts: Tensor | None = None) -> Tensor:
    """DrQ shift: replicate-pad by `pad`, then crop back to H×W at a random integer offset per sample.

    Vectorised as one gather with clamped indices (clamping = replicate padding), so it works on uint8
    without a float copy of the padded batch. Keeps the dtype.

    Args:
        x: `[B, C, H, W]`.
        pad: padding in pixels (4 in DrQ/SVEA/SGQN); offsets are uniform in {0, …, 2·pad} per axis.
        shifts: optional `[B, 2]` integer (row, column) offsets in [0, 2·pad], for tests.
    """
    b, c, h, w = x.shape
    if pad == 0:
        return x
    if shifts is None:
        shifts = torch.randint(0, 2 * pad + 1, (b, 2), device=x.device)
    rows = (torch.arange(h, device=x.device) + shifts[:, :1] - pad).clamp_(0, h - 1)  # [B, H]
    cols = (torch.arange(w, device=x.device) + shifts[:, 1:] - pad).clamp_(0, w - 1)  # [B, W]
    # One gather over the flattened image (the same source pixel index for every channel).
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)


def random_overlay(x: Tensor, images: Tensor, alpha: float = 0.5, index: Tensor | None = None) -> Tensor:
    """(1 − α)·x + α·image, one natural image per sample, the same image over all stacked frames.

    Args:
        x: `[B, C, H, W]` float in [0, 255].
        images: `[N, 3, H, W]` uint8 (or float in [0, 255]) image bank (Places365 in the reference).
        alpha: overlay weight (0.5 in SVEA/SGQN).
        index: optional `[B]` image indices, for tests; random otherwise.
    """
    if index is None:
        index = torch.randint(len(images), (x.shape[0],), device=images.device)
    overlay = images[index].to(device=x.device, dtype=x.dtype).repeat(1, x.shape[1] // 3, 1, 1)
    return (1 - alpha) * x + alpha * overlay


class Overlay(nn.Module):
    """`random_overlay` over an image bank kept as a buffer (moved with the module, not checkpointed).

    Args:
        images: uint8 `[N, 3, H, W]`, or None to set later with `set_images`.
        alpha: overlay weight (0.5).
    """

    def __init__(self, images: Tensor | None = None, alpha: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("images", images, persistent=False)
        self.alpha = alpha

    def set_images(self, images: Tensor) -> None:
        self.images = images

    def forward(self, x: Tensor) -> Tensor:
        if self.images is None:
            raise RuntimeError(
                "no overlay images: call set_images() (or AgentModule.set_overlay_images) first"
            )
        return random_overlay(x, self.images, self.alpha)


__all__ = ["Overlay", "random_overlay", "random_shift"]
