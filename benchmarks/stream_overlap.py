"""Agent steps/s of the training stream with and without overlapped collection, at the quick start's size.

    python benchmarks/stream_overlap.py                  # both, 2 intra-op threads
    OMP_NUM_THREADS=1 LP_NUM_THREADS=1 python benchmarks/stream_overlap.py   # one core for each side

The real env (cartpole_swingup, 40 px, fast rendering) feeds `EnvStream` (`DMCDataModule.build`); every
batch gets one real SGQN update of the quick-start networks (3 conv layers of 16 filters, hidden 128,
batch 32), without Lightning, evaluation or logging. Timed: the agent steps after the first 150 updates.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from sgqn.algorithms.agent import Optimizers, adam_optimizers
from sgqn.algorithms.sac import SACConfig
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.data.datamodule import DMCDataModule
from sgqn.nets.config import NetConfig
from sgqn.training.module import AgentModule


def steps_per_second(overlap: bool, steps: int, sync_every: int) -> float:
    torch.manual_seed(0)
    dm = DMCDataModule(
        task="cartpole_swingup",
        image_size=40,
        render_quality="fast",
        num_agent_steps=100 + 150 + steps,
        init_steps=100,
        batch_size=32,
        overlap_collection=overlap,
        policy_sync_every=sync_every,
    )
    module = AgentModule(
        algorithm="sgqn",
        net=NetConfig(num_conv_layers=3, num_filters=16, hidden_dim=128),
        sac=SACConfig(shift_pad=2),
        sgqn=SGQNConfig(decoder_channels=(16, 32, 16)),
        observation_shape=dm.observation_shape,
        action_dim=dm.action_dim,
        task="cartpole_swingup",
    )
    module.set_overlay_images(torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8))
    module.setup("fit")
    agent = module.agent
    opt = Optimizers(adam_optimizers(agent))
    policy = module.policy_module(deterministic=False, snapshot=overlap)
    stream = dm.build(policy, sync_policy=policy.module.sync if overlap else None)
    updates, started, start_steps = 0, 0.0, 0
    for batch in stream:
        if batch is None:
            continue
        updates += 1
        if updates == 150:  # after the warm-up's burst
            started, start_steps = time.perf_counter(), dm.stats.agent_steps
        agent.update(batch, opt, agent.due(updates))
    return (dm.stats.agent_steps - start_steps) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=400, help="timed agent steps")
    parser.add_argument("--policy-sync-every", type=int, default=1)
    args = parser.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    for overlap in (False, True):
        rate = steps_per_second(overlap, args.steps, args.policy_sync_every)
        print(f"overlap_collection={overlap!s:<5} {threads} intra-op threads: {rate:6.2f} agent steps/s")


if __name__ == "__main__":
    main()
