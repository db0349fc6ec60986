from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from sgqn.data.replay import FrameReplay, bytes_per_row, check_capacity_fits
from sgqn.data.rows import FRAME, STEP, VALID, StackFrames

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


def test_one_step_samples_are_unchanged() -> None:
    """Pinned to the samples of the code before n-step replay (same seed, same RNG draws)."""
    replay = FrameReplay(100, FS, 12, (3, SIZE, SIZE), action_dim=2)
    replay.extend(synthetic_stream(episodes=3))
    torch.manual_seed(0)
    sample = replay.sample()
    ids = [24, 5, 0, 23, 3, 23, 1, 3, 5, 2, 14, 26]
    assert sample["action"][:, 0].long().tolist() == ids
    assert sample["pixels"][:, ::3, 0, 0].long().tolist() == [
        [max(i - 2, 10 * (i // 10)), max(i - 1, 10 * (i // 10)), i] for i in ids
    ]
    assert sample["next", "pixels"][:, ::3, 0, 0].long().tolist() == [
        [max(i - 1, 10 * (i // 10)), i, i + 1] for i in ids
    ]
    assert sample["next", "reward"].reshape(-1).tolist() == [float(i) for i in ids]
    assert ("next", "discount") not in sample.keys(include_nested=True)
    assert sample["next", "reward"].dtype == torch.float32
    assert torch.randint(1000, (1,)).item() == 868  # the sampler drew no more random numbers than before


GAMMA = 0.9


def episode_transitions(first_row: int, steps: int, *, closes: bool, terminates: bool) -> list[TensorDict]:
    """Collector transitions of one episode whose frames (mod 256) and actions are their row ids and whose
    rewards are row id + 1; a closed episode's closing row is `first_row + steps`."""
    items = []
    for t in range(steps):
        row, last = first_row + t, t == steps - 1
        items.append(
            TensorDict(
                {
                    "pixels": torch.full((3 * FS, SIZE, SIZE), row % 256, dtype=torch.uint8),
                    "action": torch.full((2,), float(row)),
                    "step_count": torch.tensor([t]),
                    "next": {
                        "pixels": torch.full((3 * FS, SIZE, SIZE), (row + 1) % 256, dtype=torch.uint8),
                        "reward": torch.tensor([float(row + 1)]),
                        "terminated": torch.tensor([terminates and last]),
                        "done": torch.tensor([closes and last]),
                    },
                },
                batch_size=[],
            )
        )
    return items


def hand_stream() -> TensorDict:
    """Rows 0-6: episode A (7 steps, truncated), row 7 its closing row; rows 8-11: episode B (4 steps, the
    last terminated), row 12 its closing row; rows 13-15: the first 3 steps of episode C."""
    return torch.stack(
        episode_transitions(0, 7, closes=True, terminates=False)
        + episode_transitions(8, 4, closes=True, terminates=True)
        + episode_transitions(13, 3, closes=False, terminates=False)
    )


def reference_n_step(row: int, n: int) -> tuple[list[int], list[int], float, float, bool]:
    """pixels' and next pixels' frames, reward, discount, terminated of transition `row` of `hand_stream`,
    by the definition (transitions and closing row of its own episode only)."""
    first, closing, terminal = (0, 7, None) if row < 7 else (8, 12, 11)
    m = min(n, closing - row)
    if terminal is not None and terminal < row + m:
        m = terminal - row + 1
    ended = terminal is not None and terminal < row + m
    reward = sum(GAMMA**i * (row + i + 1) for i in range(m))
    pixels = [max(row - FS + 1 + j, first) for j in range(FS)]
    next_pixels = [max(row + m - FS + 1 + j, first) for j in range(FS)]
    return pixels, next_pixels, reward, 0.0 if ended else GAMMA**m, ended


def n_step_replay(capacity: int = 100, batch: int = 256, n: int = 3, partial: bool = False) -> FrameReplay:
    return FrameReplay(
        capacity,
        FS,
        batch,
        (3, SIZE, SIZE),
        action_dim=2,
        n_step=n,
        discount=GAMMA,
        n_step_partial_windows=partial,
    )


def test_n_step_by_hand() -> None:
    """With partial windows (`--data.n_step_partial_windows true`): every transition, m = min(n, left)."""
    replay = n_step_replay(partial=True)
    replay.extend(hand_stream())
    torch.manual_seed(0)
    seen: dict[int, tuple] = {}
    for _ in range(4):
        sample = replay.sample()
        assert sample["next", "reward"].shape == sample["next", "discount"].shape == (256, 1)
        assert sample["next", "reward"].dtype == sample["next", "discount"].dtype == torch.float32
        for k in range(sample.shape[0]):
            row = int(sample["action"][k, 0])
            pixels = sample["pixels"][k, ::3, 0, 0].tolist()
            next_pixels = sample["next", "pixels"][k, ::3, 0, 0].tolist()
            assert (sample["pixels"][k] == sample["pixels"][k, :, :1, :1]).all()  # one value per frame
            got = (
                pixels,
                next_pixels,
                sample["next", "reward"][k].item(),
                sample["next", "discount"][k].item(),
                bool(sample["next", "terminated"][k]),
            )
            assert bool(sample["next", "done"][k]) == got[4]
            seen[row] = got
            want = reference_n_step(row, 3)
            assert got[:2] == want[:2] and got[4] == want[4], row
            assert got[2:4] == pytest.approx(want[2:4], rel=1e-6), row
            if row < 7:  # episode A never reaches into episode B's rows
                assert max(pixels + next_pixels) <= 7
    # Every transition is sampled, except episode C's (its rows after them are not written yet).
    assert sorted(seen) == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    approx = pytest.approx
    # Middle of episode A: m = 3.
    assert seen[3] == ([1, 2, 3], [4, 5, 6], approx(4 + 0.9 * 5 + 0.81 * 6), approx(0.729), False)
    # The first transition: `pixels` repeats the episode's first frame, as CatFrames does at reset.
    assert seen[0] == ([0, 0, 0], [1, 2, 3], approx(1 + 0.9 * 2 + 0.81 * 3), approx(0.729), False)
    # Truncation inside the window: m = 2 and m = 1, bootstrapping from the closing frame (row 7).
    assert seen[5] == ([3, 4, 5], [5, 6, 7], approx(6 + 0.9 * 7), approx(0.81), False)
    assert seen[6] == ([4, 5, 6], [5, 6, 7], approx(7.0), approx(0.9), False)
    # Episode B: the first transition's 3 steps end before the terminal one; later ones contain it.
    assert seen[8] == ([8, 8, 8], [9, 10, 11], approx(9 + 0.9 * 10 + 0.81 * 11), approx(0.729), False)
    assert seen[9] == ([8, 8, 9], [10, 11, 12], approx(10 + 0.9 * 11 + 0.81 * 12), 0.0, True)
    assert seen[10] == ([8, 9, 10], [10, 11, 12], approx(11 + 0.9 * 12), 0.0, True)
    assert seen[11] == ([9, 10, 11], [10, 11, 12], approx(12.0), 0.0, True)


def test_n_step_samples_only_full_windows_by_default() -> None:
    """DrQ-v2's replay: a start index never falls in an episode's last n - 1 transitions, so every
    sample covers n transitions of its episode (bootstrap γ^n, or 0 when the n-th terminated)."""
    replay = n_step_replay()
    assert replay.n_step_partial_windows is False and replay.sampler.partial_windows is False
    replay.extend(hand_stream())
    torch.manual_seed(0)
    seen: dict[int, tuple] = {}
    for _ in range(4):
        sample = replay.sample()
        for k in range(sample.shape[0]):
            row = int(sample["action"][k, 0])
            seen[row] = (sample["next", "reward"][k].item(), sample["next", "discount"][k].item())
            want = reference_n_step(row, 3)
            assert sample["pixels"][k, ::3, 0, 0].tolist() == want[0]
            assert sample["next", "pixels"][k, ::3, 0, 0].tolist() == want[1]
            assert seen[row] == pytest.approx(want[2:4], rel=1e-6)
    # Episode A (7 steps): 0-4, not its last two; episode B (4 steps, the 4th terminated): 8 and 9, the
    # latter's window ending with the termination (m = 3, no bootstrap); episode C: nothing complete yet.
    assert sorted(seen) == [0, 1, 2, 3, 4, 8, 9]
    assert seen[9] == (pytest.approx(10 + 0.9 * 11 + 0.81 * 12), 0.0)
    assert all(d == pytest.approx(GAMMA**3) for row, (_, d) in seen.items() if row != 9)


def discounts(replay: FrameReplay, batches: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.cat([replay.sample()["next", "discount"].reshape(-1) for _ in range(batches)])


def test_partial_windows_at_250_step_episodes() -> None:
    """At n = 3 an m < n window is (n - 1) / 250 = 0.8 % of a 250-step episode's transitions (0.4 % at
    DrQ-v2's 500-step episodes): sampled with the switch, never by default (DMC never terminates)."""
    steps, episodes, n = 250, 4, 3
    items = []
    for e in range(episodes):  # 4 truncated episodes (each with its closing row), then 10 steps of a 5th
        items += episode_transitions(e * (steps + 1), steps, closes=True, terminates=False)
    items += episode_transitions(episodes * (steps + 1), 10, closes=False, terminates=False)
    full, partial = n_step_replay(capacity=2000, batch=1000), n_step_replay(2000, 1000, partial=True)
    for replay in (full, partial):
        replay.extend(torch.stack(items))
    shorter = lambda d: (d > GAMMA**n + 1e-6).float().mean().item()  # noqa: E731 (γ^m > γ^n: m < n)
    assert shorter(discounts(full, 40)) == 0.0
    assert discounts(full, 1).min() == pytest.approx(GAMMA**n)  # no termination either
    # The sampleable transitions: 4 x 250, and the 5th episode's first 7 (its newest n wait for rows after).
    expected = episodes * (n - 1) / (episodes * steps + 10 - n)  # 8 / 1007 = 0.79 %
    fraction = shorter(discounts(partial, 40))
    assert fraction == pytest.approx(expected, abs=0.0015)  # 40,000 samples: standard error 0.00044
    assert sorted(set(discounts(partial, 20).tolist())) == pytest.approx(
        [GAMMA**3, GAMMA**2, GAMMA], rel=1e-6
    )


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_partial_windows_are_part_of_the_checkpoint(storage: str, tmp_path) -> None:
    def build(partial: bool) -> FrameReplay:
        return FrameReplay(
            100, FS, 64, (3, SIZE, SIZE), 2, n_step=3, discount=GAMMA, storage=storage, scratch_dir=tmp_path,
            n_step_partial_windows=partial,
        )  # fmt: skip

    replay = build(True)
    replay.extend(hand_stream())
    state = replay.state_dict()
    assert state["n_step_partial_windows"] is True
    restored = build(True)
    restored.load_state_dict(state)
    assert restored.sampler.partial_windows is True
    # A checkpoint from before the choice sampled partial windows: restored as such, with a warning.
    old = {k: v for k, v in state.items() if k != "n_step_partial_windows"}
    if "sampler" in old:
        old["sampler"] = {k: v for k, v in old["sampler"].items() if k != "partial_windows"}
    configured_full = build(False)
    with pytest.warns(UserWarning, match="n_step_partial_windows=True"):
        configured_full.load_state_dict(old)
    assert configured_full.n_step_partial_windows is configured_full.sampler.partial_windows is True
    torch.manual_seed(0)
    a = replay.sample()
    torch.manual_seed(0)
    assert (configured_full.sample() == a).all()


def test_n_step_run_stops_at_termination_and_at_another_episode() -> None:
    """The rules on windows no stream produces: a terminated transition followed by more transitions of
    its episode (stops after it) and a next episode without a closing row (stops before it)."""
    n, batch = 3, 2
    ids = torch.arange(FS + n)
    windows = TensorDict(
        {
            FRAME: ids.reshape(1, -1, 1, 1, 1).expand(batch, -1, 3, 2, 2).to(torch.uint8).clone(),
            "action": ids.reshape(1, -1, 1).expand(batch, -1, 2).float().clone(),
            "reward": torch.ones(batch, FS + n, 1),
            "terminated": torch.zeros(batch, FS + n, 1, dtype=torch.bool),
            STEP: (ids + 10).to(torch.int32).expand(batch, -1).clone(),
            VALID: torch.ones(batch, FS + n, dtype=torch.bool),
        },
        batch_size=[batch, FS + n],
    )
    windows["terminated"][0, FS] = True  # sample 0: transition k+1 terminates
    windows[STEP][1, FS + 1 :] = torch.tensor([0, 1], dtype=torch.int32)  # sample 1: k+2 starts an episode
    out = StackFrames(FS, n_step=n, discount=GAMMA)(windows)
    assert out["next", "reward"].reshape(-1).tolist() == pytest.approx([1.9, 1.9])
    assert out["next", "discount"].reshape(-1).tolist() == pytest.approx([0.0, 0.81])
    assert out["next", "terminated"].reshape(-1).tolist() == [True, False]
    assert out["next", "pixels"][:, ::3, 0, 0].tolist() == [[2, 3, 4], [2, 3, 4]]
    assert out["pixels"][:, ::3, 0, 0].tolist() == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("chunk", [1, 5])
def test_n_step_with_wraparound_matches_collector_transitions(chunk: int) -> None:
    n = 3
    stream = synthetic_stream(episodes=6)
    truth = {int(s["action"][0]): s for s in stream}
    # smaller than two episodes: constant overwriting; partial windows: every m = 1 … n
    replay = n_step_replay(capacity=13, batch=512, n=n, partial=True)
    torch.manual_seed(0)
    sampled = set()
    for i in range(0, stream.shape[0], chunk):
        replay.extend(stream[i : i + chunk])
        if replay.rows_written < FS + n + 2:
            continue
        sample = replay.sample()
        for k in range(0, sample.shape[0], 5):
            key = int(sample["action"][k, 0])
            t = key % 10
            m = min(n, EPISODE - t)
            sampled.add(m)
            assert torch.equal(sample["pixels"][k], truth[key]["pixels"])
            assert torch.equal(sample["next", "pixels"][k], truth[key + m - 1]["next", "pixels"])
            reward = sum(GAMMA**i * (key + i) for i in range(m))
            assert sample["next", "reward"][k].item() == pytest.approx(reward, rel=1e-6)
            assert sample["next", "discount"][k].item() == pytest.approx(GAMMA**m, rel=1e-6)
            assert not sample["next", "done"][k]
    assert sampled == {1, 2, 3}


def test_full_windows_with_wraparound_match_collector_transitions() -> None:
    n = 3
    stream = synthetic_stream(episodes=6)
    truth = {int(s["action"][0]): s for s in stream}
    replay = n_step_replay(capacity=13, batch=512, n=n)  # the default: full windows only
    torch.manual_seed(0)
    starts = set()
    for i in range(stream.shape[0]):
        replay.extend(stream[i : i + 1])
        if replay.rows_written < FS + n + 2:
            continue
        sample = replay.sample()
        for k in range(0, sample.shape[0], 5):
            key = int(sample["action"][k, 0])
            starts.add(key % 10)
            assert torch.equal(sample["pixels"][k], truth[key]["pixels"])
            assert torch.equal(sample["next", "pixels"][k], truth[key + n - 1]["next", "pixels"])
            assert sample["next", "reward"][k].item() == pytest.approx(
                sum(GAMMA**i * (key + i) for i in range(n))
            )
        assert sample["next", "discount"].reshape(-1).tolist() == pytest.approx([GAMMA**n] * 512)
    assert starts == set(range(EPISODE - n + 1))  # never an episode's last n - 1 transitions


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_n_step_state_dict_round_trip(storage: str, tmp_path) -> None:
    def build(n: int) -> FrameReplay:
        return FrameReplay(
            100, FS, 64, (3, SIZE, SIZE), 2, n_step=n, discount=GAMMA, storage=storage, scratch_dir=tmp_path
        )

    replay = build(3)
    replay.extend(hand_stream())
    state = replay.state_dict()
    assert state["n_step"] == 3
    restored = build(3)
    restored.load_state_dict(state)
    mismatched = build(1)
    with pytest.warns(UserWarning, match="3-step"):
        mismatched.load_state_dict(state)
    samples = []
    for r in (replay, restored, mismatched):
        assert r.n_step == r.sampler.n_step == r.transform.n_step == 3
        torch.manual_seed(0)
        samples.append(r.sample())
    for other in samples[1:]:
        assert set(other.keys(True, True)) == set(samples[0].keys(True, True))
        assert (other == samples[0]).all()
    assert ("next", "discount") in samples[0].keys(include_nested=True)
