"""SGQN trained with TorchRL alone: TorchRL's collector and replay buffer, the package's env factory and
agent (a TorchRL `LossModule` whose `update` is the training code `sgqn fit` runs), no Lightning.

    python examples/torchrl_loop.py                          # the quick start's size, 3,000 agent steps
    python examples/torchrl_loop.py --steps 60 --init 20     # a smoke run (CI)

The replay here is TorchRL's plain one (every transition's stacked frames stored whole); `sgqn fit`
stores each frame once and adds resume, evaluation in the test modes and MLflow.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from sgqn.algorithms.agent import Optimizers, adam_optimizers
from sgqn.algorithms.factory import AgentConfig, make_agent
from sgqn.algorithms.sac import SACConfig
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.assets.sources import load_overlay_images
from sgqn.envs import make_env
from sgqn.nets.config import NetConfig
from sgqn.training.policy import policy_module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="cartpole_swingup")
    parser.add_argument("--algorithm", default="sgqn", choices=["sac", "svea", "sgqn", "drqv2", "drqv2_sgqn"])
    parser.add_argument("--steps", type=int, default=3000, help="agent steps")
    parser.add_argument("--init", type=int, default=500, help="random agent steps before learning")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=40, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    # The env: pixels [3 × 3 frames, size, size] uint8, the task's action repeat below the renderer.
    env = make_env(args.task, image_size=args.size, seed=args.seed, render_quality="fast")
    obs_shape = tuple(env.observation_spec["pixels"].shape)
    action_dim = env.action_spec.shape[-1]

    # The agent: the quick start's small networks; its `update` is the whole algorithm, in order.
    config = AgentConfig(
        algorithm=args.algorithm,
        net=NetConfig(num_conv_layers=3, num_filters=16, hidden_dim=128, actor_hidden_dim=1024),
        sac=SACConfig(alpha_lr=1e-3, shift_pad=2),
        sgqn=SGQNConfig(decoder_channels=(16, 32, 16)),
    )
    agent = make_agent(config, obs_shape, action_dim, args.task)  # type: ignore[arg-type]
    if agent.overlay is not None:  # SVEA's and SGQN's natural images (the embedded default set)
        agent.overlay.set_images(load_overlay_images(None, args.size))
    opt = Optimizers(adam_optimizers(agent))

    # TorchRL's collector (random actions for the first `init` steps) and replay buffer.
    collector = Collector(
        env,
        policy_module(agent, deterministic=False),
        frames_per_batch=1,
        total_frames=args.steps,
        init_random_frames=args.init,
    )
    replay = TensorDictReplayBuffer(storage=LazyTensorStorage(args.steps), batch_size=args.batch)

    start, returns, episode_return = time.perf_counter(), [], 0.0
    for step, transition in enumerate(collector, start=1):
        transition = transition.reshape(-1)
        replay.extend(transition)
        episode_return += transition["next", "reward"].sum().item()
        if transition["next", "done"].any():
            returns.append(episode_return)
            episode_return = 0.0
        if step < args.init:
            continue
        # The reference's burst: `init` updates when learning starts, then one per agent step.
        for _ in range(args.init if step == args.init else 1):
            metrics = agent.update(replay.sample(), opt, agent.due(step))
        if step % max(1, args.steps // 10) == 0:
            last = f"{returns[-1]:.1f}" if returns else "-"
            losses = ", ".join(f"{k} {v.item():.3f}" for k, v in metrics.items() if k.startswith("loss_"))
            print(f"step {step}: last episode return {last}; {losses} ({time.perf_counter() - start:.0f} s)")
    collector.shutdown()

    # The deterministic policy on a fresh episode.
    test_env = make_env(args.task, image_size=args.size, seed=args.seed + 1_000_000, render_quality="fast")
    with torch.no_grad():
        episode = test_env.rollout(100_000, policy_module(agent, deterministic=True))
    print(f"evaluation return: {episode['next', 'reward'].sum().item():.1f}")


if __name__ == "__main__":
    main()
