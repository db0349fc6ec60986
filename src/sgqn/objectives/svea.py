"""SVEA (Hansen et al. 2021) as a guidance: the critic also fits the clean TD target on overlay-augmented
observations."""

from __future__ import annotations

import torch
from torch import Tensor

from sgqn.augment import Overlay
from sgqn.nets import Actor, Critic
from sgqn.objectives.learner import Guidance, Metrics, ValueLearner
from sgqn.objectives.sac import SACLoss


class SVEAGuidance(Guidance):
    """The critic loss becomes α·TD(shifted obs) + β·TD(overlay(shifted obs)), one shared target.

    Clean and augmented observations go through the critic as one concatenated batch (the reference's
    α = β branch); the two halves are weighted separately, so α ≠ β is the reference's other branch.
    The target is computed once, from clean next observations. The actor trains on clean observations.

    Args:
        overlay_images: uint8 `[N, 3, H, W]` natural images for the overlay (or None, and
            `overlay.set_images(...)` later).
        svea_alpha: weight of the clean TD loss (0.5).
        svea_beta: weight of the augmented TD loss (0.5).
        overlay_alpha: overlay blend weight (0.5).
    """

    def __init__(
        self,
        overlay_images: Tensor | None = None,
        svea_alpha: float = 0.5,
        svea_beta: float = 0.5,
        overlay_alpha: float = 0.5,
    ) -> None:
        super().__init__()
        self.overlay = Overlay(overlay_images, overlay_alpha)
        self.svea_alpha, self.svea_beta = svea_alpha, svea_beta

    def critic_terms(
        self, learner: ValueLearner, obs: Tensor, action: Tensor, target_q: Tensor
    ) -> tuple[Metrics, Metrics]:
        both = torch.cat([obs, self.overlay(obs)])
        q1, q2 = learner.critic(both, torch.cat([action, action]))
        (q1_clean, q1_aug), (q2_clean, q2_aug) = q1.chunk(2), q2.chunk(2)
        loss = self.svea_alpha * learner.td_loss(q1_clean, q2_clean, target_q)
        loss = loss + self.svea_beta * learner.td_loss(q1_aug, q2_aug, target_q)
        return {"loss_critic": loss}, {"q1_mean": q1_clean.detach().mean()}


class SVEALoss(SACLoss):
    """SAC + `SVEAGuidance` (the reference `SVEA`).

    Args:
        actor, critic: as `SACLoss`.
        overlay_images, svea_alpha, svea_beta, overlay_alpha: as `SVEAGuidance`.
        **sac_kwargs: `SACLoss` hyper-parameters.
    """

    def __init__(
        self,
        actor: Actor,
        critic: Critic,
        *,
        overlay_images: Tensor | None = None,
        svea_alpha: float = 0.5,
        svea_beta: float = 0.5,
        overlay_alpha: float = 0.5,
        **sac_kwargs: float,
    ) -> None:
        guidance = SVEAGuidance(overlay_images, svea_alpha, svea_beta, overlay_alpha)
        super().__init__(actor, critic, guidance=guidance, **sac_kwargs)  # type: ignore[arg-type]

    @property
    def overlay(self) -> Overlay:
        return self.guidance.overlay  # type: ignore[return-value]


__all__ = ["SVEAGuidance", "SVEALoss"]
