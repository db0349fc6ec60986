"""The attribution decoder's upsample + conv pairs in sub-pixel form (`SpeedOptions.subpixel_decoder`):
the same parameters, function and gradients as the literal `UpsampleConv`, ~4× faster on CPU."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from sgqn.nets.decoder import UpsampleConv

# Nearest ×2 upsampling then a 3×3 conv (padding 1), seen from the low-resolution input: output row 2i + a
# reads low-res rows (i − 1, i) for a = 0 and (i, i + 1) for a = 1, with the 3×3 kernel's rows summed as
# _PHASE_ROWS[a] (same for columns). So each of the 4 output phases is a 2×2 conv of the low-res input.
_PHASE_ROWS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _phase_rows(like: Tensor) -> Tensor:
    """`_PHASE_ROWS` as a tensor on `like`'s device, written there by fills: no host-to-device copy, which
    a CUDA graph could not capture."""
    phase = like.new_zeros(2, 2, 3)
    for a, taps in enumerate(_PHASE_ROWS):
        for tap, rows in enumerate(taps):
            for row, value in enumerate(rows):
                if value:
                    phase[a, tap, row].fill_(value)
    return phase


def subpixel_upsample_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`conv2d(nearest_upsample_x2(x), weight, bias, padding=1)` for a 3×3 kernel, without forming the
    upsampled input: one conv with 2×2 kernels of 4× the output channels at low resolution (~2.2× fewer
    FLOPs), then the phases are interleaved into the 2× output. The same function and gradients, up to
    float rounding. The phases are laid out (row phase, column phase, channel) so that, channels-last,
    each interleaving copy moves whole channel vectors. Returns a channels-last tensor.
    """
    cout, cin = weight.shape[:2]
    phase = _phase_rows(weight)  # [a, tap, kernel row]
    kernel = torch.einsum("akr,bls,oirs->aboikl", phase, phase, weight).reshape(4 * cout, cin, 2, 2)
    x = x.contiguous(memory_format=torch.channels_last)
    kernel = kernel.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, kernel, None if bias is None else bias.repeat(4), padding=1)  # [B, (a, c, o), h+1, w+1]
    return _InterleavePhases.apply(y)


class _InterleavePhases(torch.autograd.Function):
    """Phase maps `[B, (2, 2, C), h+1, w+1]` → `[B, C, 2h, 2w]`: output pixel (2i + a, 2j + c) is phase
    (a, c) at (i + a, j + c). Written by hand because autograd's backward of the four strided slice
    copies zero-fills a full-size tensor per slicing level (~3× the decoder's own convolutions on CPU).
    Channels-last in and out, so every copy moves whole channel vectors.
    """

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> Tensor:
        b, c4, h1, w1 = y.shape
        ctx.shape = y.shape
        src = y.permute(0, 2, 3, 1).reshape(b, h1, w1, 2, 2, c4 // 4)  # a view when y is channels-last
        out = y.new_empty(b, h1 - 1, 2, w1 - 1, 2, c4 // 4)  # = [B, 2h, 2w, C] channels-last
        for a in (0, 1):
            for c in (0, 1):
                out[:, :, a, :, c] = src[:, a : a + h1 - 1, c : c + w1 - 1, a, c]
        return out.view(b, 2 * h1 - 2, 2 * w1 - 2, c4 // 4).permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        b, c4, h1, w1 = ctx.shape
        src = grad.permute(0, 2, 3, 1).reshape(b, h1 - 1, 2, w1 - 1, 2, c4 // 4)
        out = grad.new_zeros(b, h1, w1, 2, 2, c4 // 4)
        for a in (0, 1):
            for c in (0, 1):
                out[:, a : a + h1 - 1, c : c + w1 - 1, a, c] = src[:, :, a, :, c]
        return out.view(b, h1, w1, c4).permute(0, 3, 1, 2)


class SubpixelUpsampleConv(UpsampleConv):
    """`UpsampleConv` computed by `subpixel_upsample_conv` (what `sgqn.training.speed` swaps in)."""

    def forward(self, x: Tensor) -> Tensor:
        return subpixel_upsample_conv(x, self.weight, self.bias)


__all__ = ["SubpixelUpsampleConv", "subpixel_upsample_conv"]
