"""The target critic: a Polyak-averaged copy of the critic, updated with two rates (SAC-AE / SVEA)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from sgqn.nets.sac import Critic


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


class TargetHeads(nn.Module):
    """DrQ-v2's target: a Polyak copy of the critic's trunk and Q heads only, read on the ONLINE encoder's
    features of the next observation. θ' ← θ' + τ (θ − θ'), one rate.

    Args:
        critic: the online critic (its `projection`, `q1`, `q2` are copied).
        tau: the Polyak rate (0.01).
    """

    def __init__(self, critic: Critic, tau: float = 0.01) -> None:
        super().__init__()
        self.projection = copy.deepcopy(critic.projection).requires_grad_(False)
        self.q1 = copy.deepcopy(critic.q1).requires_grad_(False)
        self.q2 = copy.deepcopy(critic.q2).requires_grad_(False)
        self.tau = tau

    def heads(self, features: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            za = torch.cat([self.projection(features), action], dim=-1)
            return self.q1(za), self.q2(za)

    @torch.no_grad()
    def update(self, critic: Critic) -> None:
        mine: list[Tensor] = [*self.projection.parameters(), *self.q1.parameters(), *self.q2.parameters()]
        theirs: list[Tensor] = [
            *critic.projection.parameters(),
            *critic.q1.parameters(),
            *critic.q2.parameters(),
        ]
        torch._foreach_lerp_(mine, theirs, self.tau)


__all__ = ["TargetCritic", "TargetHeads"]
