"""Live generalization metrics: the same physics states seen in every test mode, and how the agent's
saliency moves when only the appearance changes.

- generalization gap (per mode) = train return − mode return: how much the disturbance costs.
- saliency consistency (per mode) = IoU between the binary saliency mask (at ρ) of a train observation
  and that of the *same* physics states rendered in the mode, for the same action. 1 means the critic
  attends to exactly the same pixels whatever the background or colours; a critic distracted by the
  video or colours scores lower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

from sgqn.evaluation.attribution import saliency_maps
from sgqn.evaluation.focus import focus_scores
from sgqn.evaluation.ground_truth import moves_camera, stacked_body_masks
from sgqn.evaluation.viz import mask_iou, saliency_grid


def pixel_wrapper(env: EnvBase):
    """The dm_control-level pixel wrapper (`ModePixels`) under a `make_env` env."""
    return env.base_env._env


@torch.no_grad()
def collect_states(env: EnvBase, policy, num_steps: int) -> list[np.ndarray]:
    """Physics states of one policy rollout in `env` (first = the reset state), `num_steps + 1` of them."""
    physics = pixel_wrapper(env)._env.physics
    td = env.reset()
    states = [physics.get_state().copy()]
    for _ in range(num_steps):
        td = env.step(policy(td))
        states.append(physics.get_state().copy())
        if td["next", "done"].item():
            break
        td = step_mdp(td)
    return states


def stacked_observations(
    env: EnvBase, states: Sequence[np.ndarray], indices: Sequence[int], frame_stack: int
) -> torch.Tensor:
    """uint8 `[len(indices), 3 * frame_stack, H, W]`: the stacks ending at `states[i]`, as `env` shows them
    (frames before the first state repeat it, as at reset)."""
    wrapper = pixel_wrapper(env)
    stacks = []
    for i in indices:
        frames = [wrapper.render_state(states[max(i - k, 0)]) for k in range(frame_stack - 1, -1, -1)]
        stacks.append(torch.from_numpy(np.concatenate([f.transpose(2, 0, 1) for f in frames])))
    return torch.stack(stacks)


def same_state_observations(
    envs: Mapping[str, EnvBase], states: Sequence[np.ndarray], indices: Sequence[int], frame_stack: int
) -> dict[str, torch.Tensor]:
    """The same stacked observations in each mode's env."""
    return {mode: stacked_observations(env, states, indices, frame_stack) for mode, env in envs.items()}


def saliency_consistency(masks: Mapping[str, torch.Tensor], reference: str = "train") -> dict[str, float]:
    """Mean IoU of each mode's masks with the reference mode's masks (same states, same actions)."""
    base = masks[reference]
    return {mode: mask_iou(base, m).mean().item() for mode, m in masks.items() if mode != reference}


def generalization_gaps(returns: Mapping[str, float], reference: str = "train") -> dict[str, float]:
    """Train return − mode return, for each mode other than the reference."""
    return {mode: returns[reference] - r for mode, r in returns.items() if mode != reference}


@dataclass
class SaliencyReport:
    """Saliency of one critic on the same states seen in several modes."""

    grid: np.ndarray  # uint8 picture: a column per (mode, state), rows as `viz.saliency_grid`
    iou: dict[str, float]  # saliency consistency per mode (vs train)
    coverage: dict[str, float]  # fraction of pixels in the mask, per mode
    # Per mode, the critic's saliency against the task's bodies (`sgqn.evaluation.focus`), and the
    # attribution predictor's (SGQN only): precision, recall, tid, mass_on_body. Empty without a task.
    focus: dict[str, dict[str, float]] = field(default_factory=dict)
    predicted_focus: dict[str, dict[str, float]] = field(default_factory=dict)


def saliency_report(
    module: Any,
    envs: Mapping[str, EnvBase],
    policy: Any,
    *,
    frame_stack: int,
    num_states: int = 8,
    grid_states: int = 2,
    rollout_steps: int = 60,
    task: str | None = None,
) -> SaliencyReport:
    """Roll the deterministic policy in the train env, show the same states in every mode and compare
    the critic's saliency masks. `envs` must contain "train"; `module` is an `AgentModule`. With the
    `task`, each mode's saliency is also scored against the task's bodies (one segmentation render per
    frame of a saliency observation: the train env's, and its own for a mode that moves the camera)."""
    states = collect_states(envs["train"], policy, rollout_steps)
    indices = np.linspace(frame_stack, len(states) - 1, num_states).round().astype(int).tolist()
    observations = same_state_observations(envs, states, indices, frame_stack)
    with torch.no_grad():
        actions = policy(TensorDict({"pixels": observations["train"]}, batch_size=[len(indices)]))["action"]
    maps = {mode: saliency_maps(module, obs, actions) for mode, obs in observations.items()}
    masks = {mode: m["mask"] for mode, m in maps.items()}
    bodies = {}
    if task is not None:
        train = stacked_body_masks(envs["train"], task, states, indices, frame_stack)
        bodies = {
            mode: stacked_body_masks(env, task, states, indices, frame_stack) if moves_camera(mode) else train
            for mode, env in envs.items()
        }
    columns: dict[str, list[Any]] = {
        k: [] for k in ("obs", "attribution", "mask", "masked_obs", "predicted_prob")
    }
    labels = []
    for mode, m in maps.items():
        for key in columns:
            source = observations[mode] if key == "obs" else m[key]  # type: ignore[literal-required]
            columns[key].append(None if source is None else source[:grid_states])
        labels += [mode] * min(grid_states, len(indices))
    stacked: dict[str, Any] = {k: (None if v[0] is None else torch.cat(v)) for k, v in columns.items()}
    outlines = torch.cat([b[:grid_states, -1] for b in bodies.values()]) if bodies else None
    grid = saliency_grid(
        stacked["obs"],
        stacked["attribution"],
        stacked["mask"],
        stacked["masked_obs"],
        stacked["predicted_prob"],
        labels,
        bodies=outlines,
    )
    coverage = {mode: mask.float().mean().item() for mode, mask in masks.items()}
    focus = {
        mode: focus_scores(m["attribution"], m["mask"], bodies[mode]) for mode, m in maps.items() if bodies
    }
    predicted_focus = {
        mode: focus_scores(m["predicted_prob"], m["predicted_mask"], bodies[mode])
        for mode, m in maps.items()
        if bodies and m["predicted_mask"] is not None
    }
    return SaliencyReport(grid, saliency_consistency(masks), coverage, focus, predicted_focus)
