"""SVEA (Hansen, Su & Wang 2021) on SAC: the critic also fits the clean TD target on overlay-augmented
observations (the reference's `SVEA.update_critic`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase

from sgqn.algorithms.agent import Due, Metrics, Step, td_loss
from sgqn.algorithms.augment import Overlay
from sgqn.algorithms.sac import SAC, SACConfig
from sgqn.nets.config import NetConfig


@dataclass(frozen=True)
class SVEAConfig:
    """SVEA's settings (`--model.svea.*`), the reference's by default.

    Args:
        alpha: weight of the clean TD loss (0.5).
        beta: weight of the overlay TD loss (0.5).
        overlay_alpha: weight of the natural image in the overlay (0.5).
    """

    alpha: float = 0.5
    beta: float = 0.5
    overlay_alpha: float = 0.5


class SVEA(SAC):
    """SAC whose critic loss is α·TD(shifted obs) + β·TD(overlay(shifted obs)), one shared target.

    Clean and augmented observations go through the critic as one concatenated batch (the reference's
    α = β branch); the two halves are weighted separately, so α ≠ β is the reference's other branch. The
    target is computed once, from clean next observations; the actor trains on clean observations.
    """

    overlay: Overlay

    def __init__(
        self,
        observation_shape: tuple[int, int, int],
        action_dim: int,
        config: SACConfig = SACConfig(),
        svea: SVEAConfig = SVEAConfig(),
        net: NetConfig = NetConfig(),
        discount: float = 0.99,
    ) -> None:
        super().__init__(observation_shape, action_dim, config, net, discount)
        self.svea = svea
        self.overlay = Overlay(None, svea.overlay_alpha)

    def update(self, batch: TensorDictBase, opt: Step, due: Due) -> Metrics:
        """critic on clean + overlaid observations → [actor + α] → [target]."""
        obs, next_obs = self.augment(batch)
        action = batch.get(self.tensor_keys.action)
        target_q = self.soft_target(next_obs, batch)

        q1, q2 = self.critic(torch.cat([obs, self.overlay(obs)]), torch.cat([action, action]))
        (q1_clean, q1_aug), (q2_clean, q2_aug) = q1.chunk(2), q2.chunk(2)
        loss_critic = self.svea.alpha * td_loss(q1_clean, q2_clean, target_q)
        loss_critic = loss_critic + self.svea.beta * td_loss(q1_aug, q2_aug, target_q)
        opt.step("critic", loss_critic=loss_critic)
        metrics = {"loss_critic": loss_critic.detach(), "q1_mean": q1_clean.detach().mean()}
        metrics["target_q_mean"] = target_q.mean()

        if due.actor:
            metrics |= self.actor_and_temperature_steps(self.conv_features(obs), opt)
        if due.target:
            self.target_critic.update(self.critic)
        return metrics


__all__ = ["SVEA", "SVEAConfig"]
