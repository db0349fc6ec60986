"""DMC-GB `color_easy` / `color_hard`: one of 100 fixed colour settings per episode.

As DMC-GB's `ColorWrapper` (via its patched `suite/common/settings.py`), a setting recolours the floor
checker (`grid` texture `rgb1`, `rgb2`; its edge marks keep their colour), the sky gradient's top colour
(`skybox` texture `rgb1`; the black bottom and white stars stay) and the `self` material (the agent's
body; effectors and decorations keep theirs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgqn.assets.colors import ColorSetting
from sgqn.envs.modes.base import Mode
from sgqn.envs.modes.textures import BuiltinTexture, material_id


class ColorMode(Mode):
    def __init__(self, name: str, settings: list[ColorSetting]) -> None:
        if not settings:
            raise ValueError(f"{name}: no colour settings")
        self.name = name
        self.settings = settings
        self.current: ColorSetting | None = None
        self._index = -1

    def bind(self, physics: Any) -> None:
        self._grid = BuiltinTexture(physics, "grid")
        self._sky = BuiltinTexture(physics, "skybox")
        self._self = material_id(physics, "self")

    def on_reset(self, physics: Any, rng: np.random.Generator) -> None:
        self._apply(physics, int(rng.integers(len(self.settings))))

    def _apply(self, physics: Any, index: int) -> None:
        setting = self.settings[index]
        self._grid.set(physics, rgb1=setting["grid_rgb1"], rgb2=setting["grid_rgb2"])
        self._sky.set(physics, rgb1=setting["skybox_rgb"])
        physics.model.mat_rgba[self._self] = (*setting["self_rgb"], 1.0)
        self.current, self._index = setting, index

    def state_dict(self) -> dict[str, Any]:
        return {"setting": self._index}

    def load_state_dict(self, state: dict[str, Any], physics: Any, rng: np.random.Generator) -> None:
        if state["setting"] >= 0:
            self._apply(physics, state["setting"])
