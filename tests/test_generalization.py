from __future__ import annotations

import torch
from torchrl.envs.utils import step_mdp

from sgqn.envs import make_env
from sgqn.evaluation.generalization import (
    collect_states,
    generalization_gaps,
    saliency_consistency,
    stacked_observations,
)


def test_rendering_recorded_states_reproduces_observations() -> None:
    env = make_env("walker_walk", image_size=32, seed=2)

    def policy(td):
        td["action"] = torch.full((6,), 0.3)
        return td

    states = collect_states(env, policy, num_steps=6)
    assert len(states) == 7
    replay = make_env("walker_walk", image_size=32, seed=2)  # fresh env, same seed → same episode
    td = replay.reset()
    seen = [td["pixels"].clone()]  # CatFrames may reuse its buffer between steps
    for _ in range(6):
        td = step_mdp(replay.step(policy(td)))
        seen.append(td["pixels"].clone())
    rendered = stacked_observations(make_env("walker_walk", image_size=32, seed=99), states, [0, 1, 6], 3)
    for k, i in enumerate([0, 1, 6]):
        assert torch.equal(rendered[k], seen[i])


def test_consistency_and_gap() -> None:
    a = torch.zeros(4, 9, 8, 8, dtype=torch.bool)
    a[:, :, :4] = True
    b = a.clone()
    b[:, :, :2] = False  # half of a
    iou = saliency_consistency({"train": a, "same": a.clone(), "half": b})
    assert iou == {"same": 1.0, "half": 0.5}
    assert generalization_gaps({"train": 800.0, "video_hard": 500.0}) == {"video_hard": 300.0}
