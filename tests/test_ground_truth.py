"""The ground-truth body masks: non-empty, never the floor, equal to the pixels that change when only the
bodies are recoloured, and one mask for every test mode that keeps the train camera."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from cli_helpers import fit_args, short_run
from sgqn.app.cli import main
from sgqn.envs import TASKS, make_env
from sgqn.envs.tasks import TASK_DEFAULTS
from sgqn.evaluation.ground_truth import body_geoms, body_mask, stacked_body_masks

SIZE = 48


def _env(task: str, mode: str = "train", **kwargs: object):
    env = make_env(task, image_size=SIZE, render_quality="fast", seed=3, mode=mode, **kwargs)  # type: ignore[arg-type]
    env.reset()
    return env


def _physics(env):  # type: ignore[no-untyped-def]
    return env.base_env._env._env.physics


def _state_after(env, steps: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    for _ in range(steps):
        env.rand_step()
    return _physics(env).get_state().copy()


@pytest.mark.parametrize("task", TASKS)
def test_each_tasks_mask_is_its_bodies_and_never_the_floor(task: str) -> None:
    env = _env(task)
    state = _state_after(env, 5)
    mask = body_mask(env, task, state)
    assert mask.shape == (SIZE, SIZE) and mask.dtype == bool
    assert 0 < mask.mean() < 0.9, mask.mean()  # the bodies are in view, and are not the whole picture
    model = _physics(env).model
    assert len(body_geoms(env, task)) == len(TASK_DEFAULTS[task].bodies)
    segments = env.base_env._env.segment_state(state)
    names = [model.id2name(i, "geom") for i in range(model.ngeom)]
    floor = [i for i, n in enumerate(names) if n in ("floor", "ground")]
    assert floor and not mask[np.isin(segments, floor)].any()  # never the floor
    assert np.isin(segments, floor).any()  # which is in view


@pytest.mark.parametrize(
    "task", ["walker_walk", "cartpole_swingup", "ball_in_cup_catch", "finger_spin", "reacher_easy"]
)
def test_the_mask_is_what_changes_when_only_the_bodies_are_recoloured(task: str) -> None:
    # Built independently of the segmentation: render the same state twice, the second time with the
    # task's body geoms painted magenta (their materials dropped); the pixels that differ are the bodies.
    # Reflections would carry the colour onto the floor: reflectance off in both renders.
    env = _env(task)
    state = _state_after(env, 7)
    model, pixels = _physics(env).model, env.base_env._env
    model.mat_reflectance[:] = 0.0
    before = pixels.render_state(state).astype(int)
    ids = body_geoms(env, task)
    model.geom_matid[ids] = -1
    model.geom_rgba[ids] = (1.0, 0.0, 1.0, 1.0)
    after = pixels.render_state(state).astype(int)
    changed = np.abs(after - before).max(axis=-1) > 0
    mask = body_mask(env, task, state)
    assert changed.any()
    assert np.array_equal(changed, mask), f"{(changed != mask).sum()} of {mask.sum()} pixels differ"


def test_one_mask_serves_every_mode_with_the_train_camera(dmcgb_root: object) -> None:
    from sgqn.assets.sources import DataSources

    task = "walker_walk"
    train = _env(task)
    states = [_state_after(train, 3) for _ in range(4)]
    expected = stacked_body_masks(train, task, states, [1, 3], 3)
    assert expected.shape == (2, 3, SIZE, SIZE)
    data = DataSources(str(dmcgb_root), None, None)
    for mode in ("color_hard", "video_hard"):
        env = _env(task, mode, data=data)
        assert torch.equal(stacked_body_masks(env, task, states, [1, 3], 3), expected), mode
    moved = _env(task, "distracting_cs", intensity=0.3)  # its camera moves: its own masks
    masks = stacked_body_masks(moved, task, states, [1, 3], 3)
    assert masks.any() and not torch.equal(masks, expected)


@pytest.mark.parametrize("algorithm", ["sac", "svea", "sgqn", "drqv2", "drqv2_sgqn"])
def test_a_fit_logs_the_focus_of_every_algorithm(algorithm: str, tmp_path: Path) -> None:
    root = tmp_path
    args = [*fit_args(root, *short_run(30, checkpoint_every=30)), "--model.algorithm", algorithm]
    args += ["--eval.saliency_every_evals", "1", "--eval.saliency_states", "2", "--data.init_steps", "20"]
    main(args)  # 30 agent steps, evaluated with the saliency report at the end
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = run.data.metrics
    for name in ("precision", "recall", "tid", "mass_on_body"):
        assert 0 <= logged[f"eval/train/saliency_{name}"] <= 1, name
    guided = algorithm in ("sgqn", "drqv2_sgqn")
    assert guided == ("eval/train/predicted_mass_on_body" in logged)  # the attribution predictor's
