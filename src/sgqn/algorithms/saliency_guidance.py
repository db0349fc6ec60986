"""SGQN's maths (Bertoin et al., NeurIPS 2022): two self-supervised objectives built on the critic's own
saliency, which any value learner's update can add (`sgqn.py` on SAC, `drqv2_sgqn.py` on DrQ-v2):

    M(s, a)  = 1[ guided_backprop(Q1, s, a) ≥ its ρ-quantile ]  per stacked frame        `saliency`
    L_cons   = λ · [ (Q1(s, a) − Q1(s ⊙ M, a))² + (Q2(s, a) − Q2(s ⊙ M, a))² ]         `consistency_loss`
    L_attr   = BCE( decoder(φ(overlay(s)), a), M(s, a) )                               `attribution_loss`

L_cons is added to the critic's TD loss and uses the mask of the critic before its step; the attribution
predictor (the critic's encoder φ and projection, then the decoder) learns the mask of the critic after
it, every `aux_update_freq` agent steps (the reference's order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from sgqn.algorithms.agent import Metrics
from sgqn.algorithms.saliency import (
    ZeroTies,
    attribution_mask,
    full_mask_fraction,
    guided_saliency,
    masked_observation,
)
from sgqn.nets.decoder import AttributionDecoder
from sgqn.nets.sac import Critic


@dataclass(frozen=True)
class SGQNConfig:
    """SGQN's guidance settings (`--model.sgqn.*`), the paper's by default, on any value learner.

    Args:
        quantile: ρ, the attribution quantile a pixel must reach to be salient; None: the task's (0.98 for
            cartpole and ball_in_cup, 0.95 for the others, the paper's appendix: `sgqn.envs.TASK_DEFAULTS`).
        consistency_weight: λ, weight of the consistency term in the critic's loss (0.5).
        aux_lr: Adam learning rate of the attribution predictor, shared encoder included (3e-4).
        aux_beta: its Adam β1 (0.9).
        aux_update_freq: the updated critic's saliency and the predictor's step run when the agent step is
            a multiple of this (2).
        mask_zero_ties: "keep" (reference): pixels tied with the ρ-quantile are salient, so a frame whose
            guided attribution is zero on ≥ ρ of its pixels gets an all-ones mask (its consistency term
            vanishes and the predictor learns "everything"); "drop": a zero attribution is never salient.
            `train/mask_full_frames` logs how often the all-ones case happens.
        decoder_channels: the attribution decoder's first feature map and hidden conv widths ((32, 128, 64)
            as the paper; smaller for CPU smoke configs, where the decoder would dominate the update).
        overlay_alpha: weight of the natural image in the predictor's overlay augmentation (0.5).
    """

    quantile: float | None = None
    consistency_weight: float = 0.5
    aux_lr: float = 3e-4
    aux_beta: float = 0.9
    aux_update_freq: int = 2
    mask_zero_ties: ZeroTies = "keep"
    decoder_channels: tuple[int, int, int] = (32, 128, 64)
    overlay_alpha: float = 0.5


@dataclass
class Saliency:
    """One critic forward on `obs` and what guided backprop made of it."""

    attribution: Tensor  # guided ∂Q1/∂obs, [B, C, H, W]
    mask: Tensor  # M_ρ, bool [B, C, H, W]
    q1: Tensor  # Q1(obs, a), [B, 1] (graph kept when asked, for the critic's loss)
    q2: Tensor
    features: Tensor  # the shared encoder's conv features of obs (what the actor reads, detached)


def saliency(
    critic: Critic,
    obs: Tensor,
    action: Tensor,
    quantile: float,
    zero_ties: ZeroTies,
    keep_graph: bool = False,
) -> Saliency:
    """One critic forward on `obs` → Q values, conv features and the mask M_ρ of its guided attribution.

    `keep_graph=True` keeps the forward, so the Q values also feed the critic's loss (no second forward).
    """
    attribution, features, q1, q2 = guided_saliency(critic, obs, action, keep_graph)
    return Saliency(
        attribution, attribution_mask(attribution, quantile, zero_ties=zero_ties), q1, q2, features
    )


def consistency_loss(critic: Critic, obs: Tensor, action: Tensor, seen: Saliency, weight: float) -> Tensor:
    """λ [MSE(Q1(s), Q1(s ⊙ M)) + MSE(Q2(s), Q2(s ⊙ M))]; both sides train the critic. `seen` is the
    `saliency(…, keep_graph=True)` of the same critic on `obs`, whose Q values it reuses."""
    masked_q1, masked_q2 = critic(masked_observation(obs, seen.mask), action)
    return weight * (F.mse_loss(seen.q1, masked_q1) + F.mse_loss(seen.q2, masked_q2))


def mask_metrics(seen: Saliency) -> Metrics:
    """How much of each frame the mask keeps, and how often it keeps a whole frame (all tied at zero)."""
    return {"mask_coverage": seen.mask.float().mean(), "mask_full_frames": full_mask_fraction(seen.mask)}


def predicted_mask_logits(critic: Critic, decoder: AttributionDecoder, obs: Tensor, action: Tensor) -> Tensor:
    """Logits of the attribution predictor's mask, `[B, C, H, W]` (trains the encoder and the projection)."""
    return decoder(critic.projection(critic.encoder(obs)), action.detach())


def attribution_loss(
    critic: Critic, decoder: AttributionDecoder, overlay_obs: Tensor, action: Tensor, mask: Tensor
) -> Tensor:
    """BCE-with-logits of the mask predicted from the overlay-augmented observation vs `mask`."""
    logits = predicted_mask_logits(critic, decoder, overlay_obs, action)
    return F.binary_cross_entropy_with_logits(logits, mask.float())


def aux_due(config: SGQNConfig, step: int) -> bool:
    return step % config.aux_update_freq == 0


__all__ = [
    "SGQNConfig",
    "Saliency",
    "attribution_loss",
    "aux_due",
    "consistency_loss",
    "mask_metrics",
    "predicted_mask_logits",
    "saliency",
]
