"""Training that fails loudly: a diverged update stops with a message naming the loss and the fix.

- `all_finite`: one fused finiteness check of every loss an update optimised (one host sync).
- `check_action`: the policy never hands the simulator a non-finite action.
- `check_weights`: no checkpoint is written with non-finite weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


class TrainingDiverged(RuntimeError):
    """Losses, weights or actions became non-finite; the message names where and the fix."""

    exit_code = 3


def all_finite(losses: Iterable[Tensor]) -> bool:
    """One fused `isfinite` over scalar losses: a single host sync however many there are."""
    values = [v.detach().reshape(()) for v in losses]
    return not values or bool(torch.isfinite(torch.stack(values)).all())


def nonfinite_message(
    losses: Mapping[str, Tensor], lowers: Mapping[str, tuple[str, float]], update: int, agent_step: int | None
) -> str:
    """``loss_critic is nan at update 24 (agent step 124): lower --model.sac.critic_lr (now 1e+09) …``.

    `losses` in the order they were stepped: a loss can diverge from an earlier step's weights in the
    same update, so the learning rates of the first non-finite loss and of the steps before it are named.
    `lowers`: each loss's learning-rate setting and its value (``loss_critic`` → ``("sac.critic_lr", 1e9)``).
    """
    bad = {k: float(v) for k, v in losses.items() if not bool(torch.isfinite(v))}
    names = list(losses)
    suspects = names[: names.index(next(iter(bad))) + 1] if bad else names
    options = dict.fromkeys(f"--model.{lowers[k][0]} (now {lowers[k][1]:g})" for k in suspects if k in lowers)
    values = ", ".join(f"{k} is {v}" for k, v in bad.items())
    where = f"update {update}" + (f" (agent step {agent_step})" if agent_step is not None else "")
    return f"{values} at {where}: lower {' or '.join(options)}, or pass --model.on_nonfinite skip to skip such updates"


def check_action(action: Tensor) -> None:
    """The simulator must never get a NaN/inf action (MuJoCo fails later with `mjWARN_BADCTRL`)."""
    if not bool(torch.isfinite(action).all()):
        raise TrainingDiverged(
            "the policy's action is not finite (its weights diverged): lower the actor's and the critic's "
            "learning rates (--model.sac.* or --model.drqv2.*: actor_lr, critic_lr); no checkpoint is "
            "written from these weights"
        )


def check_weights(state: Mapping[str, Tensor], where: str) -> None:
    """Refuse to save `state` (a state dict) with non-finite floating-point tensors."""
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise TrainingDiverged(
            f"refusing to save a checkpoint {where}: {len(bad)} weight tensors are not finite ({bad[0]}, …); "
            "lower the learning rates (--model.sac.* or --model.drqv2.*: critic_lr, actor_lr); the previous "
            "checkpoint is kept"
        )


__all__ = [
    "TrainingDiverged",
    "all_finite",
    "check_action",
    "check_weights",
    "nonfinite_message",
]
