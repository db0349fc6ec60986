"""One agent shape: a value learner (networks, losses, its own update order) plus a guidance plug-in.

An algorithm is a `ValueLearner` (SAC, DrQ-v2, …) and a `Guidance` (none, SVEA's overlay term, SGQN's
saliency). Every learner runs the same update, top-down:

    augment → target → critic (the guidance may supply the critic's terms) → [guidance: after the critic
    step] → [actor (+ temperature)] → [target update] → [guidance: its own steps]

with the bracketed steps due according to the learner's and the guidance's frequencies, keyed on the
agent step the update runs at. A new learner implements `target_value`, `actor_step`, `param_groups` and
its due rules; a new guidance overrides the hooks it needs. `SGQNModule` knows neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives import LossModule

from sgqn.augment import Overlay, random_shift
from sgqn.nets import Critic

Metrics = dict[str, Tensor]
# step(optimizer name, loss name, loss): zero_grad → backward into that optimizer's parameters → step.
Step = Callable[[str, str, Tensor], None]
# An optimizer: its parameters and the hyper-parameter prefix of its lr / beta (e.g. "critic").
ParamGroups = dict[str, tuple[list[Tensor], str]]


def optimizer_step(optimizers: Mapping[str, torch.optim.Optimizer]) -> Step:
    """A `Step` over named optimizers, outside Lightning (benchmarks, tests, your own loop): what
    `SGQNModule` does for each loss, without its non-finite check (the update's one host sync)."""

    def step(optimizer: str, name: str, loss: Tensor) -> None:
        chosen = optimizers[optimizer]
        chosen.zero_grad(set_to_none=True)
        loss.backward(inputs=[p for group in chosen.param_groups for p in group["params"]])
        chosen.step()

    return step


class Guidance(nn.Module):
    """What a guidance adds to a learner's update. This base adds nothing (plain SAC / DrQ-v2)."""

    def critic_terms(
        self, learner: ValueLearner, obs: Tensor, action: Tensor, target_q: Tensor
    ) -> tuple[Metrics, Metrics]:
        """The critic objective's named terms (with grad) and metrics: the learner's TD loss by default."""
        return learner.td_terms(obs, action, target_q)

    def after_critic(self, obs: Tensor, action: Tensor, due_at: int) -> Any:
        """Runs right after the critic step (SGQN: the updated critic's saliency); passed on below."""
        return None

    def actor_features(self, state: Any) -> Tensor | None:
        """Conv features of obs under the current encoder, if `after_critic` already computed them."""
        return None

    def extra_updates(self, obs: Tensor, action: Tensor, state: Any, step: Step, due_at: int) -> Metrics:
        """The guidance's own optimisation steps, after the learner's (SGQN: the attribution predictor)."""
        return {}

    def due_pattern(self, due_at: int) -> tuple[bool, ...]:
        """Which of the guidance's optional steps run at `due_at` (see `ValueLearner.due_pattern`)."""
        return ()

    # Methods computing a loss (or a no-grad target) from tensors, which `SpeedOptions.compile_update`
    # compiles; none may step an optimizer.
    compiled_losses: tuple[str, ...] = ()

    def param_groups(self) -> ParamGroups:
        return {}

    def predict(self, obs: Tensor, action: Tensor) -> Tensor | None:
        """Logits of the attribution predictor's saliency mask, for a guidance that has one."""
        return None

    def overlay_bank(self) -> Overlay | None:
        """The overlay augmentation (its natural-image bank), when the guidance uses one."""
        found = getattr(self, "overlay", None)  # a registered submodule of SVEA's / SGQN's guidance
        return found if isinstance(found, Overlay) else None


class ValueLearner(LossModule):
    """The update every value learner shares; subclasses give the target, the actor step and the rules.

    Batch keys (TorchRL conventions): "pixels" uint8 `[B, C, H, W]`, "action" `[B, A]`, ("next", "pixels"),
    ("next", "reward") `[B, 1]`, ("next", "terminated") bool `[B, 1]`, and with an n-step replay
    ("next", "discount") `[B, 1]` (γ^m, 0 after a termination).
    """

    actor: nn.Module
    critic: Critic
    target_critic: nn.Module
    guidance: Guidance
    shift_pad: int
    # Methods that are pure no-grad forwards, which `SpeedOptions.compile` may `torch.compile`.
    compilable: tuple[str, ...] = ("conv_features",)
    # The losses `SpeedOptions.compile_update` compiles (see `Guidance.compiled_losses`).
    compiled_losses: tuple[str, ...] = (*compilable, "critic_loss")

    @dataclass
    class _AcceptedKeys:
        pixels: NestedKey = "pixels"
        action: NestedKey = "action"
        next_pixels: NestedKey = ("next", "pixels")
        reward: NestedKey = ("next", "reward")
        terminated: NestedKey = ("next", "terminated")
        discount: NestedKey = ("next", "discount")

    def _forward_value_estimator_keys(self, **kwargs: Any) -> None:
        pass  # the TD target is computed here, not by a TorchRL value estimator

    # ------------------------------------------------------------------ what a learner defines

    def target_value(self, next_obs: Tensor, batch: TensorDictBase, due_at: int) -> Tensor:
        raise NotImplementedError

    def actor_step(self, features: Tensor, step: Step, due_at: int) -> Metrics:
        raise NotImplementedError

    def act(self, obs: Tensor, deterministic: bool, actor: nn.Module | None = None) -> Tensor:
        """Actions for float observations `[B, C, H, W]` (no grad): the policy's mode, or an exploratory
        sample; of `actor` (a copy of `self.actor`, e.g. an overlapped collector's) instead if given."""
        raise NotImplementedError

    def actor_due(self, due_at: int) -> bool:
        return True

    def target_due(self, due_at: int) -> bool:
        return True

    def due_pattern(self, due_at: int) -> tuple[bool, ...]:
        """Which optional steps of the update run at `due_at`: the learner's actor and target steps, then
        the guidance's. Two updates with the same pattern run the same operations (`recordable_update`)."""
        return (self.actor_due(due_at), self.target_due(due_at), *self.guidance.due_pattern(due_at))

    def at_step(self, due_at: int) -> None:
        """Write the agent step into the learner's buffers, for what reads it beyond the due rules (DrQ-v2's
        σ schedule). Runs before the update proper, outside a recorded one (which cannot read Python)."""

    def param_groups(self) -> ParamGroups:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared pieces

    # Eager under `torch.compile`: the two shifts then draw in program order (inductor may reorder
    # independent random ops; torch 2.11's did, swapping the shifts of pixels and next pixels).
    @torch.compiler.disable
    def augment(self, td: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Independently shifted float copies of pixels and next pixels (DrQ `sample_drq`)."""
        keys = self.tensor_keys
        return (
            random_shift(td.get(keys.pixels), self.shift_pad).float(),
            random_shift(td.get(keys.next_pixels), self.shift_pad).float(),
        )

    def bootstrap(self, batch: TensorDictBase, discount: float) -> Tensor:
        """The factor of the next value: γ (1 − terminated), or the n-step replay's γ^m (0 if terminated)."""
        keys = self.tensor_keys
        n_step = batch.get(keys.discount, None)
        if n_step is not None:
            return n_step
        return (~batch.get(keys.terminated).bool()).float() * discount

    def conv_features(self, obs: Tensor) -> Tensor:
        """Detached shared-encoder features: what the actor step reads."""
        with torch.no_grad():
            return self.critic.encoder(obs)

    def td_loss(self, q1: Tensor, q2: Tensor, target_q: Tensor) -> Tensor:
        return F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)

    def td_terms(self, obs: Tensor, action: Tensor, target_q: Tensor) -> tuple[Metrics, Metrics]:
        q1, q2 = self.critic(obs, action)
        return {"loss_critic": self.td_loss(q1, q2, target_q)}, {"q1_mean": q1.detach().mean()}

    def critic_terms(self, obs: Tensor, action: Tensor, target_q: Tensor) -> tuple[Metrics, Metrics]:
        """The critic objective's named terms (with grad) and detached metrics, as the guidance builds them."""
        return self.guidance.critic_terms(self, obs, action, target_q)

    def critic_loss(self, obs: Tensor, action: Tensor, target_q: Tensor) -> tuple[Tensor, Metrics]:
        """The critic's whole objective (sum of `critic_terms`) and the detached terms and metrics."""
        terms, metrics = self.critic_terms(obs, action, target_q)
        loss = torch.stack(list(terms.values())).sum()
        return loss, {**{k: v.detach() for k, v in terms.items()}, **metrics}

    def all_param_groups(self) -> ParamGroups:
        return {**self.param_groups(), **self.guidance.param_groups()}

    # ------------------------------------------------------------------ the update

    def update(self, batch: TensorDictBase, due_at: int, step: Step) -> Metrics:
        """One agent update on `batch`, at agent step `due_at` (what the frequencies are keyed on)."""
        self.at_step(due_at)
        return self.recordable_update(batch, due_at, step)

    def recordable_update(self, batch: TensorDictBase, due_at: int, step: Step) -> Metrics:
        """The update after `at_step(due_at)`: it reads `due_at` only through the due rules, so one recorded
        run of it replays every update of the same `due_pattern` (`sgqn.whole_update`)."""
        action = batch.get(self.tensor_keys.action)
        obs, next_obs = self.augment(batch)

        target_q = self.target_value(next_obs, batch, due_at)
        loss_critic, metrics = self.critic_loss(obs, action, target_q)
        step("critic", "loss_critic", loss_critic)
        metrics["target_q_mean"] = target_q.mean()

        # e.g. SGQN: the saliency of the UPDATED critic, which the attribution predictor learns; its
        # forward already holds the conv features of obs under the current weights, which the actor reads.
        state = self.guidance.after_critic(obs, action, due_at)

        if self.actor_due(due_at):
            features = self.guidance.actor_features(state)
            metrics |= self.actor_step(
                self.conv_features(obs) if features is None else features, step, due_at
            )

        if self.target_due(due_at):
            self.target_critic.update(self.critic)  # type: ignore[operator]

        metrics |= self.guidance.extra_updates(obs, action, state, step, due_at)
        return metrics


__all__ = ["Guidance", "Metrics", "ParamGroups", "Step", "ValueLearner"]
