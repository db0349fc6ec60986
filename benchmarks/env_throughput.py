"""Agent steps/s of the pixel envs (random actions, rendering included), as a small table.

    python benchmarks/env_throughput.py [--steps 500]

Also times TorchRL's own `frame_skip` (which re-renders every physics sub-step) for comparison, and
reports the mean absolute pixel difference between the fast and reference render quality.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchrl.envs.utils import step_mdp

from sgqn.envs import DEFAULT_ACTION_REPEAT, make_env


def agent_steps_per_second(env, steps: int) -> float:
    td = env.reset()
    for _ in range(20):  # warm-up: GL context, caches
        td = step_mdp(env.step(env.rand_action(td)))
    start = time.perf_counter()
    for _ in range(steps):
        td = env.step(env.rand_action(td))
        td = env.reset() if td["next", "done"].item() else step_mdp(td)
    return steps / (time.perf_counter() - start)


def torchrl_frame_skip_env(name: str, quality: str):
    """TorchRL's stock route: DMControlEnv(from_pixels, frame_skip) renders on every sub-step."""
    from dm_control import suite
    from torchrl.envs.libs.dm_control import DMControlWrapper

    from sgqn.envs.render import RenderQuality
    from sgqn.envs.tasks import split_task

    control_env = suite.load(*split_task(name))
    RenderQuality.named(quality).apply(control_env.physics)  # before the first render
    return DMControlWrapper(
        control_env,
        from_pixels=True,
        pixels_only=True,
        frame_skip=DEFAULT_ACTION_REPEAT[name],
        render_kwargs={"height": 84, "width": 84},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--tasks", nargs="+", default=["walker_walk", "cartpole_swingup"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for name in args.tasks:
        for quality in ("reference", "fast"):
            ours = agent_steps_per_second(make_env(name, render_quality=quality), args.steps)
            stock = agent_steps_per_second(torchrl_frame_skip_env(name, quality), args.steps // 4)
            rows.append((name, DEFAULT_ACTION_REPEAT[name], quality, ours, stock))
        ref = make_env(name, seed=0).reset()["pixels"].float()
        fast = make_env(name, seed=0, render_quality="fast").reset()["pixels"].float()
        rows.append((name, "", "|fast-ref| px", (ref - fast).abs().mean().item(), float("nan")))

    print(f"{'task':<18}{'AR':>4}  {'quality':<14}{'sgqn steps/s':>14}{'torchrl frame_skip':>20}")
    for name, repeat, quality, ours, stock in rows:
        print(f"{name:<18}{repeat!s:>4}  {quality:<14}{ours:>14.1f}{stock:>20.1f}")


if __name__ == "__main__":
    main()
