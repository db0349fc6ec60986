"""Test modes of the DMControl Generalization Benchmark, as hooks around the pixel renderer."""

from __future__ import annotations

from typing import Any

from sgqn.envs.modes.base import Mode

MODES: tuple[str, ...] = ("train",)


def make_mode(name: str, *, domain: str, intensity: float | None = None, data: Any = None) -> Mode:
    """Build the `Mode` called `name` for `domain`; `data` is the data source set (see `sgqn.data`)."""
    if name == "train":
        return Mode()
    raise ValueError(f"unknown mode {name!r}; valid modes: {', '.join(MODES)}")


__all__ = ["MODES", "Mode", "make_mode"]
