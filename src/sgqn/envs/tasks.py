"""The DMC tasks sgqn knows, with the per-task defaults of the DMC-GB lineage: one table."""

from __future__ import annotations

from typing import NamedTuple


class TaskDefaults(NamedTuple):
    action_repeat: int  # agent steps repeat the action this many control steps (DrQ / SVEA / SGQN)
    quantile: float  # SGQN's rho (the paper's appendix: 0.98 for cartpole and ball_in_cup, else 0.95)


TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "walker_walk": TaskDefaults(4, 0.95),
    "walker_stand": TaskDefaults(4, 0.95),
    "walker_run": TaskDefaults(4, 0.95),
    "cartpole_swingup": TaskDefaults(8, 0.98),
    "cartpole_balance": TaskDefaults(8, 0.98),
    "ball_in_cup_catch": TaskDefaults(4, 0.98),
    "finger_spin": TaskDefaults(2, 0.95),
    "cheetah_run": TaskDefaults(4, 0.95),
    "reacher_easy": TaskDefaults(4, 0.95),
    "reacher_hard": TaskDefaults(4, 0.95),
}
DEFAULT_ACTION_REPEAT: dict[str, int] = {task: d.action_repeat for task, d in TASK_DEFAULTS.items()}
DEFAULT_QUANTILE: dict[str, float] = {task: d.quantile for task, d in TASK_DEFAULTS.items()}
TASKS: tuple[str, ...] = tuple(TASK_DEFAULTS)
EPISODE_PHYSICS_STEPS = 1000  # every DMC task's time limit, in control steps


def split_task(name: str) -> tuple[str, str]:
    """`"ball_in_cup_catch"` → `("ball_in_cup", "catch")`; raises with the valid names if unknown."""
    if name not in TASK_DEFAULTS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    domain, _, task = name.rpartition("_")
    return domain, task
