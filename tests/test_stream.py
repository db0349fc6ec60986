from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule
from torch import nn

from sgqn.data.stream import DMCDataModule, updates_due


class ConstantPolicy(nn.Module):
    """Action = tanh(bias): lets a test change the weights and see the collector act on them."""

    def __init__(self, action_dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(action_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.bias).expand(*pixels.shape[:-3], -1)


def test_update_schedule() -> None:
    assert [updates_due(s, 3, 1) for s in range(1, 7)] == [0, 0, 3, 1, 1, 1]
    assert [updates_due(s, 2, 2) for s in range(1, 5)] == [0, 4, 2, 2]


def test_stream_collects_updates_and_follows_live_weights() -> None:
    dm = DMCDataModule(
        task="cartpole_swingup", image_size=24, num_env_steps=160, init_steps=40, batch_size=4, seed=1
    )
    assert dm.observation_shape == (9, 24, 24) and dm.action_dim == 1
    policy = ConstantPolicy(dm.action_dim)
    stream = dm.build(TensorDictModule(policy, in_keys=["pixels"], out_keys=["action"]))
    batches = ticks = 0
    for batch in stream:
        if batch is None:  # an agent step with no update due: the trainer's callbacks still see it
            ticks += 1
            continue
        batches += 1
        assert batch["pixels"].shape == (4, 9, 24, 24) and batch["pixels"].dtype == torch.uint8
        if batches == 60:
            policy.bias.data.fill_(0.5)  # the collector must act with the new weights from now on
    assert dm.stats.env_steps == 160 and dm.stats.updates == batches == 40 + 120
    assert ticks == 39  # warm-up steps 1…39; step 40 brings the burst of 40 updates
    assert dm.stats.episodes == 1  # cartpole: 125 agent steps per episode at action repeat 8
    storage = dm.replay.buffer.storage._storage
    actions = storage["action"][: dm.replay.rows_written].reshape(-1)
    valid = storage["starts_transition"][: dm.replay.rows_written]
    actions = actions[valid]
    random_part, policy_part = actions[:40], actions[40:]
    assert random_part.std() > 0.1  # uniform random warm-up
    assert torch.allclose(policy_part[:20], torch.zeros(20))  # bias 0 before the change
    assert torch.allclose(policy_part[-20:], torch.full((20,), torch.tanh(torch.tensor(0.5)).item()))
