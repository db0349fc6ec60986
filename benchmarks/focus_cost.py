"""What scoring the critic's focus on the task's bodies adds to an evaluation (issue 24's ≤ 10 %).

    python benchmarks/focus_cost.py                     # the quick start's evaluation (40 px, train + video_hard)
    python benchmarks/focus_cost.py --size 84 --task walker_walk --modes train color_hard video_easy video_hard

Times, on the same untrained agent and envs: the evaluation's episodes (`--episodes` per mode, as
`sgqn fit`'s `EvaluationCallback`), its saliency report without the ground truth, and with it (one
segmentation render per frame of each saliency observation, in the train env and in every mode that
moves the camera). Prints the medians over `--rounds` and the added seconds as a share of the evaluation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sgqn.data.datamodule import DMCDataModule
from sgqn.evaluation.episodes import EVAL_SEED_OFFSET, run_episodes
from sgqn.evaluation.generalization import saliency_report
from sgqn.nets.config import NetConfig
from sgqn.training.module import AgentModule


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="cartpole_swingup")
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--modes", nargs="+", default=["train", "video_hard"])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--states", type=int, default=8, help="saliency observations (EvaluationCallback's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dmcgb-root", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    dm = DMCDataModule(
        task=args.task, image_size=args.size, render_quality="fast", dmcgb_root=args.dmcgb_root
    )
    net = NetConfig(num_conv_layers=3, num_filters=16, hidden_dim=128, actor_hidden_dim=1024)
    module = AgentModule(
        observation_shape=dm.observation_shape, action_dim=dm.action_dim, net=net, task=args.task
    )
    module.setup("fit")  # the overlay images
    policy = module.policy_module(deterministic=True)
    envs = {mode: dm.make_env(mode=mode, seed=dm.env_settings.seed + EVAL_SEED_OFFSET) for mode in args.modes}
    stack = dm.env_settings.frame_stack
    timings: dict[str, list[float]] = {"episodes": [], "saliency": [], "saliency + ground truth": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        for env in envs.values():
            run_episodes(env, policy, args.episodes)
        timings["episodes"].append(time.perf_counter() - start)
        for name, task in (("saliency", None), ("saliency + ground truth", args.task)):
            start = time.perf_counter()
            saliency_report(module, envs, policy, frame_stack=stack, num_states=args.states, task=task)
            timings[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in timings.items()}
    for name, value in median.items():
        print(f"{name:>24}: {value:6.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in timings[name])})")
    added = median["saliency + ground truth"] - median["saliency"]
    evaluation = median["episodes"] + median["saliency"]
    print(
        f"ground truth adds {added:.2f} s to an evaluation of {evaluation:.2f} s: {100 * added / evaluation:.1f} %"
    )


if __name__ == "__main__":
    main()
