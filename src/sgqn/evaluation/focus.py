"""Where the critic looks, measured: its saliency against the task's bodies (MuJoCo's ground truth).

For each stacked frame of an observation, with S the salient pixels (the mask at ρ, SGQN's M_ρ), A the
guided attribution per pixel (its max |·| over the frame's colour channels, as the mask reads it) and R
the pixels where the task's bodies are (`sgqn.evaluation.ground_truth`):

    precision  = |S ∩ R| / |S|         the share of what the critic attends to that lies on the bodies
    recall     = |S ∩ R| / |R|         the share of the bodies it attends to
    TID        = √(precision · recall)  SimGRL's score (their masks hand-made or by colour; ours exact)
    mass       = Σ_R A / Σ A            the share of attribution mass on the bodies, no threshold

Precision, recall and mass are averaged over every frame of every observation where they are defined (a
frame with no salient pixel has no precision, one whose bodies are out of view no recall); TID is the
geometric mean of the averaged precision and recall.
"""

from __future__ import annotations

import math

from torch import Tensor


def per_frame(maps: Tensor, frames: int) -> Tensor:
    """`[N, 3·F, H, W]` channel maps → `[N, F, H, W]`: each frame's max over its colour channels."""
    n, c, h, w = maps.shape
    return maps.reshape(n, frames, c // frames, h, w).amax(dim=2)


def focus_scores(attribution: Tensor | None, salient: Tensor, bodies: Tensor) -> dict[str, float]:
    """Precision, recall, TID and (with an `attribution`) mass of a saliency on the bodies.

    Args:
        attribution: `[N, 3·F, H, W]` attribution (any sign), or None (no mass: e.g. a predicted mask).
        salient: bool `[N, 3·F, H, W]` salient pixels (repeated over each frame's channels).
        bodies: bool `[N, F, H, W]` the task's bodies in each frame.

    Returns "precision", "recall", "tid" and "mass_on_body" (nan where no frame defines it).
    """
    frames = bodies.shape[1]
    s = per_frame(salient.float(), frames).bool()
    r = bodies.bool()
    hits = (s & r).flatten(2).sum(-1).float()  # [N, F]
    chosen, present = s.flatten(2).sum(-1).float(), r.flatten(2).sum(-1).float()
    precision = _mean(hits / chosen, chosen > 0)
    recall = _mean(hits / present, present > 0)
    scores = {"precision": precision, "recall": recall, "tid": math.sqrt(precision * recall)}
    if attribution is not None:
        a = per_frame(attribution.detach().abs().float(), frames)
        total = a.flatten(2).sum(-1)
        scores["mass_on_body"] = _mean((a * r).flatten(2).sum(-1) / total, total > 0)
    return scores


def _mean(values: Tensor, defined: Tensor) -> float:
    return float(values[defined].mean()) if bool(defined.any()) else math.nan


__all__ = ["focus_scores", "per_frame"]
