from __future__ import annotations

import numpy as np
import pytest
import torch
from dm_control import suite
from torchrl.envs.utils import check_env_specs, step_mdp

from sgqn.envs import DEFAULT_ACTION_REPEAT, EPISODE_PHYSICS_STEPS, TASKS, make_env

SMALL = 48  # rendering is the cost in these tests; the logic does not depend on the size


def _physics(env):
    return env.base_env._env._env.physics  # TorchRL wrapper → ModePixels → ActionRepeat


def test_specs_and_observation_layout() -> None:
    env = make_env("walker_walk", seed=0)
    check_env_specs(env)
    td = env.reset()
    assert td["pixels"].shape == (9, 84, 84) and td["pixels"].dtype == torch.uint8
    assert env.action_spec.space.low.min() == -1 and env.action_spec.space.high.max() == 1


def test_renders_once_per_agent_step() -> None:
    env = make_env("walker_walk", seed=0, action_repeat=4, image_size=SMALL)
    physics, camera = _physics(env), env.base_env._env._camera
    calls = {"render": 0, "step": 0}
    render, step = camera.render, physics.step

    def counting_render(*args, **kwargs):
        calls["render"] += 1
        return render(*args, **kwargs)

    def counting_step(*args, **kwargs):
        calls["step"] += 1
        return step(*args, **kwargs)

    camera.render, physics.step = counting_render, counting_step
    td = env.reset()
    assert calls == {"render": 1, "step": 0}
    for _ in range(10):
        td = step_mdp(env.step(env.rand_action(td)))
    assert calls == {"render": 10 + 1, "step": 4 * 10}  # one frame per agent step, 4 control steps


def test_reward_is_sum_over_repeated_substeps() -> None:
    seed, repeat = 3, 4
    env = make_env("cheetah_run", seed=seed, action_repeat=repeat, image_size=SMALL)
    reference = suite.load("cheetah", "run", task_kwargs={"random": seed})
    reference.reset()
    td = env.reset()
    with reference.physics.reset_context():
        reference.physics.set_state(_physics(env).get_state())
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, size=6).astype(np.float32)
        td["action"] = torch.as_tensor(action)
        td = env.step(td)
        expected = sum(reference.step(action).reward for _ in range(repeat))
        assert td["next", "reward"].item() == pytest.approx(expected, rel=1e-5)
        td = step_mdp(td)


def test_episode_length_and_truncation() -> None:
    repeat = 8
    env = make_env("cartpole_swingup", action_repeat=repeat, seed=0, image_size=SMALL)
    rollout = env.rollout(10_000, break_when_any_done=True)
    assert rollout.shape[0] == EPISODE_PHYSICS_STEPS // repeat
    assert rollout["next", "truncated"][-1].item() and not rollout["next", "terminated"].any()
    assert not rollout["next", "done"][:-1].any()


def test_frame_stack_order() -> None:
    env = make_env("walker_walk", seed=0, frame_stack=3, image_size=SMALL)
    rollout = env.rollout(4, break_when_any_done=False)
    first = rollout["pixels"][0]
    assert torch.equal(first[0:3], first[3:6]) and torch.equal(first[3:6], first[6:9])  # reset pads
    for t in range(3):
        obs, nxt = rollout["pixels"][t], rollout["next", "pixels"][t]
        assert torch.equal(nxt[0:6], obs[3:9])  # oldest → newest, shifted by one frame
        assert torch.equal(rollout["pixels"][t + 1], nxt)
    assert not torch.equal(rollout["next", "pixels"][2][6:9], rollout["pixels"][0][6:9])


def test_seeding_is_reproducible() -> None:
    a = make_env("reacher_easy", seed=7, image_size=SMALL).reset()["pixels"]
    b = make_env("reacher_easy", seed=7, image_size=SMALL).reset()["pixels"]
    c = make_env("reacher_easy", seed=8, image_size=SMALL).reset()["pixels"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "walker_fly"}, "valid tasks: .*walker_walk"),
        ({"name": "walker_walk", "mode": "sepia"}, "valid modes: .*train"),
        ({"name": "walker_walk", "action_repeat": 0}, "action_repeat"),
        ({"name": "walker_walk", "action_repeat": -2}, "action_repeat"),
        ({"name": "walker_walk", "image_size": 0}, "image_size"),
        ({"name": "walker_walk", "frame_stack": 0}, "frame_stack"),
        ({"name": "walker_walk", "render_quality": "ultra"}, "valid: .*fast"),
    ],
)
def test_bad_input_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_env(**kwargs)


def test_task_table() -> None:
    assert DEFAULT_ACTION_REPEAT["finger_spin"] == 2
    assert all(DEFAULT_ACTION_REPEAT[t] == 8 for t in TASKS if t.startswith("cartpole"))
    assert {
        "walker_walk",
        "walker_stand",
        "cartpole_swingup",
        "cartpole_balance",
        "ball_in_cup_catch",
    } <= set(TASKS)
    assert {"finger_spin", "cheetah_run", "reacher_easy"} <= set(TASKS)


def test_cached_camera_renders_what_physics_render_does() -> None:
    env = make_env("walker_walk", seed=0, image_size=SMALL)
    td = env.rollout(3)
    frame = td["next", "pixels"][-1, -3:].permute(1, 2, 0).numpy()
    assert np.array_equal(frame, _physics(env).render(SMALL, SMALL, camera_id=0))


def test_fast_render_is_close_to_reference() -> None:
    ref = make_env("walker_walk", seed=0, render_quality="reference").reset()["pixels"].float()
    fast = make_env("walker_walk", seed=0, render_quality="fast").reset()["pixels"].float()
    assert 0 < (ref - fast).abs().mean().item() < 3.0


def test_importing_the_env_package_probes_no_gl_backend_and_loads_no_mujoco() -> None:
    # Validation, `--help` and reports import sgqn.envs for its names: that must not start subprocess
    # probes or import dm_control (which fixes its GL backend); the first env does.
    import subprocess
    import sys

    code = (
        "import os, sys; os.environ.pop('MUJOCO_GL', None)\n"
        "import sgqn.envs, sgqn.app.validation\n"
        "assert 'dm_control' not in sys.modules, 'dm_control imported'\n"
        "assert 'MUJOCO_GL' not in os.environ, 'probed'\n"
        "print(sgqn.envs.MODES[-1])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "distracting_cs", done.stderr
