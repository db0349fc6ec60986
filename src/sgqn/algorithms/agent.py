"""What every algorithm is: a TorchRL `LossModule` that holds its networks and runs its whole update in ONE
method, `update(batch, opt, due)`, stepping named optimizers as it goes (`Optimizers.step`).

    due = agent.due(agent_step)             which optional steps this update runs (actor, target, aux)
    metrics = agent.update(batch, opt, due)  augment → target → critic → … in the algorithm's own order
    losses = agent(batch)                    TorchRL's entry point: the same named losses, not stepped

Batch keys (TorchRL conventions): "pixels" uint8 `[B, C, H, W]`, "action" `[B, A]`, ("next", "pixels"),
("next", "reward") `[B, 1]`, ("next", "terminated") bool `[B, 1]`, and with an n-step replay
("next", "discount") `[B, 1]` (γ^m, 0 after a termination).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives import LossModule

from sgqn.algorithms.augment import Overlay, random_shift
from sgqn.nets.sac import Critic

Metrics = dict[str, Tensor]


@dataclass(frozen=True)
class Due:
    """Which optional steps one update runs, decided by the algorithm's frequencies (`Agent.due`).

    Two updates with the same `Due` run the same operations: `sgqn.training.whole_update` records one
    function per value.
    """

    actor: bool = True  # the actor (and SAC's temperature) step
    target: bool = True  # the target critic's Polyak update
    aux: bool = False  # the guidance's own step (SGQN: the updated critic's saliency → the predictor)


@dataclass(frozen=True)
class OptimizerSpec:
    """One Adam of an agent: what it trains and its settings (β2 is Adam's 0.999)."""

    params: Sequence[Tensor]
    lr: float
    beta: float
    setting: str  # the setting that holds `lr` (e.g. "sac.critic_lr"), named when its loss diverges


class NonFiniteLoss(Exception):
    """A loss was NaN/inf before its step (`Optimizers(skip_nonfinite=True)`): the update stops there."""


class Step(Protocol):
    """What an update calls for each optimization step (see `Optimizers.step`)."""

    def step(self, optimizer: str, **losses: Tensor) -> None: ...


@dataclass
class Optimizers:
    """Named optimizers; `step(name, **losses)`: zero_grad → backward of the losses' sum into that
    optimizer's parameters only → step.

    Args:
        optimizers: name → optimizer (plain `torch.optim` ones, or Lightning's wrappers).
        backward: `backward(loss, inputs)`; `Tensor.backward` by default (Lightning's `manual_backward`
            in the LightningModule, which applies its precision plugin).
        skip_nonfinite: check each loss before its step and raise `NonFiniteLoss` if it is not finite
            (one host sync per loss); otherwise the caller checks `stepped` once per update.
    """

    optimizers: Mapping[str, Any]
    backward: Callable[..., None] | None = None
    skip_nonfinite: bool = False
    stepped: dict[str, Tensor] = field(default_factory=dict)  # loss name → detached value, in order
    optimizer_of: dict[str, str] = field(default_factory=dict)  # loss name → its optimizer

    def step(self, optimizer: str, **losses: Tensor) -> None:
        total = next(iter(losses.values())) if len(losses) == 1 else torch.stack(list(losses.values())).sum()
        if self.skip_nonfinite and not bool(torch.isfinite(total)):
            raise NonFiniteLoss(next(name for name, v in losses.items() if not bool(torch.isfinite(v))))
        self._note(optimizer, losses)
        chosen = self.optimizers[optimizer]
        chosen.zero_grad(set_to_none=True)
        inputs = [p for group in chosen.param_groups for p in group["params"]]
        if self.backward is None:
            total.backward(inputs=inputs)
        else:
            self.backward(total, inputs=inputs)
        chosen.step()

    def took_step(self, optimizer: str, **losses: Tensor) -> None:
        """Note a step that `optimizer` took elsewhere on `losses` (a recorded update's replay), as
        `step` notes its own."""
        self._note(optimizer, losses)

    def _note(self, optimizer: str, losses: Mapping[str, Tensor]) -> None:
        for name, loss in losses.items():
            self.stepped[name], self.optimizer_of[name] = loss.detach(), optimizer


def adam_optimizers(agent: Agent, capturable: bool = False) -> dict[str, torch.optim.Adam]:
    """One Adam per `agent.optimizer_specs()` entry, with its lr and β1 (β2 0.999)."""
    return {
        name: torch.optim.Adam(spec.params, lr=spec.lr, betas=(spec.beta, 0.999), capturable=capturable)
        for name, spec in agent.optimizer_specs().items()
    }


class LossRecorder:
    """A `Step` that only records the losses (with their graphs): what `Agent.forward` returns."""

    def __init__(self) -> None:
        self.losses: Metrics = {}

    def step(self, optimizer: str, **losses: Tensor) -> None:
        self.losses |= losses


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


class Agent(LossModule):
    """Networks, losses and the update of one algorithm (subclasses: `sgqn.algorithms.*`).

    A subclass defines `update` (its whole order, top-down), `due`, `act` and `optimizer_specs`.
    """

    actor: nn.Module
    critic: Critic
    discount: float
    shift_pad: int
    overlay: Overlay | None  # SVEA's and SGQN's natural-image bank (filled at setup), else None

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

    # ------------------------------------------------------------------ what an algorithm defines

    def due(self, step: int) -> Due:
        """The optional steps of the update keyed on `step` (the agent step, or the update's index)."""
        raise NotImplementedError

    def update(self, batch: TensorDictBase, opt: Step, due: Due) -> Metrics:
        """One update on `batch`; returns its detached metrics."""
        raise NotImplementedError

    def act(self, obs: Tensor, deterministic: bool, actor: nn.Module | None = None) -> Tensor:
        """Actions for float observations `[B, C, H, W]` (no grad): the policy's mode, or an exploratory
        sample; of `actor` (a copy of `self.actor`, e.g. an overlapped collector's) instead if given."""
        raise NotImplementedError

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        raise NotImplementedError

    def predict_saliency(self, obs: Tensor, action: Tensor) -> Tensor | None:
        """Logits of the attribution predictor's mask, for an algorithm that has one (SGQN)."""
        return None

    # ------------------------------------------------------------------ shared pieces

    # Eager under `torch.compile`: the two shifts then draw in program order (inductor may reorder
    # independent random ops; torch 2.11's did, swapping the shifts of pixels and next pixels).
    @torch.compiler.disable
    def augment(self, batch: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Independently shifted float copies of pixels and next pixels (DrQ `sample_drq`)."""
        keys = self.tensor_keys
        return (
            random_shift(batch.get(keys.pixels), self.shift_pad).float(),
            random_shift(batch.get(keys.next_pixels), self.shift_pad).float(),
        )

    def bootstrap(self, batch: TensorDictBase) -> Tensor:
        """The factor of the next value: γ (1 − terminated), or the n-step replay's γ^m (0 if terminated)."""
        keys = self.tensor_keys
        n_step = batch.get(keys.discount, None)
        if n_step is not None:
            return n_step
        not_done = (~batch.get(keys.terminated).bool()).to(batch.get(keys.reward).dtype)  # float64 in tests
        return not_done * self.discount

    def conv_features(self, obs: Tensor) -> Tensor:
        """Detached shared-encoder features of `obs` under the current weights."""
        with torch.no_grad():
            return self.critic.encoder(obs)

    # ------------------------------------------------------------------ TorchRL's entry point

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The named losses `update` steps on (with grad) and its metrics, from one batch and the current
        weights: `update` itself, with nothing stepped and no target update. Their sum back-propagates
        each loss into its own part (the actor's reads detached features and a frozen critic)."""
        recorder = LossRecorder()
        metrics = self.update(tensordict, recorder, Due(actor=True, target=False, aux=True))
        return TensorDict({**metrics, **recorder.losses}, batch_size=[])


def td_loss(q1: Tensor, q2: Tensor, target_q: Tensor) -> Tensor:
    """(Q1 − y)² + (Q2 − y)², each averaged over the batch."""
    return torch.nn.functional.mse_loss(q1, target_q) + torch.nn.functional.mse_loss(q2, target_q)


__all__ = [
    "Agent",
    "Due",
    "LossRecorder",
    "Metrics",
    "NonFiniteLoss",
    "OptimizerSpec",
    "Optimizers",
    "Step",
    "adam_optimizers",
    "frozen",
    "td_loss",
]
