"""The ground truth of where a critic should look: the pixels of the task's bodies, from MuJoCo itself.

A segmentation render of the same physics state through the env's own camera gives the geom behind
every pixel; the task table names the geoms that matter (`TaskDefaults.bodies`: the robot and the
task's objects, not the floor, walls, rails or sky). The test modes change appearance, never geometry,
so one mask serves every mode whose camera is the train env's; `distracting_cs` moves its camera, so its
masks are rendered through its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchrl.envs import EnvBase

from sgqn.envs.tasks import TASK_DEFAULTS


def moves_camera(mode: str) -> bool:
    """Does this test mode move the camera (its masks then come from its own renders)?"""
    return mode.partition("@")[0] == "distracting_cs"


def _pixels(env: EnvBase):  # the dm_control-level pixel wrapper (`ModePixels`) under a `make_env` env
    return env.base_env._env


def body_geoms(env: EnvBase, task: str) -> np.ndarray:
    """The ids, in `env`'s model, of the task's body geoms (`TaskDefaults.bodies`)."""
    model = _pixels(env)._env.physics.model
    names = TASK_DEFAULTS[task].bodies
    ids = [model.name2id(name, "geom") for name in names]
    return np.array(ids, dtype=np.int32)


def body_mask(env: EnvBase, task: str, state: np.ndarray) -> np.ndarray:
    """bool `[H, W]`: the pixels of the task's bodies when `env` renders the physics `state`."""
    return np.isin(_pixels(env).segment_state(state), body_geoms(env, task))


def stacked_body_masks(
    env: EnvBase, task: str, states: Sequence[np.ndarray], indices: Sequence[int], frame_stack: int
) -> torch.Tensor:
    """bool `[len(indices), frame_stack, H, W]`: for each stacked observation ending at `states[i]`, each
    frame's own mask (frames before the first state repeat it, as at reset)."""
    geoms = body_geoms(env, task)
    segment = _pixels(env).segment_state
    masks = {j: np.isin(segment(states[j]), geoms) for i in indices for j in _frames(i, frame_stack)}
    return torch.from_numpy(
        np.stack([np.stack([masks[j] for j in _frames(i, frame_stack)]) for i in indices])
    )


def _frames(i: int, frame_stack: int) -> list[int]:
    return [max(i - k, 0) for k in range(frame_stack - 1, -1, -1)]


__all__ = ["body_geoms", "body_mask", "moves_camera", "stacked_body_masks"]
