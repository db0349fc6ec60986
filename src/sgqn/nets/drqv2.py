"""DrQ-v2's networks (Yarats et al. 2021, facebookresearch/drqv2 `drqv2.py`), with `GuidedReLU`s so SGQN's
guidance can attribute its critic.

    obs [B, 9, 84, 84] ─ DrQv2Encoder: obs/255 − 0.5 → 4 × (Conv 3×3, 32; stride 2 then 1) each + ReLU
        ├─ DeterministicActor: trunk (Linear → LayerNorm → Tanh, 50) → MLP 1024-1024 → tanh: the mean
        └─ Critic (`sgqn.nets.sac.Critic` with feature_dim 50): trunk → Q1, Q2 MLPs 1024-1024 on [z, a]

Exploration is a truncated normal around the mean with a scheduled σ (`truncated_normal_sample`).
"""

from __future__ import annotations

import math
from typing import cast, overload

import torch
from torch import Tensor, nn

from sgqn.nets.guided_relu import GuidedReLU
from sgqn.nets.sac import Projection, mlp


def drqv2_weight_init(m: nn.Module) -> None:
    """DrQ-v2's init: orthogonal Linear and Conv weights (ReLU gain for convs), zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight.data)
        if m.bias is not None:
            m.bias.data.fill_(0.0)
    elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.orthogonal_(m.weight.data, nn.init.calculate_gain("relu"))
        if m.bias is not None:
            m.bias.data.fill_(0.0)


class DrQv2Encoder(nn.Module):
    """obs/255 − 0.5 → Conv(C→F, 3, stride 2) → ReLU → [Conv(F→F, 3) → ReLU] × (L−1) → flatten.

    32 × 35 × 35 at 84 px with DrQ-v2's 4 layers. Same interface as `sgqn.nets.sac.Encoder` (`out_dim`).
    """

    def __init__(self, obs_shape: tuple[int, int, int], num_layers: int = 4, num_filters: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(obs_shape[0], num_filters, 3, stride=2), GuidedReLU()]
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(num_filters, num_filters, 3, stride=1), GuidedReLU()]
        self.convs = nn.Sequential(*layers)
        side = lambda n: (n - 3) // 2 + 1 - 2 * (num_layers - 1)  # noqa: E731
        self.out_shape = (num_filters, side(obs_shape[1]), side(obs_shape[2]))
        self.out_dim = math.prod(self.out_shape)
        self.apply(drqv2_weight_init)

    def forward(self, obs: Tensor) -> Tensor:
        # (in the weights' dtype: float32, or float64 for the oracle tests)
        return self.convs(obs.to(cast(nn.Conv2d, self.convs[0]).weight.dtype) / 255.0 - 0.5).flatten(1)


class DeterministicActor(nn.Module):
    """DrQ-v2's actor: the mean action tanh(policy(trunk(features))); σ comes from the learner's schedule.

    Args:
        encoder: the shared encoder (trained by the critic only: the actor reads detached features).
        action_dim: |A|.
        feature_dim: trunk width (50).
        hidden_dim: MLP width (1024).
    """

    def __init__(
        self, encoder: nn.Module, action_dim: int, feature_dim: int = 50, hidden_dim: int = 1024
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = Projection(int(encoder.out_dim), feature_dim)  # type: ignore[arg-type]
        self.trunk = mlp(feature_dim, hidden_dim, action_dim)
        self.projection.apply(drqv2_weight_init)
        self.trunk.apply(drqv2_weight_init)

    def mean(self, features: Tensor) -> Tensor:
        return torch.tanh(self.trunk(self.projection(features)))

    def forward(self, obs: Tensor) -> Tensor:
        return self.mean(self.encoder(obs).detach())

    def own_parameters(self) -> list[nn.Parameter]:
        """The parameters the actor's optimizer trains (everything but the shared encoder)."""
        return [*self.projection.parameters(), *self.trunk.parameters()]


def truncated_normal_sample(
    mean: Tensor, std: float | Tensor, clip: float | None, eps: float = 1e-6
) -> Tensor:
    """DrQ-v2's `TruncatedNormal.sample`: mean + clamp(σ·ε, ±clip), clamped into (−1, 1) with a
    straight-through gradient (the clamp does not stop the gradient to the mean)."""
    noise = torch.randn_like(mean) * std
    if clip is not None:
        noise = noise.clamp(-clip, clip)
    x = mean + noise
    clamped = x.clamp(-1.0 + eps, 1.0 - eps)
    return x - x.detach() + clamped.detach()


@overload
def linear_schedule(step: int | float, init: float, final: float, duration: int) -> float: ...
@overload
def linear_schedule(step: Tensor, init: float, final: float, duration: int) -> Tensor: ...
def linear_schedule(step: int | float | Tensor, init: float, final: float, duration: int) -> float | Tensor:
    """DrQ-v2's ``linear(init, final, duration)``: from `init` at step 0 to `final` at `duration`, then flat.

    A step tensor gives a float64 tensor on its device (the same value as for the step as a number), so
    acting on a GPU reads no step back to the host."""
    if isinstance(step, Tensor):
        mix: float | Tensor = (step.double() / duration).clamp(0.0, 1.0)
    else:
        mix = min(max(float(step) / duration, 0.0), 1.0)
    return (1.0 - mix) * init + mix * final


__all__ = [
    "DeterministicActor",
    "DrQv2Encoder",
    "drqv2_weight_init",
    "linear_schedule",
    "truncated_normal_sample",
]
