"""Networks of SAC / SVEA / SGQN on stacked pixel frames (the SVEA / DMC-GB architecture).

    obs [B, 9, 84, 84] in [0, 255] ─ Encoder (shared by actor and critic) ─ flat conv features
        ├─ Actor:  Projection(→100, LayerNorm, Tanh) → MLP 1024-1024 → tanh-squashed Gaussian
        └─ Critic: Projection(→100, LayerNorm, Tanh) → Q1, Q2: MLP 1024-1024 on [z, a]

The actor never trains the encoder: its loss reads detached conv features (`Actor.head`). All ReLUs are
`GuidedReLU` modules so the critic's guided backprop (and captum's) can reach every one of them. Speed
options (channels-last, bf16) wrap these networks from outside (`sgqn.training.speed`).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgqn.nets.guided_relu import GuidedReLU


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


class Encoder(nn.Module):
    """Shared conv trunk: obs/255 → Conv(C→F, 3, stride 2) → [ReLU, Conv(F→F, 3)] × (L−1) → flatten.

    As the reference `SharedCNN` + `HeadCNN(num_layers=0)`: no padding and no ReLU after the last conv
    (32×21×21 at 84 px with 11 layers).

    Args:
        obs_shape: (C, H, W) of the observation; C = 3 × stacked frames.
        num_layers: conv layers (11 in the paper; CPU smoke configs use ~4).
        num_filters: channels of every conv layer.
    """

    def __init__(self, obs_shape: tuple[int, int, int], num_layers: int = 11, num_filters: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(obs_shape[0], num_filters, 3, stride=2)]
        for _ in range(num_layers - 1):
            layers += [GuidedReLU(), nn.Conv2d(num_filters, num_filters, 3, stride=1)]
        self.convs = nn.Sequential(*layers)
        side = lambda n: (n - 3) // 2 + 1 - 2 * (num_layers - 1)  # noqa: E731
        self.out_shape = (num_filters, side(obs_shape[1]), side(obs_shape[2]))
        self.out_dim = math.prod(self.out_shape)
        self.apply(weight_init)

    def forward(self, obs: Tensor) -> Tensor:
        # (in the weights' dtype: float32, or float64 for the oracle tests)
        return self.convs(obs.to(cast(nn.Conv2d, self.convs[0]).weight.dtype) / 255.0).flatten(1)


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
        self.encoder, self.action_dim, self.feature_dim = encoder, action_dim, feature_dim
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


__all__ = ["Actor", "Critic", "Encoder", "Projection", "mlp", "squashed_gaussian_sample", "weight_init"]
