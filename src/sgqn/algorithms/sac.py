"""SAC on pixels with DrQ's random shift, as the DMC-GB code base (SVEA's and SGQN's repositories) runs it:
`SAC.update` is their `SAC.update(replay, L, step)` with `sample_drq`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from sgqn.algorithms.agent import Agent, Due, Metrics, OptimizerSpec, Step, frozen, td_loss
from sgqn.algorithms.targets import TargetCritic
from sgqn.nets.config import NetConfig
from sgqn.nets.sac import Actor, Critic, Encoder, squashed_gaussian_sample


@dataclass(frozen=True)
class SACConfig:
    """SAC's settings (`--model.sac.*`), the DMC-GB code's by default; SVEA and SGQN learn with them too.

    Args:
        actor_lr: Adam learning rate of the actor (1e-3).
        actor_beta: Adam β1 of the actor (0.9).
        critic_lr: Adam learning rate of the critic, encoder included (1e-3).
        critic_beta: Adam β1 of the critic (0.9).
        alpha_lr: Adam learning rate of log α (1e-4).
        alpha_beta: Adam β1 of log α (0.5).
        init_temperature: initial α (0.1); the entropy target is −|A|.
        actor_update_freq: the actor and α step when the agent step is a multiple of this (2).
        critic_target_update_freq: the target's Polyak update when the agent step is a multiple of this (2).
        critic_tau: Polyak rate of the target Q heads (0.01).
        encoder_tau: Polyak rate of the target convs and critic projection (0.05; the reference's
            `critic.encoder` includes the projection).
        actor_log_std_min: lower bound of the policy's log σ (−10).
        actor_log_std_max: upper bound of the policy's log σ (2).
        shift_pad: DrQ random-shift padding of pixels and next pixels (4; 0: no augmentation, the SGQN
            repository's own `SAC` baseline).
    """

    actor_lr: float = 1e-3
    actor_beta: float = 0.9
    critic_lr: float = 1e-3
    critic_beta: float = 0.9
    alpha_lr: float = 1e-4
    alpha_beta: float = 0.5
    init_temperature: float = 0.1
    actor_update_freq: int = 2
    critic_target_update_freq: int = 2
    critic_tau: float = 0.01
    encoder_tau: float = 0.05
    actor_log_std_min: float = -10.0
    actor_log_std_max: float = 2.0
    shift_pad: int = 4


class SAC(Agent):
    """Soft actor-critic on stacked pixel frames; the actor and the twin critic share one encoder.

    Args:
        observation_shape: (C, H, W) of the stacked frames, C = 3 × frames.
        action_dim: |A|.
        config: `SACConfig`.
        net: the networks' sizes (`NetConfig`; SAC's references: 11 conv layers, features 100).
        discount: γ (0.99).
    """

    actor: Actor
    critic: Critic
    target_critic: TargetCritic

    def __init__(
        self,
        observation_shape: tuple[int, int, int],
        action_dim: int,
        config: SACConfig = SACConfig(),
        net: NetConfig = NetConfig(),
        discount: float = 0.99,
    ) -> None:
        super().__init__()
        self.config, self.discount, self.shift_pad = config, discount, config.shift_pad
        self.overlay = None  # an augmentation bank, for the algorithms that overlay images
        layers = 11 if net.num_conv_layers is None else net.num_conv_layers
        features = 100 if net.feature_dim is None else net.feature_dim
        encoder = Encoder(observation_shape, layers, net.num_filters)
        log_std = (config.actor_log_std_min, config.actor_log_std_max)
        self.actor = Actor(encoder, action_dim, features, net.actor_width, *log_std)
        self.critic = Critic(encoder, action_dim, features, net.hidden_dim)
        self.target_critic = TargetCritic(self.critic, config.critic_tau, config.encoder_tau)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_temperature)))
        self.target_entropy = -float(action_dim)

    def update(self, batch: TensorDictBase, opt: Step, due: Due) -> Metrics:
        """critic → [actor + α, on the updated critic] → [target]."""
        obs, next_obs = self.augment(batch)
        action = batch.get(self.tensor_keys.action)
        target_q = self.soft_target(next_obs, batch)

        q1, q2 = self.critic(obs, action)
        loss_critic = td_loss(q1, q2, target_q)
        opt.step("critic", loss_critic=loss_critic)
        metrics = {"loss_critic": loss_critic.detach(), "q1_mean": q1.detach().mean()}
        metrics["target_q_mean"] = target_q.mean()

        if due.actor:  # conv features of the updated encoder, detached: the actor never trains it
            metrics |= self.actor_and_temperature_steps(self.conv_features(obs), opt)
        if due.target:
            self.target_critic.update(self.critic)
        return metrics

    # ------------------------------------------------------------------ the losses

    # (`with torch.no_grad()` inside rather than as a decorator: `torch.compile` caches per code object,
    # and every decorated function shares the decorator's.)
    def soft_target(self, next_obs: Tensor, batch: TensorDictBase) -> Tensor:
        """r + bootstrap · [min Q'(s', a') − α log π(a'|s')], a' ~ π(·|s'): `[B, 1]`, no grad."""
        with torch.no_grad():
            next_action, log_prob = squashed_gaussian_sample(*self.actor(next_obs))
            q1, q2 = self.target_critic(next_obs, next_action)
            soft_value = torch.min(q1, q2) - self.alpha * log_prob
            return batch.get(self.tensor_keys.reward) + self.bootstrap(batch) * soft_value

    def actor_loss(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """E[α log π(a|s) − min Q(s, a)] on detached conv features, the critic frozen; and log π."""
        features = features.detach()
        action, log_prob = squashed_gaussian_sample(*self.actor.head(features))
        with frozen(self.critic):
            q1, q2 = self.critic.heads(features, action)
        return (self.alpha.detach() * log_prob - torch.min(q1, q2)).mean(), log_prob.detach()

    def alpha_loss(self, log_prob: Tensor) -> Tensor:
        """E[α (−log π − H̄)] (the reference's α, not log α, multiplies the detached entropy gap)."""
        return (self.alpha * (-log_prob.detach() - self.target_entropy)).mean()

    def actor_and_temperature_steps(self, features: Tensor, opt: Step) -> Metrics:
        """The actor's step, then α's on the same sampled actions."""
        loss_actor, log_prob = self.actor_loss(features)
        opt.step("actor", loss_actor=loss_actor)
        metrics = {
            "loss_actor": loss_actor.detach(),
            "entropy": -log_prob.mean(),
            "alpha": self.alpha.detach(),
        }
        loss_alpha = self.alpha_loss(log_prob)
        opt.step("alpha", loss_alpha=loss_alpha)
        return metrics | {"loss_alpha": loss_alpha.detach()}

    # ------------------------------------------------------------------ the rest of the agent

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    def due(self, step: int) -> Due:
        config = self.config
        return Due(step % config.actor_update_freq == 0, step % config.critic_target_update_freq == 0)

    def act(self, obs: Tensor, deterministic: bool, actor: nn.Module | None = None) -> Tensor:
        with torch.no_grad():
            mean, log_std = (self.actor if actor is None else actor)(obs)
            return torch.tanh(mean) if deterministic else squashed_gaussian_sample(mean, log_std)[0]

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        # The actor's optimizer leaves the shared encoder out: only the critic (and SGQN's aux) train it.
        c = self.config
        return {
            "critic": OptimizerSpec(
                list(self.critic.parameters()), c.critic_lr, c.critic_beta, "sac.critic_lr"
            ),
            "actor": OptimizerSpec(self.actor.own_parameters(), c.actor_lr, c.actor_beta, "sac.actor_lr"),
            "alpha": OptimizerSpec([self.log_alpha], c.alpha_lr, c.alpha_beta, "sac.alpha_lr"),
        }


__all__ = ["SAC", "SACConfig"]
