"""SVEA's update (the DMC-GB code as SGQN's repository runs it: `SVEA.update` with `sample_drq` and the
natural-image overlay), re-derived from its semantics on copies of an agent's weights: the test oracle of
`sgqn.algorithms.svea.SVEA.update` (tests/test_oracles.py).

One update at step t:

    obs, next_obs  = shift(pixels), shift(next pixels)                       replicate-pad-and-crop
    a', log π'     ~ π(·|f(next_obs))                                         the online actor and encoder
    y              = r + bootstrap · (min Q'(next_obs, a') − α log π')        the whole target critic
    critic loss    = α_svea (mse(Q1(obs), y) + mse(Q2(obs), y))
                   + β_svea (mse(Q1(ovl), y) + mse(Q2(ovl), y)),  ovl = (1 − w) obs + w · image
    if t % actor_update_freq == 0, on f(obs) re-encoded by the STEPPED encoder, detached:
        actor loss = mean(α log π − min Q)        (the critic's projection and heads, not stepped)
        α loss     = mean(α (−log π − H̄)),  H̄ = −|A|,  on the actor's sampled log π
    if t % critic_target_update_freq == 0:
        θ' ← τ_enc θ + (1 − τ_enc) θ' on the convs and the critic's projection; τ_Q on Q1, Q2

with π the tanh-squashed Gaussian of DMC-GB (log σ squashed into [min, max] by a tanh) and its log-density
with the tanh correction log(relu(1 − a²) + 1e-6). Random numbers are drawn in the package's order: the two
shifts' offsets, ε of the target's action, the overlay images' indices, ε of the actor's action.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import Tensor

from reference_functional import (
    Adam,
    Params,
    conv,
    conv_layers,
    copy_params,
    draw_offsets,
    mlp,
    polyak,
    projection,
    replicate_shift,
    twin_q,
    with_prefix,
)
from sgqn.algorithms.svea import SVEA


def encode(p: Params, obs: Tensor) -> Tensor:
    """obs/255 → conv 3×3 stride 2 → [ReLU → conv 3×3] per further layer → flatten (no final ReLU)."""
    layers = conv_layers(p)
    x = conv(p, layers[0], obs / 255.0, stride=2)
    for name in layers[1:]:
        x = conv(p, name, torch.relu(x), stride=1)
    return x.flatten(1)


def critic_q(p: Params, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
    """Q1, Q2 of a whole critic (its own encoder, projection and heads)."""
    return twin_q(p, encode(with_prefix(p, "encoder"), obs), action)


class SVEAOracle:
    """SVEA's learner state, copied from `agent` (float64), and its update.

    Args:
        agent: the package's SVEA (weights, settings and overlay images are read from it).
        overlay_term: False drops β·TD(overlay) (to show that the term matters).
    """

    def __init__(self, agent: SVEA, overlay_term: bool = True) -> None:
        c, s = agent.config, agent.svea
        self.config, self.weights, self.overlay_term = c, (s.alpha, s.beta), overlay_term
        self.overlay_alpha, self.discount = s.overlay_alpha, agent.discount
        assert agent.overlay.images is not None
        self.images = agent.overlay.images.clone()
        self.critic = copy_params(agent.critic.named_parameters())  # encoder.*, projection.*, q1.*, q2.*
        self.actor = copy_params(agent.actor.named_parameters(), skip="encoder.")
        self.target = copy_params(agent.target_critic.critic.named_parameters(), grad=False)
        self.log_alpha = agent.log_alpha.detach().clone().double().requires_grad_(True)
        self.target_entropy = -float(agent.critic.action_dim)
        self.critic_opt = Adam(list(self.critic.values()), c.critic_lr, c.critic_beta)
        self.actor_opt = Adam(list(self.actor.values()), c.actor_lr, c.actor_beta)
        self.alpha_opt = Adam([self.log_alpha], c.alpha_lr, c.alpha_beta)

    def features(self, obs: Tensor) -> Tensor:
        return encode(with_prefix(self.critic, "encoder"), obs)

    def policy(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(a, log π(a|s)) for features that are already detached; ε ~ N(0, 1) drawn here."""
        c = self.config
        mean, log_std = mlp(self.actor, "trunk", projection(self.actor, "projection", features)).chunk(2, -1)
        log_std = c.actor_log_std_min + 0.5 * (c.actor_log_std_max - c.actor_log_std_min) * (
            torch.tanh(log_std) + 1
        )
        eps = torch.randn(mean.shape, dtype=mean.dtype)
        action = torch.tanh(mean + eps * torch.exp(log_std))
        log_gauss = (-0.5 * eps**2 - log_std).sum(-1, keepdim=True) - 0.5 * math.log(
            2 * math.pi
        ) * mean.shape[-1]
        squash = torch.log(torch.relu(1 - action**2) + 1e-6).sum(-1, keepdim=True)
        return action, log_gauss - squash

    def overlay(self, obs: Tensor) -> Tensor:
        """(1 − w) obs + w · image, one image per sample over all stacked frames."""
        index = torch.randint(len(self.images), (obs.shape[0],))
        frames = obs.shape[1] // 3
        image = torch.cat([self.images[index].double()] * frames, dim=1)
        return (1 - self.overlay_alpha) * obs + self.overlay_alpha * image

    def bootstrap(self, batch: TensorDictBase) -> Tensor:
        """γ^m of an n-step batch, else γ · not_done."""
        if ("next", "discount") in batch.keys(include_nested=True):
            return batch["next", "discount"]
        return self.discount * (1.0 - batch["next", "terminated"].double())

    def update(self, batch: TensorDictBase, step: int) -> dict[str, Tensor]:
        c, (w_clean, w_aug) = self.config, self.weights
        pixels, next_pixels, action = batch["pixels"], batch["next", "pixels"], batch["action"]
        b = pixels.shape[0]
        obs = replicate_shift(pixels, c.shift_pad, draw_offsets(b, c.shift_pad))
        next_obs = replicate_shift(next_pixels, c.shift_pad, draw_offsets(b, c.shift_pad))
        alpha = torch.exp(self.log_alpha.detach())

        with torch.no_grad():
            next_action, next_log_pi = self.policy(self.features(next_obs))
            t1, t2 = critic_q(self.target, next_obs, next_action)
            target_q = batch["next", "reward"] + self.bootstrap(batch) * (
                torch.min(t1, t2) - alpha * next_log_pi
            )

        q1, q2 = critic_q(self.critic, obs, action)
        critic_loss = w_clean * (F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q))
        overlaid = self.overlay(obs)
        if self.overlay_term:
            o1, o2 = critic_q(self.critic, overlaid, action)
            critic_loss = critic_loss + w_aug * (F.mse_loss(o1, target_q) + F.mse_loss(o2, target_q))
        self.critic_opt.minimize(critic_loss)
        out = {
            "loss_critic": critic_loss.detach(),
            "q1_mean": q1.detach().mean(),
            "target_q_mean": target_q.mean(),
        }

        if step % c.actor_update_freq == 0:
            with torch.no_grad():
                h = self.features(obs)  # the stepped encoder, re-encoded
            pi, log_pi = self.policy(h)
            a1, a2 = twin_q(self.critic, h, pi)
            actor_loss = (alpha * log_pi - torch.min(a1, a2)).mean()
            self.actor_opt.minimize(actor_loss)
            alpha_loss = (torch.exp(self.log_alpha) * (-log_pi - self.target_entropy).detach()).mean()
            self.alpha_opt.minimize(alpha_loss)
            out |= {
                "loss_actor": actor_loss.detach(),
                "loss_alpha": alpha_loss.detach(),
                "entropy": -log_pi.detach().mean(),
                "alpha": alpha,
            }
        if step % c.critic_target_update_freq == 0:
            convs_and_projection = {k: v for k, v in self.target.items() if not k.startswith(("q1.", "q2."))}
            heads = {k: v for k, v in self.target.items() if k.startswith(("q1.", "q2."))}
            polyak(convs_and_projection, self.critic, c.encoder_tau)
            polyak(heads, self.critic, c.critic_tau)
        return out


__all__ = ["SVEAOracle", "critic_q", "encode"]
