"""The collector's own resume state (TorchRL's `Collector.state_dict` keeps neither the observation the
next step acts on nor the env's state; `sgqn.envs.state` keeps the env's)."""

from __future__ import annotations

from typing import Any

from tensordict import TensorDict
from torchrl.collectors import Collector


def collector_state(collector: Collector) -> dict[str, Any]:
    """The collector's own resume state: frame counter (random warm-up vs policy), trajectory ids and
    the carrier, i.e. the observation the next step acts on. (TorchRL's `Collector.state_dict` keeps
    neither the carrier nor the env's state, and adds the policy weights.)"""
    return {
        "frames": collector._frames,
        "iter": collector._iter,
        "traj_pool": collector._traj_pool.state_dict(),
        "carrier": collector._carrier.to_dict(),
    }


def load_collector_state(collector: Collector, state: dict[str, Any]) -> None:
    """Restore `collector_state` (after the env's state: the carrier must match it)."""
    collector._frames, collector._iter = state["frames"], state["iter"]
    collector._traj_pool.load_state_dict(state["traj_pool"])
    carrier = collector._carrier
    collector._carrier = TensorDict(state["carrier"], batch_size=carrier.batch_size, device=carrier.device)
