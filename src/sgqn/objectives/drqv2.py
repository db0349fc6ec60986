"""DrQ-v2 (Yarats et al. 2021) as a `ValueLearner`: DDPG-style deterministic actor with scheduled
exploration noise, twin Q with a min target, n-step returns from the replay, no entropy term.

    target   y = R_n + γ^m · min Q'(f(s'), ã'),  ã' = clip(μ(f(s')) + clip(σ_t ε, ±c), ±1),  f = online encoder
    critic   (Q1(s, a) − y)² + (Q2(s, a) − y)²                           trains encoder + trunk + Q
    actor    −min Q(f(s), ã),  ã = clip(μ(f(s)) + clip(σ_t ε, ±c), ±1)   f(s) detached
    target   θ' ← θ' + τ (θ − θ') on the critic's trunk and Q heads, every update

with σ_t = linear(σ_0, σ_final, N) of the agent step t and c = 0.3 (facebookresearch/drqv2 `drqv2.py`).
The actor and the target step at every update; how often updates run is the data stream's
(`update_every_steps`: DrQ-v2 updates every second agent step, with no burst after the warm-up).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from sgqn.nets import Critic
from sgqn.nets_drqv2 import DeterministicActor, linear_schedule, truncated_normal_sample
from sgqn.objectives.learner import Guidance, Metrics, ParamGroups, Step, ValueLearner
from sgqn.objectives.sac import frozen
from sgqn.objectives.targets import TargetHeads


class DrQv2Loss(ValueLearner):
    """The DrQ-v2 learner.

    Args:
        actor: `DeterministicActor` on the shared encoder.
        critic: `Critic` (trunk + twin Q) on the same encoder.
        discount: γ (0.99); with an n-step replay the batch's ("next", "discount") = γ^m is used instead.
        critic_tau: Polyak rate of the target trunk and Q heads (0.01).
        shift_pad: random-shift padding (4).
        stddev_init, stddev_final, stddev_steps: the exploration σ schedule, linear in agent steps
            (DrQ-v2: 1.0 → 0.1 over 100k agent steps on its "easy" tasks, 500k on "medium" ones).
        stddev_clip: clip of the target's and the actor step's noise (0.3).
        guidance: a `Guidance` plug-in (SGQN's saliency guidance for `drqv2_sgqn`; None: plain DrQ-v2).
    """

    actor: DeterministicActor
    critic: Critic
    target_critic: TargetHeads
    agent_step: Tensor

    def __init__(
        self,
        actor: DeterministicActor,
        critic: Critic,
        *,
        discount: float = 0.99,
        critic_tau: float = 0.01,
        shift_pad: int = 4,
        stddev_init: float = 1.0,
        stddev_final: float = 0.1,
        stddev_steps: int = 100_000,
        stddev_clip: float = 0.3,
        guidance: Guidance | None = None,
    ) -> None:
        super().__init__()
        self.actor, self.critic = actor, critic
        self.target_critic = TargetHeads(critic, tau=critic_tau)
        self.discount, self.shift_pad = discount, shift_pad
        self.stddev_init, self.stddev_final, self.stddev_steps = stddev_init, stddev_final, stddev_steps
        self.stddev_clip = stddev_clip
        self.guidance = guidance if guidance is not None else Guidance()
        # The agent step of the latest update: the exploration σ of `act` between updates (checkpointed).
        self.register_buffer("agent_step", torch.zeros((), dtype=torch.long))

    def stddev(self, agent_step: int) -> float:
        return linear_schedule(agent_step, self.stddev_init, self.stddev_final, self.stddev_steps)

    def exploration_stddev(self) -> Tensor:
        """σ at the latest update's agent step, on the buffer's device (no read back to the host)."""
        return linear_schedule(self.agent_step, self.stddev_init, self.stddev_final, self.stddev_steps)

    def param_groups(self) -> ParamGroups:
        # DrQ-v2 steps its encoder and critic optimizers together on the critic loss; Adam is
        # per-parameter, so one optimizer over both (same lr and betas) is the same update.
        return {
            "critic": (list(self.critic.parameters()), "critic"),
            "actor": (list[Tensor](self.actor.own_parameters()), "actor"),
        }

    def act(self, obs: Tensor, deterministic: bool, actor: nn.Module | None = None) -> Tensor:
        with torch.no_grad():
            mean = (self.actor if actor is None else actor)(obs)
            return mean if deterministic else truncated_normal_sample(mean, self.exploration_stddev(), None)

    def at_step(self, due_at: int) -> None:
        self.agent_step.fill_(due_at)  # σ of this update, and of `act` until the next one

    # σ is read from the `agent_step` buffer, on the device: the value `stddev(due_at)` gives, as a
    # float64 tensor that the noise multiplies after the same cast to float32 (`tests/test_drqv2.py`).
    def target_value(self, next_obs: Tensor, batch: TensorDictBase, due_at: int) -> Tensor:
        with torch.no_grad():
            features = self.critic.encoder(next_obs)  # the online encoder, as DrQ-v2
            next_action = truncated_normal_sample(
                self.actor.mean(features), self.exploration_stddev(), self.stddev_clip
            )
            q1, q2 = self.target_critic.heads(features, next_action)
            return batch.get(self.tensor_keys.reward) + self.bootstrap(batch, self.discount) * torch.min(
                q1, q2
            )

    def actor_step(self, features: Tensor, step: Step, due_at: int) -> Metrics:
        features = features.detach()
        std = self.exploration_stddev()
        action = truncated_normal_sample(self.actor.mean(features), std, self.stddev_clip)
        with frozen(self.critic):
            q1, q2 = self.critic.heads(features, action)
        loss = -torch.min(q1, q2).mean()
        step("actor", "loss_actor", loss)
        return {"loss_actor": loss.detach(), "stddev": std.float()}


__all__ = ["DrQv2Loss"]
