"""The hook interface through which a test mode changes what the camera sees, never the physics."""

from __future__ import annotations

from typing import Any

import numpy as np


class Mode:
    """Appearance of one DMC-GB setting; the default (`train`) changes nothing.

    The pixel wrapper calls `bind` once after the task is built, `on_reset` after every episode reset
    (appearance is drawn per episode), `before_render` right before each frame is rendered (e.g. a camera
    perturbation or a texture upload) and `after_render` on each rendered uint8 `[H, W, 3]` frame (e.g.
    chroma-key compositing). Modes draw their randomness from the `rng` they are given, never from the
    task's, so the same seed gives the same physics in every mode.
    """

    name: str = "train"

    def bind(self, physics: Any) -> None:
        """One-time set-up on a freshly loaded physics (before its first render)."""

    def on_reset(self, physics: Any, rng: np.random.Generator) -> None:
        """Draw this episode's appearance."""

    def before_render(self, physics: Any) -> None:
        """Adjust the scene right before a frame is rendered."""

    def after_render(self, frame: np.ndarray) -> np.ndarray:
        """Post-process one rendered frame; must return a uint8 array of the same shape."""
        return frame

    def state_dict(self) -> dict[str, Any]:
        """The appearance state drawn since the last reset, as plain Python values (mid-episode resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], physics: Any, rng: np.random.Generator) -> None:
        """Restore `state_dict` on a mode bound to a fresh env of the same settings.

        The env's physics state and model arrays are restored first (`sgqn.envs.state`); this re-applies
        what lives elsewhere, e.g. textures uploaded to the GL context. `rng` is the env's mode RNG.
        """
