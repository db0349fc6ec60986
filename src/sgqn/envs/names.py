"""Names of the test modes, importable without MuJoCo (validation, help texts, reports)."""

from __future__ import annotations

MODES: tuple[str, ...] = ("train", "color_easy", "color_hard", "video_easy", "video_hard", "distracting_cs")
# DMC-GB's distracting_cs intensities (Stone et al. 2021's distraction scale).
DISTRACTING_CS_INTENSITIES: tuple[float, ...] = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)

__all__ = ["DISTRACTING_CS_INTENSITIES", "MODES"]
