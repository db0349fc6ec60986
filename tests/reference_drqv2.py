"""DrQ-v2's update (facebookresearch/drqv2 `DrQV2Agent.update`), re-derived from its semantics on copies of an
agent's weights: the test oracle of `sgqn.algorithms.drqv2.DrQv2.update` (tests/test_oracles.py).

One update at agent step t, σ_t = (1 − m) σ_0 + m σ_final with m = clip(t / N, 0, 1):

    obs, next_obs  = shift(pixels), shift(next pixels)                  replicate-pad-and-crop
    h, h'          = f(obs), f(next_obs)                                 the ONE online encoder
    ã'             = clamp(μ(h') + clamp(σ_t ε, ±c), ±(1 − 1e-6))        ε ~ N(0, 1)
    y              = r + γ^m · min Q'(h', ã')                            target trunk + Q heads, no grad
    critic loss    = mse(Q1(h, a), y) + mse(Q2(h, a), y)                 encoder Adam + critic Adam
    actor loss     = −mean min Q(sg(h), ã),  ã as ã' on sg(h)            h from BEFORE the critic step
    target         θ' ← τ θ + (1 − τ) θ'  on the critic's trunk and Q heads

The sample's clamp into (−1, 1) is straight-through (the gradient reaches μ as if unclamped); the noise
clip is not. Random numbers are drawn in the package's order: the two shifts' offsets, ε of the target,
ε of the actor.
"""

from __future__ import annotations

from collections import Counter

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
)
from sgqn.algorithms.drqv2 import DrQv2


def encode(p: Params, obs: Tensor) -> Tensor:
    """obs/255 − 0.5 → [conv 3×3 (stride 2, then 1) → ReLU] per layer → flatten."""
    x = obs / 255.0 - 0.5
    for i, name in enumerate(conv_layers(p)):
        x = torch.relu(conv(p, name, x, stride=2 if i == 0 else 1))
    return x.flatten(1)


def policy_mean(p: Params, features: Tensor) -> Tensor:
    return torch.tanh(mlp(p, "trunk", projection(p, "projection", features)))


def schedule(step: int, init: float, final: float, duration: int) -> float:
    """`linear(init, final, duration)` of DrQ-v2's `utils.schedule`."""
    mix = min(max(step / duration, 0.0), 1.0)
    return (1.0 - mix) * init + mix * final


class DrQv2Oracle:
    """DrQ-v2's learner state, copied from `agent` (float64), and its update.

    `binds` counts, per sample ("target", "actor"), the noise entries clipped at ±c and the actions
    clamped at ±(1 − 1e-6), so a test can check that both clamps were exercised.
    """

    def __init__(self, agent: DrQv2) -> None:
        c = agent.config
        self.pad, self.clip, self.tau = c.shift_pad, c.stddev_clip, c.critic_tau
        assert c.stddev_steps is not None  # (resolved by the agent)
        self.sigma = (c.stddev_init, c.stddev_final, c.stddev_steps)
        self.encoder = copy_params(agent.critic.encoder.named_parameters())
        self.critic = copy_params(agent.critic.named_parameters(), skip="encoder.")
        self.actor = copy_params(agent.actor.named_parameters(), skip="encoder.")
        self.target = copy_params(agent.target_critic.named_parameters(), grad=False)
        assert set(self.target) == set(self.critic)  # the target is the critic's trunk and Q heads
        # The reference's three Adams: the encoder's and the critic's step together on the critic loss.
        self.encoder_opt = Adam(list(self.encoder.values()), c.critic_lr)
        self.critic_opt = Adam(list(self.critic.values()), c.critic_lr)
        self.actor_opt = Adam(list(self.actor.values()), c.actor_lr)
        self.binds: Counter[str] = Counter()

    def stddev(self, step: int) -> float:
        return schedule(step, *self.sigma)

    def sample(self, mean: Tensor, std: float, tag: str) -> Tensor:
        """`TruncatedNormal(mean, std).sample(clip)`: clamp(mean + clamp(std ε, ±c), ±(1 − 1e-6)), whose
        value is the clamped one and whose gradient w.r.t. the mean is the identity."""
        noise = torch.randn(mean.shape, dtype=mean.dtype) * std
        clipped = torch.clamp(noise, -self.clip, self.clip)
        x = mean.detach() + clipped
        inside = torch.clamp(x, -1.0 + 1e-6, 1.0 - 1e-6)
        self.binds[f"{tag}_noise_clipped"] += int((clipped != noise).sum())
        self.binds[f"{tag}_action_clamped"] += int((inside != x).sum())
        return inside + (mean - mean.detach())

    def update(self, batch: TensorDictBase, step: int) -> dict[str, Tensor]:
        pixels, next_pixels = batch["pixels"], batch["next", "pixels"]
        b = pixels.shape[0]
        obs = replicate_shift(pixels, self.pad, draw_offsets(b, self.pad))
        next_obs = replicate_shift(next_pixels, self.pad, draw_offsets(b, self.pad))
        std = self.stddev(step)

        with torch.no_grad():  # target: the online encoder, the target trunk and heads
            next_h = encode(self.encoder, next_obs)
            next_action = self.sample(policy_mean(self.actor, next_h), std, "target")
            t1, t2 = twin_q(self.target, next_h, next_action)
            target_q = batch["next", "reward"] + batch["next", "discount"] * torch.min(t1, t2)

        h = encode(self.encoder, obs)
        q1, q2 = twin_q(self.critic, h, batch["action"])
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        grads = torch.autograd.grad(critic_loss, [*self.encoder.values(), *self.critic.values()])
        self.critic_opt.step(grads[len(self.encoder) :])
        self.encoder_opt.step(grads[: len(self.encoder)])

        h = h.detach()  # `update_actor(obs.detach(), step)`: the features encoded before the step
        action = self.sample(policy_mean(self.actor, h), std, "actor")
        a1, a2 = twin_q(self.critic, h, action)  # the stepped critic; only the actor's Adam steps
        actor_loss = -torch.min(a1, a2).mean()
        self.actor_opt.minimize(actor_loss)

        polyak(self.target, self.critic, self.tau)
        return {
            "loss_critic": critic_loss.detach(),
            "loss_actor": actor_loss.detach(),
            "q1_mean": q1.detach().mean(),
            "target_q_mean": target_q.mean(),
        }


__all__ = ["DrQv2Oracle", "encode", "policy_mean", "schedule"]
