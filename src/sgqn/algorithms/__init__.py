"""The algorithms `sgqn fit` trains, each one file whose `update` runs its whole update top-down:

    sac.py         SAC with DrQ's random shift (the DMC-GB code's)
    svea.py        SAC + SVEA's overlay-augmented TD term
    sgqn.py        SAC + SGQN's saliency guidance (the paper's maths: saliency_guidance.py)
    drqv2.py       DrQ-v2
    drqv2_sgqn.py  DrQ-v2 + the same saliency guidance

`factory.make_agent` builds one from its typed configuration. This table is importable without torch
(validation, reports, sweeps): name → (value learner, guidance), baselines first as in the paper's tables.
"""

from __future__ import annotations

from typing import Literal

Algorithm = Literal["sac", "svea", "sgqn", "drqv2", "drqv2_sgqn"]
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
