"""Networks of SAC / SVEA / SGQN on stacked pixel frames (the SVEA / DMC-GB architecture).

    obs [B, 9, 84, 84] in [0, 255] ─ Encoder (shared by actor and critic) ─ flat conv features
        ├─ Actor:  Projection(→100, LayerNorm, Tanh) → MLP 1024-1024 → tanh-squashed Gaussian
        └─ Critic: Projection(→100, LayerNorm, Tanh) → Q1, Q2: MLP 1024-1024 on [z, a]

The actor never trains the encoder: its loss reads detached conv features (`Actor.head`). All ReLUs are
`GuidedReLU` modules so the critic's guided backprop (and captum's) can reach every one of them.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sgqn.saliency import GuidedReLU


def weight_init(m: nn.Module) -> None:
    """SAC-AE init: orthogonal Linear (bias 0); delta-orthogonal Conv (orthogonal centre tap, ReLU gain)."""
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight.data)
        if m.bias is not None:
            m.bias.data.fill_(0.0)
    elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        assert m.weight.size(2) == m.weight.size(3)
        m.weight.data.fill_(0.0)
        if m.bias is not None:
            m.bias.data.fill_(0.0)
        mid = m.weight.size(2) // 2
        nn.init.orthogonal_(m.weight.data[:, :, mid, mid], nn.init.calculate_gain("relu"))


def conv_autocast(enabled: bool, x: Tensor) -> contextlib.AbstractContextManager:
    # bf16 only around the convolutions (the bulk of the FLOPs); every output is cast back to fp32.
    # Autocast on the device the input is on: a CPU autocast region leaves CUDA convs in fp32.
    return torch.autocast(x.device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


class Encoder(nn.Module):
    """Shared conv trunk: obs/255 → Conv(C→F, 3, stride 2) → [ReLU, Conv(F→F, 3)] × (L−1) → flatten.

    As the reference `SharedCNN` + `HeadCNN(num_layers=0)`: no padding and no ReLU after the last conv
    (32×21×21 at 84 px with 11 layers).

    Args:
        obs_shape: (C, H, W) of the observation; C = 3 × stacked frames.
        num_layers: conv layers (11 in the paper; CPU smoke configs use ~4).
        num_filters: channels of every conv layer.
        channels_last: run the convs in channels-last memory format (a speed option; same maths).
        autocast_bf16: run the convs under CPU bf16 autocast (a speed option on bf16-capable CPUs).
    """

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        num_layers: int = 11,
        num_filters: int = 32,
        channels_last: bool = False,
        autocast_bf16: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(obs_shape[0], num_filters, 3, stride=2)]
        for _ in range(num_layers - 1):
            layers += [GuidedReLU(), nn.Conv2d(num_filters, num_filters, 3, stride=1)]
        self.convs = nn.Sequential(*layers)
        self.channels_last, self.autocast_bf16 = channels_last, autocast_bf16
        side = lambda n: (n - 3) // 2 + 1 - 2 * (num_layers - 1)  # noqa: E731
        self.out_shape = (num_filters, side(obs_shape[1]), side(obs_shape[2]))
        self.out_dim = math.prod(self.out_shape)
        self.apply(weight_init)
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.float() / 255.0
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with conv_autocast(self.autocast_bf16, x):
            h = self.convs(x)
        return h.float().flatten(1)


class Projection(nn.Sequential):
    """Linear → LayerNorm → Tanh: the per-head (actor, critic) bottleneck on the conv features."""

    def __init__(self, in_dim: int, out_dim: int = 100) -> None:
        super().__init__(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.Tanh())
        self.apply(weight_init)


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear → ReLU → Linear → ReLU → Linear (the actor's and each Q-function's trunk)."""
    net = nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        GuidedReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        GuidedReLU(),
        nn.Linear(hidden_dim, out_dim),
    )
    net.apply(weight_init)
    return net


def squashed_gaussian_sample(
    mean: Tensor, log_std: Tensor, noise: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """a = tanh(mean + σ·ε) and log π(a|s) with the tanh correction (SAC, appendix C), `[B, A]`, `[B, 1]`.

    The correction uses log(relu(1 − a²) + 1e-6) exactly as the reference, so it stays finite at |a| = 1.
    """
    if noise is None:
        noise = torch.randn_like(mean)
    pre_tanh = mean + noise * log_std.exp()
    gaussian = (-0.5 * noise.pow(2) - log_std).sum(-1, keepdim=True)
    log_prob = gaussian - 0.5 * math.log(2 * math.pi) * noise.size(-1)
    action = torch.tanh(pre_tanh)
    log_prob = log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)
    return action, log_prob


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy on the shared encoder.

    Args:
        encoder: the shared conv trunk (trained by the critic only).
        action_dim: |A|.
        feature_dim: projection width (100).
        hidden_dim: MLP width (1024).
        log_std_min, log_std_max: the MLP's log σ is squashed into this range by a tanh (−10, 2).
    """

    def __init__(
        self,
        encoder: Encoder,
        action_dim: int,
        feature_dim: int = 100,
        hidden_dim: int = 1024,
        log_std_min: float = -10.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = Projection(encoder.out_dim, feature_dim)
        self.trunk = mlp(feature_dim, hidden_dim, 2 * action_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(pre-tanh mean, log σ) from conv features; detach them first to keep the encoder out."""
        mean, log_std = self.trunk(self.projection(features)).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.encoder(obs).detach())

    def own_parameters(self) -> list[nn.Parameter]:
        """The parameters the actor's optimizer trains (everything but the shared encoder)."""
        return [*self.projection.parameters(), *self.trunk.parameters()]


