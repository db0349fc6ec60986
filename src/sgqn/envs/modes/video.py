"""DMC-GB `video_easy` / `video_hard`: a natural video behind the agent, by chroma key.

As DMC-GB's `ColorWrapper` + `VideoWrapper`: the sky (and, in `video_hard`, the floor checker and its
marks) is painted the key green (0.2, 0.8, 0.2); every rendered frame then has its pixels whose HSV
colour lies in H∈[100°, 185°], S∈[80, 255], V∈[70, 255] replaced by the current video frame, resized to
the observation size. The video changes at each reset and advances one frame per agent step (looping).
Everything the key does not catch stays: lit floor pixels too dark to key (the agent's shadow), the
agent's reflection in the floor, and the horizon haze band.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgqn.assets.clips import Clip
from sgqn.envs.modes.base import Mode
from sgqn.envs.modes.textures import BuiltinTexture

KEY_GREEN = (0.2, 0.8, 0.2)
# DMC-GB's thresholds: hue in degrees, saturation and value on a 0-255 scale.
HUE_RANGE = (100, 185)
MIN_SATURATION = 80  # hard-coded as 51·d ≥ 16·max in `chroma_key_mask` (255/5, 80/5)
MIN_VALUE = 70


def _float_key(rgb: np.ndarray) -> np.ndarray:
    """DMC-GB's per-pixel float HSV test, operation for operation, on int `[N, 3]` colours."""
    x = rgb / 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    top = np.maximum(np.maximum(r, g), b)
    span = top - np.minimum(np.minimum(r, g), b)
    safe = np.where(span > 0, span, 1.0)
    rc, gc, bc = (top - r) / safe, (top - g) / safe, (top - b) / safe
    hue = np.mod(np.where(g == top, 2.0 + rc - bc, 4.0 + gc - rc) / 6.0, 1.0) * 360.0
    sat = span / np.where(top > 0, top, 1.0) * 255.0
    in_hue = (hue >= HUE_RANGE[0]) & (hue <= HUE_RANGE[1])
    return (span > 0) & (r < top) & in_hue & (sat >= MIN_SATURATION) & (top * 255.0 >= MIN_VALUE)


def chroma_key_mask(frame: np.ndarray) -> np.ndarray:
    """Bool `[H, W]`: the pixels of uint8 `[H, W, 3]` `frame` that DMC-GB's green screen replaces.

    The HSV test is evaluated in integer arithmetic (no float HSV image): with d = max - min,
    saturation ≥ 80 is 255·d ≥ 80·max; a green-max hue 120° + 60°·(b - r)/d is ≥ 100° iff
    3·(b - r) + d ≥ 0 (and never above 180°); a blue-max hue 240° + 60°·(r - g)/d is ≤ 185° iff
    12·(r - g) + 11·d ≤ 0; red-max hues (checked first, as `colorsys` does) are never keyed. Colours
    exactly on a threshold are re-decided with the reference's float arithmetic, whose rounding goes
    either way there, so the mask equals DMC-GB's on all 2^24 colours.
    """
    rgb = frame.astype(np.int16)  # every term below stays within ±13005
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = np.maximum(np.maximum(r, g), b)
    d = top - np.minimum(np.minimum(r, g), b)
    hue_low = 3 * (b - r) + d  # ≥ 0 ⇔ hue ≥ 100° (green max)
    hue_high = 12 * (r - g) + 11 * d  # ≤ 0 ⇔ hue ≤ 185° (blue max)
    sat = 51 * d - 16 * top  # ≥ 0 ⇔ 255·d ≥ 80·max ⇔ saturation ≥ 80
    green = (g == top) & (hue_low >= 0)
    blue = (g < top) & (hue_high <= 0)
    mask = (r < top) & (top >= MIN_VALUE) & (sat >= 0) & (green | blue)
    tie = (hue_low == 0) | (hue_high == 0) | (sat == 0) | (top == MIN_VALUE)
    if tie.any():
        mask[tie] = _float_key(rgb[tie].astype(np.int32))
    return mask


class VideoMode(Mode):
    def __init__(self, name: str, clips: list[Clip], key_floor: bool) -> None:
        if not clips:
            raise ValueError(f"{name}: no video clips")
        self.name = name
        self.clips = clips
        self.key_floor = key_floor
        self.clip: Clip | None = None
        self._clip_index = -1
        self._frames: np.ndarray | None = None
        self._step = 0
        self._time: float | None = None

    def bind(self, physics: Any) -> None:
        # Static for the whole run, so painted once (DMC-GB repaints on every reset, to the same result).
        BuiltinTexture(physics, "skybox").set(physics, KEY_GREEN, KEY_GREEN, KEY_GREEN)
        if self.key_floor:
            BuiltinTexture(physics, "grid").set(physics, KEY_GREEN, KEY_GREEN, KEY_GREEN)

    def on_reset(self, physics: Any, rng: np.random.Generator) -> None:
        self._clip_index = int(rng.integers(len(self.clips)))
        self.clip = self.clips[self._clip_index]
        self._frames = None  # decoded (or fetched from cache) at the first frame, when its size is known
        self._step = -1
        self._time = None

    def state_dict(self) -> dict[str, Any]:
        return {"clip": self._clip_index, "step": self._step, "time": self._time}

    def load_state_dict(self, state: dict[str, Any], physics: Any, rng: np.random.Generator) -> None:
        self._clip_index, self._step, self._time = state["clip"], state["step"], state["time"]
        self.clip = self.clips[self._clip_index] if self._clip_index >= 0 else None
        self._frames = None

    def before_render(self, physics: Any) -> None:
        # One video frame per agent step: advance only when the physics has moved on, so re-rendering
        # a state (ModePixels.render_state) does not skip frames.
        time = float(physics.data.time)
        if time != self._time:
            self._step, self._time = self._step + 1, time

    def after_render(self, frame: np.ndarray) -> np.ndarray:
        if self.clip is None:
            raise RuntimeError(f"{self.name}: a frame was rendered before the first reset")
        height, width = frame.shape[:2]
        if self._frames is None or self._frames.shape[1:3] != (height, width):
            # A plain view of the (memory-mapped) cache: indexing a np.memmap costs ~10x more.
            self._frames = np.asarray(self.clip.frames(height, width)).view(np.ndarray)
        background = self._frames[max(self._step, 0) % len(self._frames)]
        # A full-shape mask: np.where with a broadcast [H, W, 1] mask is ~3x slower.
        mask = np.repeat(chroma_key_mask(frame)[..., None], 3, axis=2)
        return np.where(mask, background, frame)
