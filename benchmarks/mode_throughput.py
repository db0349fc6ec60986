"""Agent steps per second of each DMC-GB test mode, relative to `train`.

Every mode runs the same task, seed and action sequence through `sgqn.envs.make_env` (so the physics is
identical). The modes take turns in short chunks of steps, so load from other processes on a shared
machine hits all of them alike, and each figure is the median over chunks. Steps/s counts agent steps
only; resets (which draw the episode's appearance and, the first time a video is used, decode it) are
timed separately. Process CPU time per step (renderer threads included) is printed too: it is less
disturbed than wall time by other load.

    python benchmarks/mode_throughput.py                      # embedded default data
    python benchmarks/mode_throughput.py --dmcgb-root ../shared/dmcgb --episodes 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from sgqn.envs import EPISODE_PHYSICS_STEPS, make_env

DEFAULT_MODES = ("train", "color_easy", "color_hard", "video_easy", "video_hard", "distracting_cs")


@dataclass
class Runner:
    """One mode's env, stepping through the shared action sequence episode after episode."""

    env: Any
    actions: torch.Tensor
    step_s: list[float] = field(default_factory=list)  # per chunk: wall seconds per agent step
    cpu_s: list[float] = field(default_factory=list)  # per chunk: process CPU seconds per agent step
    reset_s: list[float] = field(default_factory=list)
    t: int = 0
    td: Any = None

    def reset(self) -> None:
        start = time.perf_counter()
        self.td, self.t = self.env.reset(), 0
        self.reset_s.append(time.perf_counter() - start)

    def chunk(self, steps: int) -> None:
        if self.td is None or self.t == len(self.actions):
            self.reset()
        steps = min(steps, len(self.actions) - self.t)
        start, cpu = time.perf_counter(), time.process_time()
        for action in self.actions[self.t : self.t + steps]:
            self.td["action"] = action
            self.td = self.env.step(self.td)["next"]
        self.step_s.append((time.perf_counter() - start) / steps)
        self.cpu_s.append((time.process_time() - cpu) / steps)
        self.t += steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="walker_walk")
    parser.add_argument("--action-repeat", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--render-quality", choices=("fast", "reference"), default="fast")
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES))
    parser.add_argument("--intensity", type=float, default=0.1, help="distracting_cs intensity")
    parser.add_argument("--episodes", type=int, default=3, help="timed episodes per mode")
    parser.add_argument("--chunk", type=int, default=25, help="agent steps per turn")
    parser.add_argument("--dmcgb-root", default=None)
    parser.add_argument("--davis-root", default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    data = {"dmcgb_root": args.dmcgb_root, "davis_root": args.davis_root}
    steps = EPISODE_PHYSICS_STEPS // args.action_repeat
    runners: dict[str, Runner] = {}
    for mode in args.modes:
        env = make_env(
            args.task,
            action_repeat=args.action_repeat,
            image_size=args.image_size,
            render_quality=args.render_quality,
            mode=mode,
            intensity=args.intensity if mode == "distracting_cs" else None,
            data=data,
            seed=0,
        )
        generator = torch.Generator().manual_seed(0)
        runners[mode] = Runner(env, torch.rand(steps, *env.action_spec.shape, generator=generator) * 2 - 1)
    for runner in runners.values():  # warm-up: first GL use, first video decode; not counted
        runner.chunk(args.chunk)
        for timings in (runner.step_s, runner.cpu_s, runner.reset_s):
            timings.clear()
    for _ in range(args.episodes * steps // args.chunk):
        for runner in runners.values():
            runner.chunk(args.chunk)

    base = runners.get("train")
    base_wall = statistics.median(base.step_s) if base else None
    base_cpu = statistics.median(base.cpu_s) if base else None
    print(
        f"{args.task}, action repeat {args.action_repeat}, {args.image_size}px, render_quality="
        f"{args.render_quality}, {args.episodes} x {steps} steps per mode in chunks of {args.chunk}, data: "
        f"{args.dmcgb_root or 'embedded default'}\n"
    )
    columns = ("steps/s", "ms/step", "x train", "cpu ms", "cpu x", "reset ms")
    print(f"{'mode':<20} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, (8, 8, 8, 7, 6, 9), strict=True)))
    for mode, runner in runners.items():
        wall, cpu = statistics.median(runner.step_s), statistics.median(runner.cpu_s)
        ratio = f"{wall / base_wall:8.3f}" if base_wall else f"{'-':>8}"
        cpu_ratio = f"{cpu / base_cpu:6.3f}" if base_cpu else f"{'-':>6}"
        label = f"{mode}@{args.intensity}" if mode == "distracting_cs" else mode
        reset_ms = statistics.median(runner.reset_s) * 1e3 if runner.reset_s else float("nan")
        print(f"{label:<20} {1 / wall:8.1f} {wall * 1e3:8.2f} {ratio} ", end="")
        print(f"{cpu * 1e3:7.2f} {cpu_ratio} {reset_ms:9.1f}")


if __name__ == "__main__":
    main()
