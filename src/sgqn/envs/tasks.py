"""The DMC tasks sgqn knows and each learner's reference settings for them: one table.

Per task: the DMC-GB lineage's action repeat and SGQN's ρ, and DrQ-v2's per-task settings
(facebookresearch/drqv2 `cfgs/task/<task>.yaml`: its "easy" or "medium" level, n-step and batch size).
`reference_settings(learner, task)` turns them into the values of the options that default to None
(`REFERENCE_OPTIONS`); `resolve_settings` fills the None ones of a configuration. `sgqn fit` resolves its
configuration with it before anything is created, and `DMCDataModule`, `AgentModule` and
`EvaluationCallback` resolve their own None arguments with it when built directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

Learner = Literal["sac", "drqv2"]  # the value learners of `sgqn.algorithms.ALGORITHMS`
DrQv2Level = Literal["easy", "medium"]


class TaskDefaults(NamedTuple):
    action_repeat: int  # agent steps repeat the action this many control steps (DrQ / SVEA / SGQN)
    quantile: float  # SGQN's rho (the paper's appendix: 0.98 for cartpole and ball_in_cup, else 0.95)
    drqv2_level: DrQv2Level = "easy"  # DrQ-v2's cfgs/task/<task>.yaml: `defaults: [easy]` or `[medium]`
    drqv2_n_step: int = 3  # DrQ-v2's nstep (cfgs/config.yaml: 3; the walker tasks' files: 1)
    drqv2_batch_size: int = 256  # DrQ-v2's batch_size (cfgs/config.yaml: 256; the walker tasks': 512)
    # The geoms a critic should look at (the robot's and the task's objects; never the floor, walls, rails
    # or sky), by their names in the task's MuJoCo model: the ground truth of `sgqn.evaluation.focus`.
    bodies: tuple[str, ...] = ()


WALKER = ("torso", "right_thigh", "right_leg", "right_foot", "left_thigh", "left_leg", "left_foot")
CARTPOLE = ("cart", "pole_1")  # not the rails
CUP = ("cup_part_0", "cup_part_1", "cup_part_2", "cup_part_3", "cup_part_4", "ball")
FINGER = ("proximal", "proximal_decoration", "distal", "fingertip", "cap1", "cap2", "spinner_decoration")
CHEETAH = ("torso", "head", "bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot")
REACHER = ("root", "arm", "hand", "finger", "target")  # the arm from its base, and the target; not walls

TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "walker_walk": TaskDefaults(4, 0.95, "easy", 1, 512, WALKER),
    "walker_stand": TaskDefaults(4, 0.95, "easy", 1, 512, WALKER),
    "walker_run": TaskDefaults(4, 0.95, "medium", 1, 512, WALKER),
    "cartpole_swingup": TaskDefaults(8, 0.98, bodies=CARTPOLE),
    "cartpole_balance": TaskDefaults(8, 0.98, bodies=CARTPOLE),
    "ball_in_cup_catch": TaskDefaults(4, 0.98, bodies=CUP),  # DrQ-v2's cup_catch
    "finger_spin": TaskDefaults(2, 0.95, bodies=FINGER),
    "cheetah_run": TaskDefaults(4, 0.95, "medium", bodies=CHEETAH),
    "reacher_easy": TaskDefaults(4, 0.95, "medium", bodies=REACHER),
    "reacher_hard": TaskDefaults(4, 0.95, "medium", bodies=REACHER),
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


# --------------------------------------------------------------------------- each learner's reference

# DrQ-v2 (cfgs/config.yaml, cfgs/task/{easy,medium}.yaml) counts frames = agent steps × action repeat;
# `train.py` turns them into agent steps with `frames // action_repeat`, as `reference_settings` does.
DRQV2_ACTION_REPEAT = 2
DRQV2_SEED_FRAMES = 4_000  # num_seed_frames: no update before (and num_expl_steps 2,000 random actions)
DRQV2_EVAL_EVERY_FRAMES = 10_000  # eval_every_frames
DRQV2_UPDATE_EVERY_STEPS = 2  # agent.update_every_steps
DRQV2_REPLAY_SIZE = 1_000_000  # replay_buffer_size, transitions
DRQV2_TRAIN_FRAMES: dict[DrQv2Level, int] = {"easy": 1_100_000, "medium": 3_100_000}  # num_train_frames
DRQV2_STDDEV_STEPS: dict[DrQv2Level, int] = {"easy": 100_000, "medium": 500_000}  # linear(1.0,0.1,N)

# The SAC lineage (the DMC-GB code, SVEA's and SGQN's papers): agent steps, whatever the action repeat.
SAC_NUM_AGENT_STEPS = 500_000
SAC_INIT_STEPS = 1_000
SAC_EVAL_EVERY_AGENT_STEPS = 10_000
SAC_BATCH_SIZE = 128
NO_TASK = TaskDefaults(4, 0.95)  # no task given: DMC-GB's default action repeat, SGQN's usual rho


def drqv2_replay_capacity(num_agent_steps: int) -> int | None:
    """DrQ-v2's replay of 1M transitions, or None (the whole run) for a run that fits in it."""
    return DRQV2_REPLAY_SIZE if num_agent_steps > DRQV2_REPLAY_SIZE else None


