"""SGQN's attribution decoder: from the critic's embedding and the action, logits of the saliency mask."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UpsampleConv(nn.Conv2d):
    """A ×2 nearest upsampling followed by this 3×3, padding-1 convolution (the reference's pair).

    `sgqn.training.speed` may compute it in sub-pixel form instead (the same function, ~4× faster on CPU).
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


class DecoderConvs(nn.Module):
    """The decoder's convolutions, from the first feature map to the per-pixel logits."""

    def __init__(self, channels: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.conv2 = UpsampleConv(channels[1], channels[2], 3, padding=1)
        self.conv3 = UpsampleConv(channels[2], out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # ReLU commutes with nearest upsampling, so it is applied before each upsample + conv.
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.conv3(x)


class AttributionDecoder(nn.Module):
    """SGQN's attribution decoder: (critic embedding z, action) → per-pixel logits of the saliency mask.

    Linear(→32·h·w), ReLU, Conv(32→128), ×2 nearest upsample, ReLU, Conv(128→64), ×2, ReLU, Conv(64→C)
    (3×3, padding 1), with h, w = H/4, W/4 (21×21 at 84 px, as the reference's hard-coded 14112 = 32·21·21;
    independent of the encoder's depth). PyTorch default init, as the reference (it skips `weight_init`).

    Args:
        action_dim: |A|.
        feature_dim: width of the critic's projection (100).
        obs_shape: (C, H, W) of the observation (H, W divisible by 4).
        channels: channels of the first feature map and of the two hidden convs ((32, 128, 64), the
            paper's; CPU smoke configs shrink them: at small encoders the decoder dominates the update).
    """

    def __init__(
        self,
        action_dim: int,
        feature_dim: int = 100,
        obs_shape: tuple[int, int, int] = (9, 84, 84),
        channels: tuple[int, int, int] = (32, 128, 64),
    ) -> None:
        super().__init__()
        c, h, w = obs_shape
        if h % 4 or w % 4:
            raise ValueError(f"the attribution decoder needs H and W divisible by 4, got {h}×{w}")
        self.base_shape = (channels[0], h // 4, w // 4)
        self.proj = nn.Linear(feature_dim + action_dim, math.prod(self.base_shape))
        self.convs = DecoderConvs(channels, c)

    def forward(self, z: Tensor, action: Tensor) -> Tensor:
        x = F.relu(self.proj(torch.cat([z, action], dim=-1)).view(-1, *self.base_shape))
        return self.convs(x)


__all__ = ["AttributionDecoder", "DecoderConvs", "UpsampleConv"]
