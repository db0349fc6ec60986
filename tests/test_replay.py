from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from sgqn.data.replay import FrameReplay, bytes_per_row, check_capacity_fits

FS, SIZE, EPISODE = 3, 8, 7


def synthetic_stream(episodes: int, action_dim: int = 2) -> TensorDict:
    """Collector-shaped transitions whose frames encode (episode, step), stacked like CatFrames."""
    items = []
    for e in range(episodes):
        frames = [torch.full((3, SIZE, SIZE), 10 * e + t, dtype=torch.uint8) for t in range(EPISODE + 1)]

        def stack(t: int, frames: list = frames) -> torch.Tensor:
            return torch.cat([frames[max(t - k, 0)] for k in range(FS - 1, -1, -1)])

        for t in range(EPISODE):
            items.append(
                TensorDict(
                    {
                        "pixels": stack(t),
                        "action": torch.full((action_dim,), float(10 * e + t)),
                        "step_count": torch.tensor([t]),
                        "next": {
                            "pixels": stack(t + 1),
                            "reward": torch.tensor([float(10 * e + t)]),
                            "terminated": torch.tensor([False]),
                            "done": torch.tensor([t == EPISODE - 1]),
                        },
                    },
                    batch_size=[],
                )
            )
    return torch.stack(items)


def make(capacity: int, batch: int = 64) -> FrameReplay:
    return FrameReplay(capacity, FS, batch, (3, SIZE, SIZE), action_dim=2)


@pytest.mark.parametrize("chunk", [1, 5])
def test_samples_equal_real_transitions(chunk: int) -> None:
    stream = synthetic_stream(episodes=4)
    truth = {(int(s["action"][0]),): s for s in stream}
    replay = make(capacity=1000)
    for i in range(0, stream.shape[0], chunk):
        replay.extend(stream[i : i + chunk])
    sample = replay.sample()
    for k in range(sample.shape[0]):
        expected = truth[(int(sample["action"][k, 0]),)]
        assert torch.equal(sample["pixels"][k], expected["pixels"])
        assert torch.equal(sample["next", "pixels"][k], expected["next", "pixels"])
        assert sample["next", "reward"][k].item() == expected["next", "reward"].item()


def test_latest_transition_waits_for_its_next_frame() -> None:
    stream = synthetic_stream(episodes=1)
    replay = make(capacity=100, batch=256)
    replay.extend(stream[:3])  # rows for steps 0,1,2: the next frame of step 2 is not stored yet
    sampled = set(replay.sample()["action"][:, 0].long().tolist())
    assert sampled == {0, 1}


def test_wraparound_never_mixes_overwritten_frames() -> None:
    stream = synthetic_stream(episodes=6)
    replay = make(capacity=13, batch=512)  # smaller than two episodes: constant overwriting
    truth = {int(s["action"][0]): s for s in stream}
    for i in range(stream.shape[0]):
        replay.extend(stream[i : i + 1])
        if len(replay) >= 4 and i % 3 == 0:
            sample = replay.sample()
            for k in range(0, sample.shape[0], 7):
                expected = truth[int(sample["action"][k, 0])]
                assert torch.equal(sample["pixels"][k], expected["pixels"])
                assert torch.equal(sample["next", "pixels"][k], expected["next", "pixels"])


def test_memory_per_transition_under_target() -> None:
    per_row = bytes_per_row((3, 84, 84), action_dim=6)
    per_transition = per_row * (250 + 1) / 250  # one closing row per 250-step episode
    assert per_transition <= 26_000
    replay = FrameReplay(1000, 3, 4, (3, 84, 84), 6)
    big = synthetic_stream(1, action_dim=6)
    big["pixels"] = torch.zeros(big.shape[0], 9, 84, 84, dtype=torch.uint8)
    big["next", "pixels"] = torch.zeros(big.shape[0], 9, 84, 84, dtype=torch.uint8)
    replay.extend(big)
    stored = replay.buffer.storage._storage
    measured = sum(
        t.element_size() * t[0].numel() for t in stored.values(include_nested=True, leaves_only=True)
    )
    assert measured == per_row


def test_capacity_check_names_what_fits() -> None:
    with pytest.raises(ValueError, match=r"a capacity of at most [\d,]+ fits"):
        check_capacity_fits(10**12, (3, 84, 84), 6)
    check_capacity_fits(1000, (3, 84, 84), 6)


def test_state_dict_round_trip() -> None:
    stream = synthetic_stream(episodes=2)
    replay = make(capacity=100)
    replay.extend(stream)
    restored = make(capacity=100)
    restored.load_state_dict(replay.state_dict())
    assert restored.rows_written == replay.rows_written == stream.shape[0] + 2
    torch.manual_seed(0)
    a = replay.sample()
    torch.manual_seed(0)
    b = restored.sample()
    assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["action"], b["action"])


def test_gather_storage_reads_like_tensordict_indexing() -> None:
    replay = make(capacity=100)
    replay.extend(synthetic_stream(episodes=2))
    storage = replay.buffer.storage
    windows, _ = replay.buffer.sampler.sample(storage, 32)
    fast, reference = storage.get(windows), storage._storage[windows]
    assert fast.batch_size == reference.batch_size == windows.shape
    assert (fast == reference).all()