@dataclass(frozen=True)
class ReferenceSettings:
    """What the options left None mean for one learner on one task (`reference_settings`).

    Attributes:
        action_repeat: `--data.action_repeat`.
        n_step: `--data.n_step`.
        batch_size: `--data.batch_size`.
        num_agent_steps: `--data.num_agent_steps`.
        init_steps: `--data.init_steps`: random agent steps before the first update.
        update_every_steps: `--data.update_every_steps`.
        warmup_burst: `--data.warmup_burst`.
        replay_capacity: `--data.replay_capacity`; None: the whole run.
        eval_every_agent_steps: `--eval.every_agent_steps`.
        stddev_steps: `--model.drqv2.stddev_steps` (DrQ-v2's σ decay, agent steps); None for the SAC
            lineage, which has no such setting.
    """

    action_repeat: int
    n_step: int
    batch_size: int
    num_agent_steps: int
    init_steps: int
    update_every_steps: int
    warmup_burst: bool
    replay_capacity: int | None
    eval_every_agent_steps: int
    stddev_steps: int | None


# `sgqn fit` option → `ReferenceSettings` field: the options whose None means "the learner's reference".
REFERENCE_OPTIONS: dict[str, str] = {
    "data.action_repeat": "action_repeat",
    "data.n_step": "n_step",
    "data.batch_size": "batch_size",
    "data.num_agent_steps": "num_agent_steps",
    "data.init_steps": "init_steps",
    "data.update_every_steps": "update_every_steps",
    "data.warmup_burst": "warmup_burst",
    "data.replay_capacity": "replay_capacity",
    "eval.every_agent_steps": "eval_every_agent_steps",
    "model.drqv2.stddev_steps": "stddev_steps",
}


def reference_settings(
    learner: str, task: str | None = None, action_repeat: int | None = None
) -> ReferenceSettings:
    """`learner`'s reference settings on `task` (None: a task without per-task settings).

    SAC lineage (sac, svea, sgqn): the task's DMC-GB action repeat, batch 128, one-step returns, 500k
    agent steps, 1,000 random steps then one update per agent step and a burst of 1,000 at the switch,
    a replay of the whole run, evaluation every 10k agent steps. DrQ-v2 (drqv2, drqv2_sgqn): action
    repeat 2, the task's n-step and batch (3 and 256; the walkers 1 and 512), 1.1M frames ("easy") or
    3.1M ("medium"), 4,000 seed frames, an update every 2nd agent step without a burst, a replay of at
    most 1M transitions, evaluation every 10k frames and σ's decay over 100k (easy) or 500k (medium)
    agent steps. DrQ-v2's frame counts become agent steps at `action_repeat` (None: its 2), as its
    `train.py` divides them by its configured action repeat.
    """
    if learner not in ("sac", "drqv2"):
        raise ValueError(f"unknown learner {learner!r}; valid learners: sac, drqv2")
    if task is not None:
        split_task(task)  # raises with the valid names
    row = TASK_DEFAULTS[task] if task is not None else NO_TASK
    if learner == "sac":
        return ReferenceSettings(
            action_repeat=row.action_repeat if action_repeat is None else action_repeat,
            n_step=1,
            batch_size=SAC_BATCH_SIZE,
            num_agent_steps=SAC_NUM_AGENT_STEPS,
            init_steps=SAC_INIT_STEPS,
            update_every_steps=1,
            warmup_burst=True,
            replay_capacity=None,
            eval_every_agent_steps=SAC_EVAL_EVERY_AGENT_STEPS,
            stddev_steps=None,
        )
    repeat = DRQV2_ACTION_REPEAT if action_repeat is None else action_repeat
    num_agent_steps = DRQV2_TRAIN_FRAMES[row.drqv2_level] // repeat
    return ReferenceSettings(
        action_repeat=repeat,
        n_step=row.drqv2_n_step,
        batch_size=row.drqv2_batch_size,
        num_agent_steps=num_agent_steps,
        init_steps=DRQV2_SEED_FRAMES // repeat,
        update_every_steps=DRQV2_UPDATE_EVERY_STEPS,
        warmup_burst=False,
        replay_capacity=drqv2_replay_capacity(num_agent_steps),
        eval_every_agent_steps=DRQV2_EVAL_EVERY_FRAMES // repeat,
        stddev_steps=DRQV2_STDDEV_STEPS[row.drqv2_level],
    )


def resolve_settings(learner: str, task: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of `REFERENCE_OPTIONS`: its value in `given` (keyed by option, e.g. ``data.n_step``),
    or where that is None or absent `learner`'s reference on `task`. An explicit value wins; an explicit
    ``data.action_repeat`` also sets the agent steps DrQ-v2's frame counts come to. ``data.replay_capacity``
    may stay None (the whole run), and ``model.drqv2.stddev_steps`` does for the SAC lineage."""
    reference = asdict(reference_settings(learner, task, given.get("data.action_repeat")))
    resolved: dict[str, Any] = {option: given.get(option) for option in REFERENCE_OPTIONS}
    for option, field in REFERENCE_OPTIONS.items():
        if resolved[option] is None:
            resolved[option] = reference[field]
    if learner == "drqv2" and given.get("data.replay_capacity") is None:  # for the run's own length
        resolved["data.replay_capacity"] = drqv2_replay_capacity(resolved["data.num_agent_steps"])
    return resolved


__all__ = [
    "DEFAULT_ACTION_REPEAT",
    "DEFAULT_QUANTILE",
    "EPISODE_PHYSICS_STEPS",
    "REFERENCE_OPTIONS",
    "TASKS",
    "TASK_DEFAULTS",
    "Learner",
    "ReferenceSettings",
    "TaskDefaults",
    "reference_settings",
    "resolve_settings",
    "split_task",
]
