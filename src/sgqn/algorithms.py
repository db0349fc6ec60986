"""The algorithms `sgqn fit` trains, as one table: a value learner plus an optional guidance plug-in
(`sgqn.objectives.learner`). Importable without torch (validation, reports, sweeps)."""

from __future__ import annotations

from typing import Literal

Algorithm = Literal["sac", "svea", "sgqn", "drqv2", "drqv2_sgqn"]
# name → (value learner, guidance), baselines first as in the paper's tables
ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "sac": ("sac", None),
    "svea": ("sac", "svea"),
    "sgqn": ("sac", "sgqn"),
    "drqv2": ("drqv2", None),
    "drqv2_sgqn": ("drqv2", "sgqn"),
}


def algorithms_with(learner: str | None = None, guidance: str | None = None) -> tuple[str, ...]:
    """The algorithms that use this value learner and/or this guidance."""
    return tuple(
        name
        for name, (lrn, gd) in ALGORITHMS.items()
        if (learner is None or lrn == learner) and (guidance is None or gd == guidance)
    )


__all__ = ["ALGORITHMS", "Algorithm", "algorithms_with"]
