"""The SGQN authors' update (`SGSAC.update`), written out naively on our networks: the test oracle.

Everything as their code runs it: separate forwards for the TD loss, the attribution, the actor and the
attribution predictor; captum's `GuidedBackprop`; the post-update attribution at *every* update. The
package's update (`sgqn.algorithms.sgqn.SGQN.update`) is tested equal to it (tests/test_module.py) and
timed against it (benchmarks/update_step.py), so it reuses none of the package's update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import Tensor, nn

from sgqn.algorithms.augment import random_overlay, random_shift
from sgqn.algorithms.saliency import attribution_mask, masked_observation
from sgqn.algorithms.sgqn import SGQN
from sgqn.nets.sac import squashed_gaussian_sample

Attribution = Callable[[nn.Module, Tensor, Tensor], Tensor]


class Q1(nn.Module):
    """obs → Q1(obs, action) for a fixed action: the reference's captum `ModelWrapper`."""

    def __init__(self, critic: nn.Module, action: Tensor) -> None:
        super().__init__()
        self.critic, self.action = critic, action

    def forward(self, obs: Tensor) -> Tensor:
        return self.critic(obs, self.action)[0]


def captum_guided_backprop(critic: nn.Module, obs: Tensor, action: Tensor) -> Tensor:
    """Guided backprop of Q1(obs, action) w.r.t. obs by captum, as the reference computes it."""
    from captum.attr import GuidedBackprop

    return GuidedBackprop(Q1(critic, action.detach())).attribute(obs.detach().clone())


def reference_update(
    agent: SGQN,
    batch: TensorDictBase,
    optimizers: list[torch.optim.Optimizer],
    step: int,
    attribution: Attribution = captum_guided_backprop,
) -> dict[str, Tensor]:
    """One SGQN update of `agent` in the reference order; returns the (detached) losses.

    `optimizers` are the critic's, actor's, α's and the predictor's Adams, in that order; `step` is the
    update number (the actor, target and predictor steps run at their `*_update_freq`). Random draws
    happen in the same order as the package's update (shifts, target policy noise, grey level, actor
    noise, overlay images), so under the same seed both give the same parameters.
    """
    sac, sgqn = agent.config, agent.sgqn
    critic, actor = agent.critic, agent.actor
    obs = random_shift(batch["pixels"], sac.shift_pad).float()
    next_obs = random_shift(batch["next", "pixels"], sac.shift_pad).float()
    action, reward = batch["action"], batch["next", "reward"]
    with torch.no_grad():
        next_action, next_log_pi = squashed_gaussian_sample(*actor(next_obs))
        t1, t2 = agent.target_critic.critic(next_obs, next_action)
        not_done = 1.0 - batch["next", "terminated"].float()
        target_q = reward + not_done * agent.discount * (torch.min(t1, t2) - agent.alpha * next_log_pi)

    # critic: TD + consistency with the masked observation (mask of the critic before its update)
    q1, q2 = critic(obs, action)
    td = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
    mask = attribution_mask(attribution(critic, obs, action), agent.quantile)
    m1, m2 = critic(masked_observation(obs, mask), action)
    consistency = sgqn.consistency_weight * (F.mse_loss(q1, m1) + F.mse_loss(q2, m2))
    optimizers[0].zero_grad()
    (td + consistency).backward()
    optimizers[0].step()
    out = {"loss_critic": td, "loss_consistency": consistency}

    mask = attribution_mask(attribution(critic, obs, action), agent.quantile)  # every update, as theirs
    if step % sac.actor_update_freq == 0:
        pi, log_pi = squashed_gaussian_sample(*actor.head(actor.encoder(obs).detach()))
        a1, a2 = critic.heads(critic.encoder(obs).detach(), pi)
        actor_loss = (agent.alpha.detach() * log_pi - torch.min(a1, a2)).mean()
        optimizers[1].zero_grad()
        actor_loss.backward()
        optimizers[1].step()
        alpha_loss = (agent.alpha * (-log_pi - agent.target_entropy).detach()).mean()
        optimizers[2].zero_grad()
        alpha_loss.backward()
        optimizers[2].step()
        out |= {"loss_actor": actor_loss, "loss_alpha": alpha_loss}
    if step % sac.critic_target_update_freq == 0:
        agent.target_critic.update(critic)
    if step % sgqn.aux_update_freq == 0:
        assert agent.overlay.images is not None
        overlay = random_overlay(obs, agent.overlay.images)
        logits = agent.decoder(critic.projection(critic.encoder(overlay)), action)
        aux = F.binary_cross_entropy_with_logits(logits, mask.float())
        optimizers[3].zero_grad()
        aux.backward()
        optimizers[3].step()
        out["loss_attribution"] = aux
    return {k: v.detach() for k, v in out.items()}


__all__ = ["Q1", "captum_guided_backprop", "reference_update"]
