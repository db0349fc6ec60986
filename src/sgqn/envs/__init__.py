"""Environment factory: pixel DMC tasks as TorchRL envs, in the train or any DMC-GB test mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from sgqn.envs.names import DISTRACTING_CS_INTENSITIES, MODES
from sgqn.envs.render import RenderQuality, select_gl_backend
from sgqn.envs.tasks import (
    DEFAULT_ACTION_REPEAT,
    DEFAULT_QUANTILE,
    EPISODE_PHYSICS_STEPS,
    REFERENCE_OPTIONS,
    TASK_DEFAULTS,
    TASKS,
    ReferenceSettings,
    reference_settings,
    resolve_settings,
    split_task,
)

if TYPE_CHECKING:
    from torchrl.envs import EnvBase

# dm_control fixes its GL backend when first imported: `sgqn.envs.dmc` (the only module importing it at
# its top) and `make_env` call `select_gl_backend()` first; importing this package for its names probes
# nothing.


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


MODE_SEED_OFFSET = 1_000_003  # the test mode's appearance draws are seeded apart from the task's


def make_env(
    name: str,
    *,
    action_repeat: int | None = None,
    frame_stack: int = 3,
    image_size: int = 84,
    camera_id: int = 0,
    seed: int = 0,
    mode: str = "train",
    intensity: float | None = None,
    render_quality: Literal["reference", "fast"] = "reference",
    data: Any = None,
    device: str = "cpu",
    reseed_mode: bool = False,
) -> EnvBase:
    """A pixel DMC task as a TorchRL env.

    Args:
        name: task, e.g. ``"walker_walk"`` (see `sgqn.envs.TASKS`).
        action_repeat: physics control steps per agent step; default per task (`DEFAULT_ACTION_REPEAT`).
            The frame is rendered once per agent step and rewards are summed over the sub-steps.
        frame_stack: frames concatenated on the channel axis, oldest first: ``pixels`` is uint8
            ``[3 * frame_stack, image_size, image_size]``.
        image_size: rendered height and width.
        camera_id: MuJoCo camera (0 is DMC-GB's).
        seed: seeds the task (initial states) and, separately, the test mode's appearance draws.
        mode: ``"train"`` or a DMC-GB test mode (`sgqn.envs.MODES`).
        intensity: distraction intensity for ``distracting_cs``.
        render_quality: ``"reference"`` (MuJoCo defaults) or ``"fast"`` (see `RenderQuality`).
        data: data sources for test modes (`sgqn.assets.DataSources`); ``None`` uses the embedded default.
        device: device of the output tensors.
        reseed_mode: `set_seed(s)` also reseeds the test mode's appearance RNG (with s + `MODE_SEED_OFFSET`,
            as construction does), so that a reseeded env's next episodes are a function of s alone
            (parallel evaluation). Off: `set_seed` reseeds the task only (TorchRL's behaviour).

    An episode lasts `EPISODE_PHYSICS_STEPS / action_repeat` agent steps and ends *truncated* (never
    terminated): DMC tasks have no terminal states, so targets must bootstrap through the time limit.
    """
    select_gl_backend()  # the first env probes the OpenGL backends (once per process)
    from torchrl.envs import CatFrames, DoubleToFloat, PermuteTransform, TransformedEnv
    from torchrl.envs.libs.dm_control import DMControlWrapper

    from sgqn.envs.dmc import ActionRepeat, ModePixels, ReseedingDMControlWrapper
    from sgqn.envs.modes import make_mode

    domain, task = split_task(name)
    if action_repeat is None:
        action_repeat = DEFAULT_ACTION_REPEAT[name]
    _positive("action_repeat", action_repeat)
    _positive("frame_stack", frame_stack)
    _positive("image_size", image_size)
    quality = RenderQuality.named(render_quality)
    appearance = make_mode(
        mode,
        domain=domain,
        intensity=intensity,
        data=data,
        action_repeat=action_repeat,
        image_size=image_size,
        camera_id=camera_id,
    )

    from dm_control import suite

    # `random` seeds the task's initial-state sampling; DMControlWrapper reseeds it again in set_seed.
    control_env = suite.load(domain, task, task_kwargs={"random": seed})
    pixel_env = ModePixels(
        ActionRepeat(control_env, action_repeat),
        image_size=image_size,
        camera_id=camera_id,
        mode=appearance,
        quality=quality,
        mode_seed=seed + MODE_SEED_OFFSET,
    )
    wrapper = ReseedingDMControlWrapper if reseed_mode else DMControlWrapper
    env = TransformedEnv(
        wrapper(pixel_env, device=device),
        DoubleToFloat(),
    )
    env.append_transform(PermuteTransform((-1, -3, -2), in_keys=["pixels"]))  # HWC → CHW
    env.append_transform(CatFrames(N=frame_stack, dim=-3, in_keys=["pixels"], padding="same"))
    env.set_seed(seed)
    return env


__all__ = [
    "DEFAULT_ACTION_REPEAT",
    "DEFAULT_QUANTILE",
    "DISTRACTING_CS_INTENSITIES",
    "EPISODE_PHYSICS_STEPS",
    "MODES",
    "REFERENCE_OPTIONS",
    "TASKS",
    "TASK_DEFAULTS",
    "ReferenceSettings",
    "RenderQuality",
    "make_env",
    "reference_settings",
    "resolve_settings",
    "select_gl_backend",
]
