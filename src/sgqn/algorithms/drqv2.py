"""DrQ-v2 (Yarats et al. 2021; facebookresearch/drqv2 `drqv2.py`): a DDPG-style deterministic actor with
scheduled exploration noise, twin Q with a min target, n-step returns from the replay, no entropy term.

    target   y = R_n + γ^m · min Q'(f(s'), ã'),  ã' = clip(μ(f(s')) + clip(σ_t ε, ±c), ±1),  f = online encoder
    critic   (Q1(s, a) − y)² + (Q2(s, a) − y)²                           trains encoder + trunk + Q
    actor    −min Q(f(s), ã),  ã = clip(μ(f(s)) + clip(σ_t ε, ±c), ±1)   f(s) detached
    target   θ' ← θ' + τ (θ − θ') on the critic's trunk and Q heads, every update

where f(s) is encoded once per update, before the critic's step: the actor reads those features, as
the reference's `update_actor(obs.detach(), step)` does (the DMC-GB lineage's SAC re-encodes instead).

with σ_t = linear(σ_0, σ_final, N) of the agent step t and c = 0.3. The actor and the target step at
every update; how often updates run is the data stream's (`update_every_steps`: DrQ-v2 updates every
second agent step, with no burst after the warm-up).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from sgqn.algorithms.agent import Agent, Due, Metrics, OptimizerSpec, Step, frozen, td_loss
from sgqn.algorithms.targets import TargetHeads
from sgqn.envs.tasks import reference_settings
from sgqn.nets.config import NetConfig
from sgqn.nets.drqv2 import DeterministicActor, DrQv2Encoder, linear_schedule, truncated_normal_sample
from sgqn.nets.sac import Critic


@dataclass(frozen=True)
class DrQv2Config:
    """DrQ-v2's settings (`--model.drqv2.*`), facebookresearch/drqv2's by default (`cfgs/config.yaml`,
    `cfgs/task/easy.yaml`).

    Args:
        actor_lr: Adam learning rate of the actor (1e-4).
        critic_lr: Adam learning rate of the encoder and critic (1e-4; DrQ-v2 steps its encoder and critic
            optimizers together on the critic loss: Adam is per-parameter, so one optimizer over both, with
            the same lr and betas, is the same update). Adam's default betas (0.9, 0.999).
        critic_tau: Polyak rate of the target trunk and Q heads (0.01).
        shift_pad: random-shift padding (4).
        stddev_init: exploration σ at agent step 0 (1.0).
        stddev_final: exploration σ after `stddev_steps` (0.1).
        stddev_steps: agent steps of σ's linear decay; None: DrQ-v2's for the task (100k on its "easy"
            tasks, 500k on its "medium" ones: `sgqn.envs.tasks.reference_settings`, resolved by
            `make_agent`; without a task, the easy tasks' 100k).
        stddev_clip: clip of the target's and the actor step's noise (0.3).
    """

    actor_lr: float = 1e-4
    critic_lr: float = 1e-4
    critic_tau: float = 0.01
    shift_pad: int = 4
    stddev_init: float = 1.0
    stddev_final: float = 0.1
    stddev_steps: int | None = None
    stddev_clip: float = 0.3


class DrQv2(Agent):
    """The DrQ-v2 learner.

    Args:
        observation_shape: (C, H, W) of the stacked frames.
        action_dim: |A|.
        config: `DrQv2Config`.
        net: the networks' sizes (`NetConfig`; DrQ-v2's references: 4 conv layers, trunk 50).
        discount: γ (0.99); with an n-step replay the batch's ("next", "discount") = γ^m is used instead.
    """

    actor: DeterministicActor
    critic: Critic
    target_critic: TargetHeads
    agent_step: Tensor

    def __init__(
        self,
        observation_shape: tuple[int, int, int],
        action_dim: int,
        config: DrQv2Config = DrQv2Config(),
        net: NetConfig = NetConfig(),
        discount: float = 0.99,
    ) -> None:
        super().__init__()
        if config.stddev_steps is None:  # no task known here: DrQ-v2's reference without one
            config = replace(config, stddev_steps=reference_settings("drqv2").stddev_steps)
        self.config, self.discount, self.shift_pad = config, discount, config.shift_pad
        self.stddev_steps = int(config.stddev_steps or 0)  # σ's decay, in agent steps
        self.overlay = None  # an augmentation bank, for the algorithms that overlay images
        layers = 4 if net.num_conv_layers is None else net.num_conv_layers
        features = 50 if net.feature_dim is None else net.feature_dim
        encoder = DrQv2Encoder(observation_shape, layers, net.num_filters)
        self.actor = DeterministicActor(encoder, action_dim, features, net.actor_width)
        self.critic = Critic(encoder, action_dim, features, net.hidden_dim)  # type: ignore[arg-type]
        self.target_critic = TargetHeads(self.critic, tau=config.critic_tau)
        # The agent step of the latest update: its σ, and `act`'s until the next one (checkpointed; on the
        # module's device, so that neither an update nor acting reads a step back from a GPU).
        self.register_buffer("agent_step", torch.zeros((), dtype=torch.long))

    def update(self, batch: TensorDictBase, opt: Step, due: Due) -> Metrics:
        """critic → actor → target, every update."""
        obs, next_obs = self.augment(batch)
        action = batch.get(self.tensor_keys.action)
        target_q = self.target_value(next_obs, batch)

        features = self.critic.encoder(obs)  # encoded once, before the critic's step, as DrQ-v2 does
        q1, q2 = self.critic.heads(features, action)
        loss_critic = td_loss(q1, q2, target_q)
        opt.step("critic", loss_critic=loss_critic)
        metrics = {"loss_critic": loss_critic.detach(), "q1_mean": q1.detach().mean()}
        metrics["target_q_mean"] = target_q.mean()

        if due.actor:  # on those (pre-step) features, detached: `update_actor(obs.detach(), step)`
            metrics |= self.actor_step(features.detach(), opt)
        if due.target:
            self.target_critic.update(self.critic)
        return metrics

    # ------------------------------------------------------------------ the losses

    def target_value(self, next_obs: Tensor, batch: TensorDictBase) -> Tensor:
        """R + γ^m · min Q'(f(s'), ã') with the ONLINE encoder's features, no grad."""
        with torch.no_grad():
            features = self.critic.encoder(next_obs)
            next_action = truncated_normal_sample(
                self.actor.mean(features), self.exploration_stddev(), self.config.stddev_clip
            )
            q1, q2 = self.target_critic.heads(features, next_action)
            return batch.get(self.tensor_keys.reward) + self.bootstrap(batch) * torch.min(q1, q2)

    def actor_step(self, features: Tensor, opt: Step) -> Metrics:
        """−min Q(f(s), ã) on detached features and a frozen critic."""
        features = features.detach()
        std = self.exploration_stddev()
        action = truncated_normal_sample(self.actor.mean(features), std, self.config.stddev_clip)
        with frozen(self.critic):
            q1, q2 = self.critic.heads(features, action)
        loss_actor = -torch.min(q1, q2).mean()
        opt.step("actor", loss_actor=loss_actor)
        return {"loss_actor": loss_actor.detach(), "stddev": std.float()}

    # ------------------------------------------------------------------ the rest of the agent

    def due(self, step: int) -> Due:
        self.agent_step.fill_(step)  # σ of this update, and of `act` until the next one
        return Due(actor=True, target=True)

    def stddev(self, agent_step: int) -> float:
        c = self.config
        return linear_schedule(agent_step, c.stddev_init, c.stddev_final, self.stddev_steps)

    # σ read from the `agent_step` buffer, on the device: the value `stddev(step)` gives, as a float64
    # tensor that the noise multiplies after the same cast to float32 (`tests/test_drqv2.py`).
    def exploration_stddev(self) -> Tensor:
        c = self.config
        return linear_schedule(self.agent_step, c.stddev_init, c.stddev_final, self.stddev_steps)

    def act(self, obs: Tensor, deterministic: bool, actor: nn.Module | None = None) -> Tensor:
        with torch.no_grad():
            mean = (self.actor if actor is None else actor)(obs)
            return mean if deterministic else truncated_normal_sample(mean, self.exploration_stddev(), None)

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        c = self.config
        return {
            "critic": OptimizerSpec(list(self.critic.parameters()), c.critic_lr, 0.9, "drqv2.critic_lr"),
            "actor": OptimizerSpec(self.actor.own_parameters(), c.actor_lr, 0.9, "drqv2.actor_lr"),
        }


__all__ = ["DrQv2", "DrQv2Config"]
