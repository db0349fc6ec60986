"""Episodes of a policy in one env or in worker processes: the returns evaluation reports.

Returns use the policy as given (evaluation passes the deterministic one: tanh of the Gaussian mean), on
env seeds distinct from training (`EVAL_SEED_OFFSET`). Episodes run one after another in this process
(the reference), or batched over worker processes, every mode's at once.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.envs import EnvBase, ParallelEnv

from sgqn.evaluation import viz
from sgqn.evaluation.attribution import saliency_maps

EVAL_SEED_OFFSET = 1_000_000  # eval envs never share initial states with the training env
DEFAULT_MODES = ("train", "color_hard", "video_easy", "video_hard")


@torch.no_grad()
def run_episodes(env: EnvBase, policy: Any, episodes: int) -> tuple[list[float], TensorDictBase]:
    """Undiscounted returns of `episodes` full episodes of `policy` in `env`, and the first rollout."""
    returns, first = [], None
    for _ in range(episodes):
        rollout: TensorDictBase = env.rollout(100_000, policy, break_when_any_done=True)
        returns.append(rollout["next", "reward"].sum().item())
        first = rollout if first is None else first
    assert first is not None, "episodes must be positive"
    return returns, first


@torch.no_grad()
def run_batched_episodes(env: EnvBase, policy: Any, rounds: int, seed: int) -> tuple[Tensor, TensorDictBase]:
    """`rounds` episodes of each sub-env of the batched `env` at once, the env reseeded with `seed + r`
    before round r (its sub-envs: TorchRL's seed chain from there), so the episodes depend on `seed`
    alone. Returns `[rounds, num_envs]` undiscounted returns and the first round's rollout `[num_envs, T]`.
    DMC episodes all last the task's time limit; episodes of unequal lengths are refused."""
    returns, first = [], None
    for r in range(rounds):
        env.set_seed(seed + r)
        rollout: TensorDictBase = env.rollout(100_000, policy, break_when_any_done=True)
        if not bool(rollout["next", "done"][:, -1].all()):
            raise RuntimeError("batched evaluation needs episodes of one length (DMC's time limit)")
        returns.append(rollout["next", "reward"].sum(dim=(1, 2)))
        first = rollout if first is None else first
    assert first is not None, "rounds must be positive"
    return torch.stack(returns), first


def start_workers(datamodule: Any, modes: Sequence[str], workers: int, seed: int) -> EnvBase:
    """`workers` env processes per mode of `datamodule`'s settings (mode i: sub-envs i·N … (i+1)·N − 1),
    whose `set_seed` also reseeds the test mode's appearance draws. This process keeps its intra-op
    threads (TorchRL would take one per worker); each worker renders with one."""
    functions = [datamodule.env_fn(mode, seed, reseed_mode=True) for mode in modes for _ in range(workers)]
    env = ParallelEnv(len(functions), functions, mp_start_method="spawn", num_threads=torch.get_num_threads())
    env.start()
    return env


def stop_workers(env: EnvBase) -> None:
    threads = torch.get_num_threads()
    env.close()
    torch.set_num_threads(threads)  # TorchRL's close hands its workers' threads to this process


def run_mode_episodes(
    env: EnvBase, policy: Any, modes: Sequence[str], episodes: int, seed: int
) -> tuple[dict[str, list[float]], dict[str, TensorDictBase]]:
    """`episodes` returns per mode from `start_workers`' env, reseeded from `seed` (see
    `run_batched_episodes`), and each mode's first rollout."""
    workers = env.batch_size[0] // len(modes)
    returns, rollout = run_batched_episodes(env, policy, math.ceil(episodes / workers), seed)
    per_mode, rollouts = {}, {}
    for i, mode in enumerate(modes):  # round by round, worker by worker
        per_mode[mode] = returns[:, i * workers : (i + 1) * workers].reshape(-1)[:episodes].tolist()
        rollouts[mode] = rollout[i * workers]
    return per_mode, rollouts


def episode_returns(env: EnvBase, policy: Any, episodes: int) -> list[float]:
    return run_episodes(env, policy, episodes)[0]


def episode_video(
    module: Any, rollout: TensorDictBase, path: Path, blend_mask: bool, chunk: int = 64
) -> Path:
    """An mp4 of the newest frame of each observation, with the critic's saliency mask tinted in."""
    pixels = torch.cat([rollout["pixels"], rollout["next", "pixels"][-1:]])
    frames = pixels[:, -3:].permute(0, 2, 3, 1).numpy()
    if blend_mask:
        actions = torch.cat([rollout["action"], rollout["action"][-1:]])
        masks = [
            saliency_maps(module, pixels[i : i + chunk], actions[i : i + chunk])["mask"][:, -3:].any(dim=1)
            for i in range(0, len(pixels), chunk)
        ]
        frames = viz.blend_mask(frames, torch.cat(masks).numpy())
    return viz.write_video(frames, path)


def summarize(returns: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(returns)
    return mean, statistics.pstdev(returns) if len(returns) > 1 else 0.0
