"""Pixel DeepMind Control tasks with the action repeat applied *below* the renderer.

Layering (inner → outer): dm_control task → `ActionRepeat` (sums rewards over physics sub-steps, no
rendering) → `ModePixels` (renders once per agent step, applies the test mode) → TorchRL's
`DMControlWrapper`. TorchRL's own `frame_skip` sits above the pixel wrapper and would render every
sub-step: on a CPU renderer that makes an agent step ~`action_repeat`× more expensive.
"""

from __future__ import annotations

import collections
from typing import Any

from sgqn.envs.render import select_gl_backend

select_gl_backend()  # before dm_control is imported: it fixes its GL backend (MUJOCO_GL) at import

import dm_env  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from dm_control.mujoco.engine import Camera  # noqa: E402
from dm_control.suite.wrappers import pixels  # noqa: E402
from torchrl.envs.libs.dm_control import DMControlWrapper  # noqa: E402

from sgqn.envs.modes.base import Mode  # noqa: E402
from sgqn.envs.render import RenderQuality  # noqa: E402


class ActionRepeat(dm_env.Environment):
    """Repeat each action `repeat` times on the physics; reward is the sum over the sub-steps."""

    def __init__(self, env: Any, repeat: int) -> None:
        self._env = env
        self._repeat = repeat

    # TorchRL's DMControlWrapper reseeds through `env._env.task._random`, dm_control's pixel wrapper
    # renders through `env.physics`: expose both.
    @property
    def task(self) -> Any:
        return self._env.task

    @property
    def physics(self) -> Any:
        return self._env.physics

    @property
    def control_env(self) -> Any:
        """The wrapped dm_control `Environment` (its episode step count lives there)."""
        return self._env

    def reset(self) -> dm_env.TimeStep:
        return self._env.reset()

    def step(self, action: np.ndarray) -> dm_env.TimeStep:
        reward = 0.0
        for _ in range(self._repeat):
            timestep = self._env.step(action)
            reward += timestep.reward or 0.0
            if timestep.last():
                break
        return timestep._replace(reward=reward)

    def observation_spec(self) -> Any:
        return self._env.observation_spec()

    def action_spec(self) -> Any:
        return self._env.action_spec()

    def reward_spec(self) -> Any:
        return self._env.reward_spec()

    def discount_spec(self) -> Any:
        return self._env.discount_spec()

    def close(self) -> None:
        self._env.close()


class ModePixels(pixels.Wrapper):
    """dm_control's pixel wrapper with test-mode hooks and a render-quality preset.

    Subclassing (rather than re-implementing) keeps TorchRL's `DMControlWrapper` happy: it accepts
    `pixels.Wrapper` instances and reads their observation specs.
    """

    def __init__(
        self,
        env: ActionRepeat,
        *,
        image_size: int,
        camera_id: int,
        mode: Mode,
        quality: RenderQuality,
        mode_seed: int,
    ) -> None:
        self.mode = mode
        self.mode_rng = np.random.default_rng(mode_seed)
        quality.apply(env.physics)
        mode.bind(env.physics)
        super().__init__(
            env,
            pixels_only=True,
            render_kwargs={"height": image_size, "width": image_size, "camera_id": camera_id},
        )
        # `physics.render` builds a new Camera (and its mjvScene) on every call: ~half of a fast-quality
        # 84×84 frame on a CPU renderer. One camera per env renders the same pixels.
        self._camera = Camera(env.physics, height=image_size, width=image_size, camera_id=camera_id)

    def reset(self) -> dm_env.TimeStep:
        timestep = self._env.reset()
        self.mode.on_reset(self._env.physics, self.mode_rng)
        return self._add_pixel_observation(timestep)

    def render_frame(self) -> np.ndarray:
        """The current physics state as this mode shows it, uint8 `[H, W, 3]`."""
        physics = self._env.physics
        self.mode.before_render(physics)
        # The camera renders into one reused buffer: copy, or every stored frame aliases the latest.
        return self.mode.after_render(self._camera.render().copy())

    def render_state(self, state: np.ndarray) -> np.ndarray:
        """Render a physics state (`physics.get_state()`, e.g. from another mode's env) in this mode."""
        physics = self._env.physics
        with physics.reset_context():
            physics.set_state(state)
        return self.render_frame()

    def segment_state(self, state: np.ndarray) -> np.ndarray:
        """The geom behind each pixel of a physics state, seen through this mode's camera (a test mode
        may move it, `distracting_cs` does): int32 `[H, W]` geom ids, −1 where no geom is (the sky)."""
        physics = self._env.physics
        with physics.reset_context():
            physics.set_state(state)
        self.mode.before_render(physics)
        ids, types = self._camera.render(segmentation=True).transpose(2, 0, 1)
        return np.where(types == int(mujoco.mjtObj.mjOBJ_GEOM), ids, -1).astype(np.int32)

    def reseed_mode(self, seed: int) -> None:
        """A fresh appearance RNG: the next episodes' test-mode draws depend on `seed` alone."""
        self.mode_rng = np.random.default_rng(seed)

    def mode_state(self) -> dict[str, Any]:
        """The test mode's RNG and appearance state (plain Python values)."""
        return {"rng": self.mode_rng.bit_generator.state, "mode": self.mode.state_dict()}

    def load_mode_state(self, state: dict[str, Any]) -> None:
        """Restore `mode_state` (after the physics state and model arrays)."""
        self.mode_rng.bit_generator.state = state["rng"]
        self.mode.load_state_dict(state["mode"], self._env.physics, self.mode_rng)

    def _add_pixel_observation(self, time_step: dm_env.TimeStep) -> dm_env.TimeStep:
        return time_step._replace(observation=collections.OrderedDict(pixels=self.render_frame()))


class ReseedingDMControlWrapper(DMControlWrapper):
    """`set_seed(s)` reseeds the task (TorchRL) and the test mode's appearance RNG (s + `MODE_SEED_OFFSET`)."""

    def _set_seed(self, seed: int | None) -> None:
        super()._set_seed(seed)
        if seed is not None:
            from sgqn.envs import MODE_SEED_OFFSET

            self._env.reseed_mode(seed + MODE_SEED_OFFSET)
