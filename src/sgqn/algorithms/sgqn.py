"""SGQN on SAC (Bertoin et al., NeurIPS 2022; the reference's `SGSAC.update`): SAC's update with the
saliency guidance of `saliency_guidance.py` composed into it, in the reference's order."""

from __future__ import annotations

from dataclasses import replace

from tensordict import TensorDictBase
from torch import Tensor

from sgqn.algorithms import saliency_guidance as sg
from sgqn.algorithms.agent import Due, Metrics, OptimizerSpec, Step, td_loss
from sgqn.algorithms.augment import Overlay
from sgqn.algorithms.sac import SAC, SACConfig
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.nets.config import NetConfig
from sgqn.nets.decoder import AttributionDecoder


class SGQN(SAC):
    """SAC + SGQN's consistency term and attribution predictor.

    Args:
        observation_shape, action_dim, config, net, discount: as `SAC`.
        sgqn: `SGQNConfig`; its `quantile` must be resolved (`sgqn.algorithms.factory` gives the task's).
    """

    overlay: Overlay

    def __init__(
        self,
        observation_shape: tuple[int, int, int],
        action_dim: int,
        config: SACConfig = SACConfig(),
        sgqn: SGQNConfig = SGQNConfig(quantile=0.95),
        net: NetConfig = NetConfig(),
        discount: float = 0.99,
    ) -> None:
        super().__init__(observation_shape, action_dim, config, net, discount)
        if sgqn.quantile is None:
            raise ValueError("SGQN needs a quantile ρ (None is resolved from the task by make_agent)")
        self.sgqn, self.quantile = sgqn, float(sgqn.quantile)
        features = self.critic.feature_dim
        self.decoder = AttributionDecoder(action_dim, features, observation_shape, sgqn.decoder_channels)
        self.overlay = Overlay(None, sgqn.overlay_alpha)

    def update(self, batch: TensorDictBase, opt: Step, due: Due) -> Metrics:
        """critic (TD + λ·consistency) → [saliency of the updated critic] → [actor + α] → [target] →
        [attribution predictor]."""
        rho, ties = self.quantile, self.sgqn.mask_zero_ties
        obs, next_obs = self.augment(batch)
        action = batch.get(self.tensor_keys.action)
        target_q = self.soft_target(next_obs, batch)

        # The critic: TD + λ·consistency, from ONE critic forward, the one guided backprop attributes.
        seen = sg.saliency(self.critic, obs, action, rho, ties, keep_graph=True)
        loss_critic = td_loss(seen.q1, seen.q2, target_q)
        loss_consistency = sg.consistency_loss(self.critic, obs, action, seen, self.sgqn.consistency_weight)
        opt.step("critic", loss_critic=loss_critic, loss_consistency=loss_consistency)
        metrics = {"loss_critic": loss_critic.detach(), "loss_consistency": loss_consistency.detach()}
        metrics |= {"q1_mean": seen.q1.detach().mean(), **sg.mask_metrics(seen)}
        metrics["target_q_mean"] = target_q.mean()

        # The UPDATED critic's saliency: the mask the predictor learns; its forward holds the conv
        # features of obs under the current weights, which the actor reads.
        after = sg.saliency(self.critic, obs, action, rho, ties) if due.aux else None

        if due.actor:
            features = self.conv_features(obs) if after is None else after.features.detach()
            metrics |= self.actor_and_temperature_steps(features, opt)
        if due.target:
            self.target_critic.update(self.critic)

        if after is not None:  # the attribution predictor, on overlay-augmented observations
            loss_attribution = sg.attribution_loss(
                self.critic, self.decoder, self.overlay(obs), action, after.mask
            )
            opt.step("aux", loss_attribution=loss_attribution)
            metrics["loss_attribution"] = loss_attribution.detach()
        return metrics

    def due(self, step: int) -> Due:
        return replace(super().due(step), aux=sg.aux_due(self.sgqn, step))

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        # The predictor trains the critic's encoder and projection too (shared), with its own optimizer.
        shared = [*self.critic.encoder.parameters(), *self.critic.projection.parameters()]
        aux = OptimizerSpec(
            [*shared, *self.decoder.parameters()], self.sgqn.aux_lr, self.sgqn.aux_beta, "sgqn.aux_lr"
        )
        return {**super().optimizer_specs(), "aux": aux}

    def predict_saliency(self, obs: Tensor, action: Tensor) -> Tensor:
        return sg.predicted_mask_logits(self.critic, self.decoder, obs, action)


__all__ = ["SGQN"]
