"""SAC on pixels with DrQ random-shift augmentation (the SVEA / SGQN code base's `SAC` + `sample_drq`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

from sgqn.nets import Actor, Critic, squashed_gaussian_sample
from sgqn.objectives.learner import Guidance, Metrics, ParamGroups, Step, ValueLearner
from sgqn.objectives.targets import TargetCritic


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Evaluate `module` without recording gradients for its parameters (inputs still get theirs)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class SACLoss(ValueLearner):
    """Soft actor-critic on pixels (DrQ shift) as a `ValueLearner`; target network in `self.target_critic`.

    `update()` runs the reference order (critic step; then, every `actor_update_freq` agent steps, the
    actor and temperature on the updated critic; every `critic_target_update_freq`, the target). For a
    plain TorchRL loop, `forward(td)` returns `loss_critic`, `loss_actor`, `loss_alpha` (+ metrics) from
    one batch (their sum back-propagates correctly: the actor reads detached conv features and a frozen
    critic; the temperature loss only reaches `log_alpha`).

    Batch keys: see `ValueLearner`; the bootstrap uses 1 − terminated (time-limit truncation still
    bootstraps).

    Args:
        actor: the policy (`Actor`), sharing its encoder with `critic`.
        critic: the twin Q-network (`Critic`).
        discount: γ (0.99).
        init_temperature: initial α (0.1); log α is learnt.
        target_entropy: entropy target of the temperature loss; None → −|A|.
        critic_tau: Polyak rate of the target Q heads (0.01).
        encoder_tau: Polyak rate of the target convs + projection (0.05).
        shift_pad: DrQ random-shift padding applied to pixels and next pixels (4; 0 = no augmentation,
            the SGQN repository's own `SAC` baseline).
        actor_update_freq: actor and temperature step when the agent step is a multiple of this (2).
        critic_target_update_freq: target update when the agent step is a multiple of this (2).
        guidance: SVEA's or SGQN's plug-in (`Guidance`; None: plain SAC).
    """

    actor: Actor
    critic: Critic
    target_critic: TargetCritic
    compilable = ("soft_target", "conv_features")  # DrQ-v2's target also records the agent step: not pure
    compiled_losses = (*compilable, "critic_loss", "actor_loss", "alpha_loss")

    def __init__(
        self,
        actor: Actor,
        critic: Critic,
        *,
        discount: float = 0.99,
        init_temperature: float = 0.1,
        target_entropy: float | None = None,
        critic_tau: float = 0.01,
        encoder_tau: float = 0.05,
        shift_pad: int = 4,
        actor_update_freq: int = 2,
        critic_target_update_freq: int = 2,
        guidance: Guidance | None = None,
    ) -> None:
        super().__init__()
        self.actor, self.critic = actor, critic
        self.target_critic = TargetCritic(critic, critic_tau=critic_tau, encoder_tau=encoder_tau)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.target_entropy = -float(critic.action_dim) if target_entropy is None else target_entropy
        self.discount, self.shift_pad = discount, shift_pad
        self.actor_update_freq, self.critic_target_update_freq = actor_update_freq, critic_target_update_freq
        self.guidance = guidance if guidance is not None else Guidance()

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    def act(self, obs: Tensor, deterministic: bool, actor: nn.Module | None = None) -> Tensor:
        with torch.no_grad():
            mean, log_std = (self.actor if actor is None else actor)(obs)
            return torch.tanh(mean) if deterministic else squashed_gaussian_sample(mean, log_std)[0]

    def actor_due(self, due_at: int) -> bool:
        return due_at % self.actor_update_freq == 0

    def target_due(self, due_at: int) -> bool:
        return due_at % self.critic_target_update_freq == 0

    def param_groups(self) -> ParamGroups:
        # The actor's optimizer leaves the shared encoder out: only the critic (and SGQN's aux) train it.
        return {
            "critic": (list(self.critic.parameters()), "critic"),
            "actor": (list[Tensor](self.actor.own_parameters()), "actor"),
            "alpha": ([self.log_alpha], "alpha"),
        }

    # ------------------------------------------------------------------ pieces

    # (`with torch.no_grad()` inside rather than as a decorator: `torch.compile` caches per code object,
    # and every decorated function shares the decorator's.)
    def soft_target(self, next_obs: Tensor, reward: Tensor, bootstrap: Tensor) -> Tensor:
        """r + bootstrap · [min Q'(s', a') − α log π(a'|s')], a' ~ π(·|s'): `[B, 1]`, no grad."""
        with torch.no_grad():
            next_action, log_prob = squashed_gaussian_sample(*self.actor(next_obs))
            q1, q2 = self.target_critic(next_obs, next_action)
            soft_value = torch.min(q1, q2) - self.alpha * log_prob
            return reward + bootstrap * soft_value

    def target_value(self, next_obs: Tensor, batch: TensorDictBase, due_at: int = 0) -> Tensor:
        return self.soft_target(
            next_obs, batch.get(self.tensor_keys.reward), self.bootstrap(batch, self.discount)
        )

    def actor_step(self, features: Tensor, step: Step, due_at: int) -> Metrics:
        loss_actor, metrics = self.actor_loss(features)
        step("actor", "loss_actor", loss_actor)
        loss_alpha, alpha_metrics = self.alpha_loss(metrics.pop("log_prob"))
        step("alpha", "loss_alpha", loss_alpha)
        return metrics | alpha_metrics

    # ------------------------------------------------------------------ losses

    def actor_loss(self, features: Tensor) -> tuple[Tensor, Metrics]:
        """E[α log π(a|s) − min Q(s, a)] on detached conv features; the critic is frozen (not trained)."""
        features = features.detach()
        action, log_prob = squashed_gaussian_sample(*self.actor.head(features))
        with frozen(self.critic):
            q1, q2 = self.critic.heads(features, action)
        loss = (self.alpha.detach() * log_prob - torch.min(q1, q2)).mean()
        metrics = {"loss_actor": loss.detach(), "entropy": -log_prob.detach().mean()}
        return loss, {**metrics, "log_prob": log_prob.detach()}

    def alpha_loss(self, log_prob: Tensor) -> tuple[Tensor, Metrics]:
        """E[α (−log π − H̄)] (the reference's α, not log α, multiplies the detached entropy gap)."""
        loss = (self.alpha * (-log_prob.detach() - self.target_entropy)).mean()
        return loss, {"loss_alpha": loss.detach(), "alpha": self.alpha.detach()}

    # ------------------------------------------------------------------ TorchRL entry point

    def _batch_losses(self, td: TensorDictBase) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Augment, critic loss, actor and alpha losses: (obs, action, named outputs)."""
        keys = self.tensor_keys
        obs, next_obs = self.augment(td)
        action = td.get(keys.action)
        target_q = self.target_value(next_obs, td)
        critic_terms, critic_metrics = self.critic_terms(obs, action, target_q)
        loss_actor, actor_metrics = self.actor_loss(self.conv_features(obs))
        loss_alpha, alpha_metrics = self.alpha_loss(actor_metrics.pop("log_prob"))
        out = {
            **critic_metrics,
            **actor_metrics,
            **alpha_metrics,
            **critic_terms,  # "loss_*" entries with grad: their sum is the whole objective
            "loss_actor": loss_actor,
            "loss_alpha": loss_alpha,
            "target_q_mean": target_q.mean(),
        }
        return obs, action, out

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        _, _, out = self._batch_losses(td)
        return TensorDict(out, batch_size=[])


__all__ = ["Metrics", "SACLoss", "frozen"]
