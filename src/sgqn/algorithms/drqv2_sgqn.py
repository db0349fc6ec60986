"""SGQN's saliency guidance on DrQ-v2: DrQ-v2's update with the same guidance functions that `sgqn.py` adds
to SAC (`saliency_guidance.py`), in the same places: the paper's "any value learner", by composition.

As in the SGQN-on-DrQ-v2 code of RL-ViGen (gemcollector/RL-ViGen, `algos/sgqn.py`), the actor reads the
features of the observation encoded before the critic's step (DrQ-v2's order; SGQN on SAC re-encodes
after it, as the DMC-GB code does), and the predictor learns the mask of the critic after its step.
"""

from __future__ import annotations

from dataclasses import replace

from tensordict import TensorDictBase
from torch import Tensor

from sgqn.algorithms import saliency_guidance as sg
from sgqn.algorithms.agent import Due, Metrics, OptimizerSpec, Step, td_loss
from sgqn.algorithms.augment import Overlay
from sgqn.algorithms.drqv2 import DrQv2, DrQv2Config
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.nets.config import NetConfig
from sgqn.nets.decoder import AttributionDecoder


class DrQv2SGQN(DrQv2):
    """DrQ-v2 + SGQN's consistency term and attribution predictor.

    Args:
        observation_shape, action_dim, config, net, discount: as `DrQv2`.
        sgqn: `SGQNConfig`; its `quantile` must be resolved (`sgqn.algorithms.factory` gives the task's).
    """

    overlay: Overlay

    def __init__(
        self,
        observation_shape: tuple[int, int, int],
        action_dim: int,
        config: DrQv2Config = DrQv2Config(),
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
        """critic (TD + λ·consistency) → [saliency of the updated critic] → actor → target → [attribution
        predictor]."""
        rho, ties = self.quantile, self.sgqn.mask_zero_ties
        obs, next_obs = self.augment(batch)
        action = batch.get(self.tensor_keys.action)
        target_q = self.target_value(next_obs, batch)

        seen = sg.saliency(self.critic, obs, action, rho, ties, keep_graph=True)
        loss_critic = td_loss(seen.q1, seen.q2, target_q)
        loss_consistency = sg.consistency_loss(self.critic, obs, action, seen, self.sgqn.consistency_weight)
        opt.step("critic", loss_critic=loss_critic, loss_consistency=loss_consistency)
        metrics = {"loss_critic": loss_critic.detach(), "loss_consistency": loss_consistency.detach()}
        metrics |= {"q1_mean": seen.q1.detach().mean(), **sg.mask_metrics(seen)}
        metrics["target_q_mean"] = target_q.mean()

        # The UPDATED critic's saliency: the mask the predictor learns.
        after = sg.saliency(self.critic, obs, action, rho, ties) if due.aux else None

        if due.actor:  # on the features of obs before the critic's step, as DrQ-v2 (and RL-ViGen's SGQN)
            metrics |= self.actor_step(seen.features.detach(), opt)
        if due.target:
            self.target_critic.update(self.critic)

        if after is not None:
            loss_attribution = sg.attribution_loss(
                self.critic, self.decoder, self.overlay(obs), action, after.mask
            )
            opt.step("aux", loss_attribution=loss_attribution)
            metrics["loss_attribution"] = loss_attribution.detach()
        return metrics

    def due(self, step: int) -> Due:
        return replace(super().due(step), aux=sg.aux_due(self.sgqn, step))

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        shared = [*self.critic.encoder.parameters(), *self.critic.projection.parameters()]
        aux = OptimizerSpec(
            [*shared, *self.decoder.parameters()], self.sgqn.aux_lr, self.sgqn.aux_beta, "sgqn.aux_lr"
        )
        return {**super().optimizer_specs(), "aux": aux}

    def predict_saliency(self, obs: Tensor, action: Tensor) -> Tensor:
        return sg.predicted_mask_logits(self.critic, self.decoder, obs, action)


__all__ = ["DrQv2SGQN"]
