"""The agent as a TorchRL policy: what the collector and the evaluation act with."""

from __future__ import annotations

import copy
import threading

import torch
from tensordict.nn import TensorDictModule
from torch import Tensor, nn

from sgqn.algorithms.agent import Agent
from sgqn.training import devices
from sgqn.training.guards import check_action


class Policy(nn.Module):
    """Pixels `[..., C, H, W]` (uint8 or float, any leading batch dims, or none) → action `[..., A]`.

    Acts with the agent's live actor, or with `actor`, a snapshot of it that `sync()` refreshes (an
    overlapped collector acts in its own thread while the learner steps the live weights).
    """

    def __init__(self, agent: Agent, deterministic: bool, actor: nn.Module | None = None) -> None:
        super().__init__()
        # The actor is registered (TorchRL sees the parameters a policy reads); the agent's `act` is
        # referenced, not registered (a loss module is not a policy).
        self.actor, self.deterministic = agent.actor if actor is None else actor, deterministic
        self.snapshot = actor is not None
        self._act, self._live = agent.act, agent.actor
        self._lock = threading.Lock()  # a snapshot is not read while `sync` writes it

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        # The env's pixels go to wherever the weights are now; the action comes back to the env.
        batch_shape = pixels.shape[:-3]
        obs = devices.to_device(pixels.reshape(-1, *pixels.shape[-3:]), devices.module_device(self.actor))
        with self._lock:
            action = self._act(obs.float(), self.deterministic, self.actor if self.snapshot else None)
        if action.device != pixels.device:
            action = devices.to_host(action).to(pixels.device)
        check_action(action)  # on the host copy the env needs anyway: no extra device sync
        return action.reshape(*batch_shape, action.shape[-1])

    def sync(self) -> None:
        """Copy the live actor's weights into the snapshot (no-op for a live policy)."""
        if self.snapshot:
            with self._lock:
                self.actor.load_state_dict(self._live.state_dict())


def policy_module(agent: Agent, deterministic: bool, snapshot: bool = False) -> TensorDictModule:
    """TorchRL policy "pixels" → "action" sharing the actor's parameters (no grad).

    Samples from the policy for exploration; the policy's mode when `deterministic` (evaluation). With
    `snapshot`, it acts with a copy of the actor instead, refreshed by `policy.module.sync()` (for
    collection overlapped with learning).
    """
    actor = copy.deepcopy(agent.actor).requires_grad_(False) if snapshot else None
    return TensorDictModule(Policy(agent, deterministic, actor), in_keys=["pixels"], out_keys=["action"])


__all__ = ["Policy", "policy_module"]
