from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule
from torch import nn

from sgqn.data.datamodule import DMCDataModule
from sgqn.data.stream import updates_due


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
        task="cartpole_swingup", image_size=24, num_agent_steps=160, init_steps=40, batch_size=4, seed=1
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
    assert dm.stats.agent_steps == 160 and dm.stats.updates == batches == 40 + 120
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


def test_overlapped_collection_acts_with_a_snapshot_synced_every_k_updates() -> None:
    dm = DMCDataModule(
        task="cartpole_swingup",
        image_size=24,
        num_agent_steps=160,
        init_steps=40,
        batch_size=4,
        seed=1,
        overlap_collection=True,
        policy_sync_every=5,
    )
    live, snapshot = ConstantPolicy(dm.action_dim), ConstantPolicy(dm.action_dim)
    syncs: list[int] = []

    def sync() -> None:
        syncs.append(dm.stats.updates)
        snapshot.bias.data.copy_(live.bias.data)

    stream = dm.build(TensorDictModule(snapshot, in_keys=["pixels"], out_keys=["action"]), sync_policy=sync)
    batches = 0
    resumed_state = None
    for batch in stream:
        if batch is None:
            continue
        batches += 1
        if batches == 60:
            live.bias.data.fill_(0.5)  # the learner's weights change; the snapshot follows at a sync
        if batches == 100:  # a checkpoint mid-run: the collecting thread stops, its steps are kept
            resumed_state = dm.state_dict()
            assert stream._thread is None
            assert len(stream.prefetched) <= 2  # the step in the queue and the one in flight
    assert dm.stats.agent_steps == 160 and dm.stats.updates == batches == 40 + 120
    assert syncs == list(range(0, 160, 5))  # every 5th update, before it runs
    assert resumed_state is not None and "prefetched" in resumed_state["stream"]
    storage = dm.replay.buffer.storage._storage  # type: ignore[union-attr]
    actions = storage["action"][: dm.replay.rows_written].reshape(-1)  # type: ignore[union-attr]
    actions = actions[storage["starts_transition"][: dm.replay.rows_written]]  # type: ignore[union-attr]
    policy_part = actions[40:]
    assert torch.allclose(policy_part[:20], torch.zeros(20))  # the snapshot before the change
    target = torch.tanh(torch.tensor(0.5))
    # The change reaches the env within the sync period plus the steps in flight (the policy lag), never
    # before the sync that follows it.
    changed = int((policy_part - target).abs().lt(1e-6).nonzero()[0])
    assert 60 - 40 <= changed + 0 <= 60 - 40 + 5 + 2, changed
    assert torch.allclose(policy_part[-20:], torch.full((20,), target.item()))


def test_an_overlapped_stream_resumes_with_its_prefetched_steps() -> None:
    def make() -> DMCDataModule:
        return DMCDataModule(
            task="cartpole_balance",
            image_size=24,
            num_agent_steps=60,
            init_steps=20,
            batch_size=4,
            seed=2,
            overlap_collection=True,
        )

    dm = make()
    stream = dm.build(
        TensorDictModule(ConstantPolicy(dm.action_dim), in_keys=["pixels"], out_keys=["action"])
    )
    for batch in stream:
        if batch is not None and dm.stats.agent_steps == 30:
            state = dm.state_dict()
            break
    prefetched = len(state["stream"]["prefetched"])
    assert prefetched >= 1  # the collector ran ahead of the learner
    again = make()
    again.load_state_dict(state)
    resumed = again.build(
        TensorDictModule(ConstantPolicy(again.action_dim), in_keys=["pixels"], out_keys=["action"])
    )
    assert len(resumed.prefetched) == prefetched
    updates = sum(batch is not None for batch in resumed)
    assert again.stats.agent_steps == 60 and updates == 30 + state["stream"]["pending"]
