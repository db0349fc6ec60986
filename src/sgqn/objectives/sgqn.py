"""SGQN (Bertoin et al., NeurIPS 2022): saliency-guided Q-networks.

On top of an agent's critic loss, two self-supervised objectives built on the critic's own saliency:

    M(s, a)   = attribution_mask(guided_backprop(Q1, s, a), ρ)            (saliency.py)
    L_cons    = λ · [ (Q1(s, a) − Q1(s ⊙ M, a))² + (Q2(s, a) − Q2(s ⊙ M, a))² ]   trains the critic
    L_attr    = BCE( decoder(φ(overlay(s)), a), M(s, a) )                 trains encoder φ + decoder

The consistency term uses the mask of the critic before its update; the attribution predictor learns the
mask of the critic after it (reference order). `SaliencyGuidance` is the `Guidance` plug-in that attaches
both to any value learner (`sgqn.objectives.learner`); `SGQNLoss` attaches it to SAC, `drqv2_sgqn` to
DrQ-v2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from sgqn.augment import Overlay
from sgqn.nets import Actor, AttributionDecoder, Critic
from sgqn.objectives.learner import Guidance, Metrics, ParamGroups, Step, ValueLearner
from sgqn.objectives.sac import SACLoss
from sgqn.saliency import (
    GuidedRule,
    ZeroTies,
    attribution_mask,
    full_mask_fraction,
    guided_forwards,
    guided_grad,
    masked_observation,
)


@dataclass
class Saliency:
    """One critic forward on `obs` and what guided backprop made of it."""

    attribution: Tensor  # guided ∂Q1/∂obs, [B, C, H, W]
    mask: Tensor  # M_ρ, bool [B, C, H, W]
    q1: Tensor  # Q1(obs, a), [B, 1] (graph kept when asked, for the critic's loss)
    q2: Tensor
    features: Tensor  # the shared encoder's conv features of obs (what the actor reads, detached)


class SaliencyGuidance(Guidance):
    """SGQN's consistency and attribution objectives for a critic `critic(obs, a) -> (q1, q2)`.

    As a `Guidance`: the critic's terms are TD + λ·consistency from ONE critic forward; after the critic
    step, every `aux_update_freq` agent steps, the updated critic's saliency (whose conv features the
    actor step reuses); last, the attribution predictor's step on overlay-augmented observations.

    Args:
        critic: the online critic (with `encoder`, `projection`, `heads`).
        decoder: the attribution decoder; the predictor is critic encoder → critic projection → decoder.
        quantile: ρ, the attribution quantile a pixel must reach to be salient (0.95; 0.98 for cartpole
            and ball_in_cup).
        consistency_weight: λ, weight of the consistency term in the critic loss (0.5).
        frames: stacked frames in the observation; the mask is per frame (None: channels / 3).
        zero_ties: "keep" (reference): pixels tied with the threshold are salient, so a frame whose
            attribution is zero on ≥ ρ of its pixels keeps every pixel; "drop": zero is never salient.
        overlay_images: uint8 `[N, 3, H, W]` natural images for the predictor's overlay (or None, and
            `overlay.set_images(...)` later).
        overlay_alpha: overlay blend weight (0.5).
        aux_update_freq: the saliency + attribution-predictor steps run when the agent step is a
            multiple of this (2).
    """

    compiled_losses = ("saliency", "attribution_loss")

    def __init__(
        self,
        critic: Critic,
        decoder: AttributionDecoder,
        quantile: float = 0.95,
        consistency_weight: float = 0.5,
        frames: int | None = None,
        zero_ties: ZeroTies = "keep",
        overlay_images: Tensor | None = None,
        overlay_alpha: float = 0.5,
        aux_update_freq: int = 2,
    ) -> None:
        super().__init__()
        self.critic, self.decoder = critic, decoder
        self.quantile, self.consistency_weight, self.frames = quantile, consistency_weight, frames
        self.zero_ties: ZeroTies = zero_ties
        self.overlay = Overlay(overlay_images, overlay_alpha)
        self.aux_update_freq = aux_update_freq
        # True: the attribution takes its own critic forward (`guided_forwards`) instead of sharing the
        # critic loss's (`GuidedRule`); set for a compiled update, which cannot switch a rule mid-graph.
        self.separate_guided_forward = False

    # ------------------------------------------------------------------ the plug-in hooks

    def critic_terms(
        self, learner: ValueLearner, obs: Tensor, action: Tensor, target_q: Tensor
    ) -> tuple[Metrics, Metrics]:
        """TD + λ·consistency from one forward of the critic (the one guided backprop reads)."""
        saliency = self.saliency(obs, action, keep_graph=True)
        loss_consistency, metrics = self.consistency_loss(obs, action, saliency)
        terms = {
            "loss_critic": learner.td_loss(saliency.q1, saliency.q2, target_q),
            "loss_consistency": loss_consistency,
        }
        return terms, {
            "q1_mean": saliency.q1.detach().mean(),
            "mask_coverage": metrics["mask_coverage"],
            "mask_full_frames": metrics["mask_full_frames"],
        }

    def aux_due(self, due_at: int) -> bool:
        return due_at % self.aux_update_freq == 0

    def due_pattern(self, due_at: int) -> tuple[bool, ...]:
        return (self.aux_due(due_at),)

    def after_critic(self, obs: Tensor, action: Tensor, due_at: int) -> Saliency | None:
        return self.saliency(obs, action) if self.aux_due(due_at) else None

    def actor_features(self, state: Saliency | None) -> Tensor | None:
        return None if state is None else state.features.detach()

    def extra_updates(
        self, obs: Tensor, action: Tensor, state: Saliency | None, step: Step, due_at: int
    ) -> Metrics:
        if state is None:
            return {}
        loss, metrics = self.attribution_loss(self.overlay(obs), action, state.mask)
        step("aux", "loss_attribution", loss)
        return metrics

    def param_groups(self) -> ParamGroups:
        # The predictor trains the critic's encoder and projection too (shared), with its own optimizer.
        shared = [*self.critic.encoder.parameters(), *self.critic.projection.parameters()]
        return {"aux": ([*shared, *self.decoder.parameters()], "aux")}

    # ------------------------------------------------------------------ the objectives

    def saliency(self, obs: Tensor, action: Tensor, keep_graph: bool = False) -> Saliency:
        """One critic forward on `obs` → Q values, conv features and the guided-backprop mask.

        `keep_graph=True` keeps the forward so the Q values also feed the critic's loss (no second
        forward); otherwise the graph is freed after the attribution.
        """
        obs = obs.detach().requires_grad_()
        if self.separate_guided_forward:
            return self._saliency_two_forwards(obs, action, keep_graph)
        rule = GuidedRule()  # the guided rule applies to this forward's backward only
        with torch.enable_grad():
            with rule.recording():
                features = self.critic.encoder(obs)
                q1, q2 = self.critic.heads(features, action.detach())
            attribution = guided_grad(q1, obs, rule, retain_graph=keep_graph)
        mask = attribution_mask(attribution, self.quantile, self.frames, self.zero_ties)
        return Saliency(attribution, mask, q1, q2, features)

    def _saliency_two_forwards(self, obs: Tensor, action: Tensor, keep_graph: bool) -> Saliency:
        """`saliency` with a forward of its own for the attribution (ReLUs fixed to the guided rule, as the
        reference's captum call): the same values, traceable by `torch.compile`."""
        with torch.enable_grad():
            with guided_forwards(self.critic):
                guided_q1, _ = self.critic.heads(self.critic.encoder(obs), action.detach())
            (attribution,) = torch.autograd.grad(guided_q1.sum(), obs)
        with torch.set_grad_enabled(keep_graph and torch.is_grad_enabled()):
            features = self.critic.encoder(obs)
            q1, q2 = self.critic.heads(features, action.detach())
        mask = attribution_mask(attribution, self.quantile, self.frames, self.zero_ties)
        return Saliency(attribution, mask, q1, q2, features)

    def consistency_loss(
        self, obs: Tensor, action: Tensor, saliency: Saliency | None = None
    ) -> tuple[Tensor, Metrics]:
        """λ [MSE(Q1(s), Q1(s ⊙ M)) + MSE(Q2(s), Q2(s ⊙ M))]; both sides train the critic.

        Pass the `saliency(obs, action, keep_graph=True)` of the same critic to reuse its forward.
        """
        if saliency is None:
            saliency = self.saliency(obs, action, keep_graph=True)
        masked_q1, masked_q2 = self.critic(masked_observation(obs, saliency.mask), action)
        loss = F.mse_loss(saliency.q1, masked_q1) + F.mse_loss(saliency.q2, masked_q2)
        loss = self.consistency_weight * loss
        return loss, {
            "loss_consistency": loss.detach(),
            "mask_coverage": saliency.mask.float().mean(),
            "mask_full_frames": full_mask_fraction(saliency.mask, self.frames),
        }

    def predict(self, obs: Tensor, action: Tensor) -> Tensor:
        """Logits of the predicted saliency mask, `[B, C, H, W]` (trains the encoder and the projection)."""
        return self.decoder(self.critic.projection(self.critic.encoder(obs)), action.detach())

    def attribution_loss(self, overlay_obs: Tensor, action: Tensor, mask: Tensor) -> tuple[Tensor, Metrics]:
        """BCE-with-logits of the mask predicted from the overlay-augmented observation vs `mask`."""
        loss = F.binary_cross_entropy_with_logits(self.predict(overlay_obs, action), mask.float())
        return loss, {"loss_attribution": loss.detach()}


class SGQNLoss(SACLoss):
    """SAC + `SaliencyGuidance` (the reference `SGSAC`). The critic loss is TD + λ·consistency, from ONE
    forward of the critic on the shifted observations; `attribution_loss` trains the attribution predictor
    on overlay-augmented observations (SVEA's overlay).

    Args:
        actor, critic: as `SACLoss`.
        decoder: the `AttributionDecoder`.
        quantile: ρ (0.95).
        consistency_weight: λ (0.5).
        zero_ties: see `SaliencyGuidance` ("keep", the reference).
        overlay_images: uint8 `[N, 3, H, W]` natural images for the overlay (or None, and
            `overlay.set_images(...)` later).
        overlay_alpha: overlay blend weight (0.5).
        aux_update_freq: see `SaliencyGuidance` (2).
        **sac_kwargs: `SACLoss` hyper-parameters.
    """

    guidance: SaliencyGuidance

    def __init__(
        self,
        actor: Actor,
        critic: Critic,
        decoder: AttributionDecoder,
        *,
        quantile: float = 0.95,
        consistency_weight: float = 0.5,
        zero_ties: ZeroTies = "keep",
        overlay_images: Tensor | None = None,
        overlay_alpha: float = 0.5,
        aux_update_freq: int = 2,
        **sac_kwargs: float,
    ) -> None:
        guidance = SaliencyGuidance(
            critic,
            decoder,
            quantile,
            consistency_weight,
            zero_ties=zero_ties,
            overlay_images=overlay_images,
            overlay_alpha=overlay_alpha,
            aux_update_freq=aux_update_freq,
        )
        super().__init__(actor, critic, guidance=guidance, **sac_kwargs)  # type: ignore[arg-type]

    @property
    def overlay(self) -> Overlay:
        return self.guidance.overlay

    def attribution_loss(
        self, obs: Tensor, action: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Metrics]:
        """L_attr on `overlay(obs)`; `mask` defaults to the current critic's saliency mask of `obs`."""
        if mask is None:
            mask = self.guidance.saliency(obs, action).mask
        return self.guidance.attribution_loss(self.overlay(obs), action, mask)

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        obs, action, out = self._batch_losses(td)
        loss_attribution, metrics = self.attribution_loss(obs, action)
        return TensorDict({**out, **metrics, "loss_attribution": loss_attribution}, batch_size=[])


__all__ = ["SGQNLoss", "Saliency", "SaliencyGuidance"]
