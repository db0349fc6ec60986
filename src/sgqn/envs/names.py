"""Names of the test modes, importable without MuJoCo (validation, help texts, reports)."""

from __future__ import annotations

MODES: tuple[str, ...] = ("train", "color_easy", "color_hard", "video_easy", "video_hard", "distracting_cs")
# DMC-GB's distracting_cs intensities (Stone et al. 2021's distraction scale).
DISTRACTING_CS_INTENSITIES: tuple[float, ...] = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def mode_order(mode: str) -> tuple[int, str, str]:
    """Sort key of a mode name: the paper's column order (`MODES`), then any other mode;
    ``distracting_cs@0.1`` sorts with ``distracting_cs``."""
    base, _, intensity = mode.partition("@")
    return (MODES.index(base) if base in MODES else len(MODES), base, intensity)


__all__ = ["DISTRACTING_CS_INTENSITIES", "MODES", "mode_order"]
