"""The target critic: a Polyak-averaged copy of the critic, updated with two rates (SAC-AE / SVEA)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from sgqn.nets import Critic


class TargetCritic(nn.Module):
    """Frozen copy of `critic`; `update(critic)` moves it toward the online critic.

    θ' ← θ' + τ (θ − θ') with τ = `encoder_tau` for the reference's `critic.encoder` (the convs AND the
    critic's projection) and τ = `critic_tau` for Q1/Q2.

    Args:
        critic: the online critic to copy.
        critic_tau: rate of the Q heads (0.01).
        encoder_tau: rate of the convs and the projection (0.05).
    """

    def __init__(self, critic: Critic, critic_tau: float = 0.01, encoder_tau: float = 0.05) -> None:
        super().__init__()
        self.critic = copy.deepcopy(critic).requires_grad_(False)
        self.critic_tau, self.encoder_tau = critic_tau, encoder_tau

    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return self.critic(obs, action)

    @torch.no_grad()
    def update(self, critic: Critic) -> None:
        torch._foreach_lerp_(self.critic.encoder_parameters(), critic.encoder_parameters(), self.encoder_tau)
        torch._foreach_lerp_(self.critic.head_parameters(), critic.head_parameters(), self.critic_tau)


__all__ = ["TargetCritic"]