class Critic(nn.Module):
    """Twin Q-functions on the shared encoder: `critic(obs, action) -> (q1, q2)`, each `[B, 1]`.

    Args:
        encoder: the shared conv trunk.
        action_dim: |A|.
        feature_dim: projection width (100).
        hidden_dim: MLP width (1024).
    """

    def __init__(
        self, encoder: Encoder, action_dim: int, feature_dim: int = 100, hidden_dim: int = 1024
    ) -> None:
        super().__init__()
        self.encoder, self.action_dim = encoder, action_dim
        self.projection = Projection(encoder.out_dim, feature_dim)
        self.q1 = mlp(feature_dim + action_dim, hidden_dim, 1)
        self.q2 = mlp(feature_dim + action_dim, hidden_dim, 1)

    def heads(self, features: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        za = torch.cat([self.projection(features), action], dim=-1)
        return self.q1(za), self.q2(za)

    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.encoder(obs), action)

    def encoder_parameters(self) -> list[Tensor]:
        """Convs + projection: the reference's `critic.encoder`, soft-updated with `encoder_tau`."""
        return [*self.encoder.parameters(), *self.projection.parameters()]

    def head_parameters(self) -> list[Tensor]:
        """Q1 + Q2: soft-updated with `critic_tau`."""
        return [*self.q1.parameters(), *self.q2.parameters()]


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


def upsample_conv(x: Tensor, conv: nn.Conv2d, subpixel: bool = True) -> Tensor:
    """`conv(nearest_upsample_x2(x))` for a 3×3, padding-1 conv.

    `subpixel=True` computes the same function (and gradients, up to float rounding) without forming the
    upsampled input: one conv with 2×2 kernels of 4× the output channels at low resolution (~2.2× fewer
    FLOPs), then the phases are interleaved into the 2× output. The phases are laid out (row phase,
    column phase, channel) so that, channels-last, each interleaving copy moves whole channel vectors.
    Returns a channels-last tensor on that path.
    """
    if not subpixel:
        return conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    weight, bias = conv.weight, conv.bias
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
        subpixel: compute each upsample + conv in sub-pixel form (`upsample_conv`): same parameters and
            function, ~4× faster on CPU. False = the reference's literal upsample-then-conv.
        channels_last, autocast_bf16: speed options, as in `Encoder`.
    """

    def __init__(
        self,
        action_dim: int,
        feature_dim: int = 100,
        obs_shape: tuple[int, int, int] = (9, 84, 84),
        channels: tuple[int, int, int] = (32, 128, 64),
        subpixel: bool = True,
        channels_last: bool = False,
        autocast_bf16: bool = False,
    ) -> None:
        super().__init__()
        c, h, w = obs_shape
        if h % 4 or w % 4:
            raise ValueError(f"the attribution decoder needs H and W divisible by 4, got {h}×{w}")
        self.base_shape = (channels[0], h // 4, w // 4)
        self.proj = nn.Linear(feature_dim + action_dim, math.prod(self.base_shape))
        self.conv1 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[1], channels[2], 3, padding=1)
        self.conv3 = nn.Conv2d(channels[2], c, 3, padding=1)
        self.subpixel, self.channels_last, self.autocast_bf16 = subpixel, channels_last, autocast_bf16
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, z: Tensor, action: Tensor) -> Tensor:
        x = F.relu(self.proj(torch.cat([z, action], dim=-1)).view(-1, *self.base_shape))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with conv_autocast(self.autocast_bf16, x):
            # ReLU commutes with nearest upsampling, so it is applied before each upsample + conv.
            x = F.relu(self.conv1(x))
            x = F.relu(upsample_conv(x, self.conv2, self.subpixel))
            return upsample_conv(x, self.conv3, self.subpixel).float()


__all__ = [
    "Actor",
    "AttributionDecoder",
    "Critic",
    "Encoder",
    "Projection",
    "mlp",
    "squashed_gaussian_sample",
    "upsample_conv",
    "weight_init",
]
