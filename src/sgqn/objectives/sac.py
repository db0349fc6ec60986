"""SAC on pixels with DrQ random-shift augmentation (the SVEA / SGQN code base's `SAC` + `sample_drq`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives import LossModule

from sgqn.augment import random_shift
from sgqn.nets import Actor, Critic, squashed_gaussian_sample
from sgqn.objectives.targets import TargetCritic

Metrics = dict[str, Tensor]


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Evaluate `module` without recording gradients for its parameters (inputs still get theirs)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class SACLoss(LossModule):
    """Soft actor-critic losses over a TorchRL batch; target network in `self.target_critic`.

    `forward(td)` returns `loss_critic`, `loss_actor`, `loss_alpha` (+ metrics) from one batch, for a plain
    TorchRL loop (their sum back-propagates correctly: the actor reads detached conv features and a frozen
    critic; the temperature loss only reaches `log_alpha`). `SGQNModule` calls the granular methods in the
    reference order instead (critic step, then actor and temperature on the updated critic).

    Batch keys (TorchRL conventions): "pixels" uint8 `[B, C, H, W]`, "action" `[B, A]`,
    ("next", "pixels"), ("next", "reward") `[B, 1]`, ("next", "terminated") bool `[B, 1]` — the bootstrap
    uses 1 − terminated (time-limit truncation still bootstraps).

    Args:
        actor: the policy (`Actor`), sharing its encoder with `critic`.
        critic: the twin Q-network (`Critic`).
        discount: γ (0.99).
        init_temperature: initial α (0.1); log α is learnt.
        target_entropy: entropy target of the temperature loss; None → −|A|.
        critic_tau: Polyak rate of the target Q heads (0.01).
        encoder_tau: Polyak rate of the target convs + projection (0.05).
        shift_pad: DrQ random-shift padding applied to pixels and next pixels (4; 0 = no augmentation,
            the SGQN repository's own `SAC` baseline).
    """

    @dataclass
    class _AcceptedKeys:
        pixels: NestedKey = "pixels"
        action: NestedKey = "action"
        next_pixels: NestedKey = ("next", "pixels")
        reward: NestedKey = ("next", "reward")
        terminated: NestedKey = ("next", "terminated")

    def __init__(
        self,
        actor: Actor,
        critic: Critic,
        *,
        discount: float = 0.99,
        init_temperature: float = 0.1,
        target_entropy: float | None = None,
        critic_tau: float = 0.01,
        encoder_tau: float = 0.05,
        shift_pad: int = 4,
    ) -> None:
        super().__init__()
        self.actor, self.critic = actor, critic
        self.target_critic = TargetCritic(critic, critic_tau=critic_tau, encoder_tau=encoder_tau)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.target_entropy = -float(critic.action_dim) if target_entropy is None else target_entropy
        self.discount, self.shift_pad = discount, shift_pad

    def _forward_value_estimator_keys(self, **kwargs: Any) -> None:
        pass  # the TD target is computed here, not by a TorchRL value estimator

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    # ------------------------------------------------------------------ pieces

    def augment(self, td: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Independently shifted float copies of pixels and next pixels (DrQ `sample_drq`)."""
        keys = self.tensor_keys
        return (
            random_shift(td.get(keys.pixels), self.shift_pad).float(),
            random_shift(td.get(keys.next_pixels), self.shift_pad).float(),
        )

    # (`with torch.no_grad()` inside rather than as a decorator: `torch.compile` caches per code object,
    # and every decorated function shares the decorator's.)
    def target_value(self, next_obs: Tensor, reward: Tensor, terminated: Tensor) -> Tensor:
        """r + γ (1 − terminated) [min Q'(s', a') − α log π(a'|s')], a' ~ π(·|s'): `[B, 1]`, no grad."""
        with torch.no_grad():
            next_action, log_prob = squashed_gaussian_sample(*self.actor(next_obs))
            q1, q2 = self.target_critic(next_obs, next_action)
            soft_value = torch.min(q1, q2) - self.alpha * log_prob
            return reward + (~terminated.bool()).float() * self.discount * soft_value

    def conv_features(self, obs: Tensor) -> Tensor:
        """Detached shared-encoder features: what the actor step reads."""
        with torch.no_grad():
            return self.critic.encoder(obs)

    def td_loss(self, q1: Tensor, q2: Tensor, target_q: Tensor) -> Tensor:
        return F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)

    # ------------------------------------------------------------------ losses

    def critic_terms(self, obs: Tensor, action: Tensor, target_q: Tensor) -> tuple[Metrics, Metrics]:
        """The critic objective's named terms (with grad) and detached metrics. SAC: the TD loss."""
        q1, q2 = self.critic(obs, action)
        return {"loss_critic": self.td_loss(q1, q2, target_q)}, {"q1_mean": q1.detach().mean()}

    def critic_loss(self, obs: Tensor, action: Tensor, target_q: Tensor) -> tuple[Tensor, Metrics]:
        """The critic's whole objective (sum of `critic_terms`) and the detached terms and metrics."""
        terms, metrics = self.critic_terms(obs, action, target_q)
        loss = torch.stack(list(terms.values())).sum()
        return loss, {**{k: v.detach() for k, v in terms.items()}, **metrics}

    def actor_loss(self, features: Tensor) -> tuple[Tensor, Metrics]:
        """E[α log π(a|s) − min Q(s, a)] on detached conv features; the critic is frozen (not trained)."""
        features = features.detach()
        action, log_prob = squashed_gaussian_sample(*self.actor.head(features))
        with frozen(self.critic):
            q1, q2 = self.critic.heads(features, action)
        loss = (self.alpha.detach() * log_prob - torch.min(q1, q2)).mean()
        metrics = {"loss_actor": loss.detach(), "entropy": -log_prob.detach().mean()}
        return loss, {**metrics, "log_prob": log_prob.detach()}

    def alpha_loss(self, log_prob: Tensor) -> tuple[Tensor, Metrics]:
        """E[α (−log π − H̄)] (the reference's α, not log α, multiplies the detached entropy gap)."""
        loss = (self.alpha * (-log_prob.detach() - self.target_entropy)).mean()
        return loss, {"loss_alpha": loss.detach(), "alpha": self.alpha.detach()}

    # ------------------------------------------------------------------ TorchRL entry point

    def _batch_losses(self, td: TensorDictBase) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Augment, critic loss, actor and alpha losses: (obs, action, named outputs)."""
        keys = self.tensor_keys
        obs, next_obs = self.augment(td)
        action = td.get(keys.action)
        target_q = self.target_value(next_obs, td.get(keys.reward), td.get(keys.terminated))
        critic_terms, critic_metrics = self.critic_terms(obs, action, target_q)
        loss_actor, actor_metrics = self.actor_loss(self.conv_features(obs))
        loss_alpha, alpha_metrics = self.alpha_loss(actor_metrics.pop("log_prob"))
        out = {
            **critic_metrics,
            **actor_metrics,
            **alpha_metrics,
            **critic_terms,  # "loss_*" entries with grad: their sum is the whole objective
            "loss_actor": loss_actor,
            "loss_alpha": loss_alpha,
            "target_q_mean": target_q.mean(),
        }
        return obs, action, out

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        _, _, out = self._batch_losses(td)
        return TensorDict(out, batch_size=[])


__all__ = ["Metrics", "SACLoss", "frozen"]
