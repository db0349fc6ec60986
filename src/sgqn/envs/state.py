"""Mid-episode state of an env built by `sgqn.envs.make_env`, for an exact resume after a crash.

`env_state` captures everything that decides the env's next observations and rewards given the actions:
the MuJoCo integration state (not just `physics.get_state()`'s qpos/qvel/act: the solver's warm start
and the controls are part of it too), the model arrays tasks edit per episode (e.g. reacher's target
position), the task's RNG (initial states of the next episodes), the episode's step count, the test
mode's RNG and appearance state, and the transforms' buffers (`CatFrames`' frame stack). Loading it into
a freshly built env of the same settings (any seed) continues bit-identically. All values are tensors
or plain Python values, so a checkpoint holding them loads with `torch.load(weights_only=True)`.

Not in the env, so not here: the current observation and a `StepCounter`'s count live in the tensordict
the caller steps with (a collector's carrier, see `sgqn.data.collector_state`). TorchRL's env keeps
no RNG: random actions (`rand_action`) come from torch's global generator, which is the trainer's to save.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
import torch
from torch.nn.parameter import UninitializedBuffer
from torchrl.envs import EnvBase, TransformedEnv

from sgqn.envs.dmc import ActionRepeat, ModePixels

# Everything mj_step reads besides the model: time, qpos, qvel, act, warm start, controls, applied
# forces, mocap poses, user data, plugin state, active equality constraints.
_PHYSICS_STATE = mujoco.mjtState.mjSTATE_INTEGRATION
# Model arrays left out: texture pixels (modes re-upload the ones they change) and name tables.
_MODEL_SKIP = {"tex_data", "names", "names_map", "paths", "text_data"}


def _layers(env: EnvBase) -> tuple[TransformedEnv, ModePixels, Any]:
    if not isinstance(env, TransformedEnv) or not isinstance(getattr(env.base_env, "_env", None), ModePixels):
        raise TypeError(f"expected an env built by sgqn.envs.make_env, got {type(env).__name__}")
    pixels = env.base_env._env
    repeat = pixels._env
    assert isinstance(repeat, ActionRepeat)
    return env, pixels, repeat.control_env


def _model_arrays(model: Any) -> dict[str, np.ndarray]:
    arrays = {}
    for name in dir(model):
        if name.startswith("_") or name in _MODEL_SKIP:
            continue
        value = getattr(model, name, None)
        if isinstance(value, np.ndarray) and value.flags.writeable and value.size:
            arrays[name] = value
    return arrays


def env_state(env: EnvBase) -> dict[str, Any]:
    """Snapshot of `env` (a `make_env` env, possibly with more transforms appended) between steps."""
    env, pixels, control = _layers(env)
    physics = control.physics
    model = _model_arrays(physics.model.ptr)
    keys, pos, has_gauss, gauss = control.task.random.get_state()[1:]
    return {
        "physics": torch.from_numpy(physics.get_state(_PHYSICS_STATE)),
        "model": {
            "names": list(model),
            "bytes": torch.from_numpy(np.concatenate([a.reshape(-1).view(np.uint8) for a in model.values()])),
        },
        "task_random": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "episode": {
            "step_count": int(control._step_count),
            "reset_next_step": bool(control._reset_next_step),
        },
        "mode": pixels.mode_state(),
        "transforms": {
            name: None if isinstance(buffer, UninitializedBuffer) else buffer.clone()
            for name, buffer in env.transform.named_buffers()
        },
    }


def load_env_state(env: EnvBase, state: dict[str, Any]) -> None:
    """Restore an `env_state` snapshot into an env built with the same settings (the seed may differ)."""
    env, pixels, control = _layers(env)
    physics = control.physics
    model = _model_arrays(physics.model.ptr)
    if list(model) != state["model"]["names"]:
        raise ValueError("the env state was saved from a different MuJoCo version or model")
    flat, offset = state["model"]["bytes"].numpy(), 0
    for array in model.values():
        size = array.nbytes
        array[...] = flat[offset : offset + size].view(array.dtype).reshape(array.shape)
        offset += size
    if offset != flat.size:
        raise ValueError("the env state was saved from a different task")
    physics.set_state(state["physics"].numpy(), _PHYSICS_STATE)
    physics.forward()  # derived quantities (positions for rendering, sensors) from the restored state
    rs = state["task_random"]
    control.task.random.set_state(
        ("MT19937", rs["keys"].numpy().astype(np.uint32), rs["pos"], rs["has_gauss"], rs["gauss"])
    )
    control._step_count = state["episode"]["step_count"]
    control._reset_next_step = state["episode"]["reset_next_step"]
    pixels.load_mode_state(state["mode"])
    for name, value in state["transforms"].items():
        if value is not None:
            owner, _, attr = name.rpartition(".")
            setattr(env.transform.get_submodule(owner), attr, value.clone())


__all__ = ["env_state", "load_env_state"]
