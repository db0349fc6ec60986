"""The DMC tasks sgqn knows, with the DMC-GB lineage's default action repeat for each."""

from __future__ import annotations

# finger_spin 2, cartpole_* 8, all others 4 (DrQ / SVEA / SGQN defaults).
DEFAULT_ACTION_REPEAT: dict[str, int] = {
    "walker_walk": 4,
    "walker_stand": 4,
    "walker_run": 4,
    "cartpole_swingup": 8,
    "cartpole_balance": 8,
    "ball_in_cup_catch": 4,
    "finger_spin": 2,
    "cheetah_run": 4,
    "reacher_easy": 4,
    "reacher_hard": 4,
}
TASKS: tuple[str, ...] = tuple(DEFAULT_ACTION_REPEAT)
EPISODE_PHYSICS_STEPS = 1000  # every DMC task's time limit, in control steps


def split_task(name: str) -> tuple[str, str]:
    """`"ball_in_cup_catch"` → `("ball_in_cup", "catch")`; raises with the valid names if unknown."""
    if name not in DEFAULT_ACTION_REPEAT:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    domain, _, task = name.rpartition("_")
    return domain, task
