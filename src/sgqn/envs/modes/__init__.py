"""Test modes of the DMControl Generalization Benchmark, as hooks around the pixel renderer."""

from __future__ import annotations

import math
from typing import Any, Literal, cast

from sgqn.envs.modes.base import Mode
from sgqn.envs.names import DISTRACTING_CS_INTENSITIES, MODES

INTENSITIES = DISTRACTING_CS_INTENSITIES
Level = Literal["easy", "hard"]


def _intensity(mode: str, intensity: float | None) -> float | None:
    if mode != "distracting_cs":
        # DMC-GB passes its `--distracting_cs_intensity` (default 0) to every mode and ignores it.
        if intensity not in (None, 0, 0.0):
            raise ValueError(
                f"intensity applies to distracting_cs only; mode {mode!r} got intensity={intensity!r}"
            )
        return None
    if intensity is not None and not isinstance(intensity, bool):
        for valid in INTENSITIES:
            if math.isclose(float(intensity), valid, rel_tol=0, abs_tol=1e-9):
                return valid
    raise ValueError(f"distracting_cs needs an intensity in {list(INTENSITIES)}, got {intensity!r}")


def make_mode(
    name: str,
    *,
    domain: str,
    intensity: float | None = None,
    data: Any = None,
    action_repeat: int = 1,
    image_size: int = 84,
    camera_id: int = 0,
) -> Mode:
    """Build the `Mode` called `name` for `domain`.

    Args:
        name: one of `MODES`.
        domain: DMC domain, e.g. "walker".
        intensity: `distracting_cs` intensity, one of `DISTRACTING_CS_INTENSITIES` (others: None or 0).
        data: `sgqn.assets.DataSources` (or a mapping of its fields, or None for the embedded defaults).
        action_repeat: physics steps per agent step; `distracting_cs` advances its dynamics per physics step.
        image_size: rendered side; sizes `distracting_cs`'s sky texture.
        camera_id: the rendering camera, which `distracting_cs` moves.
    """
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; valid modes: {', '.join(MODES)}")
    level_intensity = _intensity(name, intensity)
    if name == "train":
        return Mode()

    from sgqn.assets.sources import DataSources  # the data stack is only needed by the test modes

    sources = DataSources.coerce(data)
    if name in ("color_easy", "color_hard"):
        from sgqn.envs.modes.color import ColorMode

        return ColorMode(name, sources.color_settings(cast(Level, name.removeprefix("color_"))))
    if name in ("video_easy", "video_hard"):
        from sgqn.envs.modes.video import VideoMode

        level = cast(Level, name.removeprefix("video_"))
        return VideoMode(name, sources.video_clips(level), key_floor=level == "hard")

    from sgqn.envs.modes.distracting import GROUND_PLANE_ALPHA, NUM_VIDEOS, DistractingCSMode

    if domain not in GROUND_PLANE_ALPHA:
        raise ValueError(f"distracting_cs supports domains {sorted(GROUND_PLANE_ALPHA)}, not {domain!r}")
    assert level_intensity is not None
    return DistractingCSMode(
        domain,
        level_intensity,
        sources.davis_clips(NUM_VIDEOS[level_intensity]),
        action_repeat=action_repeat,
        image_size=image_size,
        camera_id=camera_id,
    )


__all__ = ["DISTRACTING_CS_INTENSITIES", "MODES", "Mode", "make_mode"]
